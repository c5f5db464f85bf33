"""`mnist-seq export`: a trained model as ONNX, LiteRT, a TensorFlow SavedModel or a
static web page, each file run by its own runtime on the test set and compared with
the Keras model before it gets its final name.

Everything goes through Keras's own `model.export` (tf2onnx for ONNX, TensorFlow's
TFLite converter for LiteRT), so it runs on TensorFlow whichever backend trained the
model. The exported graph is a float32 copy of the model without the cuDNN LSTM
kernel: mixed-precision layers and cuDNN ops are what the converters and plain
runtimes lack.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mnist_seq import origin, web_export
from mnist_seq.converters import PARTIAL, WRITERS, ExportError, float32_copy
from mnist_seq.errors import MnistSeqError
from mnist_seq.files import atomic_write
from mnist_seq.options import DEFAULT_OPTIONS, RuntimeOptions
from mnist_seq.rundir import RunDir
from mnist_seq.runtime import RECORD, read_record

FORMATS = ("onnx", "litert", "saved_model", "web")
QUANTIZE = {"onnx": ("int8",), "litert": ("float16", "int8"), "saved_model": (),
            "web": ("int8",)}
NEEDS = {"onnx": ("tf2onnx", "onnx", "onnxruntime"), "web": ("tf2onnx", "onnx", "onnxruntime"),
         "litert": ("ai_edge_litert",), "saved_model": ()}
# How far an exported file may stray from the float32 Keras model, on the test set:
# the share of digits with the same answer, the largest probability difference, and
# for int8 the test accuracy lost instead (quantizing moves probabilities by design).
AGREEMENT = 0.999
MAX_DIFF = {None: 1e-4, "float16": 0.01}
INT8_ACCURACY_DROP = 0.003
CALIBRATION = 500  # training images that set int8's ranges (never test images)


@dataclass(frozen=True)
class ExportRequest:
    """What to export: a run folder or .keras file, the formats, where, how."""

    source: str | Path
    formats: tuple[str, ...]
    out: str | Path | None = None
    quantize: str | None = None
    force: bool = False


@dataclass(frozen=True)
class Target:
    """One file (or folder) to write: its format and final name."""

    format: str
    quantize: str | None
    name: str


def targets(request: ExportRequest) -> list[Target]:
    """The files the request writes, checked before anything is loaded."""
    if not request.formats:
        raise MnistSeqError(f"give at least one --format: {', '.join(FORMATS)}")
    result = []
    for fmt in dict.fromkeys(request.formats):
        if fmt not in FORMATS:
            raise MnistSeqError(f"--format: got {fmt!r}, expected one of {', '.join(FORMATS)}")
        q = request.quantize
        if q is not None and q not in QUANTIZE[fmt]:
            can = ", ".join(f"{f} ({'/'.join(v)})" for f, v in QUANTIZE.items() if v)
            raise MnistSeqError(f"--quantize {q} does not apply to {fmt}; it applies to {can}")
        tag = f"-{q}" if q else ""
        name = {"onnx": f"model{tag}.onnx", "litert": f"model{tag}.tflite",
                "saved_model": "saved_model", "web": f"web{tag}"}[fmt]
        result.append(Target(fmt, q, name))
    return result


def require_tools(chosen: list[Target]) -> None:
    """Each format's converter and runtime, named with the extra that installs them."""
    missing = [m for m in ("tensorflow", *(n for t in chosen for n in NEEDS[t.format]))
               if importlib.util.find_spec(m) is None]
    if missing:
        what = ", ".join(dict.fromkeys(missing))
        raise MnistSeqError(f"export needs {what}, which is not installed: pip install "
                            "'mnist-seq[export]'")
    if any(t.format == "web" for t in chosen):
        web_export.runtime_files()


def export(request: ExportRequest, options: RuntimeOptions = DEFAULT_OPTIONS,
           log=print) -> list[dict[str, Any]]:
    """Write, check and record each requested format; returns their export.json entries."""
    from mnist_seq import backend
    from mnist_seq.data import load_mnist

    run, model_path = RunDir.locate_model(request.source)
    chosen = targets(request)
    out = Path(request.out) if request.out else run.path / "export"
    for t in chosen:
        if (out / t.name).exists() and not request.force:
            raise MnistSeqError(f"{out / t.name} exists; give --force to replace it")
    require_tools(chosen)
    if backend.resolve(options.backend) != "tensorflow":
        log("Exporting on TensorFlow: the converters need it (the model file is the same).")
    backend.setup(replace(options, backend="tensorflow", device="cpu"))
    from mnist_seq.evaluation import load_model

    trained = load_model(model_path)
    model = float32_copy(trained)
    config = _config(run)
    data = load_mnist(origin.data_dir(run, options.data_dir), run.recorded_data_dir())
    check = Check.of(run.name if config else model_path.stem, model, data, config)
    out.mkdir(parents=True, exist_ok=True)
    entries = [write_target(t, check, out, log) for t in chosen]
    _record(out, entries, model_path, data, trained.dtype_policy.name)
    return entries


def _config(run: RunDir) -> dict[str, Any] | None:
    try:
        return run.read_config()
    except MnistSeqError:
        return None  # a lone .keras file: the answer only, no card


@dataclass
class Check:
    """The Keras model's answers on the test set, and what the checks compare."""

    name: str
    model: Any
    card: Any
    kind: str | None
    x_test: np.ndarray
    y_test: np.ndarray
    probs: np.ndarray
    calibration: np.ndarray

    @classmethod
    def of(cls, name: str, model, data, config: dict[str, Any] | None) -> Check:
        from mnist_seq.evaluation import predict_proba
        from mnist_seq.kinds import KINDS

        kind = config["model"]["type"] if config else None
        reader = KINDS[kind].reader if kind in KINDS else None
        order = np.random.default_rng(0).permutation(len(data.x_train))[:CALIBRATION]
        card = float32_copy(reader(model, config), unroll=True) if reader else None
        return cls(name, model, card, kind, data.x_test,
                   data.y_test, predict_proba(model, data.x_test)[0], data.x_train[order])

    def compare(self, probs: np.ndarray, name: str, quantize: str | None) -> dict[str, Any]:
        """Agreement, largest probability difference, accuracies of an exported file's
        test probabilities; raises past the tolerance."""
        agree = float(np.mean(probs.argmax(1) == self.probs.argmax(1)))
        figures = {"agreement": agree, "max_prob_diff": float(np.abs(probs - self.probs).max()),
                   "accuracy": float(np.mean(probs.argmax(1) == self.y_test)),
                   "keras_accuracy": float(np.mean(self.probs.argmax(1) == self.y_test)),
                   "samples": len(self.y_test)}
        if quantize == "int8":
            lost = figures["keras_accuracy"] - figures["accuracy"]
            if lost > INT8_ACCURACY_DROP:
                raise ExportError(f"{name}: int8 lost {100 * lost:.2f} points of "
                                  f"test accuracy, over the {100 * INT8_ACCURACY_DROP:.1f} allowed")
        elif agree < AGREEMENT or figures["max_prob_diff"] > MAX_DIFF[quantize]:
            raise ExportError(f"{name}: differs from the Keras model (same answer "
                              f"on {agree:.2%} of the test digits, expected >= {AGREEMENT:.1%}; "
                              f"probabilities up to {figures['max_prob_diff']:.2g} apart, "
                              f"expected <= {MAX_DIFF[quantize]:g})")
        return figures


def write_target(target: Target, check: Check, out: Path, log) -> dict[str, Any]:
    """Write one format under a temporary name, check it, then give it (and its card)
    the final name."""
    import time

    log(f"Exporting {target.format}{f' ({target.quantize})' if target.quantize else ''} "
        f"to {out / target.name} ...")
    start = time.perf_counter()
    partial = out / f"{PARTIAL}{target.name}"
    _remove(partial)
    try:
        entry = WRITERS[target.format](check, partial, target)
        entry["seconds"] = round(time.perf_counter() - start, 2)
    except BaseException:
        for leftover in out.glob(f"{PARTIAL}*"):
            _remove(leftover)
        raise
    for name in filter(None, (target.name, None if partial.is_dir() else entry.get("card"))):
        _remove(out / name)
        (out / f"{PARTIAL}{name}").rename(out / name)
    final = out / target.name
    files = [p for p in final.rglob("*") if p.is_file()] if final.is_dir() else [final]
    return {"file": target.name, "format": target.format, "quantize": target.quantize,
            "kind": check.kind, **entry, "bytes": sum(p.stat().st_size for p in files)}


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _record(out: Path, entries: list[dict[str, Any]], model_path: Path, data,
            precision: str) -> Path:
    """export.json: every file in the folder and its check against the float32 Keras model
    (`keras_accuracy`; a model trained in mixed precision scores a little differently in
    its own `precision`), earlier exports kept."""
    names = {e["file"] for e in entries}
    kept = [e for e in read_record(out) if e["file"] not in names]
    record = {"model": str(model_path), "precision": precision, "compared_with": "float32",
              "data_source": str(Path(data.source).resolve()), "files": kept + entries}
    return atomic_write(out / RECORD, lambda p: p.write_text(json.dumps(record, indent=2) + "\n",
                                                             encoding="utf-8"))


def format_table(entries: list[dict[str, Any]]) -> str:
    """The checks as a short table."""
    lines = [f"{'file':<22} {'size':>9}  {'same answer':>11}  {'max diff':>8}  "
             f"{'accuracy':>8}  {'keras':>7}"]
    for e in entries:
        lines.append(f"{e['file']:<22} {e['bytes'] / 1024:>7.0f} KB  {e['agreement']:>11.2%}  "
                     f"{e['max_prob_diff']:>8.1e}  {e['accuracy']:>8.2%}  "
                     f"{e['keras_accuracy']:>7.2%}")
    return "\n".join(lines)
