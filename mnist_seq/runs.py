"""`mnist-seq runs`: a table of the run folders under a root, sortable by any column.

A sweep folder's trials get a table of their own: state, validation accuracy (what the
sweep maximises), each searched setting and how often it was resumed, best first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnist_seq.errors import MnistSeqError
from mnist_seq.rundir import RunDir, best_epoch

RUN_COLUMNS = ("name", "model", "params", "epochs", "best_val_accuracy", "test_accuracy",
               "train_seconds")
# resumed: how many times a trial was continued after its sweep was stopped.
TRIAL_COLUMNS = ("name", "state", "val_accuracy", "epochs", "resumed", "train_seconds")
SORTABLE = (*RUN_COLUMNS, "val_accuracy", "state")


def summarize_run(run: RunDir) -> dict[str, Any]:
    """One row about a run folder, whether finished, in progress or resumed."""
    config = run.read_config(check=False)
    metrics = run.read_metrics() if run.finished else {}
    rows = run.read_history_or_empty()
    best = best_epoch(rows)
    trial = run.read_trial()
    return {
        **({"state": trial["state"], "settings": trial["params"],
            "resumed": trial.get("resumed") or None} if trial else {}),
        "val_accuracy": rows[-1].get("val_accuracy") if rows else None,
        "name": run.name,
        "path": str(run.path),
        "model": (config.get("model") or {}).get("type"),
        "params": metrics.get("params"),
        "epochs": len(rows),
        "best_val_accuracy": None if best is None else rows[best].get("val_accuracy"),
        "test_accuracy": metrics.get("test_accuracy"),
        "train_seconds": metrics.get("train_seconds"),
    }


def list_runs(root: str | Path = "runs", sort: str | None = None) -> list[dict[str, Any]]:
    """Every run folder under `root`, sorted by a column (figures best first; by default
    names, or validation accuracy for a sweep's trials)."""
    if not Path(root).is_dir():
        raise MnistSeqError(f"no runs folder at {root}")
    if sort is None:
        sort = "val_accuracy" if any(Path(root).glob(f"*/{RunDir.TRIAL}")) else "name"
    if sort not in SORTABLE:
        raise MnistSeqError(f"cannot sort by {sort!r}: expected one of {', '.join(SORTABLE)}")
    found = []
    for run in RunDir.find(root):
        try:
            found.append(summarize_run(run))
        except (OSError, ValueError, MnistSeqError) as e:  # a damaged run must not hide others
            found.append({"name": run.name, "path": str(run.path), "error": str(e)[:100]})
    # Missing values sort last; names ascend, figures descend (best first).
    descending = sort not in ("name", "state")
    # A sweep's pruned, failed or interrupted trials come after its complete ones.
    present = [r for r in found
               if r.get(sort) is not None and r.get("state") in (None, "complete")]
    missing = [r for r in found if r not in present]
    return (sorted(present, key=lambda r: r[sort], reverse=descending)
            + sorted(missing, key=lambda r: r["name"]))


def format_runs(rows: list[dict[str, Any]]) -> str:
    """The runs as an aligned text table (a sweep's trials with their settings)."""
    columns = RUN_COLUMNS
    if any("state" in r for r in rows):
        keys = list(dict.fromkeys(k for r in rows for k in r.get("settings") or {}))
        columns = (*TRIAL_COLUMNS[:3], *keys, *TRIAL_COLUMNS[3:])
        rows = [{**r, **(r.get("settings") or {})} for r in rows]

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
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    table = [list(columns)] + [[cell(r, c) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
                     for line in table)
