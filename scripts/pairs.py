"""Time two shell commands side by side: A, B, A, B... and report the ratio per pair.

    python scripts/pairs.py --pairs 5 "mnist-seq train --model cnn-fast --run-dir runs/a-{i}" \\
        "cd ../old && mnist-seq train --model cnn-fast --run-dir /tmp/b-{i}"

`{i}` in a command becomes the pair's number, so each run can have its own folder.
The order flips every pair (A first, then B first), so a drift in the machine's
speed hits both alike. Prints every wall time, then the medians, the median of the
per-pair ratios B / A (how many times faster A is) and their range.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time


def timed(command: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    from mnist_seq.machine import cpu

    print(f"CPU: {cpu().describe()}", flush=True)  # the figures below are this CPU's
    walls: dict[str, list[float]] = {"A": [], "B": []}
    for i in range(args.pairs):
        order = [("A", args.a), ("B", args.b)]
        for who, command in order if i % 2 == 0 else order[::-1]:
            walls[who].append(timed(command.format(i=i)))
        print(f"pair {i + 1}: A {walls['A'][-1]:.1f} s, B {walls['B'][-1]:.1f} s", flush=True)
    ratios = [b / a for a, b in zip(walls["A"], walls["B"], strict=True)]
    print(f"A: median {statistics.median(walls['A']):.1f} s "
          f"({min(walls['A']):.1f}-{max(walls['A']):.1f})")
    print(f"B: median {statistics.median(walls['B']):.1f} s "
          f"({min(walls['B']):.1f}-{max(walls['B']):.1f})")
    print(f"B / A per pair: median {statistics.median(ratios):.2f} "
          f"({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
