"""The converters behind `mnist-seq export`: one writer per format, each writing its
file under a temporary name and returning its check's figures (`export.Check`).

All go through Keras's own `model.export`; the TFLite converter gets builtin ops only
(TensorFlow's Flex ops need a runtime a plain LiteRT install lacks), and int8 is
calibrated on training images.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_seq import web_export
from mnist_seq.errors import MnistSeqError, first_line
from mnist_seq.runtime import Exported

if TYPE_CHECKING:
    from mnist_seq.export import Check, Target

PARTIAL = ".partial-"  # a file's name until its check passes


class ExportError(MnistSeqError):
    """An export that failed its check: exit 1, nothing under the final name."""


def float32_copy(model, unroll: bool = False):
    """The model rebuilt in float32 without the cuDNN kernel and without its training-only
    augmentation layers (identity at inference, but random ops in the graph), with the
    same weights; `unroll` writes recurrent layers out step by step (plain ops every
    runtime has)."""
    import keras

    fixed = {"use_cudnn": False, **({"unroll": True} if unroll else {})}

    def clean(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy":
                return {**node, "config": {**node["config"], "name": "float32"}}
            return {k: fixed[k] if k in fixed else clean(v) for k, v in node.items()}
        return [clean(v) for v in node] if isinstance(node, list | tuple) else node

    config = _without_augmentation(keras.saving.serialize_keras_object(model))
    copy = keras.saving.deserialize_keras_object(clean(config))
    for layer in copy.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return copy


def _without_augmentation(config: dict[str, Any]) -> dict[str, Any]:
    """A functional model's config with its Random* layers taken out, each one's input
    wired to whatever read its output."""
    layers = config.get("config", {}).get("layers", [])
    fed_by = {layer["name"]: layer["inbound_nodes"][0]["args"][0]["config"]["keras_history"]
              for layer in layers if layer["class_name"].startswith("Random")}
    if not fed_by:
        return config

    def source(history):
        while history[0] in fed_by:
            history = fed_by[history[0]]
        return history

    def rewire(node):
        if isinstance(node, dict):
            return {k: source(v) if k == "keras_history" else rewire(v) for k, v in node.items()}
        return [rewire(v) for v in node] if isinstance(node, list | tuple) else node

    kept = [rewire(layer) for layer in layers if layer["name"] not in fed_by]
    return {**config, "config": {**rewire(config["config"]), "layers": kept}}


def _converted(fmt: str, what: str, convert) -> None:
    """Run a converter; its failure becomes one line."""
    try:
        convert()
    except MnistSeqError:
        raise
    except Exception as e:
        text, full = first_line(e, 200), str(e)
        # The converter names the ops it lacks deep in a long message.
        if fmt == "litert" and any(word in full for word in ("Flex", "ops_select", "TF Select",
                                                              "not supported", "TensorList")):
            raise ExportError(f"litert: the {what} needs TensorFlow ops that a plain LiteRT "
                              "runtime lacks (TensorFlow's Flex ops); only TFLite's builtin "
                              "ops are allowed") from None
        raise ExportError(f"{fmt}: could not convert the {what} ({text})") from None


def write_onnx(check: Check, path: Path, target: Target) -> dict[str, Any]:
    """The model as ONNX (int8: static quantization calibrated on training images)."""
    float_path = path.with_name(path.name + ".float.onnx") if target.quantize else path
    _converted("onnx", "model", lambda: _keras_export(check.model, float_path, "onnx"))
    if target.quantize:
        _converted("onnx", "model", lambda: _quantize_onnx(float_path, path, check))
        float_path.unlink()
    entry = check.compare(Exported(path).predict(check.x_test)[0], target.name, target.quantize)
    if check.card is not None:
        entry["card"] = _write_card(check, path.parent, f"{Path(target.name).stem}.card.onnx")
    return entry


def write_litert(check: Check, path: Path, target: Target) -> dict[str, Any]:
    """The model as a .tflite of TFLite's builtin ops only (none of TensorFlow's Flex
    ops, which a plain LiteRT runtime lacks)."""
    options = _litert_options(check, target.quantize)
    # Unrolled: a recurrent layer's loop would need TensorFlow's TensorList (Flex) ops.
    model = float32_copy(check.model, unroll=True)
    model.predict(np.zeros((1, *model.inputs[0].shape[1:]), np.float32), verbose=0)
    _converted("litert", "model", lambda: _keras_export(model, path, "litert", **options))
    entry = check.compare(Exported(path).predict(check.x_test)[0], target.name, target.quantize)
    if check.card is not None:
        entry["card"] = _write_card(check, path.parent, f"{Path(target.name).stem}.card.tflite")
    return entry


def _litert_options(check: Check, quantize: str | None) -> dict[str, Any]:
    """TFLite converter settings: builtin ops only; float16 or int8 weights."""
    import tensorflow as tf

    options: dict[str, Any] = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantize == "float16":
        options = {"optimizations": [tf.lite.Optimize.DEFAULT],
                   "target_spec": {**options["target_spec"], "supported_types": [tf.float16]}}
    elif quantize == "int8":
        from mnist_seq.evaluation import fit_input

        samples = fit_input(check.model, check.calibration)
        options |= {"optimizations": [tf.lite.Optimize.DEFAULT],
                    "representative_dataset": lambda: ([x[None]] for x in samples)}
    return options


def write_saved_model(check: Check, path: Path, target: Target) -> dict[str, Any]:
    """A TensorFlow SavedModel with a `serve` endpoint, checked through TensorFlow."""
    import tensorflow as tf

    from mnist_seq.evaluation import fit_input
    from mnist_seq.runtime import probabilities

    _converted("saved_model", "model", lambda: _keras_export(check.model, path, "tf_saved_model"))
    loaded = tf.saved_model.load(str(path))  # kept: its functions need its variables
    serve = loaded.serve
    x = fit_input(check.model, check.x_test)
    probs, _ = probabilities(np.concatenate([np.asarray(serve(x[i: i + 1000]))
                                             for i in range(0, len(x), 1000)]))
    return check.compare(probs, target.name, None)


def write_web(check: Check, path: Path, target: Target) -> dict[str, Any]:
    """The static draw-a-digit page: the ONNX model, its card, ONNX Runtime Web."""
    path.mkdir()
    entry = write_onnx(check, path / "model.onnx", replace(target, name="model.onnx"))
    card = entry.pop("card", None)
    if card is not None:
        (path / f"{PARTIAL}{card}").rename(path / card)
    web_export.write_page(path, {"name": check.name, "kind": check.kind, "card": card,
                                 "input_shape": list(check.model.inputs[0].shape[1:])})
    return entry


def _write_card(check: Check, folder: Path, name: str) -> str:
    """The model behind serve's card (the LSTM's answer after each row, the CNN's first
    feature maps), exported alike as `folder/PARTIAL+name` and checked on 200 test
    digits; returns its final name."""
    partial = folder / f"{PARTIAL}{name}"
    fmt = "onnx" if name.endswith(".onnx") else "litert"
    from mnist_seq.evaluation import fit_input

    x = fit_input(check.card, check.x_test[:200])
    expected = np.asarray(check.card.predict(x, verbose=0))  # called once: export needs it
    options = _litert_options(check, None) if fmt == "litert" else {}
    _converted(fmt, "card model", lambda: _keras_export(check.card, partial, fmt, **options))
    got = Exported(partial).raw(x)
    if not np.allclose(got, expected, rtol=1e-3, atol=1e-4):
        raise ExportError(f"{name}: the card model differs from Keras's (up to "
                          f"{np.abs(got - expected).max():.2g})")
    return name


def _keras_export(model, path: Path, fmt: str, **options) -> None:
    from mnist_seq.backend import quiet_stderr

    if fmt == "litert":
        # Keras's LiteRT export wants a .tflite name; the file is renamed after its check.
        target = path.with_name(path.name + ".tflite") if path.suffix != ".tflite" else path
    else:
        target = path
    with quiet_stderr():
        model.export(str(target), format=fmt, verbose=False, **options)
    if target != path:
        target.rename(path)


def _quantize_onnx(source: Path, path: Path, check: Check) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from mnist_seq.runtime import fit_shape

    samples = fit_shape(check.calibration, Exported(source).input_shape)
    input_name = _onnx_input_name(source)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(samples[i: i + 50] for i in range(0, len(samples), 50))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    import logging

    logging.disable(logging.WARNING)  # its advice to pre-process, on every call
    try:
        quantize_static(str(source), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True)
    finally:
        logging.disable(logging.NOTSET)


def _onnx_input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


WRITERS = {"onnx": write_onnx, "litert": write_litert, "saved_model": write_saved_model,
           "web": write_web}
