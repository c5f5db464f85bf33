"""Writing files whole or not at all: a temporary name beside the file, then a rename.

A full disk, a folder without permission or a file system that fails halfway leaves
the file as it was (or absent) and raises `WriteError`, naming the file and why.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mnist_seq.errors import WriteError, first_line


def atomic_write(path: str | Path, write: Callable[[Path], Any], staged: bool = False) -> Path:
    """Have `write(tmp)` write a temporary file beside `path`, then rename it to `path`.

    The temporary name keeps the file's suffix (Keras, matplotlib and Pillow choose
    the format by it). A failure removes the temporary file and raises WriteError.
    `staged` has `write` write in memory first (see `_staged`)."""
    path = Path(path)
    stem, dot, suffix = path.name.partition(".")
    tmp = path.with_name(f".{stem}.tmp{dot}{suffix}")
    # h5py's objects for a file it failed to write complain again as they are freed
    # ("Exception ignored in ... __dealloc__"): they are freed here, in silence.
    with _unraisable_muted():
        reason = _write(functools.partial(_staged, write) if staged else write, tmp, path)
        if reason is not None:
            gc.collect()
    if reason is not None:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise WriteError(f"cannot write {path}: {reason}", path)
    return path


# A folder in memory, where the system has one.
MEMORY = "/dev/shm"


def _staged(write: Callable[[Path], Any], tmp: Path) -> None:
    """`write` a file in memory, then copy its bytes to `tmp`. HDF5 (Keras's weights)
    does not survive a disk that fills under it: its objects for the failed file print
    tracebacks as they are freed, at any later moment, and now and then crash the
    process. Copied by Python, a full disk is one OSError."""
    memory = MEMORY if os.access(MEMORY, os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=memory) as folder:
        staged = Path(folder) / tmp.name
        write(staged)
        shutil.copyfile(staged, tmp)


def _write(write: Callable[[Path], Any], tmp: Path, path: Path) -> str | None:
    """None once `path` is written; else why not, in a few words."""
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        return _reason(e)
    except RuntimeError as e:  # h5py says a failed write this way
        if "errno = " not in str(e):
            raise
        return _reason(e)
    return None


def _reason(e: Exception) -> str:
    """A write error in a few words: a full disk is said as the OS says it, whichever
    library met it (h5py puts the errno in its message)."""
    if getattr(e, "errno", None) == errno.ENOSPC or f"errno = {errno.ENOSPC}," in str(e):
        return os.strerror(errno.ENOSPC)
    return getattr(e, "strerror", None) or first_line(e, 120)


@contextlib.contextmanager
def _unraisable_muted() -> Iterator[None]:
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        sys.unraisablehook = hook


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import warnings

    import matplotlib.pyplot as plt

    if fig.get_layout_engine() is None:  # a figure laid out as it was made keeps that
        with warnings.catch_warnings():  # a text-only panel can defeat tight_layout: harmless
            warnings.simplefilter("ignore", UserWarning)
            fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)
