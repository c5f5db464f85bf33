"""Training: one function, `train_and_evaluate(config, run_dir)`, built on Keras callbacks."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnist_seq import artifacts, backend
from mnist_seq.config import dump_config
from mnist_seq.data import load_mnist, split_train_val, to_float
from mnist_seq.errors import MnistSeqError
from mnist_seq.models import build_model

OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "sgd": "SGD"}


def make_optimizer(train_cfg: dict[str, Any], steps_per_epoch: int):
    """The configured Keras optimizer, with its learning-rate schedule."""
    import keras

    lr = train_cfg["learning_rate"]
    if train_cfg["lr_schedule"] == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            lr, decay_steps=steps_per_epoch * train_cfg["epochs"])
    cls = getattr(keras.optimizers, OPTIMIZERS[train_cfg["optimizer"]])
    return cls(learning_rate=lr)


def compile_model(config: dict[str, Any], train_samples: int):
    """Build and compile the model a config describes."""
    model = build_model(config["model"])
    steps = math.ceil(train_samples / config["train"]["batch_size"])
    model.compile(
        optimizer=make_optimizer(config["train"], steps),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _epoch_recorder(run_dir: Path):
    """A callback that adds learning rate and seconds to each epoch's logs (so
    CSVLogger and History record them) and rewrites history.json every epoch,
    so a run in progress can be plotted."""
    import keras

    class EpochRecorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.rows: list[dict[str, float]] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            lr = self.model.optimizer.learning_rate
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
            logs["seconds"] = round(time.perf_counter() - self._start, 3)
            self.rows.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
            artifacts.write_json(run_dir / artifacts.HISTORY_JSON, self.rows)

    return EpochRecorder()


def train_and_evaluate(
    config: dict[str, Any],
    run_dir: str | Path | None = None,
    *,
    name: str = "run",
    runs_root: str | Path = "runs",
    data_dir: str | Path | None = None,
    device: str = "auto",
    tensorboard: bool = False,
    command: str = "",
    debug: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[Path, dict[str, Any]]:
    """Train the configured model, score the test set once, and fill a new run folder.

    The run folder is `run_dir`, or `runs_root/<name>-<timestamp>`; it is created
    only once the data, the device and the model are ready, so a failure before
    training leaves nothing behind. Returns the run folder and its metrics.
    """
    tcfg, dcfg = config["train"], config["data"]
    data = load_mnist(data_dir, dcfg["dir"])
    for note in data.notes:
        log(f"Note: {note}")
    x_train, y_train, x_val, y_val = split_train_val(
        data.x_train, data.y_train, tcfg["validation_fraction"], tcfg["seed"],
        dcfg["max_train_samples"],
    )
    n_test = dcfg["max_test_samples"] or len(data.x_test)
    x_test, y_test = data.x_test[:n_test], data.y_test[:n_test]

    where = backend.setup(device, debug=debug)
    import keras

    keras.utils.set_random_seed(tcfg["seed"])
    model = compile_model(config, len(x_train))
    if tensorboard:
        _require_tensorboard()
    run_dir = artifacts.make_run_dir(name, run_dir, runs_root)
    log(f"Training {model.name} ({model.count_params():,} parameters) on {where}: "
        f"{len(x_train):,} train / {len(x_val):,} validation samples from {data.source}, "
        f"{tcfg['epochs']} epochs of batch {tcfg['batch_size']}")
    log(f"Run folder: {run_dir}")

    artifacts.write_text(run_dir / artifacts.CONFIG, dump_config(config))
    recorder = _epoch_recorder(run_dir)
    callbacks = [
        recorder,  # first, so the callbacks after it see learning_rate and seconds
        keras.callbacks.CSVLogger(str(run_dir / artifacts.HISTORY_CSV)),
        keras.callbacks.ModelCheckpoint(
            str(run_dir / artifacts.BEST_MODEL), monitor="val_accuracy", mode="max",
            save_best_only=True,
        ),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")))

    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    t0 = time.perf_counter()
    model.fit(
        to_float(x_train), y_train,
        batch_size=tcfg["batch_size"],
        epochs=tcfg["epochs"],
        validation_data=(to_float(x_val), y_val),
        callbacks=callbacks,
        # A progress bar on a terminal; piped output gets one clean line per epoch.
        verbose=1 if sys.stdout.isatty() else 2,
    )
    train_seconds = time.perf_counter() - t0

    tmp_model = run_dir / ".model.tmp.keras"  # Keras insists on the .keras suffix
    model.save(tmp_model)
    tmp_model.replace(run_dir / artifacts.MODEL)

    test = model.evaluate(to_float(x_test), y_test, batch_size=512, verbose=0, return_dict=True)
    rows = recorder.rows
    best = max(rows, key=lambda r: r.get("val_accuracy", 0.0))
    metrics = {
        "test_loss": float(test["loss"]),
        "test_accuracy": float(test["accuracy"]),
        "best_epoch": int(best["epoch"]) + 1,
        "best_val_accuracy": best.get("val_accuracy"),
        "final_val_accuracy": rows[-1].get("val_accuracy"),
        "epochs": len(rows),
        "params": model.count_params(),
        "train_samples": len(x_train),
        "val_samples": len(x_val),
        "test_samples": len(x_test),
        "train_seconds": round(train_seconds, 2),
        "samples_per_second": round(len(x_train) * len(rows) / train_seconds, 1),
        "device": where,
        "seed": tcfg["seed"],
        "data_source": data.source,
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": command,
        **backend.versions(),
    }
    artifacts.write_json(run_dir / artifacts.METRICS, metrics)

    from mnist_seq.plotting import plot_curves

    plot_curves({run_dir.name: rows}, run_dir / artifacts.CURVES)
    log(f"Test accuracy {metrics['test_accuracy']:.4f}, loss {metrics['test_loss']:.4f} "
        f"({len(x_test):,} test samples); trained in {train_seconds:.1f} s")
    return run_dir, metrics


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise MnistSeqError("--tensorboard needs TensorBoard: pip install "
                            "'mnist-seq[tensorboard]'") from None
