"""Starting Keras: oneDNN asked for, op threads sized, what runs reported in the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mnist_seq import backend
from mnist_seq.errors import MnistSeqError
from mnist_seq.options import RuntimeOptions

CPU = RuntimeOptions(device="cpu")


def test_onednn_is_asked_for_unless_the_user_said_otherwise(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    backend.setup(CPU)
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    backend.setup(CPU)
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"


def test_setup_names_the_device_and_refuses_unknown_ones():
    assert backend.setup(CPU) == f"CPU ({os.cpu_count()} cores)"
    with pytest.raises(MnistSeqError, match=r"--device: got 'tpu', expected one of auto, cpu"):
        backend.setup(RuntimeOptions(device="tpu"))
    facts = backend.versions()
    assert facts["backend"] == "tensorflow" and facts["onednn"] in (True, False, None)


@pytest.mark.slow
def test_a_fresh_lstm_run_sizes_op_threads_and_reports_onednn_turned_off(data_dir, tmp_path):
    # TensorFlow reads both when it starts, so this needs a fresh process.
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "MNIST_SEQ_DATA": str(data_dir)}
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "mnist_seq", "train", "--model", "lstm-single",
         "--max-train-samples", "300", "--max-test-samples", "100", "--epochs", "1",
         "--device", "cpu", "--run-dir", str(run)],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)" in result.stdout
    intra = max(1, (os.cpu_count() or 2) // 2)
    assert f"2 ops at a time, {intra} thread" in result.stdout
    assert "Note: op threads left" not in result.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["onednn"] is False and metrics["backend"] == "tensorflow"
    assert (metrics["intra_op_threads"], metrics["inter_op_threads"]) == (intra, 2)


STARTS = r"""
import json, sys
from mnist_seq import backend
from mnist_seq.options import RuntimeOptions
backend.setup(RuntimeOptions(device="cpu", backend=sys.argv[1]))
loaded = sorted(p for p in ("jax", "matplotlib", "scipy", "tensorflow") if p in sys.modules)
import matplotlib.pyplot  # still importable once Keras is up
print(json.dumps(loaded))
"""


@pytest.mark.parametrize("name", ["tensorflow", "jax"])
def test_keras_starts_without_the_packages_it_would_load_for_nothing(name):
    pytest.importorskip(name)
    out = subprocess.run([sys.executable, "-c", STARTS, name], capture_output=True, text=True,
                         check=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    if name == "tensorflow":
        assert loaded == ["tensorflow"]
    else:
        assert "jax" in loaded and "matplotlib" not in loaded and "tensorflow" not in loaded
