"""Print the README results table from run folders made by scripts/train_all.sh.

Usage: python scripts/results_table.py RUNS_ROOT [CONFIG...]
"""

import json
import sys
from pathlib import Path

root = Path(sys.argv[1])
names = sys.argv[2:] or ["mlp", "cnn", "lstm-single", "lstm"]
print("| config | test accuracy | epochs | train time (s) | wall time of the command (s) |")
print("|---|---|---|---|---|")
for name in names:
    metrics = json.loads((root / name / "metrics.json").read_text())
    wall = (root / name / "wall_seconds.txt").read_text().strip()
    print(f"| {name} | {100 * metrics['test_accuracy']:.2f}% | {metrics['epochs']} "
          f"| {metrics['train_seconds']:.0f} | {wall} |")
