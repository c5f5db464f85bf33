"""Training curves as PNG: loss and accuracy side by side, training vs validation."""

from __future__ import annotations

import os
from pathlib import Path

Rows = list[dict[str, float]]


def plot_curves(
    histories: dict[str, Rows],
    out: str | Path,
    metrics: tuple[str, ...] = ("loss", "accuracy"),
    log_loss: bool = False,
) -> Path:
    """Draw one panel per metric; training solid, validation dashed, best epoch marked.

    With several runs, each run gets one colour and the legend names it.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rows) in enumerate(histories.items()):
        colour = colours[i % len(colours)]
        epochs = [int(r.get("epoch", n)) + 1 for n, r in enumerate(rows)]
        best = _best_epoch(rows)
        for ax, metric in zip(axes[0], metrics, strict=True):
            label = "" if len(histories) == 1 else f"{name} "
            for key, style, what in ((metric, "-", "training"), (f"val_{metric}", "--",
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
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")  # atomic: no half-written PNG
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def _best_epoch(rows: Rows) -> int | None:
    """Index of the epoch with the best validation accuracy (or lowest validation loss)."""
    if any("val_accuracy" in r for r in rows):
        return max(range(len(rows)), key=lambda i: rows[i].get("val_accuracy", float("-inf")))
    if any("val_loss" in r for r in rows):
        return min(range(len(rows)), key=lambda i: rows[i].get("val_loss", float("inf")))
    return None
