"""Start Keras once, quietly, on the backend (TensorFlow or JAX) and device the user
asked for.

Everything here runs lazily, at the first command that needs Keras, so that
`mnist-seq --help` stays instant.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

from mnist_seq.errors import MnistSeqError
from mnist_seq.options import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_OPTIONS,
    DEVICES,
    DistributeOptions,
    RuntimeOptions,
    cache_root,
)


def resolve(requested: str | None = None) -> str:
    """The backend a command runs on: `requested` (--backend), else $KERAS_BACKEND, else
    TensorFlow. ~/.keras/keras.json is not read: it would otherwise win silently."""
    chosen = requested or os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND
    if chosen not in BACKENDS:
        where = "--backend" if requested else "KERAS_BACKEND"
        raise MnistSeqError(f"{where}: got {chosen!r}, expected one of {', '.join(BACKENDS)}")
    return chosen


def choose(requested: str | None = None) -> str:
    """Fix the backend Keras will start on (`resolve`), before anything imports Keras
    (downloading MNIST does); returns its name."""
    wanted = resolve(requested)
    if "keras" in sys.modules and name() != wanted:
        # Keras picks its backend once, when it is imported.
        raise MnistSeqError(f"Keras runs on {name()} in this process already; {wanted} "
                            "needs a process of its own")
    os.environ["KERAS_BACKEND"] = wanted
    return wanted


def name() -> str:
    """The backend Keras runs on (Keras must be set up)."""
    import keras

    return keras.backend.backend()


def setup(options: RuntimeOptions = DEFAULT_OPTIONS, deterministic: bool = False) -> str:
    """Set the backend and device, import Keras, and return where training runs, in words
    ("CPU (2 cores)", "GPU (NVIDIA H100)")."""
    device, debug = options.device, options.debug
    if device not in DEVICES:
        raise MnistSeqError(f"--device: got {device!r}, expected one of {', '.join(DEVICES)}")
    wanted = choose(options.backend)
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # must be set before the backend starts
    if wanted == "jax":
        return _setup_jax(device, debug, deterministic, options.distribute)
    return _setup_tensorflow(device, debug, deterministic, options.threads, options.distribute)


def load_tensorflow(debug: bool = False):
    """Import TensorFlow (and Keras on it) as every command does: quietly, with oneDNN
    asked for, without the packages it has no use for at start. Returns `tensorflow`."""
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow turns its oneDNN CPU kernels on by itself only on CPUs with AVX-512
    # VNNI/BF16 or AMX; on AVX2 CPUs (Zen 3, most laptops) they stay off, although they
    # made LeNet 1.9x faster on a 2-core AMD EPYC Zen 3. On an AVX-512 CPU, turning them
    # off made the unrolled 3-layer LSTM 1.7x slower (docs/performance.md). A user's own
    # setting wins; TensorFlow reads it once, when it loads.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    with quiet_stderr(enabled=not debug), _unimportable(*NOT_AT_START["tensorflow"]):
        import keras  # noqa: F401
        import tensorflow as tf
    return tf


def _setup_tensorflow(device: str, debug: bool, deterministic: bool,
                      threads: int | None, distribute: DistributeOptions | None) -> str:
    tf = load_tensorflow(debug)
    if not debug:
        tf.get_logger().setLevel("ERROR")
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    if threads:
        from mnist_seq import tf_speed

        tf_speed.set_op_threads(threads, 1)
    if distribute:
        from mnist_seq import distribute as dist

        dist.start_tensorflow(distribute)
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        cuda = tf.test.is_built_with_cuda()
        raise MnistSeqError(
            "--device gpu: TensorFlow sees no GPU "
            + ("(check the driver and CUDA_VISIBLE_DEVICES)" if cuda
               else "(this TensorFlow has no CUDA; pip install 'mnist-seq[gpu]')")
        )
    if gpus and device != "cpu":
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                 for g in gpus]
        return f"GPU ({', '.join(names)})"
    return f"CPU ({os.cpu_count()} cores)"


def _setup_jax(device: str, debug: bool, deterministic: bool,
               distribute: DistributeOptions | None) -> str:
    if device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    if deterministic:
        # XLA's GPU kernels may add in any order unless told not to; on a CPU, XLA's
        # sums run in a fixed order already.
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()
    try:
        with quiet_stderr(enabled=not debug), _unimportable(*NOT_AT_START["jax"]):
            import jax

            _keep_compiled_steps(jax)
            if distribute:  # before JAX's first use: it fixes the devices and processes
                from mnist_seq import distribute as dist

                dist.start_jax(distribute)
            import keras  # noqa: F401

            devices = jax.devices()
        _keras_without_tensorflow()
    except ImportError:
        raise MnistSeqError("--backend jax needs JAX: pip install 'mnist-seq[jax]' (CPU) "
                            "or 'mnist-seq[jax-gpu]' (NVIDIA GPUs)") from None
    gpus = [d for d in devices if d.platform == "gpu"]
    if device == "gpu" and not gpus:
        raise MnistSeqError("--device gpu: JAX sees no GPU (pip install "
                            "'mnist-seq[jax-gpu]', and check the driver)")
    if gpus:
        return f"GPU ({', '.join(d.device_kind for d in gpus)})"
    return f"CPU ({os.cpu_count()} cores)"


# The JAX cache's most: about 0.4 MiB a config and batch shape, so a few thousand.
JAX_CACHE_BYTES = 1 << 30


def jax_cache_dir() -> Path | None:
    """Where JAX keeps the steps it compiled, between runs: $JAX_COMPILATION_CACHE_DIR,
    else under `cache_root()` in a folder of this JAX version and CPU (`machine.fingerprint`),
    since code compiled for one CPU's instructions must not run on another that shares the
    home folder. None when JAX_ENABLE_COMPILATION_CACHE is false."""
    if os.environ.get("JAX_ENABLE_COMPILATION_CACHE", "").lower() in ("0", "false", "no",
                                                                      "off"):
        return None
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    from importlib.metadata import version

    from mnist_seq.machine import fingerprint

    return cache_root() / "jax" / f"{version('jaxlib')}-{fingerprint()}"


def _keep_compiled_steps(jax) -> None:
    """Have XLA's compiled steps kept on disk (`jax_cache_dir`), so that a config's
    later runs skip compiling: on a 2-core Intel Xeon the time outside the epochs went
    from 7.5 to 4.0 s for the LSTM, 4.0 to 2.1 s for the MLP (docs/performance.md).
    Every step is kept, however quickly it compiled: the MLP's all compile in well
    under JAX's default threshold of a second. A cache that cannot be written or read
    only costs the compiling, so it is never an error."""
    folder = jax_cache_dir()
    if folder is None or jax.config.jax_compilation_cache_dir:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    if not os.access(folder, os.W_OK):
        return
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    # Kept to a size, the steps used longest ago going first: JAX's own eviction, which
    # locks the folder with filelock (in the jax extra; without it the cache grows).
    if ("JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ
            and importlib.util.find_spec("filelock") is not None):
        jax.config.update("jax_compilation_cache_max_size", JAX_CACHE_BYTES)
    warnings.filterwarnings("ignore", message="Error (reading|writing) persistent compilation")


def _keras_without_tensorflow() -> None:
    """Keras imports TensorFlow whenever it is installed (to seed it for tf.data, to check
    types when saving), which would cost a JAX run about 3 s it has no use for. Keras
    then runs as it does where TensorFlow is not installed (a JAX-only install)."""
    if "tensorflow" in sys.modules:
        return
    from keras.src.utils import module_utils  # no public switch for this

    lazy = getattr(module_utils, "tensorflow", None)
    if lazy is not None and getattr(lazy, "_available", None) is None:
        lazy._available = False


# Packages that Keras and TensorFlow import while they load, whenever they are installed,
# though a run has no use for them then: TensorFlow's LiteRT converter imports JAX (for
# converting JAX functions), Keras's image-gallery helper imports pyplot, TensorFlow's
# legacy Keras imports SciPy to check for sparse arrays, Keras's scikit-learn wrappers
# import scikit-learn (the `map` extra). Measured on a 2-core AMD EPYC (AVX2): about 1.2 s
# for JAX, 1.5 s for matplotlib and 0.2 s for SciPy of the 8 s that `import keras` took on
# TensorFlow (`python -X importtime -c "import keras"`); on a 2-core Intel Xeon, 0.6 s for
# scikit-learn of a JAX run's 1.1 s of `import keras`. Each can still be imported
# afterwards (the curves import matplotlib while the first epoch runs).
NOT_AT_START = {"tensorflow": ("jax", "matplotlib", "scipy", "sklearn"),
                "jax": ("matplotlib", "sklearn")}


@contextlib.contextmanager
def _unimportable(*packages: str):
    """`import PACKAGE` raises ImportError inside this block (Python's own rule for a None
    entry in sys.modules), so optional imports are skipped; afterwards it works again."""
    blocked = [p for p in packages if p not in sys.modules]
    for package in blocked:
        sys.modules[package] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for package in blocked:
            if package in sys.modules and sys.modules[package] is None:
                del sys.modules[package]


@contextlib.contextmanager
def quiet_stderr(enabled: bool = True):
    """Silence the C++ log lines TensorFlow prints while it loads (they ignore
    TF_CPP_MIN_LOG_LEVEL because they come before logging is set up)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def versions() -> dict[str, Any]:
    """Versions and thread settings a run needs to be repeated."""
    import keras
    import numpy

    facts = {"backend": name(), "python": platform.python_version(),
             "keras": keras.__version__, "numpy": numpy.__version__,
             "platform": platform.platform(), "cpu_count": os.cpu_count()}
    if name() == "jax":
        import jax
        import jaxlib

        return {**facts, "jax": jax.__version__, "jaxlib": jaxlib.__version__}
    import tensorflow as tf

    from mnist_seq import tf_speed

    return {**facts, "tensorflow": tf.__version__,
            # 0 means TensorFlow's default (as many as cores).
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "onednn": tf_speed.onednn_enabled()}
