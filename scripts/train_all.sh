#!/usr/bin/env bash
# Train every seed config in full on real MNIST, one after the other, and print
# the README results table (test accuracy, wall time of the whole command).
# Usage: scripts/train_all.sh [RUNS_ROOT] [CONFIG...]   (needs MNIST_SEQ_DATA or the Keras cache)
set -euo pipefail
root=${1:-runs/full}
shift || true
configs=("${@:-mlp cnn lstm-single lstm}")
for name in ${configs[@]}; do
  start=$(date +%s.%N)
  mnist-seq train --model "$name" --runs-root "$root" --run-dir "$root/$name"
  end=$(date +%s.%N)
  python3 -c "print(round($end - $start, 1))" > "$root/$name/wall_seconds.txt"
done
python3 - "$root" ${configs[@]} <<'PY'
import json, sys
root, names = sys.argv[1], sys.argv[2:]
print("| config | test accuracy | epochs | train time (s) | wall time of the command (s) |")
print("|---|---|---|---|---|")
for n in names:
    m = json.load(open(f"{root}/{n}/metrics.json"))
    wall = open(f"{root}/{n}/wall_seconds.txt").read().strip()
    print(f"| {n} | {100 * m['test_accuracy']:.2f}% | {m['epochs']} | {m['train_seconds']:.0f} | {wall} |")
PY
