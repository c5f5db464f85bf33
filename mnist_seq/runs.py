"""`mnist-seq runs`: a table of the run folders under a root, sortable by any column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnist_seq.errors import MnistSeqError
from mnist_seq.rundir import RunDir, best_epoch

RUN_COLUMNS = ("name", "model", "params", "epochs", "best_val_accuracy", "test_accuracy",
               "train_seconds")


def summarize_run(run: RunDir) -> dict[str, Any]:
    """One row about a run folder, whether finished, in progress or resumed."""
    config = run.read_config(check=False)
    metrics = run.read_metrics() if run.finished else {}
    rows = run.read_history_or_empty()
    best = best_epoch(rows)
    return {
        "name": run.name,
        "path": str(run.path),
        "model": (config.get("model") or {}).get("type"),
        "params": metrics.get("params"),
        "epochs": len(rows),
        "best_val_accuracy": None if best is None else rows[best].get("val_accuracy"),
        "test_accuracy": metrics.get("test_accuracy"),
        "train_seconds": metrics.get("train_seconds"),
    }


def list_runs(root: str | Path = "runs", sort: str = "name") -> list[dict[str, Any]]:
    """Every run folder under `root`, sorted by a column (figures best first)."""
    if not Path(root).is_dir():
        raise MnistSeqError(f"no runs folder at {root}")
    if sort not in RUN_COLUMNS:
        raise MnistSeqError(f"cannot sort by {sort!r}: expected one of {', '.join(RUN_COLUMNS)}")
    found = []
    for run in RunDir.find(root):
        try:
            found.append(summarize_run(run))
        except (OSError, ValueError, MnistSeqError) as e:  # a damaged run must not hide others
            found.append({"name": run.name, "path": str(run.path), "error": str(e)[:100]})
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
