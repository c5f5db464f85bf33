"""`mnist-seq doctor`: what this machine offers mnist-seq, in a dozen lines. It never
trains: the CPU and its instruction sets, the GPUs each installed backend sees, the
installed backends and extras, where the MNIST files are found, and the speed plan
each bundled config would get here."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from importlib import metadata

from mnist_seq.backend import load_tensorflow
from mnist_seq.errors import MnistSeqError, first_line

# The extras and the packages that make each one installed.
EXTRAS = {"jax": ("jax",), "sweep": ("optuna",), "serve": ("starlette", "uvicorn"),
          "tensorboard": ("tensorboard",), "export": ("tf2onnx", "onnx"),
          "runtime": ("onnxruntime", "ai-edge-litert"), "map": ("scikit-learn",)}
TENSORFLOW = ("tensorflow", "tensorflow-cpu")
# Run in a process of its own: Keras, once imported here, stays on TensorFlow.
JAX_GPUS = ("import json, jax; print(json.dumps([d.device_kind for d in jax.devices() "
            "if d.platform == 'gpu']))")


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def backends() -> dict[str, str]:
    """Installed backends and their versions."""
    found = {name: v for name in (*TENSORFLOW, "jax") if (v := version(name))}
    return {("tensorflow" if k in TENSORFLOW else k): f"{k} {v}" for k, v in found.items()}


def extras() -> str:
    """Each extra: installed (with versions) or how to install it."""
    said = []
    for extra, packages in EXTRAS.items():
        versions = [version(p) for p in packages]
        named = ", ".join(f"{p} {v}" for p, v in zip(packages, versions, strict=True))
        said.append(f"{extra} ({named})" if all(versions)
                    else f"{extra}: pip install 'mnist-seq[{extra}]'")
    return "; ".join(said)


def gpus(backend: str, jax_probe: subprocess.Popen | None = None) -> str:
    """The GPUs a backend sees, or why none, in words (for JAX, from `jax_probe`, a
    process started with `ask_jax`)."""
    try:
        if backend == "jax":
            out, err = jax_probe.communicate(timeout=60)
            if jax_probe.returncode != 0:  # a traceback's last line says what failed
                return f"cannot say ({(err.strip().splitlines() or ['no message'])[-1][:200]})"
            names = json.loads(out.strip().splitlines()[-1])
        else:
            # As a training run loads it, so the plans below are the ones it gets.
            os.environ["KERAS_BACKEND"] = "tensorflow"
            tf = load_tensorflow()

            names = [d.name for d in tf.config.list_physical_devices("GPU")]
            if not names and not tf.test.is_built_with_cuda():
                return "none (this TensorFlow has no CUDA: pip install 'mnist-seq[gpu]')"
    except Exception as e:  # a broken install: said, not raised
        return f"cannot say ({first_line(e)})"
    return ", ".join(names) if names else "none (no CUDA device visible)"


def ask_jax() -> subprocess.Popen:
    """JAX's devices, asked in a process of its own while TensorFlow loads here."""
    return subprocess.Popen([sys.executable, "-c", JAX_GPUS], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def mnist(data_dir: str | None) -> str:
    """Where the MNIST files are found, checked, or why not."""
    import os

    from mnist_seq.data import ENV_VAR, keras_cache_path, load_mnist

    if not (data_dir or os.environ.get(ENV_VAR) or keras_cache_path().is_file()):
        return (f"not found: no --data-dir, no ${ENV_VAR}, no Keras cache at "
                f"{keras_cache_path()} (train would try to download it)")
    try:
        ds = load_mnist(data_dir, None)
    except MnistSeqError as e:
        return f"not found: {e}"
    return (f"{ds.source}: {len(ds.x_train):,} training and {len(ds.x_test):,} test images, "
            "checked")


def plans(backend: str) -> list[str]:
    """The speed plan each bundled config gets here, on this backend's CPU."""
    from mnist_seq import speed
    from mnist_seq.config import bundled_configs, load_config

    # The CPU has a line of its own above the plans.
    machine = dataclasses.replace(speed.machine_facts(False, backend), cpu="")
    return [f"  {name}: {speed.plan_speed(load_config(name), machine, backend).line}"
            for name in bundled_configs()]


def jax_cache() -> str:
    """Where a JAX run keeps its compiled steps, and how many it holds, in words."""
    from mnist_seq.backend import jax_cache_dir

    folder = jax_cache_dir()
    if folder is None:
        return "not kept (JAX_ENABLE_COMPILATION_CACHE is off)"
    # As a run finds it, without making it: the nearest folder that exists must take files.
    nearest = next(p for p in (folder, *folder.parents) if p.exists())
    if not (nearest.is_dir() and os.access(nearest, os.W_OK)):
        return f"not kept: {folder} cannot be made or written (each run compiles afresh)"
    entries = list(folder.glob("*-cache")) if folder.is_dir() else []
    size = sum(f.stat().st_size for f in entries) / 2**20
    return f"kept in {folder} ({len(entries)} steps, {size:.1f} MiB; delete it to start afresh)"


def report(data_dir: str | None = None) -> list[str]:
    """The doctor's lines (TensorFlow is imported, if installed, to ask for its GPUs)."""
    from mnist_seq.machine import cpu

    found = backends()
    probe = ask_jax() if "jax" in found else None
    lines = [f"CPU: {cpu().describe()}"]
    lines += [f"Backend {v}: GPUs {gpus(k, probe)}" for k, v in found.items()] or [
        "Backends: none installed: pip install 'mnist-seq[cpu]' (TensorFlow) or "
        "'mnist-seq[jax]'"]
    lines += [f"Extras: {extras()}", f"MNIST: {mnist(data_dir)}"]
    if "jax" in found:
        lines.append(f"JAX compiled steps: {jax_cache()}")
    if "tensorflow" in found:
        lines += ["Speed plan on this CPU, TensorFlow:", *plans("tensorflow")]
    return lines
