"""Exported models (`.onnx`, `.tflite`) run by their own runtimes, without Keras.

ONNX Runtime runs `.onnx` files and the LiteRT interpreter `.tflite` files; neither
imports Keras, TensorFlow or JAX, so `predict`, `evaluate` and `serve` on an exported
file start in a fraction of a second. Also here, because both paths need them without
Keras: the input shapes a model may take, and turning its outputs into probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mnist_seq.data import NUM_CLASSES, to_float
from mnist_seq.errors import MnistSeqError, first_line

# Input shapes a model may take; MNIST images are reshaped to fit.
ACCEPTED_INPUTS = ((28, 28), (28, 28, 1), (784,))
SUFFIXES = {".onnx": "onnx", ".tflite": "litert"}
RECORD = "export.json"  # what `mnist-seq export` wrote into a folder, and how it checked
BATCH = 256
RUNTIME_EXTRA = "pip install 'mnist-seq[runtime]'"


def fit_shape(images: np.ndarray, shape: tuple) -> np.ndarray:
    """uint8 images (N, 28, 28) as float32 in [0, 1], in the input shape a model takes."""
    shape = tuple(shape)
    if shape not in ACCEPTED_INPUTS:
        raise MnistSeqError(f"model input shape {shape} does not fit MNIST: expected one of "
                            f"{', '.join(map(str, ACCEPTED_INPUTS))}")
    return to_float(np.asarray(images)).reshape((len(images), *shape))


def probabilities(out: np.ndarray) -> tuple[np.ndarray, bool]:
    """A model's (N, 10) outputs as probabilities, and whether they were logits (then
    softmaxed here)."""
    out = np.asarray(out, dtype=np.float64)
    if out.ndim != 2 or out.shape[1] != NUM_CLASSES:
        raise MnistSeqError(f"model output shape {out.shape[1:]} is not (10,) class scores")
    logits = bool(out.min() < 0 or not np.allclose(out.sum(axis=1), 1.0, atol=1e-3))
    if logits:
        out = np.exp(out - out.max(axis=1, keepdims=True))
        out /= out.sum(axis=1, keepdims=True)
    return out, logits


def is_exported(path: str | Path) -> bool:
    """An `.onnx` or `.tflite` file, or a folder that `mnist-seq export` wrote."""
    path = Path(path)
    return path.suffix.lower() in SUFFIXES or (path.is_dir() and (path / RECORD).is_file())


class Exported:
    """One exported file and its runtime: `raw(x)` gives the model's outputs for inputs
    already in `input_shape`; `kind` and `card` come from the folder's export.json."""

    def __init__(self, path: Path, kind: str | None = None, card: Path | None = None):
        self.path, self.kind = path, kind
        self.format = SUFFIXES[path.suffix.lower()]
        self._run = _open_onnx(path) if self.format == "onnx" else _open_litert(path)
        self.input_shape = self._run.shape
        self.card = Exported(card) if card is not None else None

    def raw(self, x: np.ndarray) -> np.ndarray:
        """The model's outputs for float32 inputs, in batches of `BATCH`."""
        return np.concatenate([self._run(x[i: i + BATCH]) for i in range(0, len(x), BATCH)])

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, bool]:
        """Class probabilities (N, 10) for uint8 digits, and whether the file gave logits."""
        return probabilities(self.raw(fit_shape(images, self.input_shape)))

    def read_card(self, digit: np.ndarray) -> np.ndarray | None:
        """What the card model says of one uint8 digit (None without one)."""
        if self.card is None:
            return None
        return self.card.raw(fit_shape(digit[None], self.card.input_shape))[0]


def open_exported(path: str | Path) -> Exported:
    """An exported file, or an export folder's model (ONNX first, float32 first)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    entries = read_record(folder)
    if path.is_dir():
        files = [e for e in entries if Path(e["file"]).suffix in SUFFIXES]
        if not files:
            raise MnistSeqError(f"{path}: its {RECORD} lists no .onnx or .tflite file")
        files.sort(key=lambda e: (e["format"] != "onnx", e.get("quantize") is not None))
        path = folder / files[0]["file"]
    if not path.is_file():
        raise MnistSeqError(f"model not found: {path}")
    entry = next((e for e in entries if e["file"] == path.name), {})
    card = entry.get("card")
    return Exported(path, entry.get("kind"), folder / card if card else None)


def read_record(folder: Path) -> list[dict[str, Any]]:
    """The entries of a folder's export.json (none if it has no record)."""
    record = Path(folder) / RECORD
    if not record.is_file():
        return []
    try:
        return list(json.loads(record.read_text(encoding="utf-8"))["files"])
    except (ValueError, KeyError, TypeError) as e:
        raise MnistSeqError(f"{record}: damaged ({first_line(e)})") from None


def recorded_data(folder: Path) -> str | None:
    """The MNIST folder an export was checked on (for `evaluate` on its files)."""
    record = Path(folder) / RECORD
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text(encoding="utf-8")).get("data_source")
    except ValueError:
        return None


def _open_onnx(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise MnistSeqError(f"running {path.name} needs ONNX Runtime: {RUNTIME_EXTRA}") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise MnistSeqError(f"{path}: not a readable ONNX model ({first_line(e, 160)})") from None
    name, shape = session.get_inputs()[0].name, tuple(session.get_inputs()[0].shape[1:])

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]

    run.shape = shape
    return run


def _open_litert(path: Path):
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        raise MnistSeqError(f"running {path.name} needs the LiteRT interpreter: "
                            f"{RUNTIME_EXTRA}") from None
    return _LiteRT(path)


class _LiteRT:
    """The LiteRT interpreter over one file, its batch size following the inputs."""

    def __init__(self, path: Path):
        self.path, self.delegates = path, True
        self._start()
        self.shape = tuple(int(d) for d in self.given["shape"][1:])

    def _start(self) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from mnist_seq.backend import quiet_stderr

        kind = OpResolverType.AUTO if self.delegates else \
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            with quiet_stderr():  # its "Created TensorFlow Lite XNNPACK delegate" line
                self.interpreter = Interpreter(model_path=str(self.path),
                                               experimental_op_resolver_type=kind)
                self.interpreter.allocate_tensors()
        except Exception as e:
            raise MnistSeqError(f"{self.path}: not a runnable LiteRT model "
                                f"({first_line(e, 160)})") from None
        self.given = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        self.size = 1

    def __call__(self, x: np.ndarray) -> np.ndarray:
        try:
            return self._invoke(x)
        except RuntimeError as e:
            if not self.delegates:
                raise MnistSeqError(f"{self.path}: LiteRT could not run it "
                                    f"({first_line(e, 160)})") from None
            # XNNPACK (the default CPU delegate) cannot plan some int8 graphs at every
            # batch size; the builtin kernels can.
            self.delegates = False
            self._start()
            return self._invoke(x)

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        if self.size != len(x):  # the batch dimension is free; resizing re-plans memory
            self.interpreter.resize_tensor_input(self.given["index"], [len(x), *self.shape])
            self.interpreter.allocate_tensors()
            self.size = len(x)
        self.interpreter.set_tensor(self.given["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.out["index"]).copy()
