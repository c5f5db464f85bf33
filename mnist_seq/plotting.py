"""Pictures: training curves, confusion matrices, galleries of digits.

Each function draws and returns a matplotlib figure; whoever owns the file saves
it (`RunDir.save_figure`, or `rundir.save_figure` for a file outside a run).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from mnist_seq.data import NUM_CLASSES
from mnist_seq.errors import MnistSeqError
from mnist_seq.rundir import Rows, best_epoch


def pyplot():
    """matplotlib's pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def preload() -> None:
    """Import pyplot on a thread of its own: started as training begins, the import (over
    a second) overlaps the first epoch, which runs outside Python's lock, instead of
    delaying the curves drawn after the last one."""
    threading.Thread(target=pyplot, name="import-pyplot", daemon=True).start()


def plot_curves(
    histories: dict[str, Rows],
    metrics: tuple[str, ...] = ("loss", "accuracy"),
    log_loss: bool = False,
):
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
        best = best_epoch(rows)
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
    return fig


def plot_confusion(confusion: list[list[int]], title: str):
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
    return fig


def plot_worst_errors(images: np.ndarray, errors: list[dict[str, Any]], title: str):
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
    return fig


def plot_epoch_seconds(rows: Rows):
    """Seconds per epoch as bars (the first epoch includes graph tracing)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    epochs = [int(r.get("epoch", i)) + 1 for i, r in enumerate(rows)]
    ax.bar(epochs, [r.get("seconds", 0) for r in rows], color="tab:gray")
    ax.set_xlabel("epoch")
    ax.set_ylabel("seconds")
    ax.set_title("time per epoch")
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_history_files(run_dirs: list[str], out: str | None = None,
                       metrics: tuple[str, ...] = (), log_loss: bool = False):
    """Draw the curves of one or more runs into `out`, or else the run's own curves.png
    (one run) or ./runs-history.png (several). Returns the file written."""
    from mnist_seq.files import save_figure
    from mnist_seq.rundir import RunDir

    runs = [RunDir(r) for r in run_dirs]
    fig = plot_curves({r.name: r.read_history() for r in runs},
                      metrics or ("loss", "accuracy"), log_loss=log_loss)
    if out is not None:
        return save_figure(fig, out)
    if len(runs) == 1:
        return runs[0].save_figure(fig, RunDir.CURVES)
    return save_figure(fig, "runs-history.png")


def plot_sweep_history(points: list[tuple[int, float | None, str]]):
    """A sweep's validation accuracy per trial, in trial order, with the best so far.
    `points`: (trial number, value, state); a pruned trial shows its last epoch's."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    styles = {"complete": ("tab:blue", "o"), "pruned": ("tab:gray", "x")}
    for state, (colour, marker) in styles.items():
        xs = [(n, v) for n, v, s in points if s == state and v is not None]
        if xs:
            ax.scatter(*zip(*xs, strict=True), color=colour, marker=marker,
                       label=f"{state} ({len(xs)})", zorder=3)
    best, line = float("-inf"), []
    for n, v, s in sorted(points):
        if s == "complete" and v is not None:
            best = max(best, v)
            line.append((n, best))
    if line:
        ax.step(*zip(*line, strict=True), where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.set_title("sweep: validation accuracy per trial")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def plot_sweep_params(params: dict[str, tuple[list, bool, bool]], values: list[float]):
    """One panel per searched setting: its value against validation accuracy, over the
    completed trials. `params`: key -> (values per trial, log scale, categorical)."""
    plt = pyplot()
    n = len(params)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False, sharey=True)
    for ax, (key, (xs, log, categorical)) in zip(axes[0], params.items(), strict=True):
        if categorical:
            labels = list(dict.fromkeys(str(x) for x in xs))  # in order of first use
            ax.scatter([labels.index(str(x)) for x in xs], values, color="tab:blue")
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        else:
            ax.scatter(xs, values, color="tab:blue")
            if log:
                ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy")
    fig.suptitle(f"sweep: each setting against validation accuracy ({len(values)} trials)")
    return fig


def plot_sweep_curves(histories: dict[str, Rows]):
    """The validation accuracy per epoch of a sweep's best trials, one line each."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, rows in histories.items():
        epochs = [int(r.get("epoch", i)) + 1 for i, r in enumerate(rows)]
        values = [r.get("val_accuracy") for r in rows]
        ax.plot(epochs, values, marker="o", label=f"{name}: {values[-1]:.2%}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"sweep: the best {len(histories)} trials, validation accuracy per epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig
