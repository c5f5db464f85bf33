"""The benchmark script runs end to end on a tiny slice (its figures are not checked here:
speed is measured by running the script, never by a timed test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_runs_on_a_tiny_slice(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "MNIST_SEQ_DATA": str(data_dir)}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--configs", "mlp", "--samples",
         "400", "--epochs", "2", "--repeats", "1", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| mlp | steady samples/s |" in result.stdout
    data = json.loads(out.read_text())
    mlp = data["configs"]["mlp"]
    assert {"mnist-seq", "mnist-seq-jax", "keras"} <= set(mlp)
    for who in mlp.values():
        assert who["steady"] > 0 and who["end_to_end"] > 0 and who["rss_mib"] > 50
    # One repeat: each ratio is that repeat's own.
    ratio = data["ratios"]["mlp"]["steady: mnist-seq / keras"]
    assert ratio == pytest.approx(mlp["mnist-seq"]["steady"] / mlp["keras"]["steady"])
    ratio = data["ratios"]["mlp"]["end_to_end: mnist-seq-jax / mnist-seq"]
    assert ratio == pytest.approx(mlp["mnist-seq-jax"]["end_to_end"]
                                  / mlp["mnist-seq"]["end_to_end"])
    assert 0 < data["extras"]["help_seconds"] < 30
    # Every epoch of every repeat is kept: two epochs, one repeat, per contender.
    assert all(len(reps) == 1 and len(reps[0]) == 2
               for reps in data["epoch_seconds"]["mlp"].values())
