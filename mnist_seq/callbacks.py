"""The Keras callbacks of a training run.

At the end of each epoch, in list order: `Guard` checks the loss, `SnapshotKeeper` (when
asked for) writes the snapshots, `HistoryRecorder`
records and writes the epoch, `BestModel` keeps best.keras, `EpochCheckpoint` saves
the state a resume starts from. An epoch in the history with no checkpoint after it
(killed in between) is trained again on resume (`RunDir.resume_point`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras

from mnist_seq.errors import TrainingDiverged, TrainingInterrupted
from mnist_seq.rundir import Rows, RunDir, best_epoch
from mnist_seq.snapshots import BATCHES

# Cross-entropy over 10 classes starts near ln(10) = 2.3. Keras clips probabilities at
# 1e-7, so it tops out at 16.1: a mean past 10 (the true class gets e^-10 on average)
# means the weights have blown up. TensorFlow's loss then often becomes NaN; JAX's sat
# near 14.5 at a learning rate of 1000.
DIVERGED_LOSS = 10.0


class Guard(keras.callbacks.Callback):
    """Stops at the end of a batch after Ctrl-C, or at the first diverged loss."""

    def __init__(self, run: RunDir, rows: Rows):
        super().__init__()
        self.run, self.rows = run, rows
        self.interrupted = False
        self.epoch = 0

    def stop(self) -> None:
        """Stop at the end of the current batch (the first Ctrl-C)."""
        self.interrupted = True

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss) or loss > DIVERGED_LOSS:
            # Epochs trained in one call (the MLP's on a CPU) report once, at their end.
            where = f"epoch {self.epoch + 1}" + (
                f", batch {batch + 1}" if self.params.get("steps") != 1 else "")
            best = self.run / RunDir.BEST_MODEL
            kept = (f"The last good model is kept in {best}." if best.is_file()
                    else "No epoch finished, so no model was kept.")
            raise TrainingDiverged(
                f"training diverged: the loss became {loss:.4g} in {where} "
                f"(a model that guesses scores {math.log(10):.2f}); "
                f"try a lower train.learning_rate. {kept}")
        if self.interrupted:
            raise TrainingInterrupted(
                f"interrupted in epoch {self.epoch + 1}; {len(self.rows)} completed epochs are "
                f"saved. Resume with: mnist-seq train --resume {self.run.path}")


class HistoryRecorder(keras.callbacks.Callback):
    """Adds the learning rate and the epoch's seconds to its logs, appends the epoch to
    `rows` and rewrites the history files, so a run in progress can be plotted."""

    def __init__(self, run: RunDir, rows: Rows):
        super().__init__()
        self.run, self.rows = run, rows
        self.start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        # Measured first, so the saving done by the callbacks after this one is left out.
        seconds = round(time.perf_counter() - self.start, 3)
        logs = logs if logs is not None else {}
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(
            self.model.optimizer.learning_rate))
        logs["seconds"] = seconds
        self.rows.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
        self.run.write_history(self.rows)


class BestModel(keras.callbacks.Callback):
    """Saves best.keras whenever validation accuracy improves; after a resume it starts
    from the best figure so far, so it never replaces the model with a worse one."""

    def __init__(self, run: RunDir, rows: Rows):
        super().__init__()
        self.run = run
        best = best_epoch(rows)
        self.best = -1.0 if best is None else rows[best].get("val_accuracy", -1.0)

    def on_epoch_end(self, epoch, logs=None):
        acc = (logs or {}).get("val_accuracy")
        if acc is not None and acc > self.best:
            self.best = acc
            self.run.save_model(self.model, RunDir.BEST_MODEL)


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the weights and the optimizer state (so the learning-rate schedule's step
    too) after every epoch, with Keras's own `save_weights`; restores `restore`, if
    given, when training begins."""

    def __init__(self, run: RunDir, restore: Path | None = None):
        super().__init__()
        self.run, self.restore = run, restore

    def on_train_begin(self, logs=None):
        if self.restore is not None:
            if not self.model.optimizer.built:  # its slots must exist to be loaded into
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(self.restore)

    def on_epoch_end(self, epoch, logs=None):
        self.run.save_checkpoint(self.model, epoch + 1)


class TrialPruned(Exception):  # noqa: N818 (a signal, like StopIteration)
    """A sweep's pruner stopped the trial; args[0] is the last epoch trained."""


class TrialReporter(keras.callbacks.Callback):
    """Tells an Optuna trial each epoch's validation accuracy, says it in a line, and
    stops the run when the study's pruner says so (the epoch is recorded by then; the
    last epoch is never cut, as there is nothing left to save)."""

    def __init__(self, trial, say):
        super().__init__()
        self.trial, self.say = trial, say

    def on_epoch_end(self, epoch, logs=None):
        value = float((logs or {}).get("val_accuracy", float("nan")))
        self.trial.report(value, epoch)
        self.say(f"trial {self.trial.number}: epoch {epoch + 1}/{self.params['epochs']}, "
                 f"validation accuracy {value:.2%}")
        if epoch + 1 < self.params["epochs"] and self.trial.should_prune():
            raise TrialPruned(epoch + 1)


class SnapshotKeeper(keras.callbacks.Callback):
    """Keeps snapshots of the network as it learns (`snapshots.py`): before training,
    after the named batches (for the model types that take them) and after every epoch,
    writing RUN/snapshots.npz at each epoch's end, before the history: a resume drops
    the epoch it trains again, the history's and the snapshots' alike."""

    def __init__(self, run: RunDir, kept, take, batches: bool):
        super().__init__()
        self.run, self.kept, self.take, self.batches = run, kept, take, batches
        self.epoch = 0

    def _keep(self, step: int, epoch: int, end: bool) -> None:
        self.kept.add(step, epoch, end, self.take(self.model, self.kept.digit))

    def on_train_begin(self, logs=None):
        if not self.kept.steps:
            self._keep(0, -1, False)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self.epoch * self.params["steps"] + batch + 1
        if self.batches and step in BATCHES:
            self._keep(step, self.epoch, False)

    def on_epoch_end(self, epoch, logs=None):
        self._keep((epoch + 1) * self.params["steps"], epoch, True)
        self.run.write_bytes(RunDir.SNAPSHOTS, self.kept.to_bytes())
