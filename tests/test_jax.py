"""The JAX backend through every command, each in a process of its own (Keras picks its
backend once per process; this test process runs TensorFlow): train, evaluate, predict,
inspect, resume after a kill, Ctrl-C, divergence, determinism, and models that score
the same under either backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import SMOKE, run
from test_robustness import assert_complete_run, follow, wait_for_epochs

pytest.importorskip("jax", reason="pip install 'mnist-seq[jax]'")


def jax_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`mnist-seq COMMAND ... --backend jax` in a fresh process."""
    out = subprocess.run([sys.executable, "-m", "mnist_seq", *args, "--backend", "jax"],
                         capture_output=True, text=True)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_unknown_backends_are_one_line(tmp_path):
    from click.testing import CliRunner

    from mnist_seq.cli import cli

    result = CliRunner().invoke(cli, ["train", "--backend", "torch"])
    assert result.exit_code == 2 and "'torch' is not one of 'tensorflow', 'jax'" in result.output
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    out = subprocess.run([sys.executable, "-m", "mnist_seq", "train", "--model", "mlp",
                          "--run-dir", str(tmp_path / "never")], capture_output=True, text=True,
                         env=env)
    assert out.returncode != 0 and out.stderr.strip() == (
        "Error: KERAS_BACKEND: got 'torch', expected one of tensorflow, jax")
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn", "lstm"])
def test_every_command_on_jax_and_the_same_scores_on_tensorflow(model, data_dir, tmp_path):
    run_dir = tmp_path / model
    out = jax_cli("train", "--model", model, *SMOKE, "--data-dir", str(data_dir),
                  "--run-dir", str(run_dir))
    assert "Speed: JAX, precision float32" in out.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["backend"] == "jax" and "jax" in metrics and "tensorflow" not in metrics

    on_jax = json.loads(jax_cli("evaluate", str(run_dir), "--data-dir", str(data_dir),
                                "--max-test-samples", "500", "--json").stdout)
    assert on_jax["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    digits = tmp_path / "digits.npy"
    np.save(digits, _test_digits(data_dir))
    jax_probs = _probabilities(jax_cli("predict", str(run_dir), str(digits), "--json").stdout)
    inspected = jax_cli("inspect", str(run_dir), "--data-dir", str(data_dir), "--map-digits",
                        "300").stdout
    assert "saliency-test0.png" in inspected and "digit-map.png" in inspected  # JAX's grad
    assert inspected.count("Wrote ") >= 2 and all(
        Path(line.split("Wrote ", 1)[1]).stat().st_size > 0
        for line in inspected.splitlines() if line.startswith("Wrote "))

    # The model trained on JAX, read by TensorFlow (this process).
    result = run("evaluate", str(run_dir), "--data-dir", str(data_dir), "--max-test-samples",
                 "500", "--json")
    assert result.exit_code == 0, result.output
    on_tf = json.loads(result.output)
    assert on_tf["accuracy"] == on_jax["accuracy"]
    assert on_tf["loss"] == pytest.approx(on_jax["loss"], rel=1e-4)
    result = run("predict", str(run_dir), str(digits), "--json")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(_probabilities(result.output), jax_probs, atol=1e-5)


@pytest.mark.slow
def test_a_tensorflow_model_predicts_the_same_on_jax(data_dir, tmp_path):
    run_dir = tmp_path / "tf-lstm"
    result = run("train", "--model", "lstm-single", *SMOKE, "--data-dir", str(data_dir),
                 "--run-dir", str(run_dir))
    assert result.exit_code == 0, result.output
    digits = tmp_path / "digits.npy"
    np.save(digits, _test_digits(data_dir))
    result = run("predict", str(run_dir), str(digits), "--json")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(
        _probabilities(jax_cli("predict", str(run_dir), str(digits), "--json").stdout),
        _probabilities(result.output), atol=1e-5)


def test_a_jax_run_never_imports_tensorflow(data_dir, tmp_path):
    code = ("import sys; from mnist_seq.cli import cli\n"
            f"try: cli(['train', '--backend', 'jax', '--model', 'mlp', '--epochs', '1', "
            f"'--max-train-samples', '200', '--max-test-samples', '100', '--data-dir', "
            f"{str(data_dir)!r}, '--run-dir', {str(tmp_path / 'run')!r}])\n"
            "except SystemExit as e: assert not e.code, e.code\n"
            "print('tensorflow' in sys.modules, 'jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False True"


@pytest.mark.slow
def test_killed_then_resumed_on_jax(data_dir, tmp_path):
    run_dir = tmp_path / "killed"
    args = ["train", "--model", "lstm", "--set", "model.units=[32]", "--max-train-samples",
            "4000", "--batch-size", "16", "--epochs", "3", "--max-test-samples", "300",
            "--device", "cpu", "--backend", "jax", "--data-dir", str(data_dir)]
    proc = subprocess.Popen([sys.executable, "-m", "mnist_seq", *args, "--run-dir",
                             str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    wait_for_epochs(run_dir, 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()
    # Neither --backend nor --data-dir: the run goes on with what it started on.
    out = subprocess.run([sys.executable, "-m", "mnist_seq", "train", "--resume", str(run_dir)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "Resuming" in out.stdout, out.stdout + out.stderr
    assert_complete_run(run_dir, 3)
    assert json.loads((run_dir / "metrics.json").read_text())["backend"] == "jax"

    # Ctrl-C: stops after the batch, says how to resume, exit 130.
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "mnist_seq", *args, "--run-dir",
                             str(stopped)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    wait_for_epochs(stopped, 1, proc)
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, text
    assert f"Resume with: mnist-seq train --resume {stopped}" in text and "Traceback" not in text
    out = follow(text, "Resume with: ")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads((stopped / "metrics.json").read_text())["backend"] == "jax"


@pytest.mark.slow
def test_divergence_and_determinism_on_jax(data_dir, tmp_path):
    # Enough batches for the epoch's mean loss to leave the first batches' 2.3 behind.
    out = jax_cli("train", "--model", "mlp", *SMOKE, "--max-train-samples", "3000",
                  "--learning-rate", "1e3", "--data-dir", str(data_dir), "--run-dir",
                  str(tmp_path / "diverged"), check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("Error: training diverged: the loss became ")
    histories = []
    for name in ("one", "two"):
        jax_cli("train", "--model", "cnn", *SMOKE, "--epochs", "2", "--seed", "5",
                "--deterministic", "--data-dir", str(data_dir), "--run-dir",
                str(tmp_path / name))
        rows = json.loads((tmp_path / name / "history.json").read_text())
        histories.append([{k: v for k, v in r.items() if k != "seconds"} for r in rows])
    assert histories[0] == histories[1]


def test_missing_data_is_said_before_a_missing_device(tmp_path):
    # The data is read while the backend loads; its error still comes first.
    out = jax_cli("train", "--model", "mlp", "--device", "gpu", "--data-dir",
                  str(tmp_path / "none"), "--run-dir", str(tmp_path / "run"), check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("Error: data path from --data-dir does not exist")
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("given", [None, "12345678"])
def test_the_compiled_steps_are_kept_to_a_size(tmp_path, given):
    """The cache evicts the steps used longest ago past JAX_CACHE_BYTES, unless the user
    set JAX's own limit."""
    code = ("from mnist_seq import backend; from mnist_seq.options import RuntimeOptions; "
            "backend.setup(RuntimeOptions(backend='jax')); import jax; "
            "print(jax.config.jax_compilation_cache_max_size, backend.JAX_CACHE_BYTES)")
    env = {**os.environ, "MNIST_SEQ_CACHE": str(tmp_path)}
    env.pop("JAX_COMPILATION_CACHE_MAX_SIZE", None)
    if given:
        env["JAX_COMPILATION_CACHE_MAX_SIZE"] = given
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out[0] == (given or out[1]) and int(out[1]) > 0


def test_compiled_steps_are_kept_between_runs(data_dir, tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "MNIST_SEQ_CACHE": str(cache)}

    def train(name: str, environ: dict) -> tuple[list, dict]:
        out = subprocess.run([sys.executable, "-m", "mnist_seq", "train", "--model", "mlp",
                              *SMOKE, "--backend", "jax", "--data-dir", str(data_dir),
                              "--run-dir", str(tmp_path / name)],
                             capture_output=True, text=True, env=environ)
        # Quietly: a failing cache says nothing (JAX would warn about every step).
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Traceback" not in out.stderr and "cache" not in out.stderr.lower(), out.stderr
        rows = json.loads((tmp_path / name / "history.json").read_text())
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        return ([{k: v for k, v in r.items() if k != "seconds"} for r in rows],
                {k: metrics[k] for k in ("test_loss", "test_accuracy")})

    first = train("cold", env)
    [folder] = (cache / "jax").iterdir()

    def kept() -> dict[str, int]:
        return {f.name: f.stat().st_mtime_ns for f in folder.glob("*-cache")}

    steps = kept()
    assert steps
    # Every step of the second run comes from the cache (none is compiled and written
    # again), and it trains to the same figures.
    assert train("warm", env) == first
    assert kept() == steps
    # Damaged steps are compiled again, quietly, to the same figures.
    for name in steps:
        (folder / name).write_bytes(b"not a compiled step")
    assert train("damaged", env) == first
    # A cache that cannot be made, or is turned off, only costs the compiling.
    a_file = str(tmp_path / "damaged" / "config.yaml")
    assert train("unwritable", {**env, "MNIST_SEQ_CACHE": a_file}) == first
    assert train("off", {**env, "MNIST_SEQ_CACHE": str(tmp_path / "off-cache"),
                         "JAX_ENABLE_COMPILATION_CACHE": "false"}) == first
    assert not (tmp_path / "off-cache").exists()


def _test_digits(data_dir: Path) -> np.ndarray:
    from mnist_seq.data import load_mnist

    return load_mnist(data_dir).x_test[:5]


def _probabilities(predict_json: str) -> np.ndarray:
    """Each input's top-3 classes and probabilities, from `predict --json`."""
    return np.array([[(t["class"], t["probability"]) for t in r["top"]]
                     for r in json.loads(predict_json)])


STACK_ON_JAX = r"""
import numpy as np, jax, jax.numpy as jnp, keras
from mnist_seq.config import validate
from mnist_seq.lstm_rows import step_layers_together
from mnist_seq.models import build_model
cfg = validate({"model": {"type": "lstm", "units": [16, 12, 8], "dropout": 0.25,
                          "l2_last": 1e-3}})["model"]
keras.utils.set_random_seed(0)
keras_lstm, stepped = build_model(cfg), build_model(cfg)
stepped.set_weights(keras_lstm.get_weights())
assert step_layers_together(stepped, "jax")
x = np.random.default_rng(0).random((8, 28, 28), dtype=np.float32)
trainable = [v.value for v in keras_lstm.trainable_variables]
others = [v.value for v in keras_lstm.non_trainable_variables]  # the dropout seeds

def outputs(model, training):
    def loss(weights):
        out, _ = model.stateless_call(weights, others, x, training=training)
        return jnp.sum(out * jnp.arange(10.0)), out
    return jax.grad(loss, has_aux=True)(trainable)

(keras_grads, expected), (grads, out) = outputs(keras_lstm, True), outputs(stepped, True)
np.testing.assert_allclose(out, expected, atol=1e-6)
for g, k in zip(grads, keras_grads, strict=True):
    np.testing.assert_allclose(g, k, atol=1e-5)
assert not np.allclose(out, outputs(stepped, False)[1])  # dropout on when training
np.testing.assert_array_equal(outputs(stepped, False)[1], outputs(keras_lstm, False)[1])
assert not step_layers_together(build_model({**cfg, "units": [16]}), "jax")
print("same")
"""


def test_stacked_lstms_train_in_one_scan_as_keras_trains_them():
    """On JAX the stack trains in one scan over the rows, the layers a row apart: Keras's
    outputs (the same dropout masks) and gradients to rounding; inference is Keras's."""
    out = subprocess.run([sys.executable, "-c", STACK_ON_JAX], capture_output=True, text=True,
                         env={**os.environ, "KERAS_BACKEND": "jax"})
    assert out.returncode == 0 and out.stdout.strip().endswith("same"), out.stderr[-3000:]
