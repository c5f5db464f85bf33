"""scripts/gpu_check.sh on a machine without a GPU: every run falls back to the CPU and
the table says so, one row per run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"


@pytest.mark.slow
def test_the_gpu_check_falls_back_to_the_cpu(data_dir, tmp_path):
    pytest.importorskip("jax")
    if shutil.which("awk") is None:
        pytest.skip("needs awk")
    bin_dir = str(Path(sys.executable).parent)  # this environment's mnist-seq
    done = subprocess.run(["bash", str(SCRIPT), "--quick", "--no-install", str(tmp_path)],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "MNIST_SEQ_DATA": str(data_dir),
                               "PATH": bin_dir + os.pathsep + os.environ["PATH"],
                               "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CPU" in (tmp_path / "doctor.txt").read_text()
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 6, done.stdout  # cnn-fast, mlp and lstm-single on two backends
    assert all("failed" not in r and "| CPU" in r for r in rows), done.stdout
    assert {r.split(" | ")[1] for r in rows} == {"tensorflow", "jax"}
