"""One process against two on this machine, the same config and global batch, on JAX.

    MNIST_SEQ_DATA=../shared/data/mnist python scripts/bench_distribute.py --model mlp \\
        --repeats 3

Alternates `mnist-seq train --backend jax --distribute` in one process with the same
command as two processes on localhost (`--num-processes 2`), each into a run folder
of its own under --root, and prints per repeat the wall time of the whole command,
the training seconds and samples/s (metrics.json) and the test accuracy, then the
medians and the median ratio two / one with its range. On a machine with N cores two
processes split them: the figure is the engine's cost (collectives, two start-ups),
not a gain.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mnist_seq.rundir import RunDir

# The server and browser helpers the tests use (tests/page.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from page import free_port  # noqa: E402

MNIST_SEQ = [sys.executable, "-m", "mnist_seq", "train", "--backend", "jax"]


def one(args: list[str], run_dir: Path) -> None:
    subprocess.run([*MNIST_SEQ, *args, "--distribute", "--run-dir", str(run_dir)], check=True,
                   stdout=subprocess.DEVNULL)


def two(args: list[str], run_dir: Path) -> None:
    port = free_port()
    procs = [subprocess.Popen([*MNIST_SEQ, *args, "--run-dir", str(run_dir), "--num-processes",
                               "2", "--process-id", str(i), "--coordinator",
                               f"localhost:{port}"], stdout=subprocess.DEVNULL)
             for i in (1, 0)]
    if any(p.wait() for p in procs):
        raise SystemExit("a two-process run failed")


def measure(run: Callable[[list[str], Path], None], args: list[str],
            run_dir: Path) -> dict[str, float]:
    start = time.perf_counter()
    run(args, run_dir)
    wall = time.perf_counter() - start
    metrics = RunDir(run_dir).read_metrics()
    return {"wall": wall, "train": metrics["train_seconds"],
            "samples_per_second": metrics["samples_per_second"],
            "test_accuracy": metrics["test_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", help="Where the run folders go (default: a temporary one).")
    parser.add_argument("extra", nargs="*", help="More `mnist-seq train` arguments.")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="bench-distribute-"))
    train_args = ["--model", args.model, "--device", "cpu", *args.extra]
    results: dict[str, list[dict[str, float]]] = {"one": [], "two": []}
    for i in range(args.repeats):
        order = [("one", one), ("two", two)]
        for name, run in order if i % 2 == 0 else order[::-1]:
            results[name].append(measure(run, train_args, root / f"{name}-{i}"))
        a, b = results["one"][-1], results["two"][-1]
        print(f"repeat {i + 1}: one process {a['wall']:.1f} s wall, {a['train']:.1f} s "
              f"training, test {a['test_accuracy']:.4f}; two processes {b['wall']:.1f} s, "
              f"{b['train']:.1f} s, test {b['test_accuracy']:.4f}", flush=True)
    for key in ("wall", "train", "samples_per_second", "test_accuracy"):
        a = [r[key] for r in results["one"]]
        b = [r[key] for r in results["two"]]
        ratios = [y / x for x, y in zip(a, b, strict=True)]
        print(f"{key}: one {statistics.median(a):.4g} ({min(a):.4g}-{max(a):.4g}), two "
              f"{statistics.median(b):.4g} ({min(b):.4g}-{max(b):.4g}), two / one "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
    (root / "bench-distribute.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
