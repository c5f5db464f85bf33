"""This process's share of every global batch, for a run spread over several processes.

Keras on JAX builds each global batch from the parts the processes hand it
(`jax.make_array_from_process_local_data`), so every process must cut the same global
batches in the same order and keep its own slice of each. A `ShardedBatches` does
that from a seed shared by all processes: the order of epoch e depends only on
(seed, e), never on the process.
"""

from __future__ import annotations

import keras
import numpy as np

from mnist_seq.data import to_float


class ShardedBatches(keras.utils.PyDataset):
    """Global batches of `global_batch` samples, of which this process yields part
    `shard` of `shards`, scaled to float32 in [0, 1].

    Every global batch must split into `parts` equal pieces (the devices of all
    processes). Training (`seed` given: a new order each epoch) drops the few samples
    of an epoch's last batch that do not split; evaluation (`seed=None`) keeps every
    sample, filling the last batch with copies that weigh 0, so accuracy counts each
    sample once (the mean loss over that one batch is diluted by them).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, global_batch: int, shard: int,
                 shards: int, parts: int, seed: int | None = None, first_epoch: int = 0):
        super().__init__()
        self.x, self.y = x, y
        self.global_batch, self.shard, self.shards, self.parts = global_batch, shard, shards, parts
        self.seed = seed
        self.epoch = first_epoch - 1  # on_epoch_begin moves it to the epoch being trained
        self.order = np.arange(len(x))
        tail = len(x) % global_batch
        kept_tail = tail - tail % parts if seed is not None else tail
        self.batches = len(x) // global_batch + (1 if kept_tail else 0)

    def __len__(self) -> int:
        return self.batches

    def on_epoch_begin(self) -> None:
        if self.seed is None:
            return
        self.epoch += 1
        self.order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.x))

    def __getitem__(self, i: int):
        idx = self.order[i * self.global_batch:(i + 1) * self.global_batch]
        if self.seed is not None:
            mine = self._part(idx[:len(idx) - len(idx) % self.parts])
            return self._pixels(self.x[mine]), self.y[mine]
        fill = -len(idx) % self.parts
        weights = np.r_[np.ones(len(idx)), np.zeros(fill)].astype(np.float32)
        mine = self._part(np.r_[idx, np.repeat(idx[-1:], fill)])
        return self._pixels(self.x[mine]), self.y[mine], self._part(weights)

    def _part(self, batch: np.ndarray) -> np.ndarray:
        """This process's slice of a global batch."""
        share = len(batch) // self.shards
        return batch[self.shard * share:(self.shard + 1) * share]

    @staticmethod
    def _pixels(x: np.ndarray) -> np.ndarray:
        return to_float(x) if x.dtype == np.uint8 else x
