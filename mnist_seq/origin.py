"""What a run started on: its backend, the MNIST folder it read and its distribution.

Written as started.json when a new run folder is made, before its first epoch, so a
run killed at any moment has it. `--resume` continues on that backend and folder
without being told; `evaluate`, `inspect` and `export` read that folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnist_seq.errors import ConfigError, DataError
from mnist_seq.options import RuntimeOptions
from mnist_seq.rundir import RunDir


def record(run: RunDir, backend: str, data_source: str,
           distributed: dict[str, Any] | None) -> None:
    """Write started.json (the data folder as an absolute path: a later command may run
    from another folder)."""
    run.write_json(RunDir.STARTED, {"backend": backend,
                                    "data_dir": str(Path(data_source).resolve()),
                                    "distributed": distributed})


def read(run: RunDir) -> dict[str, Any]:
    """started.json's facts ({} for a run from before it was written, or none)."""
    return run.read_json(RunDir.STARTED) if (run / RunDir.STARTED).is_file() else {}


def data_dir(run: RunDir, given: str | None) -> str | None:
    """The MNIST folder for a command on `run`: --data-dir if given, else the one the run
    read (a DataError if it is gone), else None (the usual search)."""
    if given:
        return given
    folder = read(run).get("data_dir")
    if folder and not Path(folder).exists():
        raise DataError(f"{run.path} read MNIST from {folder}, which is not there now: "
                        "point to the files with --data-dir DIR")
    return folder


def resume_options(run: RunDir, options: RuntimeOptions,
                   log: Callable[[str], None] = print) -> RuntimeOptions:
    """The options `--resume RUN` continues with: the run's own backend and data folder
    unless given. Another --backend is honoured with a note on one process, refused over
    several (every process must restore what the others saved)."""
    started = read(run)
    was = started.get("backend")
    changes: dict[str, Any] = {"data_dir": data_dir(run, options.data_dir)}
    several = (started.get("distributed") or {}).get("processes", 1) > 1 or (
        options.distribute is not None and options.distribute.several_processes)
    if was and options.backend is None:
        changes["backend"] = was
    elif was and options.backend != was:
        if several:
            raise ConfigError(f"{run.path} started on {was} over several processes and "
                              f"continues on it: drop --backend {options.backend}")
        log(f"Note: {run.path} started on {was}; continuing on {options.backend}, as "
            "--backend says")
    return dataclasses.replace(options, **changes)
