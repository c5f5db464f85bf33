"""Where a whole `mnist-seq train` command spends its time outside its steady epochs.

    MNIST_SEQ_DATA=../shared/data/mnist python scripts/phases.py --model lstm --epochs 3

Runs the command (each config in turn, --repeats times), then reads the run's
metrics.json (`phase_seconds`, written by training itself) and history: start-up
(Python, mnist-seq, the config: the wall time before the data is read), the data,
Keras and its device, the plan and compilation, the run folder, model.fit's time
outside its epochs, the first epoch's extra over a steady one (tracing), saving, the
test score, the curves. "Outside steady epochs" is the wall time minus epochs x the
median epoch after the first. Prints a Markdown table (medians) and the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = [("start-up", None), ("data", "data"), ("Keras and device", "keras"),
          ("plan and compile", "compile"), ("run folder", "start"),
          ("fit outside its epochs", None), ("first epoch's extra", None),
          ("save model.keras", "save"), ("test score", "score"), ("curves", "curves")]


def one_run(model: str, epochs: int, extra: list[str]) -> dict[str, float]:
    """The phases of one whole command, in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mnist_seq", "train", "--model", model,
                        "--epochs", str(epochs), "--run-dir", str(run), *extra],
                       check=True, capture_output=True)
        wall = time.perf_counter() - start
        metrics = json.loads((run / "metrics.json").read_text())
        epochs_s = [row["seconds"] for row in json.loads((run / "history.json").read_text())]
    phases = metrics["phase_seconds"]
    steady = statistics.median(epochs_s[1:])
    out = {name: phases[key] for name, key in PHASES if key}
    out["fit outside its epochs"] = phases["fit"] - sum(epochs_s)
    out["first epoch's extra"] = epochs_s[0] - steady
    out["start-up"] = wall - sum(phases.values())  # metrics.json and exit included
    out["steady epoch"] = steady
    out["outside steady epochs"] = wall - len(epochs_s) * steady
    out["wall"] = wall
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=None,
                        help="bundled config (repeatable; default lstm, cnn, mlp)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args, extra = parser.parse_known_args()
    from mnist_seq.machine import cpu

    models = args.model or ["lstm", "cnn", "mlp"]
    runs = {m: [] for m in models}
    for _ in range(args.repeats):  # the configs take turns
        for m in models:
            runs[m].append(one_run(m, args.epochs, extra))
    table = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    print(f"CPU: {cpu().describe()}; {args.epochs} epochs, median of {args.repeats}\n")
    print("| phase, seconds | " + " | ".join(models) + " |")
    print("|---|" + "---:|" * len(models))
    for name in [n for n, _ in PHASES] + ["outside steady epochs", "steady epoch", "wall"]:
        print(f"| {name} | " + " | ".join(f"{table[m][name]:.1f}" for m in models) + " |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu().as_dict(), "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
