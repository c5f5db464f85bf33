"""Exported files against Keras, side by side on this CPU.

    python scripts/bench_export.py RUN_DIR [RUN_DIR...] [--calls 1000] [--cold 5]

For each run (exported first with `mnist-seq export RUN --format onnx --format litert`,
with and without --quantize) and each file in RUN/export/export.json: file size, test
accuracy (from the export's check), latency of one digit (median and p99 over --calls
calls) and throughput at batch 256 (median of 5 rounds, with its range), Keras's
model.keras measured the same way. The contenders take turns, round by round. With
--cold N, also the whole `mnist-seq predict` command on model.keras and on
export/model.onnx, alternated N times (median wall and range). Prints a Markdown table
and the CPU; --json writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROUNDS = 5


def contenders(run: Path) -> dict[str, tuple]:
    """name -> (call on float inputs, size in bytes, test accuracy) for Keras and each file."""
    from mnist_seq.evaluation import load_model
    from mnist_seq.runtime import Exported, read_record

    model = load_model(run / "model.keras")
    metrics = json.loads((run / "metrics.json").read_text())
    found = {"keras": (lambda x: np.asarray(model.predict_on_batch(x)),
                       (run / "model.keras").stat().st_size, metrics["test_accuracy"],
                       tuple(model.inputs[0].shape[1:]))}
    for entry in read_record(run / "export"):
        if entry["format"] in ("onnx", "litert"):
            exported = Exported(run / "export" / entry["file"])
            found[entry["file"]] = (exported.raw, entry["bytes"], entry["accuracy"],
                                    exported.input_shape)
    return found


def measure(found: dict[str, tuple], images: np.ndarray, calls: int) -> dict[str, dict]:
    """Latency at batch 1 and throughput at batch 256, the contenders taking turns."""
    from mnist_seq.runtime import fit_shape

    single = {n: [] for n in found}
    rates = {n: [] for n in found}
    for _ in range(ROUNDS):
        for name, (call, _, _, shape) in found.items():
            one = fit_shape(images[:1], shape)
            batch = fit_shape(images[:256], shape)
            call(one), call(batch)  # warm
            for _ in range(calls // ROUNDS):
                start = time.perf_counter()
                call(one)
                single[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(4):
                call(batch)
            rates[name].append(4 * 256 / (time.perf_counter() - start))
    return {name: {"bytes": found[name][1], "test_accuracy": found[name][2],
                   "latency_ms_median": 1000 * statistics.median(single[name]),
                   "latency_ms_p99": 1000 * float(np.percentile(single[name], 99)),
                   "per_second_median": statistics.median(rates[name]),
                   "per_second_range": [min(rates[name]), max(rates[name])]}
            for name in found}


def cold_starts(run: Path, times: int, image: Path) -> dict[str, dict]:
    """The whole `mnist-seq predict` command on the .keras model and on the .onnx file."""
    walls = {"model.keras": [], "model.onnx": []}
    targets = {"model.keras": run, "model.onnx": run / "export" / "model.onnx"}
    for _ in range(times):
        for name, target in targets.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mnist_seq", "predict", str(target), str(image)],
                           check=True, capture_output=True)
            walls[name].append(time.perf_counter() - start)
    return {name: {"wall_s_median": statistics.median(w), "wall_s_range": [min(w), max(w)]}
            for name, w in walls.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--cold", type=int, default=0, metavar="N")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from mnist_seq import backend
    from mnist_seq.data import load_mnist
    from mnist_seq.machine import cpu

    backend.setup()
    images = load_mnist().x_test[:256]
    record = {"cpu": cpu().as_dict(), "runs": {}}
    print(f"CPU: {cpu().describe()}\n")
    print("| run | file | size | test accuracy | latency, 1 digit (median / p99) | "
          "digits/s at batch 256 (median, range) |")
    print("|---|---|---:|---:|---:|---:|")
    for run in args.runs:
        figures = measure(contenders(run), images, args.calls)
        record["runs"][run.name] = {"files": figures}
        for name, f in figures.items():
            low, high = f["per_second_range"]
            print(f"| {run.name} | {name} | {f['bytes'] / 1024:.0f} KB | "
                  f"{f['test_accuracy']:.2%} | {f['latency_ms_median']:.2f} / "
                  f"{f['latency_ms_p99']:.2f} ms | {f['per_second_median']:,.0f} "
                  f"({low:,.0f}-{high:,.0f}) |")
    if args.cold:
        with tempfile.TemporaryDirectory() as tmp:
            image = Path(tmp) / "digit.npy"
            np.save(image, images[:1])
            for run in args.runs:
                cold = cold_starts(run, args.cold, image)
                record["runs"][run.name]["cold_predict"] = cold
                k, o = cold["model.keras"]["wall_s_median"], cold["model.onnx"]["wall_s_median"]
                print(f"\n{run.name}: `mnist-seq predict` cold, median of {args.cold}: "
                      f"model.keras {k:.2f} s, export/model.onnx {o:.2f} s ({k / o:.1f}x)")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
