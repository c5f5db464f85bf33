#!/usr/bin/env bash
# Regenerate the README's pictures (scripts/figures/) from full runs made by
# scripts/train_all.sh, plus a one-epoch CNN run that keeps its initial weights.
# Usage: scripts/make_figures.sh [RUNS_ROOT]   (needs MNIST_SEQ_DATA or the Keras cache)
set -euo pipefail
root=${1:-runs/final}
out=$(dirname "$0")/figures
mkdir -p "$out"
cnn=runs/figures-cnn-1epoch
[ -d "$cnn" ] || mnist-seq train --model cnn --epochs 1 --run-dir "$cnn"
mnist-seq inspect "$root/lstm" "$root/lstm-single" --index 3
mnist-seq inspect "$cnn" --index 3
mnist-seq inspect "$root/mlp" --index 3
mnist-seq evaluate "$root/cnn" > /dev/null
cp "$root/lstm/curves.png" "$out/lstm-curves.png"
cp "$root/lstm/inspect/lstm-reading-test3.png" "$root/lstm/inspect/lstm-reading-test3.gif" \
   "$root/lstm/inspect/rows-read-accuracy.png" "$out/"
cp "$cnn/inspect/cnn-filters.png" "$cnn/inspect/cnn-feature-maps-test3.png" "$out/"
cp "$root/mlp/inspect/mlp-units-test3.png" "$out/"
cp "$root/cnn/confusion.png" "$out/cnn-confusion.png"
cp "$root/cnn/worst-errors.png" "$out/cnn-worst-errors.png"
ls -la "$out"
