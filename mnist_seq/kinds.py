"""What differs by model type, in one table: how the speed plan treats it, what `serve`
shows of it beside its answer, the pictures `inspect` draws of it, and what
`train.snapshots` keeps of it while it learns.

The builders and config defaults stay in `models.py` (a registry by `model.type`);
a new model type adds its builder there and its row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_seq import explain, snapshots


@dataclass(frozen=True)
class Kind:
    """One model type's behaviour outside its builder."""

    # Reads the rows as timesteps (an LSTM): unrolled for training on a CPU with TensorFlow,
    # the cuDNN kernel on a GPU.
    recurrent: bool
    # Speed on a CPU with TensorFlow, each measured per model type (speed.py says how
    # much): bfloat16 on a CPU that computes it natively; each epoch in one call;
    # fused optimizer updates.
    bf16_on_cpu: bool
    one_call_epochs: bool
    fused_updates: bool
    pictures: Callable[[explain.Shown], list[Path]]
    # The model behind serve's card for a digit (model, config) -> keras.Model, and its
    # output for one digit as the card's fields; None: the card shows the answer alone.
    reader: Callable[[Any, dict[str, Any]], Any] | None = None
    card: Callable[[np.ndarray], dict[str, Any]] | None = None
    # What `train.snapshots` keeps of it, (model, test digit) -> array, and whether also
    # after the first batches (weights) or only after each epoch (an LSTM's answer).
    snapshot: Callable[[Any, np.ndarray], np.ndarray] = snapshots.first_units
    snapshot_batches: bool = True


KINDS: dict[str, Kind] = {
    "lstm": Kind(recurrent=True, bf16_on_cpu=False, one_call_epochs=False,
                 fused_updates=False, pictures=explain.lstm_pictures,
                 reader=explain.rows_reader, card=explain.rows_card,
                 snapshot=snapshots.lstm_rows, snapshot_batches=False),
    "cnn": Kind(recurrent=False, bf16_on_cpu=True, one_call_epochs=False,
                fused_updates=True, pictures=explain.cnn_pictures,
                reader=explain.first_conv_reader, card=explain.maps_card,
                snapshot=snapshots.first_filters),
    "mlp": Kind(recurrent=False, bf16_on_cpu=False, one_call_epochs=True,
                fused_updates=True, pictures=explain.mlp_pictures),
}
