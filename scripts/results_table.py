"""Print the README results table from run folders made by scripts/train_all.sh.

Usage: python scripts/results_table.py RUNS_ROOT [CONFIG...]
"""

import sys
from pathlib import Path

from mnist_seq.rundir import RunDir

root = Path(sys.argv[1])
names = sys.argv[2:] or ["mlp", "cnn", "lstm-single", "lstm"]
print("| config | test accuracy | epochs | train time (s) | wall time of the command (s) |")
print("|---|---|---|---|---|")
for name in names:
    metrics = RunDir(root / name).read_metrics()
    wall = (root / f"{name}.wall-seconds").read_text().strip()  # written by train_all.sh
    print(f"| {name} | {100 * metrics['test_accuracy']:.2f}% | {metrics['epochs']} "
          f"| {metrics['train_seconds']:.0f} | {wall} |")
