#!/usr/bin/env bash
# The GPU check, in one go: install the GPU extras, then `mnist-seq doctor`, the
# cnn-fast recipe, and one epoch of each seed config on TensorFlow and on JAX, printed
# as one Markdown table (device, test accuracy, epoch seconds, whole command).
#
#   scripts/gpu_check.sh [--quick] [--no-install] [OUT_DIR]
#
# --quick trains on 600 samples and leaves out cnn and lstm (a check of the script
# itself, two minutes on a CPU);
# --no-install uses the mnist-seq already on PATH. Without a GPU every run falls back
# to the CPU and the table says so. The data: $MNIST_SEQ_DATA, else ../shared/data/mnist.
set -euo pipefail

quick=0 install=1 out=""
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --no-install) install=0 ;;
    -*) echo "unknown option: $arg" >&2; exit 2 ;;
    *) out="$arg" ;;
  esac
done
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${out:-$(mktemp -d)}"
export MNIST_SEQ_DATA="${MNIST_SEQ_DATA:-$root/../shared/data/mnist}"
mkdir -p "$out"

if [ "$install" = 1 ]; then
  python3 -m venv "$out/venv"
  "$out/venv/bin/pip" install -q -e "$root[gpu,jax-gpu]"
  PATH="$out/venv/bin:$PATH"
fi

mnist-seq doctor | tee "$out/doctor.txt"
slice=()
models=(mlp cnn lstm-single lstm)
if [ "$quick" = 1 ]; then
  slice=(--max-train-samples 600 --max-test-samples 500)
  models=(mlp lstm-single)
fi

runs=()
train() {  # NAME BACKEND ARGS...: one whole command, timed, its run folder kept
  local name="$1" backend="$2"; shift 2
  local start end
  start=$(date +%s.%N)
  if timeout 600 mnist-seq train --backend "$backend" --run-dir "$out/$name-$backend" \
      "${slice[@]}" "$@" > "$out/$name-$backend.log" 2>&1; then
    end=$(date +%s.%N)
    awk "BEGIN { print $end - $start }" > "$out/$name-$backend/wall"
  else
    echo "failed: $name on $backend (see $out/$name-$backend.log)" >&2
  fi
  runs+=("$out/$name-$backend")
}

for backend in tensorflow jax; do
  train cnn-fast "$backend" --model cnn-fast
  for model in "${models[@]}"; do
    train "$model" "$backend" --model "$model" --epochs 1
  done
done

python3 - "${runs[@]}" <<'EOF'
import json, sys
from pathlib import Path
print("\n| run | backend | device | test accuracy | epoch seconds | whole command |")
print("|---|---|---|---:|---:|---:|")
for folder in map(Path, sys.argv[1:]):
    name, _, backend = folder.name.rpartition("-")
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        print(f"| {name} | {backend} | failed | | | |")
        continue
    m = json.loads(metrics.read_text())
    wall = float((folder / "wall").read_text())
    epochs = [r["seconds"] for r in json.loads((folder / "history.json").read_text())]
    print(f"| {name} | {backend} | {m['device']} | {m['test_accuracy']:.2%} | "
          f"{', '.join(f'{s:.1f}' for s in epochs)} | {wall:.1f} s |")
EOF
