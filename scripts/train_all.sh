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
  python3 -c "print(round($end - $start, 1))" > "$root/$name.wall-seconds"
done
python3 "$(dirname "$0")/results_table.py" "$root" ${configs[@]}
