"""The run folder: one object that knows every file of a run and writes them.

    config.yaml          the resolved config            history.json/.csv  one row per epoch
    model.keras          the model after the last epoch best.keras          best validation epoch
    initial.weights.h5   the weights before training    metrics.json       written last: finished
    curves.png           loss and accuracy curves       backup/            resume state per epoch
    evaluation.json, confusion.png, worst-errors.png    (evaluate)
    report.html, epoch-seconds.png                      (report)
    inspect/             pictures of one digit          (inspect)
    tensorboard/         with --tensorboard

Every write goes through `files.atomic_write` (a temporary name, then a rename), so a
reader never sees half a file, not even when the disk fills up. A RunDir made with
`writer=False` writes nothing: in a run spread over several processes only one of them
owns the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mnist_seq.errors import MnistSeqError, RunDirError
from mnist_seq.files import atomic_write, save_figure

Rows = list[dict[str, float]]
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate",
                   "seconds")
# Pictures `inspect` writes into RUN/inspect/; {tag} names the digit (test3, my-digit).
INSPECT_FILES = {
    "layers": "layers.txt",
    "lstm_reading": "lstm-reading-{tag}.png",
    "lstm_gif": "lstm-reading-{tag}.gif",
    "rows_read": "rows-read-accuracy.png",
    "cnn_filters": "cnn-filters.png",
    "cnn_maps": "cnn-feature-maps-{tag}.png",
    "mlp_units": "mlp-units-{tag}.png",
    "learning": "learning.png",  # from snapshots.npz: the still picture
    "learning_gif": "learning.gif",
    "moved": "weights-moved.png",
    "saliency": "saliency-{tag}.png",
    "digit_map": "digit-map.png",
}
_CHECKPOINT = "epoch-{n}.weights.h5"  # weights and optimizer state after n epochs


def _exists(path: str | Path) -> RunDirError:
    return RunDirError(f"run folder already exists: {path}; give a new --run-dir "
                       "(mnist-seq never overwrites a run)")


def best_epoch(rows: Rows) -> int | None:
    """Index of the row with the best validation accuracy (else the lowest validation
    loss); None when the history has no validation figures."""
    if any("val_accuracy" in r for r in rows):
        return max(range(len(rows)), key=lambda i: rows[i].get("val_accuracy", float("-inf")))
    if any("val_loss" in r for r in rows):
        return min(range(len(rows)), key=lambda i: rows[i].get("val_loss", float("inf")))
    return None


class RunDir:
    """One run folder: its file names, its state (finished, resumable), readers and writers."""

    CONFIG, HISTORY_JSON, HISTORY_CSV = "config.yaml", "history.json", "history.csv"
    MODEL, BEST_MODEL, INITIAL_WEIGHTS = "model.keras", "best.keras", "initial.weights.h5"
    METRICS, CURVES = "metrics.json", "curves.png"
    EVALUATION, CONFUSION, WORST_ERRORS = "evaluation.json", "confusion.png", "worst-errors.png"
    REPORT, EPOCH_SECONDS = "report.html", "epoch-seconds.png"
    INSPECT, BACKUP, TENSORBOARD = "inspect", "backup", "tensorboard"
    TRIAL, STARTED = "trial.json", "started.json"  # a sweep trial's settings; origin.py
    SNAPSHOTS = "snapshots.npz"  # the network as it learned (train.snapshots)

    def __init__(self, path: str | Path, *, writer: bool = True, timestamped: bool = False,
                 save_scope: Callable[[], contextlib.AbstractContextManager] =
                 contextlib.nullcontext):
        self.path = Path(path)
        self.writer = writer
        # A name made from a timestamp (may take a -2 suffix; another process cannot
        # know it).
        self.timestamped = timestamped
        # Entered around every model save: a distributed run saves outside its
        # distribution (`distribute.Cluster.alone`).
        self.save_scope = save_scope

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def name(self) -> str:
        return self.path.name

    # -- creating ---------------------------------------------------------------------

    def shared(self, writer: bool, save_scope: Callable[[], contextlib.AbstractContextManager]
               ) -> RunDir:
        """This run folder as one process of a run sees it: whether it writes (in a run
        over several processes, process 0 alone), and what it saves models inside."""
        return RunDir(self.path, writer=writer, timestamped=self.timestamped,
                      save_scope=save_scope)

    @classmethod
    def new(cls, name: str, run_dir: str | Path | None = None, root: str | Path = "runs",
            *, writer: bool = True) -> RunDir:
        """A run folder still to be made: `run_dir`, which must not exist, or else
        `root/<name>-<YYYYmmdd-HHMMSS>`. Nothing is created until `create()`."""
        if run_dir is not None:
            if Path(run_dir).exists():
                raise _exists(run_dir)
            run = cls(run_dir, writer=writer)
        else:
            run = cls(Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}", writer=writer,
                      timestamped=True)
        # Said now, not after minutes of loading and compiling.
        existing = next(p for p in run.path.absolute().parents if p.exists())
        if writer and not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
            why = "Not a directory" if not existing.is_dir() else "Permission denied"
            raise RunDirError(f"cannot create run folder {run.path}: {why} ({existing})")
        return run

    def create(self) -> RunDir:
        """Make the folder, never reusing one that exists (two runs started in the same
        second get -2, -3...)."""
        if not self.writer:
            return self
        base = self.path
        candidates = [base]
        if self.timestamped:
            candidates += [base.with_name(f"{base.name}-{i}") for i in range(2, 100)]
        for path in candidates:
            try:
                path.mkdir(parents=True)
            except FileExistsError:
                continue
            except OSError as e:
                raise RunDirError(f"cannot create run folder {path}: {e.strerror or e}") from None
            self.path = path
            return self
        if not self.timestamped:
            raise _exists(base)
        raise RunDirError(f"could not find a free run folder name next to {base}")

    # -- state ------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """A run is finished once metrics.json, the last file training writes, is there."""
        return (self / self.METRICS).is_file()

    @property
    def resumable(self) -> bool:
        """Started (config.yaml is there) and not finished."""
        return (self / self.CONFIG).is_file() and not self.finished

    def require_finished(self) -> RunDir:
        """Raise unless this is a finished run."""
        if not self.path.is_dir():
            raise RunDirError(f"no such run folder: {self.path}")
        if not self.finished:
            raise RunDirError(f"{self.path} is not a finished mnist-seq run: no {self.METRICS} "
                              "in it (training writes it last)")
        return self

    def require_resumable(self) -> RunDir:
        """Raise unless this run can be continued with --resume."""
        if not (self / self.CONFIG).is_file():
            raise RunDirError(f"no run to resume at {self.path}: expected a run folder with "
                              f"{self.CONFIG}")
        if self.finished:
            raise RunDirError(f"{self.path} has finished already ({self.METRICS} is there); "
                              "nothing to resume")
        return self

    @staticmethod
    def locate_model(run_or_model: str | Path) -> tuple[RunDir, Path]:
        """A finished run folder means its model.keras; a model file means itself, and the
        folder it is in takes the files written about it."""
        path = Path(run_or_model)
        if path.is_dir():
            run = RunDir(path).require_finished()
            return run, run / RunDir.MODEL
        if not path.exists():
            raise MnistSeqError(f"no such run folder or model file: {path}")
        return RunDir(path.parent), path

    @classmethod
    def find(cls, root: str | Path) -> Iterator[RunDir]:
        """Every run folder (one holding config.yaml) under `root`, in name order."""
        for config in sorted(Path(root).rglob(cls.CONFIG)):
            yield cls(config.parent, writer=False)

    # -- reading ----------------------------------------------------------------------

    def read_config(self, check: bool = True) -> dict[str, Any]:
        """The run's config.yaml, validated (or as written, with check=False)."""
        from mnist_seq.config import read_yaml, validate

        raw = read_yaml(self / self.CONFIG)
        return validate(raw) if check else raw

    def recorded_data_dir(self) -> str | None:
        """The data folder the run's config names (data.dir), if there is a config."""
        if not (self / self.CONFIG).is_file():
            return None
        return (self.read_config(check=False).get("data") or {}).get("dir")

    def read_config_text(self) -> str:
        return (self / self.CONFIG).read_text(encoding="utf-8")

    def read_history(self) -> Rows:
        """Per-epoch records, from history.json or else history.csv."""
        import csv

        if (self / self.HISTORY_JSON).is_file():
            try:
                rows = json.loads((self / self.HISTORY_JSON).read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise MnistSeqError(f"{self / self.HISTORY_JSON}: unreadable ({e})") from None
        elif (self / self.HISTORY_CSV).is_file():
            with open(self / self.HISTORY_CSV, newline="", encoding="utf-8") as f:
                rows = [{k: float(v) for k, v in row.items() if v != ""}
                        for row in csv.DictReader(f)]
        else:
            raise MnistSeqError(f"no {self.HISTORY_JSON} or {self.HISTORY_CSV} in {self.path}: "
                                "is this a mnist-seq run folder?")
        if not isinstance(rows, list) or not rows:
            raise MnistSeqError(f"{self.path}: the history holds no epochs yet")
        return rows

    def read_history_or_empty(self) -> Rows:
        """The history, or [] for a run killed before its first epoch ended."""
        try:
            return self.read_history()
        except MnistSeqError:
            return []

    def read_metrics(self) -> dict[str, Any]:
        return self.read_json(self.METRICS)

    def read_evaluation(self) -> dict[str, Any] | None:
        """evaluation.json, or None if the run was not evaluated yet."""
        return self.read_json(self.EVALUATION) if (self / self.EVALUATION).is_file() else None

    def read_snapshots(self):
        """The snapshots kept while training (`snapshots.Snapshots`), or None."""
        from mnist_seq.snapshots import Snapshots

        path = self / self.SNAPSHOTS
        if not path.is_file():
            return None
        try:
            return Snapshots.from_file(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise MnistSeqError(f"{path}: unreadable ({e}); remove it to go on without the "
                                "snapshots kept so far") from None

    def read_trial(self) -> dict[str, Any] | None:
        """trial.json (state, settings, validation accuracy) of a sweep's trial, or None."""
        return self.read_json(self.TRIAL) if (self / self.TRIAL).is_file() else None

    def write_trial(self, record: dict[str, Any]) -> Path:
        """trial.json: how a sweep's trial stands (state, settings, value, note)."""
        return self.write_json(self.TRIAL, record)

    def read_json(self, name: str) -> dict[str, Any]:
        """One of the run's JSON files; a one-line error if it is missing or damaged."""
        try:
            return json.loads((self / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MnistSeqError(f"no {name} in {self.path}") from None
        except (OSError, ValueError) as e:
            raise MnistSeqError(f"{self / name}: unreadable ({e})") from None

    # -- writing (nothing at all when this process is not the writer) ------------------

    def write_text(self, name: str | Path, text: str) -> Path:
        path = self._target(name)
        if self.writer:
            atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return path

    def write_bytes(self, name: str | Path, data: bytes) -> Path:
        path = self._target(name)
        if self.writer:
            atomic_write(path, lambda tmp: tmp.write_bytes(data))
        return path

    def write_json(self, name: str | Path, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2) + "\n")

    def write_config(self, config: dict[str, Any]) -> Path:
        from mnist_seq.config import dump_config

        return self.write_text(self.CONFIG, dump_config(config))

    def write_history(self, rows: Rows) -> None:
        """Rewrite history.json and history.csv from the per-epoch records."""
        self.write_json(self.HISTORY_JSON, rows)
        columns = list(HISTORY_COLUMNS) + sorted({k for r in rows for k in r}
                                                 - set(HISTORY_COLUMNS))
        lines = [",".join(columns)]
        lines += [",".join("" if r.get(c) is None else repr(r[c]) for c in columns)
                  for r in rows]
        self.write_text(self.HISTORY_CSV, "\n".join(lines) + "\n")

    def save_model(self, model, name: str | Path) -> Path:
        """A whole model (.keras) or its weights (.weights.h5, optimizer state included)."""
        path = self._target(name)
        if self.writer:
            weights = path.name.endswith(".weights.h5")
            with self.save_scope():
                atomic_write(path, model.save_weights if weights else model.save,
                             staged=True)
        return path

    def save_figure(self, fig, name: str | Path) -> Path:
        path = self._target(name)
        if self.writer:
            return save_figure(fig, path)
        import matplotlib.pyplot as plt

        plt.close(fig)
        return path

    def save_gif(self, frames: list, name: str | Path, durations: list[int]) -> Path:
        """An animated GIF from Pillow images, looping."""
        path = self._target(name)
        if self.writer:
            atomic_write(path, lambda tmp: frames[0].save(
                tmp, save_all=True, append_images=frames[1:], duration=durations, loop=0))
        return path

    def inspect_file(self, kind: str, tag: str = "") -> Path:
        """Where `inspect` puts one of its files (see INSPECT_FILES), folder made."""
        folder = self / self.INSPECT
        if self.writer:
            folder.mkdir(exist_ok=True)
        return folder / INSPECT_FILES[kind].format(tag=tag)

    def _target(self, name: str | Path) -> Path:
        """A file name (str) is in this folder; a Path (from inspect_file, checkpoint) is
        already where it goes."""
        return name if isinstance(name, Path) else self / name

    # -- resume state -----------------------------------------------------------------

    def checkpoint(self, epochs: int) -> Path:
        """The weights and optimizer state after `epochs` epochs, in backup/."""
        return self / self.BACKUP / _CHECKPOINT.format(n=epochs)

    def save_checkpoint(self, model, epochs: int) -> None:
        """Keep the state after `epochs` epochs; the one before is removed once it is saved."""
        if not self.writer:
            return
        (self / self.BACKUP).mkdir(exist_ok=True)
        self.save_model(model, self.checkpoint(epochs))
        for old in self._checkpoints():
            if old != epochs:
                self.checkpoint(old).unlink(missing_ok=True)

    def resume_point(self) -> tuple[Rows, Path | None]:
        """The epochs to keep and the checkpoint to restore for --resume.

        The history says which epochs finished; the checkpoint is saved just after an
        epoch is recorded, so one epoch recorded past the last checkpoint (killed in
        between) is dropped and trained again."""
        rows = self.read_history_or_empty()
        done = max(self._checkpoints(), default=0)
        if not done <= len(rows) <= done + 1:
            raise RunDirError(
                f"cannot resume {self.path}: its history has {len(rows)} epochs but the last "
                f"backup in {self / self.BACKUP} is of epoch {done}")
        return rows[:done], self.checkpoint(done) if done else None

    def _checkpoints(self) -> list[int]:
        prefix, suffix = _CHECKPOINT.split("{n}")
        found = []
        for p in (self / self.BACKUP).glob(_CHECKPOINT.format(n="*")):
            number = p.name.removeprefix(prefix).removesuffix(suffix)
            if number.isdigit():
                found.append(int(number))
        return found

    def remove_backup(self) -> None:
        """Drop the resume state once the run's files are complete."""
        if self.writer:
            shutil.rmtree(self / self.BACKUP, ignore_errors=True)
