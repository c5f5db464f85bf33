"""A/B speed of training settings, alternating in fresh processes (medians per epoch).

    python scripts/ab.py mlp --samples 30000 --epochs 9 --repeats 3 spe=16 spe=64 spe=64,xla=1

A variant is comma-separated key=value: backend (tensorflow or jax), spe (steps
per execution), prec (Keras dtype policy), xla (0/1; JAX without it runs eagerly,
so it defaults to 1 there), unroll (0/1, LSTMs), batch, threads (intra:inter op
threads), onednn (0/1, TF_ENABLE_ONEDNN_OPTS), fused (0/1, one op per optimizer
update), graph (0/1, each epoch in one call on batches sliced in the graph), vbatch
(validation batch size, default the training batch), rewrites (light: TensorFlow's
heavy graph rewrites off, tf_speed.HEAVY_REWRITES; idle: the passes that leave
the arithmetic as it is off, tf_speed.IDLE_REWRITES; off: no Grappler at all).
unroll=1 unrolls for training only (tf_speed.unroll_for_training); fusedlstm=1 trains
LSTMs with TensorFlow's fused op (tf_speed.fuse_lstm_for_training); together=1 trains
stacked LSTMs row by row across their layers (lstm_rows.step_layers_together).
Each process trains the bundled config's model on a real MNIST slice (10% of it
held out for validation) and prints steady samples/s (training samples over the
median epoch after the first) and the first epoch's seconds (which include
compiling). Needs MNIST_SEQ_DATA. The README's A/B figures come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKER = r"""
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
name, variant, n, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
v = dict(kv.split("=") for kv in variant.split(",") if kv)
os.environ["KERAS_BACKEND"] = v.get("backend", "tensorflow")
jax = v.get("backend") == "jax"
if "onednn" in v:
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = v["onednn"]  # read when TensorFlow loads
import keras
from mnist_seq.tf_speed import epochs_in_one_call, fuse_optimizer_updates, set_op_threads
if v.get("rewrites") in ("light", "idle"):
    from mnist_seq.tf_speed import HEAVY_REWRITES, IDLE_REWRITES, rewrites_off
    rewrites_off(HEAVY_REWRITES if v["rewrites"] == "light" else IDLE_REWRITES)
if v.get("rewrites") == "off":
    import tensorflow as tf
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
if "threads" in v:
    assert set_op_threads(*(int(t) for t in v["threads"].split(":")))
from mnist_seq.config import load_config
from mnist_seq.data import load_mnist
from mnist_seq.models import build_model, build_state
from mnist_seq.lstm_rows import step_layers_together
from mnist_seq.tf_speed import fuse_lstm_for_training, unroll_for_training
from mnist_seq.train import make_optimizer
cfg = load_config(name)
ds = load_mnist(os.environ["MNIST_SEQ_DATA"])
x, y = ds.x_train[:n].astype("float32") / 255, ds.y_train[:n]
n_val = n // 10
keras.mixed_precision.set_global_policy(v.get("prec", "float32"))
model = build_model(cfg["model"])
model.compile(optimizer=make_optimizer(cfg["train"], 100), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"], steps_per_execution=int(v.get("spe", 1)),
              jit_compile=v.get("xla", "1" if jax else "0") == "1")
build_state(model)
if v.get("unroll", "0") == "1":
    unroll_for_training(model)
if v.get("together", "0") == "1":
    assert step_layers_together(model, os.environ["KERAS_BACKEND"])
if v.get("fusedlstm", "0") == "1":
    assert fuse_lstm_for_training(model)
if v.get("fused", "0") == "1":
    assert fuse_optimizer_updates(model.optimizer, model.trainable_variables)
times = []
class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None): self.t = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None): times.append(time.perf_counter() - self.t)
batch = int(v.get("batch", cfg["train"]["batch_size"]))
data = dict(x=x[n_val:], y=y[n_val:], batch_size=batch)
if v.get("graph", "0") == "1":
    data = dict(x=epochs_in_one_call(model, x[n_val:], y[n_val:], batch, 0), shuffle=False)
model.fit(**data, epochs=epochs, validation_data=(x[:n_val], y[:n_val]),
          validation_batch_size=int(v.get("vbatch", batch)), verbose=0, callbacks=[Timer()])
print(json.dumps({"epoch_seconds": times, "train_samples": n - n_val}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--samples", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if "MNIST_SEQ_DATA" not in os.environ:
        raise SystemExit("set MNIST_SEQ_DATA to the folder with the MNIST files")
    from mnist_seq.machine import cpu

    print(f"CPU: {cpu().describe()}", flush=True)  # the figures below are this CPU's
    results: dict[str, list[float]] = {v: [] for v in args.variants}
    first: dict[str, list[float]] = {v: [] for v in args.variants}
    for rep in range(args.repeats):
        for variant in args.variants:
            out = subprocess.run(
                [sys.executable, "-c", WORKER, args.config, variant, str(args.samples),
                 str(args.epochs)], capture_output=True, text=True, check=True).stdout
            run = json.loads(out.strip().splitlines()[-1])
            steady = run["train_samples"] / statistics.median(run["epoch_seconds"][1:])
            results[variant].append(steady)
            first[variant].append(run["epoch_seconds"][0])
            print(f"rep {rep + 1} {variant:<32} {steady:8.0f} samples/s, first epoch "
                  f"{first[variant][-1]:.1f} s", flush=True)
    print()
    for variant, figures in results.items():
        print(f"{variant:<32} median {statistics.median(figures):8.0f} samples/s "
              f"(range {min(figures):.0f}-{max(figures):.0f}), first epoch "
              f"{statistics.median(first[variant]):.1f} s")


if __name__ == "__main__":
    main()
