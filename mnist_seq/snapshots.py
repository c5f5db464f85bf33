"""Snapshots of a network while it learns (`train.snapshots: true`), kept in
RUN/snapshots.npz.

What is kept depends on the model type (`kinds.Kind.snapshot`): a CNN's first
convolution filters and an MLP's first 16 units' input weights, each as small images,
before training, after the batches in BATCHES and after every epoch; an LSTM's
probabilities after each row read for one test digit, before training and after every
epoch. Weights change only when a batch ends (one update from the gradient averaged
over the batch), which the pictures of `inspect` make visible.

The file is rewritten whole after every epoch, before the epoch's history and backup;
a resumed run drops what was kept in the epoch it trains again, so the sequence goes on
exactly as if the run had not stopped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from mnist_seq.data import to_float

BATCHES = (1, 2, 5, 10, 20, 50, 100, 200)  # batches after which weights are kept
UNITS = 16  # an MLP's first units whose input weights are kept


def first_filters(model, digit: np.ndarray) -> np.ndarray:
    """The first convolution's filters on its first input channel, (filters, k, k)."""
    conv = next(layer for layer in model.layers if layer.__class__.__name__ == "Conv2D")
    kernel = _numpy(conv.kernel)  # (k, k, channels in, filters)
    return np.moveaxis(kernel[:, :, 0, :], -1, 0)


def first_units(model, digit: np.ndarray) -> np.ndarray:
    """The input weights of the first dense layer's first UNITS units, (UNITS, 28, 28)."""
    dense = next(layer for layer in model.layers if layer.__class__.__name__ == "Dense")
    kernel = _numpy(dense.kernel)[:, :UNITS]  # (784, units)
    return kernel.T.reshape(-1, *digit.shape)


def lstm_rows(model, digit: np.ndarray) -> np.ndarray:
    """The class probabilities after each row read, (28, 10), computed from the weights
    in NumPy: it needs no second model, so it runs under any distribution."""
    h_seq = to_float(digit[None])[0].astype(np.float64)  # (28 rows, 28 pixels)
    for layer in (lay for lay in model.layers if lay.__class__.__name__ == "LSTM"):
        kernel, recurrent, bias = (_numpy(w).astype(np.float64) for w in
                                   (layer.cell.kernel, layer.cell.recurrent_kernel,
                                    layer.cell.bias))
        n = recurrent.shape[0]
        h, c, out = np.zeros(n), np.zeros(n), []
        for x in h_seq:  # Keras's gate order: input, forget, cell, output
            i, f, g, o = np.split(x @ kernel + h @ recurrent + bias, 4)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
            out.append(h)
        h_seq = np.array(out)
    classes = model.get_layer("classes")
    logits = h_seq @ _numpy(classes.kernel) + _numpy(classes.bias)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def _numpy(variable) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float32)


@dataclass
class Snapshots:
    """What a run kept: `steps` (batches trained so far), `epochs` (the 0-based epoch it
    was kept in or after; -1 before training), `epoch_end`, and `values`, one array each.
    `digit` is the test digit an LSTM's rows are read on."""

    kind: str
    digit: np.ndarray
    steps: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    epoch_end: list[bool] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    def add(self, step: int, epoch: int, epoch_end: bool, value: np.ndarray) -> None:
        if self.steps and self.steps[-1] == step:  # a named batch that ends an epoch
            self.epoch_end[-1] = self.epoch_end[-1] or epoch_end
            return
        for name, item in (("steps", step), ("epochs", epoch), ("epoch_end", epoch_end),
                           ("values", value)):
            getattr(self, name).append(item)

    def up_to(self, epochs: int) -> Snapshots:
        """Those kept before `epochs` epochs finished (a resume drops the rest)."""
        keep = [i for i, e in enumerate(self.epochs) if e < epochs]
        return Snapshots(self.kind, self.digit, *([getattr(self, n)[i] for i in keep]
                                                  for n in ("steps", "epochs", "epoch_end",
                                                            "values")))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, kind=self.kind, digit=self.digit, steps=np.array(self.steps, int),
                 epochs=np.array(self.epochs, int), epoch_end=np.array(self.epoch_end, bool),
                 values=np.stack(self.values) if self.values else np.zeros((0,)))
        return buffer.getvalue()

    @classmethod
    def from_file(cls, path) -> Snapshots:
        with np.load(path, allow_pickle=False) as f:
            return cls(str(f["kind"]), f["digit"], f["steps"].tolist(), f["epochs"].tolist(),
                       f["epoch_end"].tolist(), list(f["values"]))

    def labels(self) -> list[str]:
        """Each snapshot in words: 'initial', 'batch 5', 'epoch 2 (batch 892)'."""
        return ["initial" if s == 0 else
                f"epoch {e + 1} (batch {s})" if end else f"batch {s}"
                for s, e, end in zip(self.steps, self.epochs, self.epoch_end, strict=True)]
