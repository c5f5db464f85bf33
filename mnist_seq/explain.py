"""Pictures of how a trained network sees one digit (`inspect`), and what `serve` shows
beside each answer.

Every model gets a table of its layers, each shape explained in a sentence.
LSTMs: the digit as 28 timesteps, each layer's hidden state over time, and the
class probabilities after every row (also as a GIF), plus test accuracy against
the number of rows read. CNNs: first-layer filters before and after training,
and every convolution's feature maps. MLPs: the input weights of the units the
digit excites most.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_seq.data import to_float
from mnist_seq.models import build_lstm, build_model
from mnist_seq.plotting import pyplot
from mnist_seq.rundir import RunDir


def explain_layer(layer) -> str:
    """One plain sentence on why a layer's output has its shape."""
    kind = layer.__class__.__name__
    shape = tuple(layer.output.shape)
    out = shape[1:]
    if kind == "InputLayer":
        return (f"{shape}: the batch of images. An LSTM reads it as 28 timesteps (rows) of "
                "28 features (pixels): (samples, timesteps, features).")
    if kind == "LSTM":
        n = layer.units
        if layer.return_sequences:
            return (f"{shape}: {out[0]} timesteps x {n} units, because return_sequences=True "
                    f"hands every step's hidden state h0..h{out[0] - 1} to the next layer. "
                    f"Params: 4 gates x ({layer.input.shape[-1]} inputs + {n} recurrent + 1 "
                    f"bias) x {n} units.")
        return (f"{shape}: only the last hidden state (after the last row) of {n} units, "
                "because return_sequences=False: the layer has read the whole digit.")
    if kind == "Reshape":
        return (f"{shape}: adds a channel axis, (samples, height, width, channels); "
                "a grayscale image has 1 channel.")
    if kind == "Conv2D":
        k = layer.kernel_size
        cin = layer.input.shape[-1]
        size = ("'same' padding keeps the height and width" if layer.padding == "same"
                else f"'valid' padding loses {k[0] - 1} pixels: {layer.input.shape[1]} - "
                     f"{k[0]} + 1 = {out[0]}")
        return (f"{shape}: {layer.filters} filters of {k[0]}x{k[1]} slide over the input; "
                f"{size}; depth {out[-1]} = one feature map per filter. Params: {k[0]}x{k[1]}"
                f"x{cin} weights x {layer.filters} filters"
                + (f" + {layer.filters} biases." if layer.use_bias else " (no bias)."))
    if kind == "MaxPooling2D":
        p = layer.pool_size[0]
        return (f"{shape}: keeps the largest value of each {p}x{p} window, so height and "
                f"width shrink {p}x ({layer.input.shape[1]} -> {out[0]}); depth unchanged.")
    if kind == "Flatten":
        dims = " x ".join(str(d) for d in layer.input.shape[1:])
        return f"{shape}: {dims} = {out[0]} values in one row, for the dense layer."
    if kind == "Dropout":
        return (f"{shape}: same shape; while training, zeroes {layer.rate:.0%} of the values "
                "at random (off when predicting).")
    if kind.startswith("Random"):
        return (f"{shape}: same shape; moves the digit a little at random while training, "
                "so the model sees more varied digits (off when predicting).")
    if kind == "BatchNormalization":
        return (f"{shape}: same shape; rescales each of the {out[-1]} channels to a steady "
                "mean and spread, which lets training use larger steps.")
    if kind == "Activation":
        return f"{shape}: same shape; applies {layer.activation.__name__} to every value."
    if kind == "Dense":
        what = ("10 probabilities, one per digit, summing to 1" if out[-1] == 10 and
                layer.activation.__name__ == "softmax" else f"{out[-1]} units")
        return (f"{shape}: {what}; every unit sees all {layer.input.shape[-1]} inputs. "
                f"Params: {layer.input.shape[-1]} x {out[-1]} weights + {out[-1]} biases.")
    return f"{shape}"


def layer_table(model) -> str:
    """The model's layers with output shape, parameter count and the sentence."""
    lines = [f"{'layer':<12} {'output shape':<20} {'params':>9}  why"]
    for layer in model.layers:
        lines.append(f"{layer.name:<12} {str(tuple(layer.output.shape)):<20} "
                     f"{layer.count_params():>9,}  {explain_layer(layer)}")
    lines.append(f"total parameters: {model.count_params():,}")
    return "\n".join(lines)


@dataclass
class Shown:
    """What `inspect` draws: one digit as one run's model reads it. `others` are the
    further runs given, loaded, for pictures that compare runs."""

    run: RunDir
    config: dict[str, Any]
    model: Any
    digit: np.ndarray
    tag: str  # names the digit in file names: test3, my-digit
    title: str
    test: Any  # the MNIST test set (x_test, y_test)
    others: list[tuple[str, Any, dict[str, Any]]]  # (name, model, config) of each


def lstm_pictures(shown: Shown) -> list[Path]:
    """The LSTM reading the digit row by row, and test accuracy against rows read for
    this run and every other LSTM run given."""
    run = shown.run
    probe = lstm_probe(shown.model, shown.config)
    written = lstm_reading(probe, shown.digit, run, shown.tag, shown.title)
    probes = {run.name: probe}  # the first run's probe is reused
    for name, model, config in shown.others:
        if config["model"]["type"] == "lstm":
            probes[name] = lstm_probe(model, config)
    written.append(run.save_figure(rows_read_accuracy(probes, shown.test.x_test,
                                                      shown.test.y_test),
                                   run.inspect_file("rows_read")))
    return written


def mlp_pictures(shown: Shown) -> list[Path]:
    """The input weights of the units the digit excites most."""
    return [shown.run.save_figure(mlp_weights(shown.model, shown.digit, shown.title),
                                  shown.run.inspect_file("mlp_units", shown.tag))]


def lstm_probe(model, config: dict[str, Any]):
    """The trained LSTM rebuilt to expose every hidden state and per-row probabilities."""
    probe = build_lstm(config["model"], probe=True)
    for layer in probe.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return probe


def rows_reader(model, config: dict[str, Any]):
    """The class probabilities after each row read, (1, 28, 10) per digit."""
    import keras

    probe = lstm_probe(model, config)
    return keras.Model(probe.inputs, probe.outputs[-1])


def first_conv_reader(model, config: dict[str, Any]):
    """The first convolution's feature maps, (1, h, w, filters) per digit."""
    import keras

    first = next(layer for layer in model.layers if layer.__class__.__name__ == "Conv2D")
    return keras.Model(model.inputs[0], first.output)


def rows_card(rows: np.ndarray) -> dict[str, Any]:
    """The per-row probabilities as the serve page draws them."""
    return {"rows": np.round(rows, 4).tolist()}


def maps_card(maps: np.ndarray) -> dict[str, Any]:
    """Feature maps (h, w, channels) as 0-255 images, each scaled to its own range."""
    low, high = maps.min(axis=(0, 1)), maps.max(axis=(0, 1))
    scaled = (maps - low) / np.where(high > low, high - low, 1)
    images = np.moveaxis(np.round(255 * scaled).astype(np.uint8), -1, 0)
    return {"feature_maps": {"shape": list(maps.shape), "images": images.tolist()}}


def lstm_reading(probe, digit: np.ndarray, run: RunDir, tag: str, title: str) -> list[Path]:
    """Rows as timesteps, hidden states over time, probabilities after each row; + GIF."""
    *states, probs = probe(to_float(digit[None]))
    states = [np.asarray(s)[0] for s in states]
    probs = np.asarray(probs)[0]  # (28, 10)
    final = int(probs[-1].argmax())
    plt = pyplot()
    n = len(states)
    fig, axes = plt.subplots(1, n + 2, figsize=(4.2 * (n + 2), 5.2),
                             gridspec_kw={"width_ratios": [1.3] + [1.6] * n + [1.6]})
    ax = axes[0]
    ax.imshow(digit, cmap="gray_r")
    ax.set_yticks(range(0, 28, 2), [f"t{t}" for t in range(0, 28, 2)], fontsize=8)
    ax.set_xticks([])
    for t in range(29):
        ax.axhline(t - 0.5, color="tab:blue", lw=0.3)
    ax.set_title("the digit: row t is timestep t\n(28 features per step)")
    for i, h in enumerate(states):
        ax = axes[i + 1]
        im = ax.imshow(h.T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xlabel("timestep (row read)")
        ax.set_ylabel("unit")
        ax.set_title(f"LSTM layer {i + 1}: hidden state h_t\n({h.shape[1]} units x 28 steps)")
        fig.colorbar(im, ax=ax, fraction=0.04)
    ax = axes[-1]
    im = ax.imshow(probs.T, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    decided = _decided_at(probs)
    ax.axvline(decided, color="white", ls="--", lw=1)
    ax.set_yticks(range(10))
    ax.set_xlabel("timestep (rows read)")
    ax.set_ylabel("class")
    ax.set_title(f"P(class) after each row\nsettles on {final} from row {decided}")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.suptitle(title)
    png = run.save_figure(fig, run.inspect_file("lstm_reading", tag))
    frames = _reading_frames(digit, probs, title)
    gif = run.save_gif(frames, run.inspect_file("lstm_gif", tag), [250] * 27 + [2000])
    return [png, gif]


def _decided_at(probs: np.ndarray) -> int:
    """The first row from which the top class never changes again."""
    top = probs.argmax(axis=1)
    t = len(top) - 1
    while t > 0 and top[t - 1] == top[-1]:
        t -= 1
    return t


def _reading_frames(digit: np.ndarray, probs: np.ndarray, title: str) -> list:
    """GIF frames: the digit revealed row by row, with the probability bars after each."""
    from PIL import Image

    plt = pyplot()
    frames = []
    for t in range(28):
        fig, (a, b) = plt.subplots(1, 2, figsize=(6.4, 3.2))
        shown = digit.astype(float).copy()
        shown[t + 1:] *= 0.15  # rows not read yet, dimmed
        a.imshow(shown, cmap="gray_r", vmin=0, vmax=255)
        a.axhline(t, color="tab:red", lw=1)
        a.set_axis_off()
        a.set_title(f"reading row t{t}", fontsize=9)
        colours = ["tab:orange" if c == probs[t].argmax() else "tab:blue" for c in range(10)]
        b.bar(range(10), probs[t], color=colours)
        b.set_ylim(0, 1)
        b.set_xticks(range(10))
        b.set_title("P(class) so far", fontsize=9)
        fig.suptitle(title, fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        frames.append(Image.open(buf).convert("P", palette=Image.Palette.ADAPTIVE))
    return frames


def rows_read_accuracy(probes: dict[str, Any], x: np.ndarray, y: np.ndarray):
    """Test accuracy after reading 1..28 rows, one curve per LSTM run (probes by run name)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, probe in probes.items():
        probs = np.asarray(probe.predict(to_float(x), batch_size=1000, verbose=0)[-1])
        acc = (probs.argmax(axis=2) == y[:, None]).mean(axis=0)  # (28,)
        ax.plot(range(1, 29), acc, marker="o", markersize=3,
                label=f"{name} ({acc[-1]:.2%} after all 28)")
    ax.set_xlabel("rows read (timesteps)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"How much of the digit does the LSTM need? ({len(y):,} test digits)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def initial_model(run: RunDir, config: dict[str, Any]):
    """The run's model with the weights it started from, or None if it kept none."""
    path = run / RunDir.INITIAL_WEIGHTS
    if not path.is_file():
        return None
    initial = build_model(config["model"])
    initial.load_weights(path)
    return initial


def cnn_pictures(shown: Shown) -> list[Path]:
    """First-layer filters before and after training; every convolution's feature maps."""
    import keras

    model, run, digit = shown.model, shown.run, shown.digit

    plt = pyplot()
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    trained = convs[0].get_weights()[0]  # (k, k, 1, filters)
    written = []
    rows = [("trained", trained)]
    initial = initial_model(run, shown.config)
    if initial is not None:
        start = initial.get_layer(convs[0].name).get_weights()[0]
        rows = [("at initialisation", start), ("trained", trained),
                ("change", trained - start)]
    n = trained.shape[-1]
    fig, axes = plt.subplots(len(rows), n, figsize=(max(8, 0.75 * n), 0.95 * len(rows) + 0.9),
                             squeeze=False)
    for r, (label, w) in enumerate(rows):
        for f in range(n):
            ax = axes[r][f]
            kernel = w[:, :, 0, f]
            lim = np.abs(kernel).max() or 1
            ax.imshow(kernel, cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=8)
    fig.suptitle(f"{run.name}: the {n} {trained.shape[0]}x{trained.shape[1]} filters of "
                 f"{convs[0].name}, one per output channel (red +, blue -; each "
                 "scaled to its own range)")
    written.append(run.save_figure(fig, run.inspect_file("cnn_filters")))

    maps = keras.Model(model.inputs[0], [c.output for c in convs])(to_float(digit[None]))
    maps = [np.asarray(m)[0] for m in maps]
    cols = 10
    height = sum(int(np.ceil(m.shape[-1] / cols)) for m in maps) + len(maps)
    fig, axes = plt.subplots(height, cols, figsize=(cols * 1.05, height * 1.1), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    row = 0
    for conv, m in zip(convs, maps, strict=True):
        axes[row][0].imshow(digit, cmap="gray_r")
        axes[row][1].text(0, 0.5, f"{conv.name}: output {m.shape} = {m.shape[0]}x{m.shape[1]} "
                          f"pixels x depth {m.shape[-1]} (one map per filter)",
                          fontsize=10, va="center")
        row += 1
        for c in range(m.shape[-1]):
            ax = axes[row + c // cols][c % cols]
            ax.imshow(m[:, :, c], cmap="magma")
            ax.set_title(f"ch {c}", fontsize=6)
        row += int(np.ceil(m.shape[-1] / cols))
    fig.suptitle(shown.title)
    written.append(run.save_figure(fig, run.inspect_file("cnn_maps", shown.tag)))
    return written


def mlp_weights(model, digit: np.ndarray, title: str, top: int = 16):
    """The input weights (28x28) of the first-layer units this digit excites most."""
    import keras

    dense = next(layer for layer in model.layers if layer.__class__.__name__ == "Dense")
    act = np.asarray(keras.Model(model.inputs[0], dense.output)(to_float(digit[None])))[0]
    order = np.argsort(-act)[:top]
    kernel = dense.get_weights()[0]  # (784, units)
    plt = pyplot()
    fig, axes = plt.subplots(2, top // 2 + 1, figsize=(2 * (top // 2 + 1), 4.6))
    axes[0][0].imshow(digit, cmap="gray_r")
    axes[0][0].set_title("the digit", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1][0].set_axis_off()
    slots = [ax for i, ax in enumerate(axes.flat) if i not in (0, top // 2 + 1)]
    for ax, unit in zip(slots, order, strict=False):
        w = kernel[:, unit].reshape(28, 28)
        lim = np.abs(w).max() or 1
        ax.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"unit {unit}: {act[unit]:.2f}", fontsize=8)
    fig.suptitle(f"{title}: input weights of the {top} most active of {kernel.shape[1]} "
                 f"units in {dense.name} (red +, blue -)")
    return fig
