"""Training: one function, `train_and_evaluate(config, run_dir)`, built on Keras callbacks.

A run survives being killed: Keras's BackupAndRestore saves the weights and the
optimizer state (so the learning-rate schedule too) after every epoch in
RUN/backup, and `resume=True` continues from the last completed epoch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnist_seq import artifacts, backend
from mnist_seq.config import dump_config, read_yaml, validate
from mnist_seq.data import load_mnist, split_train_val, to_float
from mnist_seq.errors import MnistSeqError, RunDirError
from mnist_seq.models import build_model

OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "sgd": "SGD"}
BACKUP = "backup"
VAL_BATCH = 2048
# Cross-entropy over 10 classes starts near ln(10) = 2.3; a loss past this means the
# true class gets probability e^-1000: the weights have blown up, NaN or not.
DIVERGED_LOSS = 1e3


class TrainingInterrupted(MnistSeqError):
    """Ctrl-C: the run stopped cleanly and can be resumed."""

    exit_code = 130


class TrainingDiverged(MnistSeqError):
    """The loss became NaN or infinite."""


def make_optimizer(train_cfg: dict[str, Any], steps_per_epoch: int):
    """The configured Keras optimizer, with its learning-rate schedule."""
    import keras

    lr = train_cfg["learning_rate"]
    total = steps_per_epoch * train_cfg["epochs"]
    if train_cfg["lr_schedule"] == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=total)
    elif train_cfg["lr_schedule"] == "onecycle":
        # Warm up linearly from lr/25 to lr over 30% of the steps, then cosine to 0.
        warmup = int(0.3 * total)
        lr = keras.optimizers.schedules.CosineDecay(
            lr / 25, decay_steps=total - warmup, warmup_target=lr, warmup_steps=warmup)
    cls = getattr(keras.optimizers, OPTIMIZERS[train_cfg["optimizer"]])
    return cls(learning_rate=lr)


def compile_model(config: dict[str, Any], train_samples: int, unroll: bool = False,
                  jit_compile: bool | str = "auto", steps_per_execution: int | None = None):
    """Build and compile the model a config describes (`steps_per_execution`, when
    given, overrides the config's)."""
    model = build_model(config["model"], unroll=unroll)
    steps = math.ceil(train_samples / config["train"]["batch_size"])
    model.compile(
        optimizer=make_optimizer(config["train"], steps),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution or config["train"]["steps_per_execution"],
        jit_compile=jit_compile,
    )
    return model


def speed_settings(config: dict[str, Any], on_gpu: bool) -> dict[str, Any]:
    """How this run trains fast on its device, and a line that says so."""
    import keras

    mcfg, tcfg = config["model"], config["train"]
    precision = backend.choose_precision(tcfg["precision"], mcfg["type"], on_gpu)
    keras.mixed_precision.set_global_policy(precision)
    # On a CPU, unrolling the 28 steps beats Keras's while-loop: the 3-layer LSTM
    # trained 1.39x faster per epoch for 2.6 s more compiling (scripts/ab.py, see the
    # README). On a GPU the cuDNN kernel is faster still, and unrolling would rule it
    # out. (Hoisting the input projection out of the unrolled steps was slower here.)
    unroll = mcfg["type"] == "lstm" and not on_gpu
    xla = backend.choose_xla(tcfg["xla"], on_gpu)
    # The MLP's steps are so small that fixed costs per batch rule its speed on a CPU:
    # each epoch runs in one TensorFlow call, on batches sliced inside the graph (1.15x
    # here, 1.25x with validation in batches of 2048; LeNet gained nothing from it).
    # Fused optimizer updates (one op per variable) paid for both: 1.14x for the MLP
    # and for LeNet, whose Adam state is 1.3M floats read and written by ten or so
    # ops a step otherwise (README, Performance). LSTMs' steps are dominated by many
    # small recurrent ops: not measured, left as they were. Nor measured on a GPU.
    small_steps = mcfg["type"] == "mlp" and not on_gpu
    notes = [f"precision {precision}",
             "each epoch in one call, batches sliced in the graph" if small_steps else
             f"{tcfg['steps_per_execution']} steps per execution",
             {True: "XLA on", False: "XLA off", "auto": "XLA where Keras can use it"}[xla]]
    if unroll:
        # The unrolled graph has many small ops that do not depend on each other (layer 2
        # at row t beside layer 1 at row t+1): on 2 cores, two ops at once on one thread
        # each beat one op at a time on two threads in every paired A/B here (README,
        # Performance); the CNN and the MLP, with few big ops, were slower or even.
        intra = max(1, (os.cpu_count() or 2) // 2)
        if backend.set_op_threads(intra, 2):
            notes.append(f"2 ops at a time, {intra} thread{'s' if intra > 1 else ''} each")
        else:
            notes.append("op threads left as they were (TensorFlow had started already)")
    onednn = None if on_gpu else backend.onednn_enabled()
    if onednn is not None:
        user_off = os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0"
        notes.append("oneDNN on" if onednn else
                     "oneDNN off" + (" (TF_ENABLE_ONEDNN_OPTS=0)" if user_off else ""))
    if mcfg["type"] == "lstm":
        if unroll:
            notes.append("LSTM kernel: generic, unrolled over the 28 rows (CPU; cuDNN needs "
                         "a GPU)")
        elif mcfg["recurrent_dropout"]:
            notes.append("LSTM kernel: generic, because recurrent_dropout > 0 rules out cuDNN")
        else:
            notes.append("LSTM kernel: cuDNN (tanh/sigmoid, no recurrent dropout, not unrolled)")
    return {"precision": precision, "unroll": unroll, "jit_compile": xla,
            "fuse_updates": mcfg["type"] in ("mlp", "cnn") and not on_gpu,
            "one_call_epochs": small_steps,
            "line": ", ".join(notes)}


def resume_config(run_dir: str | Path) -> dict[str, Any]:
    """The config of an unfinished run, checked, for `--resume`."""
    run_dir = Path(run_dir)
    if not (run_dir / artifacts.CONFIG).is_file():
        raise RunDirError(f"no run to resume at {run_dir}: expected a run folder with "
                          f"{artifacts.CONFIG}")
    if (run_dir / artifacts.METRICS).is_file():
        raise RunDirError(f"{run_dir} has finished already ({artifacts.METRICS} is there); "
                          "nothing to resume")
    return validate(read_yaml(run_dir / artifacts.CONFIG))


def _callbacks(run_dir: Path, rows: list[dict[str, float]]):
    """The run's callbacks: a guard (Ctrl-C, NaN), the history, the best model, the backup."""
    import keras

    class Guard(keras.callbacks.Callback):
        """Stops at the end of a batch after Ctrl-C, or at the first non-finite loss."""

        interrupted = False

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            loss = float((logs or {}).get("loss", 0.0))
            if not math.isfinite(loss) or loss > DIVERGED_LOSS:
                # Epochs trained in one call (the MLP's on a CPU) report once, at their end.
                where = f"epoch {self.epoch + 1}" + (
                    f", batch {batch + 1}" if self.params.get("steps") != 1 else "")
                raise TrainingDiverged(
                    f"training diverged: the loss became {loss:.4g} in {where} "
                    f"(a model that guesses scores {math.log(10):.2f}); "
                    f"try a lower train.learning_rate. {_kept(run_dir)}")
            if self.interrupted:
                raise TrainingInterrupted(
                    f"interrupted in epoch {self.epoch + 1}; {len(rows)} completed epochs are "
                    f"saved. Resume with: mnist-seq train --resume {run_dir}")

    class Recorder(keras.callbacks.Callback):
        """Adds learning rate and seconds to each epoch's logs, and rewrites history.json
        and history.csv (atomically) every epoch, so a run in progress can be plotted."""

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            lr = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            logs["learning_rate"] = float(lr)
            logs["seconds"] = round(time.perf_counter() - self.start, 3)
            rows.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
            artifacts.write_history(run_dir, rows)

    class BestModel(keras.callbacks.Callback):
        """Saves best.keras atomically whenever validation accuracy improves; after a
        resume it starts from the best figure so far, so it never saves a worse model."""

        best = max((r.get("val_accuracy", -1.0) for r in rows), default=-1.0)

        def on_epoch_end(self, epoch, logs=None):
            acc = (logs or {}).get("val_accuracy")
            if acc is not None and acc > self.best:
                self.best = acc
                _save_model(self.model, run_dir / artifacts.BEST_MODEL)

    guard = Guard()
    backup = keras.callbacks.BackupAndRestore(
        str(run_dir / BACKUP), double_checkpoint=True,
        delete_checkpoint=False,  # removed by us, once the run's artifacts are complete
    )
    return guard, [guard, Recorder(), BestModel(), backup]


def _kept(run_dir: Path) -> str:
    best = run_dir / artifacts.BEST_MODEL
    return f"The last good model is kept in {best}." if best.is_file() else \
        "No epoch finished, so no model was kept."


def _save_model(model, path: Path, weights_only: bool = False) -> None:
    """Save a .keras (or .weights.h5) file under a temporary name, then rename."""
    suffix = ".weights.h5" if weights_only else ".keras"  # Keras insists on the suffix
    tmp = path.with_name(f".{path.name.removesuffix(suffix)}.tmp{suffix}")
    try:
        model.save_weights(tmp) if weights_only else model.save(tmp)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise MnistSeqError(f"cannot write {path}: {e.strerror or e}") from None


def _completed_epochs(run_dir: Path) -> int:
    """Epochs the backup holds (0 when no epoch finished before the run stopped)."""
    meta = run_dir / BACKUP / "training_metadata.json"
    for path in (meta, meta.with_name(meta.name + ".bkp")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return int(json.loads(path.read_text(encoding="utf-8"))["epoch"])
    return 0


@contextlib.contextmanager
def _first_ctrl_c_stops(guard):
    """The first Ctrl-C asks the guard to stop after the current batch; a second one
    interrupts at once, as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        guard.interrupted = True
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def train_and_evaluate(
    config: dict[str, Any],
    run_dir: str | Path | None = None,
    *,
    name: str = "run",
    runs_root: str | Path = "runs",
    resume: bool = False,
    data_dir: str | Path | None = None,
    device: str = "auto",
    tensorboard: bool = False,
    command: str = "",
    debug: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[Path, dict[str, Any]]:
    """Train the configured model, score the test set once, and fill the run folder.

    A new run folder is `run_dir`, or `runs_root/<name>-<timestamp>`; it is created
    only once the data, the device and the model are ready, so a failure before
    training leaves nothing behind. With `resume`, `run_dir` is an unfinished run,
    continued from its last completed epoch. Returns the run folder and its metrics.
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

    where = backend.setup(device, debug=debug, deterministic=tcfg["deterministic"])
    import keras

    keras.utils.set_random_seed(tcfg["seed"])
    speed = speed_settings(config, on_gpu=where.startswith("GPU"))
    model = compile_model(config, len(x_train), unroll=speed["unroll"],
                          jit_compile=speed["jit_compile"],
                          steps_per_execution=1 if speed["one_call_epochs"] else None)
    if speed["fuse_updates"] and backend.fuse_optimizer_updates(model.optimizer,
                                                                model.trainable_variables):
        speed["line"] += f", fused {type(model.optimizer).__name__} updates"
    if tensorboard:
        _require_tensorboard()
    if resume:
        run_dir = Path(run_dir)
        done = _completed_epochs(run_dir)
        # Epochs the history recorded after the last backup are trained again: drop them.
        rows = [r for r in _old_rows(run_dir) if r["epoch"] < done]
        log(f"Resuming {run_dir} after epoch {done} of {tcfg['epochs']}")
    else:
        run_dir = artifacts.make_run_dir(name, run_dir, runs_root)
        artifacts.write_text(run_dir / artifacts.CONFIG, dump_config(config))
        # The untrained weights, so `inspect` can show what training changed.
        _save_model(model, run_dir / artifacts.INITIAL_WEIGHTS, weights_only=True)
        rows = []
    log(f"Training {name} ({model.count_params():,} parameters) on {where}: "
        f"{len(x_train):,} train / {len(x_val):,} validation samples from {data.source}, "
        f"{tcfg['epochs']} epochs of batch {tcfg['batch_size']}")
    log(f"Speed: {speed['line']}")
    log(f"Run folder: {run_dir}")

    guard, callbacks = _callbacks(run_dir, rows)
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")))
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    batch = tcfg["batch_size"]
    train_data = {"x": to_float(x_train), "y": y_train, "batch_size": batch}
    if speed["one_call_epochs"]:
        # Shuffled inside each call, so Keras is told not to shuffle.
        train_data = {"x": backend.epochs_in_one_call(model, train_data["x"], y_train, batch,
                                                      tcfg["seed"]), "shuffle": False}
    with _first_ctrl_c_stops(guard):
        model.fit(
            **train_data,
            epochs=tcfg["epochs"],
            validation_data=(to_float(x_val), y_val),
            # Bigger validation batches cost the MLP less per epoch; the figures are the
            # same but for float rounding.
            validation_batch_size=VAL_BATCH if speed["one_call_epochs"] else batch,
            callbacks=callbacks,
            # A progress bar on a terminal; piped output gets one clean line per epoch.
            verbose=1 if sys.stdout.isatty() else 2,
        )
    _save_model(model, run_dir / artifacts.MODEL)
    test = model.evaluate(to_float(x_test), y_test, batch_size=512, verbose=0, return_dict=True)
    train_seconds = sum(r["seconds"] for r in rows)  # summed over every session of the run
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
        "deterministic": tcfg["deterministic"],
        "precision": speed["precision"],
        "lstm_unrolled": speed["unroll"],
        "xla": speed["jit_compile"],
        "resumed": resume,
        "data_source": data.source,
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": command,
        **backend.versions(),
    }
    from mnist_seq.plotting import plot_curves

    plot_curves({run_dir.name: rows}, run_dir / artifacts.CURVES)
    artifacts.write_json(run_dir / artifacts.METRICS, metrics)  # last: marks the run finished
    shutil.rmtree(run_dir / BACKUP, ignore_errors=True)
    log(f"Test accuracy {metrics['test_accuracy']:.4f}, loss {metrics['test_loss']:.4f} "
        f"({len(x_test):,} test samples); trained in {train_seconds:.1f} s")
    return run_dir, metrics


def _old_rows(run_dir: Path) -> list[dict[str, float]]:
    try:
        return artifacts.read_history(run_dir)
    except MnistSeqError:  # killed before the first epoch ended: no history yet
        return []


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise MnistSeqError("--tensorboard needs TensorBoard: pip install "
                            "'mnist-seq[tensorboard]'") from None
