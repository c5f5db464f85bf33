"""Evaluation: load a .keras model safely, score it on the test set, and draw the results."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mnist_seq import backend, origin
from mnist_seq.data import NUM_CLASSES, load_mnist
from mnist_seq.distribute import Cluster
from mnist_seq.errors import MnistSeqError, first_line
from mnist_seq.options import DEFAULT_OPTIONS, RuntimeOptions
from mnist_seq.plotting import plot_confusion, plot_worst_errors
from mnist_seq.rundir import RunDir
from mnist_seq.runtime import fit_shape, probabilities

BATCH = 512  # images per step when scoring and predicting


def load_model(path: str | Path):
    """Load a `.keras` model with Keras's safe_mode on (no arbitrary code, no Lambda layers)."""
    path = Path(path)
    if not path.is_file():
        raise MnistSeqError(f"model not found: {path}")
    if path.suffix != ".keras":
        raise MnistSeqError(f"{path}: expected a .keras model file, got '{path.suffix or 'no'}' "
                            "suffix (only the .keras format is loaded)")
    if not zipfile.is_zipfile(path):
        raise MnistSeqError(f"{path}: not a .keras model (a .keras file is a zip archive)")
    import keras

    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except ValueError as e:
        if "safe_mode" in str(e) or "Lambda" in str(e):
            raise MnistSeqError(f"{path}: refused, the model holds unsafe content (a Lambda "
                                "layer or custom code) that would run arbitrary code") from None
        raise MnistSeqError(f"{path}: cannot load the model ({first_line(e)})") from None
    except Exception as e:
        raise MnistSeqError(f"{path}: cannot load the model ({e.__class__.__name__}: "
                            f"{first_line(e)})") from None


def fit_input(model, images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) as float32 in the shape the model takes."""
    return fit_shape(images, model.inputs[0].shape[1:])


def predict_proba(model, images: np.ndarray, batch_size: int = BATCH) -> tuple[np.ndarray, bool]:
    """Class probabilities (N, 10), and whether the model gave logits (then softmaxed here)."""
    return probabilities(model.predict(fit_input(model, images), batch_size=batch_size,
                                       verbose=0))


def score(model, images: np.ndarray, labels: np.ndarray, from_logits: bool = False,
          cluster: Cluster | None = None) -> dict[str, float]:
    """Test loss and accuracy of a model on uint8 images: the one place they are
    computed, for training's metrics.json, `evaluate`'s evaluation.json and a sweep's
    best trial, so the same model and data give the same figures to the last digit.

    Keras's own `evaluate` (its loss reads the logits behind a softmax output, which a
    clipped log of the probabilities does not), always compiled alike: XLA on JAX, not
    on TensorFlow. Over several JAX processes each feeds its part of every batch."""
    import keras

    cluster = cluster or Cluster.local(backend.name())
    with cluster.scope():
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                      jit_compile=backend.name() == "jax")
    figures = model.evaluate(**cluster.eval_inputs(fit_input(model, images), labels, BATCH),
                             verbose=0, return_dict=True)
    return {"loss": float(figures["loss"]), "accuracy": float(figures["accuracy"])}


def class_figures(probs: np.ndarray, labels: np.ndarray, worst: int = 25) -> dict[str, Any]:
    """Top-2 accuracy, per-class precision/recall/F1, confusion matrix, worst errors."""
    labels = np.asarray(labels, dtype=np.int64)
    pred = probs.argmax(axis=1)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    tp = np.diag(confusion).astype(float)
    precision = np.divide(tp, confusion.sum(axis=0), out=np.zeros(NUM_CLASSES),
                          where=confusion.sum(axis=0) > 0)
    recall = np.divide(tp, confusion.sum(axis=1), out=np.zeros(NUM_CLASSES),
                       where=confusion.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(NUM_CLASSES),
                   where=(precision + recall) > 0)
    top2 = np.argsort(probs, axis=1)[:, -2:]
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:worst]
    return {
        "samples": len(labels),
        "top2_accuracy": float(np.mean((top2 == labels[:, None]).any(axis=1))),
        "per_class": [
            {"class": c, "precision": float(precision[c]), "recall": float(recall[c]),
             "f1": float(f1[c]), "support": int(confusion[c].sum())}
            for c in range(NUM_CLASSES)
        ],
        "confusion": confusion.tolist(),
        "worst_errors": [
            {"index": int(i), "label": int(labels[i]), "predicted": int(pred[i]),
             "confidence": float(probs[i, pred[i]])}
            for i in wrong
        ],
    }


def format_report(result: dict[str, Any]) -> str:
    """The figures as text: headline, per-class table, confusion matrix."""
    lines = [
        f"Test loss {result['loss']:.4f}   accuracy {result['accuracy']:.4f}   "
        f"top-2 accuracy {result['top2_accuracy']:.4f}   ({result['samples']:,} samples)",
        "",
        "class  precision  recall      f1  support",
    ]
    for row in result["per_class"]:
        lines.append(f"{row['class']:>5}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  "
                     f"{row['f1']:>6.4f}  {row['support']:>7}")
    lines += ["", "confusion matrix (rows: true class, columns: predicted)",
              "      " + "".join(f"{c:>6}" for c in range(NUM_CLASSES))]
    for c, row in enumerate(result["confusion"]):
        lines.append(f"{c:>6}" + "".join(f"{v:>6}" for v in row))
    return "\n".join(lines)


def evaluate(
    run_or_model: str | Path,
    options: RuntimeOptions = DEFAULT_OPTIONS,
    max_samples: int | None = None,
) -> dict[str, Any]:
    """Score a finished run's model.keras (or any .keras file, or an exported .onnx or
    .tflite file, run without Keras) on the MNIST test set once.

    Writes evaluation.json, confusion.png and worst-errors.png into the run folder (or
    beside the model file).
    """
    from mnist_seq.runtime import is_exported

    if is_exported(run_or_model):
        return _evaluate_exported(run_or_model, options, max_samples)
    run, model_path = RunDir.locate_model(run_or_model)
    backend.setup(options)
    model = load_model(model_path)
    fit_input(model, np.zeros((1, 28, 28), np.uint8))  # a wrong input shape fails before I/O
    data = load_mnist(origin.data_dir(run, options.data_dir), run.recorded_data_dir())
    x_test, y_test = data.x_test[:max_samples], data.y_test[:max_samples]
    probs, logits = predict_proba(model, x_test)
    result = {"model": str(model_path), "data_source": data.source,
              **score(model, x_test, y_test, from_logits=logits)}
    return _write_evaluation(run, result, probs, x_test, y_test)


def _evaluate_exported(path: str | Path, options: RuntimeOptions,
                       max_samples: int | None) -> dict[str, Any]:
    """`evaluate` on an exported file: its own runtime's probabilities, and the loss as
    Keras computes it from probabilities (clipped at 1e-7)."""
    from mnist_seq.runtime import open_exported, recorded_data

    model = open_exported(path)
    data = load_mnist(options.data_dir, recorded_data(model.path.parent))
    x_test, y_test = data.x_test[:max_samples], data.y_test[:max_samples]
    probs, _ = model.predict(x_test)
    picked = np.clip(probs[np.arange(len(y_test)), y_test], 1e-7, 1 - 1e-7)
    result = {"model": str(model.path), "data_source": data.source,
              "loss": float(-np.mean(np.log(picked))),
              "accuracy": float(np.mean(probs.argmax(axis=1) == y_test))}
    return _write_evaluation(RunDir(model.path.parent), result, probs, x_test, y_test)


def _write_evaluation(run: RunDir, result: dict[str, Any], probs: np.ndarray,
                      x_test: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """The per-class figures and the pictures, written with evaluation.json."""
    result |= class_figures(probs, y_test)
    name = run.name
    result["files"] = [
        str(run.save_figure(plot_confusion(
            result["confusion"], f"{name}: confusion matrix, {result['accuracy']:.2%} right"),
            RunDir.CONFUSION)),
        str(run.save_figure(plot_worst_errors(
            x_test, result["worst_errors"],
            f"{name}: the {len(result['worst_errors'])} most confidently wrong test digits"),
            RunDir.WORST_ERRORS)),
    ]
    run.write_json(RunDir.EVALUATION, result)
    return result
