"""Whole commands side by side: each contender's train command, alternating, in fresh
processes; medians and ranges of the wall time and of metrics.json's train_seconds.

    python scripts/ab_commands.py --repeats 3 \\
        "off=mnist-seq train --model cnn-fast" "on=mnist-seq train --model cnn-fast --snapshots"

A contender is LABEL=COMMAND; `--run-dir` with a fresh folder is added to each command.
A leading `mnist-seq` runs as this Python's `-m mnist_seq`, so `PYTHONPATH=TREE` before
the label's command (as `before=PYTHONPATH=/tmp/old mnist-seq train ...`) times another
checkout of the package. Needs MNIST_SEQ_DATA.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# mnist_seq's command line, from PYTHONPATH where it is set: the working folder (this
# checkout) would otherwise come first.
BOOT = """import os, runpy, sys
if os.environ.get("PYTHONPATH"):
    sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]
sys.argv[0] = "mnist-seq"
runpy.run_module("mnist_seq", run_name="__main__")"""


def run_once(command: str, run_dir: Path) -> tuple[float, dict]:
    """(wall seconds, metrics.json) of one command."""
    words = shlex.split(command)
    env = dict(os.environ)
    while words and "=" in words[0] and not words[0].startswith("-"):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if words[0] == "mnist-seq":
        words = [sys.executable, "-c", BOOT, *words[1:]]
    start = time.perf_counter()
    subprocess.run([*words, "--run-dir", str(run_dir)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return wall, json.loads((run_dir / "metrics.json").read_text())


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("contenders", nargs="+", metavar="LABEL=COMMAND")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    contenders = dict(c.split("=", 1) for c in args.contenders)
    seen: dict[str, list[tuple[float, dict]]] = {label: [] for label in contenders}
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            order = list(contenders) if repeat % 2 == 0 else list(contenders)[::-1]
            for label in order:
                seen[label].append(run_once(contenders[label],
                                            Path(root) / f"{label}-{repeat}"))
    from mnist_seq.machine import cpu

    print(f"CPU: {cpu().describe()}; {args.repeats} repeats, alternating")
    for label, results in seen.items():
        walls = [w for w, _ in results]
        trains = [m["train_seconds"] for _, m in results]
        scores = [m["phase_seconds"]["score"] for _, m in results]
        accuracy = statistics.median(m["test_accuracy"] for _, m in results)
        print(f"{label}: wall {spread(walls)}, training {spread(trains)}, test score "
              f"{spread(scores)}, test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
