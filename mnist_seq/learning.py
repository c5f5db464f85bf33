"""Pictures of the network learning, for `inspect` and the report: the snapshots kept
while it trained (the weights after each named batch and epoch, an animation of them, how
far they moved per batch; an LSTM's reading of one digit after each epoch), which pixels
decided one digit (`saliency.py`), and the map of digits (`digit_map.py`)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from mnist_seq.plotting import pyplot
from mnist_seq.rundir import RunDir
from mnist_seq.snapshots import Snapshots

COLOURS = "tab10"
MISTAKES_SHOWN = 8  # a projection


def _weights_in(snapshots: Snapshots) -> str:
    return ("first-convolution filters" if snapshots.kind == "cnn"
            else "first-layer units' input weights")


def _on_one_scale(snapshots: Snapshots) -> tuple[np.ndarray, np.ndarray]:
    """The kept weights, (snapshots, filters, h, w), and each filter's largest value over
    all of them: one colour scale per filter throughout, so its changes show."""
    values = np.stack(snapshots.values)
    return values, np.abs(values).max(axis=(0, 2, 3)) + 1e-12


def weights_still(snapshots: Snapshots, title: str):
    """Every kept set of weights, one row each, every filter to one scale across rows."""
    values, limits = _on_one_scale(snapshots)
    n_rows, n_cols = values.shape[:2]
    plt = pyplot()
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False,
                             figsize=(max(6.0, 0.55 * n_cols) + 1.6, 0.6 * n_rows + 1.2))
    for r, label in enumerate(snapshots.labels()):
        for f in range(n_cols):
            ax = axes[r][f]
            ax.imshow(values[r, f], cmap="RdBu_r", vmin=-limits[f], vmax=limits[f])
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{title}: the {_weights_in(snapshots)} as training went on (red +, blue -; "
                 "each filter on one scale throughout)\nthey change only when a batch "
                 "ends: one update per batch, from the gradient averaged over the batch",
                 fontsize=9)
    return fig


def weights_frames(snapshots: Snapshots, title: str) -> list:
    """Animation frames: the weights after each kept batch, labelled."""
    from PIL import Image

    values, limits = _on_one_scale(snapshots)
    n = values.shape[1]
    cols = min(n, 8)
    rows = -(-n // cols)
    plt = pyplot()
    frames = []
    for i, label in enumerate(snapshots.labels()):
        fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(1.0 * cols, 1.0 * rows + 0.7))
        for ax in axes.flat:
            ax.set_axis_off()
        for f in range(n):
            axes[f // cols][f % cols].imshow(values[i, f], cmap="RdBu_r", vmin=-limits[f],
                                             vmax=limits[f])
        fig.suptitle(f"{title}\n{label}", fontsize=9)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        frames.append(Image.open(buffer).convert("P", palette=Image.Palette.ADAPTIVE))
    return frames


def weights_moved(snapshots: Snapshots, title: str):
    """How far each filter moved per batch between kept snapshots, and from the start."""
    values = np.stack(snapshots.values).reshape(len(snapshots.steps), -1,
                                                np.prod(snapshots.values[0].shape[1:]))
    steps = np.array(snapshots.steps)
    per_batch = np.linalg.norm(np.diff(values, axis=0), axis=2) / np.diff(steps)[:, None]
    from_start = np.linalg.norm(values - values[0], axis=2)
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(steps[1:], per_batch, color="tab:blue", alpha=0.35, lw=0.8)
    a.plot(steps[1:], per_batch.mean(axis=1), color="black", lw=2, marker="o", label="mean")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("batches trained (log scale)")
    a.set_ylabel("distance moved per batch (L2, mean\nbetween snapshots; log scale)")
    a.set_title("every batch moves every filter a little:\none update per batch, none within")
    a.legend(fontsize=8)
    b.plot(steps, from_start, color="tab:orange", alpha=0.35, lw=0.8)
    b.plot(steps, from_start.mean(axis=1), color="black", lw=2, marker="o", label="mean")
    b.set_xscale("symlog", linthresh=1)
    b.set_xlabel("batches trained")
    b.set_ylabel("distance from the initial weights (L2)")
    b.set_title("how far each has come from its random start")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: the {_weights_in(snapshots)}, one line each", fontsize=10)
    fig.tight_layout()
    return fig


def lstm_learning(snapshots: Snapshots, title: str):
    """The LSTM's probabilities after each row read, for one digit, after each epoch."""
    n = len(snapshots.steps)
    plt = pyplot()
    fig, axes = plt.subplots(1, n + 1, figsize=(2.3 * (n + 1) + 1, 3.6), squeeze=False)
    axes = axes[0]
    axes[0].imshow(snapshots.digit, cmap="gray_r")
    axes[0].set_title("the digit", fontsize=9)
    axes[0].set_axis_off()
    for ax, label, probs in zip(axes[1:], snapshots.labels(), snapshots.values, strict=True):
        ax.imshow(probs.T, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_yticks(range(10))
        ax.set_xlabel("rows read", fontsize=8)
        ax.set_title(f"{label}\nanswer {int(probs[-1].argmax())} "
                     f"({probs[-1].max():.0%})", fontsize=8)
    axes[1].set_ylabel("P(class)")
    fig.suptitle(f"{title}: the LSTM reading one test digit row by row, after each epoch",
                 fontsize=10)
    fig.tight_layout()
    return fig


def snapshot_pictures(run: RunDir, snapshots: Snapshots) -> list[Path]:
    """The pictures a run's snapshots make, into RUN/inspect/."""
    if snapshots.kind == "lstm":
        return [run.save_figure(lstm_learning(snapshots, run.name), run.inspect_file("learning"))]
    frames = weights_frames(snapshots, run.name)
    return [run.save_figure(weights_still(snapshots, run.name), run.inspect_file("learning")),
            run.save_gif(frames, run.inspect_file("learning_gif"),
                         [700] * (len(frames) - 1) + [2500]),
            run.save_figure(weights_moved(snapshots, run.name), run.inspect_file("moved"))]


def saliency_picture(digit: np.ndarray, saliency, title: str):
    """The digit, and for the answer and the runner-up each pixel's push drawn over it."""
    scale = np.abs(saliency.maps).max() or 1.0
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10, 4.2), layout="constrained")
    axes[0].imshow(digit, cmap="gray_r")
    axes[0].set_title("the digit", fontsize=9)
    for ax, c, p, m in zip(axes[1:], saliency.classes, saliency.probabilities, saliency.maps,
                           strict=True):
        ax.imshow(digit, cmap="gray", alpha=0.35)
        im = ax.imshow(m, cmap="RdBu_r", vmin=-scale, vmax=scale, alpha=0.85)
        ax.set_title(f"towards {c} (p = {p:.1%})\nred pushed for it, blue against; "
                     f"sum {m.sum():+.2f}", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(im, ax=axes[1:], shrink=0.8)
    fig.suptitle(f"{title}: which pixels decided (integrated gradients from a black image)",
                 fontsize=10)
    return fig


def digit_map_picture(maps: list, images: np.ndarray, title: str):
    """Each projection, from the initial and the trained weights, coloured by true digit,
    mistakes marked; a few mistakes drawn beside."""
    plt = pyplot()
    cmap = plt.get_cmap(COLOURS)
    fig = plt.figure(figsize=(11, 4.6 * len(maps) + 0.6), layout="constrained")
    grid = fig.add_gridspec(len(maps), 3, width_ratios=[1, 1, 0.45])
    for row, m in enumerate(maps):
        wrong = np.flatnonzero(m.predicted != m.labels)
        panels = [("initial weights", m.initial), ("trained", m.trained)]
        for col, (name, xy) in enumerate(panels):
            ax = fig.add_subplot(grid[row, col])
            ax.set_xticks([])
            ax.set_yticks([])
            if xy is None:
                ax.text(0.5, 0.5, "no initial weights kept", ha="center", transform=ax.transAxes)
                continue
            ax.scatter(xy[:, 0], xy[:, 1], c=cmap(m.labels % 10), s=4, alpha=0.7, lw=0)
            if name == "trained":  # the trained model's mistakes
                ax.scatter(xy[wrong, 0], xy[wrong, 1], facecolors="none", edgecolors="black",
                           s=30, lw=0.8)
            ax.set_title(f"{m.method}, {name}", fontsize=9)
    # The same mistakes under every projection: drawn once, beside them all.
    wrong = np.flatnonzero(maps[0].predicted != maps[0].labels)
    _mistakes(fig, grid[:, 2], images, maps[0], wrong[:MISTAKES_SHOWN * len(maps)])
    handles = [plt.Line2D([], [], ls="", marker="o", color=cmap(d), label=str(d))
               for d in range(10)]
    handles.append(plt.Line2D([], [], ls="", marker="o", mfc="none", mec="black",
                              label="misclassified"))
    fig.legend(handles=handles, loc="outside lower center", ncol=11, fontsize=8)
    fig.suptitle(f"{title}: {len(images):,} test digits as the layer before the "
                 "classifier sees them", fontsize=10)
    return fig


def _mistakes(fig, cell, images: np.ndarray, m, shown: np.ndarray) -> None:
    sub = cell.subgridspec(max(1, -(-len(shown) // 2)), 2)
    for k, i in enumerate(shown):
        ax = fig.add_subplot(sub[k // 2, k % 2])
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"{m.labels[i]} read as {m.predicted[i]}", fontsize=7)
        ax.set_axis_off()
    if not len(shown):
        ax = fig.add_subplot(sub[0, 0])
        ax.text(0, 0.5, "no mistakes", fontsize=9)
        ax.set_axis_off()
