"""The run folder: its file names, creating it safely, and atomic writes.

A run folder holds config.yaml, history.csv, history.json, model.keras,
best.keras, initial.weights.h5, metrics.json and curves.png. Files are written under a temporary
name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

from mnist_seq.errors import MnistSeqError, RunDirError

CONFIG, HISTORY_CSV, HISTORY_JSON = "config.yaml", "history.csv", "history.json"
MODEL, BEST_MODEL, METRICS, CURVES = "model.keras", "best.keras", "metrics.json", "curves.png"
INITIAL_WEIGHTS = "initial.weights.h5"
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate",
                   "seconds")


def make_run_dir(name: str, run_dir: str | Path | None = None, root: str | Path = "runs") -> Path:
    """Create a new run folder; never reuse one that exists.

    Without `run_dir`, the folder is `root/<name>-<YYYYmmdd-HHMMSS>` (with -2, -3...
    when two runs start in the same second).
    """
    if run_dir is not None:
        path = Path(run_dir)
        if path.exists():
            raise RunDirError(f"run folder already exists: {path}; give a new --run-dir "
                              "(mnist-seq never overwrites a run)")
        candidates = [path]
    else:
        base = Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        candidates = [base] + [base.with_name(f"{base.name}-{i}") for i in range(2, 100)]
    for path in candidates:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise RunDirError(f"cannot create run folder {path}: {e.strerror or e}") from None
    raise RunDirError(f"could not find a free run folder name next to {candidates[0]}")


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise MnistSeqError(f"cannot write {path}: {e.strerror or e}") from None


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_history(run_dir: Path, rows: list[dict[str, float]]) -> None:
    """Rewrite history.json and history.csv (atomically) from the per-epoch records."""
    write_json(run_dir / HISTORY_JSON, rows)
    columns = list(HISTORY_COLUMNS) + sorted({k for r in rows for k in r} - set(HISTORY_COLUMNS))
    lines = [",".join(columns)]
    lines += [",".join("" if r.get(c) is None else repr(r[c]) for c in columns) for r in rows]
    write_text(run_dir / HISTORY_CSV, "\n".join(lines) + "\n")


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    """Per-epoch records of a run, from history.json or else history.csv."""
    run_dir = Path(run_dir)
    if (run_dir / HISTORY_JSON).is_file():
        try:
            rows = json.loads((run_dir / HISTORY_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise MnistSeqError(f"{run_dir / HISTORY_JSON}: unreadable ({e})") from None
    elif (run_dir / HISTORY_CSV).is_file():
        with open(run_dir / HISTORY_CSV, newline="", encoding="utf-8") as f:
            rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    else:
        raise MnistSeqError(f"no {HISTORY_JSON} or {HISTORY_CSV} in {run_dir}: "
                            "is this a mnist-seq run folder?")
    if not isinstance(rows, list) or not rows:
        raise MnistSeqError(f"{run_dir}: the history holds no epochs yet")
    return rows


RUN_COLUMNS = ("name", "model", "params", "epochs", "best_val_accuracy", "test_accuracy",
               "train_seconds")


def summarize_run(run_dir: Path) -> dict[str, Any]:
    """One row about a run folder, whether finished, in progress or resumed."""
    import yaml

    config = yaml.safe_load((run_dir / CONFIG).read_text(encoding="utf-8")) or {}
    metrics = {}
    if (run_dir / METRICS).is_file():
        metrics = json.loads((run_dir / METRICS).read_text(encoding="utf-8"))
    try:
        rows = read_history(run_dir)
    except MnistSeqError:
        rows = []
    val = [r["val_accuracy"] for r in rows if "val_accuracy" in r]
    return {
        "name": run_dir.name,
        "path": str(run_dir),
        "model": (config.get("model") or {}).get("type"),
        "params": metrics.get("params"),
        "epochs": len(rows),
        "best_val_accuracy": max(val) if val else None,
        "test_accuracy": metrics.get("test_accuracy"),
        "train_seconds": metrics.get("train_seconds"),
    }


def list_runs(root: str | Path = "runs", sort: str = "name") -> list[dict[str, Any]]:
    """Every run folder (one holding config.yaml) under `root`, sorted by a column."""
    root = Path(root)
    if not root.is_dir():
        raise MnistSeqError(f"no runs folder at {root}")
    if sort not in RUN_COLUMNS:
        raise MnistSeqError(f"cannot sort by {sort!r}: expected one of {', '.join(RUN_COLUMNS)}")
    found = []
    for config in sorted(root.rglob(CONFIG)):
        try:
            found.append(summarize_run(config.parent))
        except (OSError, ValueError) as e:  # a damaged run must not hide the others
            found.append({"name": config.parent.name, "path": str(config.parent),
                          "error": str(e)[:100]})
    # Missing values sort last; names ascend, figures descend (best first).
    descending = sort != "name"
    present = [r for r in found if r.get(sort) is not None]
    missing = [r for r in found if r.get(sort) is None]
    return sorted(present, key=lambda r: r[sort], reverse=descending) + missing


def format_runs(rows: list[dict[str, Any]]) -> str:
    """The runs as an aligned text table."""
    def cell(row, col):
        value = row.get(col)
        if value is None:
            return "-"
        if col.endswith("accuracy"):
            return f"{100 * value:.2f}%"
        if col == "params":
            return f"{value:,}"
        if col == "train_seconds":
            return f"{value:.0f}s"
        return str(value)

    table = [list(RUN_COLUMNS)] + [[cell(r, c) for c in RUN_COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(RUN_COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
                     for line in table)
