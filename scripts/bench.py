"""Side-by-side speed benchmark: mnist-seq on TensorFlow and on JAX, plain Keras, plain
PyTorch.

For each seed config, the contenders (`mnist-seq` on TensorFlow, `mnist-seq
--backend jax`, the seed example's plain Keras script on TensorFlow, the same model
in plain PyTorch) train the same model on the same real MNIST slice, one after the
other and alternating over repeats, each in a fresh process. Reported per
contender (medians over repeats): steady-state samples per second (training
samples over the median epoch after the first), end-to-end samples per second
(whole process: start-up, data loading, compilation, training), and peak memory
(max RSS). The ratios are medians of each repeat's own ratio: the contenders of
one repeat run minutes apart, so drift in the machine's speed (up to 2x over tens
of minutes on a shared 2-core VM) cancels out better than in a ratio of medians.
Also: `mnist-seq --help` latency, data-loading time, evaluation throughput.
`mnist-seq --backend jax` keeps the steps XLA compiles on disk; by default one untimed
run of each config fills this benchmark's own cache first, so the timed runs are a
config's second run on (`--jax-cache cold`: a new empty cache every run).

    python scripts/bench.py --samples 12000 --epochs 3 --repeats 3 [--json out.json]

JAX and PyTorch are optional (`pip install '.[jax,bench]'`); without one, its
column is left out. Needs MNIST_SEQ_DATA (or --data-dir).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Each worker prints one JSON line: {"epoch_seconds": [...], "samples": N}.
KERAS_WORKER = r'''
import json, os, sys, time
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np, keras
from mnist_seq.data import load_mnist
cfg = json.loads(sys.argv[1])
ds = load_mnist(os.environ["MNIST_SEQ_DATA"])
n = cfg["samples"]
x = ds.x_train[:n].astype("float32") / 255.0
y = ds.y_train[:n]
kind, m = cfg["kind"], cfg["model"]
# The model as the seed examples write it: Sequential, Keras defaults.
layers = [keras.Input((28, 28))]
if kind == "lstm":
    for i, u in enumerate(m["units"]):
        last = i == len(m["units"]) - 1
        reg = keras.regularizers.L2(m["l2_last"]) if last and m["l2_last"] else None
        layers.append(keras.layers.LSTM(u, return_sequences=not last, kernel_regularizer=reg))
        if m["dropout"]:
            layers.append(keras.layers.Dropout(m["dropout"]))
elif kind == "cnn":
    layers.append(keras.layers.Reshape((28, 28, 1)))
    for b in m["conv"]:
        layers.append(keras.layers.Conv2D(b["filters"], b["kernel"], padding=b["padding"],
                                          activation="relu"))
        if b["pool"] > 1:
            layers.append(keras.layers.MaxPooling2D(b["pool"]))
    layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(u, activation="relu") for u in m["dense"]]
else:
    layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(u, activation="relu") for u in m["hidden"]]
layers.append(keras.layers.Dense(10, activation="softmax"))
model = keras.Sequential(layers)
opt = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop}[cfg["optimizer"]]
model.compile(optimizer=opt(learning_rate=cfg["lr"]), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
times = []
class T(keras.callbacks.Callback):
    def on_epoch_begin(self, e, logs=None): self.t = time.perf_counter()
    def on_epoch_end(self, e, logs=None): times.append(time.perf_counter() - self.t)
# Keras defaults throughout, the progress bar included, as a user's script runs.
model.fit(x, y, batch_size=cfg["batch"], epochs=cfg["epochs"],
          validation_split=cfg["val"], callbacks=[T()])
print(json.dumps({"epoch_seconds": times, "samples": int(round(n * (1 - cfg["val"])))}))
'''

TORCH_WORKER = r'''
import json, os, sys, time
import numpy as np, torch
from torch import nn
from mnist_seq.data import load_mnist
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
ds = load_mnist(os.environ["MNIST_SEQ_DATA"])
n = cfg["samples"]
x = torch.tensor(ds.x_train[:n], dtype=torch.float32) / 255.0
y = torch.tensor(ds.y_train[:n], dtype=torch.long)
n_val = int(round(n * cfg["val"]))
xt, yt, xv, yv = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
kind, m = cfg["kind"], cfg["model"]

class LSTMNet(nn.Module):
    # As PyTorch users write it: one nn.LSTM of len(units) layers (its dropout sits
    # between them), then the dropout Keras has after the last one.
    def __init__(self):
        super().__init__()
        units = m["units"]
        assert len(set(units)) == 1, "nn.LSTM's layers share one size"
        self.lstm = nn.LSTM(28, units[0], num_layers=len(units), batch_first=True,
                            dropout=m["dropout"] if len(units) > 1 else 0.0)
        self.drop = nn.Dropout(m["dropout"])
        self.head = nn.Linear(units[0], 10)
    def forward(self, x):
        return self.head(self.drop(self.lstm(x)[0])[:, -1])

if kind == "lstm":
    net = LSTMNet()
elif kind == "cnn":
    mods, c, size = [nn.Unflatten(1, (1, 28))], 1, 28
    for b in m["conv"]:
        pad = b["kernel"] // 2 if b["padding"] == "same" else 0
        mods += [nn.Conv2d(c, b["filters"], b["kernel"], padding=pad), nn.ReLU()]
        size = size if b["padding"] == "same" else size - b["kernel"] + 1
        if b["pool"] > 1:
            mods.append(nn.MaxPool2d(b["pool"]))
            size //= b["pool"]
        c = b["filters"]
    mods.append(nn.Flatten())
    width = c * size * size
    for u in m["dense"]:
        mods += [nn.Linear(width, u), nn.ReLU()]
        width = u
    net = nn.Sequential(*mods, nn.Linear(width, 10))
else:
    mods, width = [nn.Flatten()], 784
    for u in m["hidden"]:
        mods += [nn.Linear(width, u), nn.ReLU()]
        width = u
    net = nn.Sequential(*mods, nn.Linear(width, 10))
opt = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[cfg["optimizer"]](
    net.parameters(), lr=cfg["lr"])
loss_fn = nn.CrossEntropyLoss()
times = []
for epoch in range(cfg["epochs"]):
    t = time.perf_counter()
    net.train()
    order = torch.randperm(len(xt))
    for i in range(0, len(xt), cfg["batch"]):
        idx = order[i:i + cfg["batch"]]
        opt.zero_grad()
        loss = loss_fn(net(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(xv).argmax(1) == yv).float().mean().item()
    times.append(time.perf_counter() - t)
    print(f"epoch {epoch + 1}: val_accuracy {acc:.4f}", file=sys.stderr)
print(json.dumps({"epoch_seconds": times, "samples": len(xt)}))
'''


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run a command; return its wall seconds, its own peak RSS (MiB, via wait4), stdout."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark worker failed ({' '.join(cmd[:5])}...):\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss / 1024, stdout


# The contenders, and the ratios the table shows (numerator, denominator).
MNIST_SEQ = {"mnist-seq": "tensorflow", "mnist-seq-jax": "jax"}
RATIOS = [("mnist-seq-jax", "mnist-seq"), ("mnist-seq", "keras"), ("mnist-seq", "torch"),
          ("mnist-seq-jax", "torch")]


def contender_cmd(who: str, name: str, cfg: dict, args, tmp: Path) -> list[str]:
    if who in MNIST_SEQ:
        return [sys.executable, "-m", "mnist_seq", "train", "--model", name, "--max-train-samples",
                str(args.samples), "--epochs", str(args.epochs), "--max-test-samples", "1000",
                "--device", "cpu", "--backend", MNIST_SEQ[who],
                "--run-dir", str(tmp / f"{name}-{time.time_ns()}")]
    worker = KERAS_WORKER if who == "keras" else TORCH_WORKER
    return [sys.executable, "-c", worker, json.dumps(cfg)]


def parse_result(who: str, out: str, run_dir: Path | None) -> tuple[list[float], int]:
    if who in MNIST_SEQ:
        from mnist_seq.rundir import RunDir

        run = RunDir(run_dir)
        return [r["seconds"] for r in run.read_history()], run.read_metrics()["train_samples"]
    data = json.loads(out.strip().splitlines()[-1])
    return data["epoch_seconds"], data["samples"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="cnn,lstm,mlp")
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_SEQ_DATA"))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--contenders", help="only these, comma-separated (e.g. "
                        "mnist-seq,torch); default: every one installed")
    parser.add_argument("--jax-cache", choices=("warm", "cold"), default="warm",
                        help="JAX's compiled steps: warm, kept from one untimed run of each "
                        "config first (as from a config's second run on); cold, none kept")
    args = parser.parse_args()
    if not args.data_dir:
        raise SystemExit("point the benchmark at MNIST: --data-dir DIR or MNIST_SEQ_DATA=DIR")
    env = {**os.environ, "MNIST_SEQ_DATA": str(Path(args.data_dir).resolve()),
           "PYTHONUNBUFFERED": "1"}
    # Every contender runs with its defaults: the plain Keras script does not set this.
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    import importlib.util

    contenders = [who for who, module in (("mnist-seq", "tensorflow"), ("mnist-seq-jax", "jax"),
                                          ("keras", "tensorflow"), ("torch", "torch"))
                  if importlib.util.find_spec(module)
                  and (not args.contenders or who in args.contenders.split(","))]
    ratios = [(a, b) for a, b in RATIOS if a in contenders and b in contenders]
    print(f"contenders: {', '.join(contenders)} (pip install '.[jax,bench]' for all four)")

    from mnist_seq.config import load_config
    from mnist_seq.machine import cpu

    # Figures mean little without the CPU they came from.
    results: dict = {"args": vars(args), "cpu": cpu().as_dict(), "configs": {}, "ratios": {},
                     "epoch_seconds": {}}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for name in args.configs.split(","):
            c = load_config(name)
            cfg = {"kind": c["model"]["type"], "model": c["model"], "samples": args.samples,
                   "epochs": args.epochs, "batch": c["train"]["batch_size"],
                   "lr": c["train"]["learning_rate"], "optimizer": c["train"]["optimizer"],
                   "val": c["train"]["validation_fraction"]}
            runs: dict[str, list[dict]] = {who: [] for who in contenders}
            epochs: dict[str, list[list[float]]] = {who: [] for who in contenders}
            if "mnist-seq-jax" in contenders and args.jax_cache == "warm":
                cmd = contender_cmd("mnist-seq-jax", name, cfg, args, tmp)
                run_measured(cmd, jax_env(env, tmp, args.jax_cache))
                print(f"  {name:<5} mnist-seq-jax warm-up run (untimed): its compiled steps "
                      "are kept for the timed ones", flush=True)
            for rep in range(args.repeats):
                # Alternate the order so drift in machine load hits everyone alike.
                order = contenders if rep % 2 == 0 else contenders[::-1]
                for who in order:
                    cmd = contender_cmd(who, name, cfg, args, tmp)
                    wall, rss, out = run_measured(
                        cmd, jax_env(env, tmp, args.jax_cache) if who == "mnist-seq-jax" else env)
                    run_dir = Path(cmd[-1]) if who in MNIST_SEQ else None
                    seconds, n = parse_result(who, out, run_dir)
                    steady = n / statistics.median(seconds[1:]) if len(seconds) > 1 \
                        else float("nan")
                    runs[who].append({"steady": steady, "end_to_end": n * len(seconds) / wall,
                                      "wall": wall, "rss_mib": rss})
                    epochs[who].append([round(t, 3) for t in seconds])
                    print(f"  {name:<5} {who:<13} rep {rep + 1}: steady {steady:8.0f} samples/s,"
                          f" end-to-end {n * len(seconds) / wall:8.0f} samples/s, "
                          f"{wall:6.1f} s, {rss:6.0f} MiB", flush=True)
            results["configs"][name] = {
                who: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                for who, rs in runs.items()
            }
            # Every epoch's seconds, repeat by repeat: the medians hide how epochs vary.
            results["epoch_seconds"][name] = epochs
            results["ratios"][name] = {
                f"{key}: {a} / {b}": statistics.median(
                    x[key] / y[key] for x, y in zip(runs[a], runs[b], strict=True))
                for a, b in ratios for key in ("steady", "end_to_end")
            }
        results["extras"] = extras(env, tmp)

    print_table(results, contenders, ratios)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


def jax_env(env: dict[str, str], tmp: Path, cache: str) -> dict[str, str]:
    """A JAX run's environment: its compiled steps kept in this benchmark's own cache
    (warm), or in a new empty one every run (cold); never the user's."""
    folder = tmp / ("jax-cache" if cache == "warm" else f"cold-{time.time_ns()}")
    return {**env, "MNIST_SEQ_CACHE": str(folder), "JAX_COMPILATION_CACHE_DIR": "",
            "JAX_ENABLE_COMPILATION_CACHE": "true"}


def extras(env: dict[str, str], tmp: Path) -> dict[str, float]:
    """--help latency, data loading, evaluation throughput (medians of 5 / 3)."""
    helps = [run_measured([sys.executable, "-m", "mnist_seq", "--help"], env)[0]
             for _ in range(5)]
    load = [run_measured([sys.executable, "-c",
                          "import os,time;t=time.perf_counter();"
                          "from mnist_seq.data import load_mnist;"
                          "load_mnist(os.environ['MNIST_SEQ_DATA']);"
                          "print(time.perf_counter()-t)"], env)[2] for _ in range(3)]
    run_dir = tmp / "eval-run"
    run_measured([sys.executable, "-m", "mnist_seq", "train", "--model", "cnn",
                  "--max-train-samples", "2000", "--epochs", "1", "--run-dir", str(run_dir)],
                 env)
    evals = []
    for _ in range(3):
        code = ("import os,time,json;from mnist_seq import backend;"
                "from mnist_seq.options import RuntimeOptions;"
                "backend.setup(RuntimeOptions(device='cpu'));"
                "from mnist_seq.evaluation import load_model, predict_proba;"
                "from mnist_seq.data import load_mnist;from mnist_seq.rundir import RunDir;"
                "ds=load_mnist(os.environ['MNIST_SEQ_DATA']);"
                f"m=load_model(RunDir('{run_dir}') / RunDir.MODEL);"
                "predict_proba(m, ds.x_test[:512]);"
                "t=time.perf_counter();predict_proba(m, ds.x_test);"
                "print(len(ds.x_test)/(time.perf_counter()-t))")
        evals.append(float(run_measured([sys.executable, "-c", code], env)[2]))
    # What the CPU's matrix units can do at best: a large float32 product, for scale.
    code = ("import time;from mnist_seq import backend;"
            "from mnist_seq.options import RuntimeOptions;"
            "backend.setup(RuntimeOptions(device='cpu'));"
            "import tensorflow as tf;a=tf.random.normal((2048,2048));"
            "f=tf.function(lambda a:tf.matmul(a,a));f(a).numpy();t=time.perf_counter();"
            "[f(a) for _ in range(20)][-1].numpy();print(20*2*2048**3/(time.perf_counter()-t)/1e9)")
    peak = float(run_measured([sys.executable, "-c", code], env)[2])
    return {"help_seconds": statistics.median(helps),
            "matmul_gflops": peak,
            "load_seconds": statistics.median(float(x) for x in load),
            "cnn_eval_samples_per_second": statistics.median(evals)}


def print_table(results: dict, contenders: list[str], ratios: list[tuple[str, str]]) -> None:
    print(f"\nCPU: {results['cpu']['kind']}")
    head = ("| config | measure | " + " | ".join(contenders) + " | "
            + " | ".join(f"{a} / {b}" for a, b in ratios) + " |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, by in results["configs"].items():
        for key, label in (("steady", "steady samples/s"), ("end_to_end", "end-to-end samples/s"),
                           ("wall", "wall seconds"), ("rss_mib", "peak memory (MiB)")):
            if key == "steady" and all(math.isnan(by[who][key]) for who in contenders):
                continue  # one epoch: no epoch after the first to be steady
            cells = [f"{by[who][key]:.{1 if key == 'wall' else 0}f}" for who in contenders]
            cells += [f"{results['ratios'][name][f'{key}: {a} / {b}']:.2f}x"
                      if key in ("steady", "end_to_end") else "" for a, b in ratios]
            print(f"| {name} | {label} | " + " | ".join(cells) + " |")
    e = results["extras"]
    print(f"\nmnist-seq --help: {e['help_seconds']:.2f} s; loading MNIST (IDX .gz): "
          f"{e['load_seconds']:.2f} s; CNN evaluation: {e['cnn_eval_samples_per_second']:.0f} "
          f"samples/s; float32 2048x2048 matmul: {e['matmul_gflops']:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
