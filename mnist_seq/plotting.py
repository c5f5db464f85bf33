"""Pictures as PNG: training curves, confusion matrices, galleries of digits."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mnist_seq.data import NUM_CLASSES
from mnist_seq.errors import MnistSeqError

Rows = list[dict[str, float]]


def pyplot():
    """matplotlib's pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path) -> Path:
    """Save a figure as PNG atomically (temporary name, then rename) and close it."""
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():  # a text-only panel can defeat tight_layout: harmless
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


def plot_curves(
    histories: dict[str, Rows],
    out: str | Path,
    metrics: tuple[str, ...] = ("loss", "accuracy"),
    log_loss: bool = False,
) -> Path:
    """Draw one panel per metric; training solid, validation dashed, best epoch marked.

    With several runs, each run gets one colour and the legend names it.
    """
    # "val_loss" means the loss panel, which draws both curves.
    metrics = tuple(dict.fromkeys(m.removeprefix("val_") for m in metrics))
    recorded = {k.removeprefix("val_") for rows in histories.values() for r in rows for k in r}
    for metric in metrics:
        if metric not in recorded:
            raise MnistSeqError(f"no metric '{metric}' in the history; recorded: "
                                f"{', '.join(sorted(recorded - {'epoch'}))}")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rows) in enumerate(histories.items()):
        colour = colours[i % len(colours)]
        epochs = [int(r.get("epoch", n)) + 1 for n, r in enumerate(rows)]
        best = _best_epoch(rows)
        for ax, metric in zip(axes[0], metrics, strict=True):
            label = "" if len(histories) == 1 else f"{name} "
            has_val = any(f"val_{metric}" in r for r in rows)
            train_what = "training" if has_val else metric.replace("_", " ")
            for key, style, what in ((metric, "-", train_what), (f"val_{metric}", "--",
                                                                  "validation")):
                values = [r.get(key) for r in rows]
                if all(v is None for v in values):
                    continue
                ax.plot(epochs, values, style, color=colour, marker="o", markersize=3,
                        label=f"{label}{what}")
                if best is not None and key == f"val_{metric}" and values[best] is not None:
                    ax.plot(epochs[best], values[best], "*", color=colour, markersize=14,
                            markeredgecolor="black",
                            label=f"{label}best epoch ({epochs[best]})")
    for ax, metric in zip(axes[0], metrics, strict=True):
        ax.set_title(metric.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if log_loss and "loss" in metric:
            ax.set_yscale("log")
    title = next(iter(histories)) if len(histories) == 1 else f"{len(histories)} runs"
    fig.suptitle(title)
    return save_figure(fig, Path(out))


def _best_epoch(rows: Rows) -> int | None:
    """Index of the epoch with the best validation accuracy (or lowest validation loss)."""
    if any("val_accuracy" in r for r in rows):
        return max(range(len(rows)), key=lambda i: rows[i].get("val_accuracy", float("-inf")))
    if any("val_loss" in r for r in rows):
        return min(range(len(rows)), key=lambda i: rows[i].get("val_loss", float("inf")))
    return None


def plot_confusion(confusion: list[list[int]], out: Path, title: str) -> Path:
    """The confusion matrix as a heatmap, counts written in each cell."""
    plt = pyplot()
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    # Log colour scale: the diagonal's thousands would otherwise hide the errors.
    im = ax.imshow(np.log10(matrix + 1), cmap="Blues")
    for (r, c), v in np.ndenumerate(matrix):
        ax.text(c, r, str(v), ha="center", va="center", fontsize=8,
                color="white" if r == c else ("black" if v == 0 else "darkred"))
    ax.set_xticks(range(NUM_CLASSES))
    ax.set_yticks(range(NUM_CLASSES))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="log10(count + 1)")
    return save_figure(fig, out)


def plot_worst_errors(images: np.ndarray, errors: list[dict[str, Any]], out: Path,
                      title: str) -> Path:
    """A 5x5 gallery of the most confidently wrong digits."""
    plt = pyplot()
    fig, axes = plt.subplots(5, 5, figsize=(8, 9))
    for ax, err in zip(axes.flat, errors + [None] * (25 - len(errors)), strict=True):
        ax.axis("off")
        if err is None:
            continue
        ax.imshow(images[err["index"]], cmap="gray_r")
        ax.set_title(f"true {err['label']}  pred {err['predicted']}\n"
                     f"{100 * err['confidence']:.1f}%  (#{err['index']})", fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, out)


def plot_epoch_seconds(rows: Rows, out: Path) -> Path:
    """Seconds per epoch as bars (the first epoch includes graph tracing)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    epochs = [int(r.get("epoch", i)) + 1 for i, r in enumerate(rows)]
    ax.bar(epochs, [r.get("seconds", 0) for r in rows], color="tab:gray")
    ax.set_xlabel("epoch")
    ax.set_ylabel("seconds")
    ax.set_title("time per epoch")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out)
