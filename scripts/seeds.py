"""Train bundled configs with several seeds and report test accuracy as mean and spread.

    python scripts/seeds.py                       # every seed config, seeds 0-4
    python scripts/seeds.py --configs cnn,mlp --seeds 0-2 --root runs/seeds --write docs/results.md

Each (config, seed) is a normal run folder, ROOT/CONFIG/seed-N, trained with
`mnist-seq train --model CONFIG --seed N`; a finished one is reused and an
unfinished one resumed, so the command can be stopped and run again. The test
figure is the final model's (the last epoch's), scored once. Needs MNIST_SEQ_DATA.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mnist_seq.rundir import RunDir

# The seed examples' reported test accuracies.
TARGETS = {"mlp": 0.977, "cnn": 0.990, "lstm-single": 0.984, "lstm": 0.986}
# A seed may fall this far below the target (the mean may not).
SLACK = 0.0015


def seed_list(text: str) -> list[int]:
    """'0-4' or '0,3,7'."""
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(s) for s in text.split(",")]


def train(name: str, seed: int, root: Path) -> dict:
    """One seed's run (trained, resumed or reused) as a row of figures."""
    run = RunDir(root / name / f"seed-{seed}")
    wall_file = root / name / f"seed-{seed}.wall-seconds"
    if not run.finished:
        args = (["--resume", str(run.path)] if run.resumable else
                ["--model", name, "--seed", str(seed), "--run-dir", str(run.path)])
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mnist_seq", "train", *args], check=True)
        wall_file.write_text(f"{time.perf_counter() - start:.1f}\n")
    metrics = run.read_metrics()
    return {"config": name, "seed": seed, "test_accuracy": metrics["test_accuracy"],
            "best_val_accuracy": metrics["best_val_accuracy"], "epochs": metrics["epochs"],
            "train_seconds": metrics["train_seconds"],
            "wall_seconds": float(wall_file.read_text()) if wall_file.is_file() else None}


def summary_table(rows: list[dict], names: list[str]) -> list[str]:
    lines = ["| config | test accuracy, mean ± sd | min | max | seeds | target | meets it |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        acc = [r["test_accuracy"] for r in rows if r["config"] == name]
        mean, sd = statistics.mean(acc), statistics.stdev(acc) if len(acc) > 1 else 0.0
        target = TARGETS.get(name)
        meets = "-" if target is None else \
            ("yes" if mean >= target and min(acc) >= target - SLACK else "no")
        lines.append(f"| `{name}` | {100 * mean:.2f}% ± {100 * sd:.2f} | {100 * min(acc):.2f}% "
                     f"| {100 * max(acc):.2f}% | {len(acc)} | "
                     f"{'-' if target is None else f'{100 * target:.1f}%'} | {meets} |")
    return lines


def seed_table(rows: list[dict]) -> list[str]:
    lines = ["| config | seed | test accuracy | best validation accuracy | epochs "
             "| train time (s) | wall time (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        wall = "-" if r["wall_seconds"] is None else f"{r['wall_seconds']:.1f}"
        lines.append(f"| `{r['config']}` | {r['seed']} | {100 * r['test_accuracy']:.2f}% "
                     f"| {100 * r['best_val_accuracy']:.2f}% | {r['epochs']} "
                     f"| {r['train_seconds']:.0f} | {wall} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="mlp,cnn,lstm-single,lstm")
    parser.add_argument("--seeds", default="0-4", help="0-4 or 0,3,7")
    parser.add_argument("--root", default="runs/seeds", help="where the run folders go")
    parser.add_argument("--write", metavar="FILE", help="also write both tables, as Markdown")
    args = parser.parse_args()
    names, seeds, root = args.configs.split(","), seed_list(args.seeds), Path(args.root)
    rows = [train(name, seed, root) for name in names for seed in seeds]
    summary, per_seed = summary_table(rows, names), seed_table(rows)
    print("\n".join(["", *summary, "", *per_seed]))
    if args.write:
        command = "python scripts/seeds.py " + " ".join(sys.argv[1:])
        Path(args.write).write_text("\n".join([
            "# Results over seeds", "",
            "Test accuracy of each bundled config trained in full with each seed, scored "
            "once on the 10,000 test images with the final model (the last epoch's). "
            "The times are not speed figures: the runs shared the machine with other "
            "work, or waited paused (see [performance.md](performance.md) for speed). "
            "Produced by:", "", "```bash", f"MNIST_SEQ_DATA=../shared/data/mnist {command}",
            "```", "", *summary, "", "Per seed:", "", *per_seed, ""]))
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
