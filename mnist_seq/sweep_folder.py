"""The sweep folder: one object that knows every file of a sweep and writes them.

    sweep.json    the spec, the storage and the study     study.db     the default storage
    trial-0003/   one run folder per trial run here       best.yaml    the best trial's config
    best.json     the best trial and its one test score   .sweep.lock  one command at a time
    history.png, params.png, best-curves.png              the pictures

Each trial is a normal run folder (`RunDir`) with a trial.json beside its files: its
state (running, complete, pruned, failed, interrupted), settings, value, a note and how
many times it was continued after a stop.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mnist_seq.errors import RunDirError
from mnist_seq.files import atomic_write, save_figure
from mnist_seq.rundir import RunDir


class SweepFolder:
    """One sweep folder: its file names, its locks, its trials' run folders and records."""

    STATE, DB, BEST_CONFIG, BEST = "sweep.json", "study.db", "best.yaml", "best.json"
    HISTORY, PARAMS, CURVES = "history.png", "params.png", "best-curves.png"
    LOCK, ASK_LOCK = ".sweep.lock", ".ask.lock"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SweepFolder({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def default_storage(self) -> str:
        """The study's storage unless --storage says otherwise: SQLite in this folder."""
        return f"sqlite:///{(self / self.DB).absolute()}"

    def claim(self, spec: dict[str, Any], storage: str) -> None:
        """Make a new folder, or check that an existing one holds a sweep of the same spec
        and storage (`storage` as shown: its password hidden)."""
        state = self / self.STATE
        if state.is_file():
            try:
                saved = json.loads(state.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise RunDirError(f"{state} is unreadable ({e}); use a new --sweep-dir") from None
            if saved.get("spec") != spec:
                raise RunDirError(f"{self.path} holds a sweep of another spec; give a new "
                                  "--sweep-dir to start this one")
            if saved.get("storage") != storage:
                raise RunDirError(f"{self.path} keeps its study in {saved.get('storage')}; "
                                  "give the same --storage to continue it")
            return
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise RunDirError(f"{self.path} exists and is not a sweep folder; give a new "
                              "--sweep-dir")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create sweep folder {self.path}: "
                              f"{e.strerror or e}") from None

    def write_state(self, study: str, storage: str, spec: dict[str, Any]) -> None:
        """sweep.json: what `claim` checks when the folder is used again."""
        self._write(self.STATE, json.dumps({"study": study, "storage": storage, "spec": spec},
                                           indent=2))

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """One sweep command per folder at a time (machines sharing a study use a folder
        each)."""
        with open(self / self.LOCK, "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise RunDirError(f"another sweep is running in {self.path}") from None
            yield

    @contextlib.contextmanager
    def asking(self) -> Iterator[None]:
        """Workers on this machine ask for trials one at a time, so that together they never
        start more trials than the spec wants."""
        with open(self / self.ASK_LOCK, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    # -- trials -------------------------------------------------------------------------

    def trial(self, number: int) -> RunDir:
        """The run folder of trial `number`."""
        return RunDir(self / f"trial-{number:04d}")

    def mark(self, number: int, values: dict[str, Any], state: str, note: str = "",
             value: float | None = None, *, run: RunDir | None = None,
             resumed: int | None = None) -> None:
        """Record how trial `number` stands in its run folder's trial.json (`run`: a run
        folder elsewhere that the trial continues). `resumed` counts the times it was
        continued after a stop (None: as recorded before)."""
        run = run or self.trial(number)
        if resumed is None:
            resumed = (run.read_trial() or {}).get("resumed", 0) if run.path.is_dir() else 0
        run.write_trial({"trial": number, "state": state, "value": value, "params": values,
                         "note": note, "resumed": resumed})

    # -- results ------------------------------------------------------------------------

    def write_best_config(self, text: str) -> Path:
        return self._write(self.BEST_CONFIG, text)

    def read_best(self) -> dict[str, Any] | None:
        """best.json, or None before the sweep first finished."""
        path = self / self.BEST
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def write_best(self, summary: dict[str, Any]) -> None:
        self._write(self.BEST, json.dumps(summary, indent=2))

    def save_figure(self, fig, name: str) -> Path:
        return save_figure(fig, self / name)

    def _write(self, name: str, text: str) -> Path:
        return atomic_write(self / name, lambda p: p.write_text(text, encoding="utf-8"))
