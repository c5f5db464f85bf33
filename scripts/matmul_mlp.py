"""The MLP's matrix products alone, TensorFlow against PyTorch: what the CPU's math
libraries give each framework before any framework overhead.

One training step of `configs/mlp.yaml` (batch 128, 784 -> 512 -> 10) is five matrix
products: two forward, three for the gradients. Each contender runs 400 such steps in
a fresh process, inside one compiled loop for TensorFlow (`tf.function`) and an
eager loop for PyTorch; contenders alternate over the repeats. Prints the medians
(GFLOP/s and the samples/s the products alone would allow) with their range.

    python scripts/matmul_mlp.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

WORKER = r"""
import json, os, sys, time
which, batch, steps = sys.argv[1], 128, 400
if which.startswith("tensorflow"):
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if which.endswith("onednn") else "0"
    import tensorflow as tf
    x, w1, w2 = (tf.random.normal(s) for s in ((batch, 784), (784, 512), (512, 10)))
    g = tf.random.normal((batch, 10))

    def one_step(i, total, extra):
        h = tf.nn.relu(x @ w1)
        grad_h = (g @ tf.transpose(w2)) * tf.cast(h > 0, tf.float32)
        # Every product feeds the result, so none is pruned from the graph.
        return (i + 1, total + tf.transpose(x) @ grad_h,
                extra + tf.reduce_sum(tf.transpose(h) @ g) + tf.reduce_sum(h @ w2))

    @tf.function(autograph=False)  # run with -c: no source for AutoGraph to read
    def products():
        return tf.while_loop(lambda i, *_: i < steps, one_step,
                             (tf.constant(0), tf.zeros((784, 512)), tf.zeros(())))[1:]

    run = lambda: products()[0].numpy()
else:
    import torch
    x, w1, w2 = (torch.randn(*s) for s in ((batch, 784), (784, 512), (512, 10)))
    g = torch.randn(batch, 10)

    def run():
        total, extra = torch.zeros(784, 512), torch.zeros(())
        for _ in range(steps):
            h = torch.relu(x @ w1)
            grad_h = (g @ w2.T) * (h > 0)
            total += x.T @ grad_h
            extra += (h.T @ g).sum() + (h @ w2).sum()
        return total, extra
run()  # compiles / warms up
times = []
for _ in range(5):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
print(json.dumps({"seconds": sorted(times)[2], "samples": steps * batch,
                  "flops": steps * 2 * batch * 3 * (784 * 512 + 512 * 10)}))
"""

CONTENDERS = ("tensorflow", "tensorflow-onednn", "torch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from mnist_seq.machine import cpu

    print(f"CPU: {cpu().describe()}", flush=True)
    rates: dict[str, list[float]] = {who: [] for who in CONTENDERS}
    for rep in range(args.repeats):
        for who in CONTENDERS if rep % 2 == 0 else CONTENDERS[::-1]:
            out = subprocess.run([sys.executable, "-c", WORKER, who], capture_output=True,
                                 text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            rates[who].append(r["flops"] / r["seconds"] / 1e9)
            print(f"rep {rep + 1} {who:<18} {rates[who][-1]:6.1f} GFLOP/s "
                  f"({r['samples'] / r['seconds']:.0f} samples/s)", flush=True)
    per_sample = 2 * 3 * (784 * 512 + 512 * 10) / 1e9
    for who, rs in rates.items():
        print(f"{who:<18} median {statistics.median(rs):6.1f} GFLOP/s ({min(rs):.1f}-"
              f"{max(rs):.1f}), {statistics.median(rs) / per_sample:.0f} samples/s")


if __name__ == "__main__":
    main()
