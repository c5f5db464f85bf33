"""Model builders, a registry by `model.type`.

Every model takes a batch of images shaped (28, 28) with values in [0, 1] and
returns 10 class probabilities. The LSTM reads the 28 rows as 28 timesteps of
28 features; the CNN reshapes to (28, 28, 1); the MLP flattens to 784.
Only Keras layers are used (no `tf.*`), so the models stay backend-neutral.
Keras is imported inside the builders: the CLI's --help must not load it.
"""

from __future__ import annotations

from typing import Any

from mnist_seq.data import IMAGE_SHAPE, NUM_CLASSES

# The keys each model type accepts, with their defaults (config.py validates against these).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "lstm": {
        "units": [128],  # one LSTM layer per entry; all but the last return sequences
        "dropout": 0.0,  # Dropout layer after each LSTM (keeps the fast cuDNN kernel usable)
        "recurrent_dropout": 0.0,
        "l2_last": 0.0,  # L2 factor on the last LSTM layer's kernel
    },
    "cnn": {
        "conv": [{"filters": 32, "kernel": 3, "padding": "same", "pool": 2}],
        "dense": [128],
        "dropout": 0.0,  # Dropout after each hidden Dense layer
        "activation": "relu",
        "batch_norm": False,  # BatchNormalization after each convolution
        # Random changes to the training images (off when predicting): rotation as a
        # fraction of a full turn, shift and zoom as fractions of the image size.
        "augment": {"rotation": 0.0, "shift": 0.0, "zoom": 0.0},
    },
    "mlp": {
        "hidden": [512],
        "dropout": 0.0,
        "activation": "relu",
    },
}


def build_lstm(cfg: dict[str, Any], probe: bool = False, unroll: bool = False):
    """Stacked LSTM over image rows: (28 timesteps, 28 features) -> 10 classes.

    With `probe`, every LSTM returns its whole sequence and the model outputs each
    layer's hidden states and the class probabilities after every row (same weights,
    same layer names, so trained weights load into it). `unroll` writes the 28 steps
    out as one graph: faster on a CPU, but it rules out the cuDNN kernel on a GPU.
    """
    import keras

    inputs = keras.Input(IMAGE_SHAPE, name="rows")
    x = inputs
    units = cfg["units"]
    states = []
    for i, n in enumerate(units):
        last = i == len(units) - 1
        x = keras.layers.LSTM(
            n,
            return_sequences=probe or not last,  # hand every step's state to the next LSTM
            recurrent_dropout=cfg["recurrent_dropout"],
            unroll=unroll,
            kernel_regularizer=keras.regularizers.L2(cfg["l2_last"])
            if last and cfg["l2_last"]
            else None,
            name=f"lstm_{i + 1}",
        )(x)
        states.append(x)
        if cfg["dropout"]:
            x = keras.layers.Dropout(cfg["dropout"], name=f"dropout_{i + 1}")(x)
    outputs = _classifier(keras, x)
    if probe:
        return keras.Model(inputs, [*states, outputs], name="lstm_probe")
    return keras.Model(inputs, outputs, name="lstm")


def build_cnn(cfg: dict[str, Any], unroll: bool = False):
    """Conv blocks (conv + optional max-pool), then dense layers, then 10 classes
    (`unroll`: no recurrent layers to unroll)."""
    import keras

    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = keras.layers.Reshape((*IMAGE_SHAPE, 1), name="channels")(inputs)
    x = _augmentation(keras, x, cfg["augment"])
    bn = cfg["batch_norm"]
    for i, block in enumerate(cfg["conv"], start=1):
        x = keras.layers.Conv2D(
            block["filters"],
            block["kernel"],
            padding=block["padding"],
            activation=None if bn else cfg["activation"],
            use_bias=not bn,  # batch norm's own shift replaces the bias
            name=f"conv_{i}",
        )(x)
        if bn:
            x = keras.layers.BatchNormalization(name=f"norm_{i}")(x)
            x = keras.layers.Activation(cfg["activation"], name=f"act_{i}")(x)
        if block["pool"] > 1:
            x = keras.layers.MaxPooling2D(block["pool"], name=f"pool_{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = _dense_stack(keras, x, cfg["dense"], cfg)
    outputs = _classifier(keras, x)
    return keras.Model(inputs, outputs, name="cnn")


def build_mlp(cfg: dict[str, Any], unroll: bool = False):
    """Flatten to 784 pixels, hidden dense layers, then 10 classes (`unroll`: no
    recurrent layers to unroll)."""
    import keras

    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = _dense_stack(keras, x, cfg["hidden"], cfg)
    outputs = _classifier(keras, x)
    return keras.Model(inputs, outputs, name="mlp")


def _augmentation(keras, x, aug: dict[str, float]):
    if aug["rotation"]:
        x = keras.layers.RandomRotation(aug["rotation"], fill_mode="constant",
                                        name="random_rotation")(x)
    if aug["shift"]:
        x = keras.layers.RandomTranslation(aug["shift"], aug["shift"], fill_mode="constant",
                                           name="random_shift")(x)
    if aug["zoom"]:
        x = keras.layers.RandomZoom(aug["zoom"], fill_mode="constant", name="random_zoom")(x)
    return x


def _classifier(keras, x):
    # Probabilities stay float32 even when the layers before compute in bfloat16.
    return keras.layers.Dense(NUM_CLASSES, activation="softmax", name="classes",
                              dtype="float32")(x)


def _dense_stack(keras, x, sizes: list[int], cfg: dict[str, Any]):
    for i, n in enumerate(sizes, start=1):
        x = keras.layers.Dense(n, activation=cfg["activation"], name=f"dense_{i}")(x)
        if cfg["dropout"]:
            x = keras.layers.Dropout(cfg["dropout"], name=f"dropout_{i}")(x)
    return x


BUILDERS = {"lstm": build_lstm, "cnn": build_cnn, "mlp": build_mlp}


def build_model(model_cfg: dict[str, Any], unroll: bool = False):
    """Build the (uncompiled) Keras model a validated `model` config section describes.

    `unroll` applies to LSTMs only (see build_lstm)."""
    return BUILDERS[model_cfg["type"]](model_cfg, unroll=unroll)



def build_state(model, optimizer: bool = True) -> None:
    """Create a compiled model's metric variables, and its optimizer's unless told not
    to, now. Keras on TensorFlow without a distribution strategy creates them while
    tracing the first step, and `tf.function` then traces that step a second time (a
    traced step may not create variables): the unrolled LSTM's training step took
    about 3 s to trace, twice (docs/performance.md). Keras's own remedy, a symbolic
    call of the model, costs the unrolled LSTM a second of tracing itself; neither
    the optimizer nor the metrics need the model called."""
    import numpy as np

    if optimizer and model.optimizer is not None:
        model.optimizer.build(model.trainable_variables)
    # One label and a flat answer, to give the metrics their shapes; then forgotten.
    model.compute_metrics(None, np.zeros((1,), "int32"),
                          np.full((1, NUM_CLASSES), 1 / NUM_CLASSES, "float32"))
    model.reset_metrics()
