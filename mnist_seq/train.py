"""Training: `train_and_evaluate(config, run)` in four steps.

    data = load_data(config, options)          MNIST, split, before anything is built
    model, plan, where, cluster = build(...)    Keras started, speed plan applied, compiled
    rows = fit(model, plan, config, data, run)  the epochs, recorded as they finish
    metrics = finish(model, plan, ..., run)     model.keras, test score, curves, metrics.json

A run survives being killed: the weights and optimizer state are saved after every
epoch (RUN/backup), and `resume=True` continues from the last completed epoch.

With `options.distribute`, one model trains on every device of every process
(`distribute.py`): the config's batch size is the global batch, process 0 alone writes
the run folder, and validation and test figures cover the whole sets.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mnist_seq import backend, speed
from mnist_seq.config import OPTIMIZERS
from mnist_seq.data import load_mnist, split_train_val, to_float
from mnist_seq.errors import ConfigError, MnistSeqError
from mnist_seq.models import build_model
from mnist_seq.options import DEFAULT_OPTIONS, RuntimeOptions
from mnist_seq.rundir import Rows, RunDir, best_epoch


@dataclass
class Data:
    """The splits a run trains, validates and tests on: uint8 training images, float32
    validation and test images in [0, 1]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    notes: list[str] = field(default_factory=list)


def load_data(config: dict[str, Any], options: RuntimeOptions) -> Data:
    """MNIST split as the config says: a seeded validation fraction of the training set,
    optionally a slice of it, and the first N test images."""
    tcfg, dcfg = config["train"], config["data"]
    ds = load_mnist(options.data_dir, dcfg["dir"])
    x_train, y_train, x_val, y_val = split_train_val(
        ds.x_train, ds.y_train, tcfg["validation_fraction"], tcfg["seed"],
        dcfg["max_train_samples"])
    n_test = dcfg["max_test_samples"] or len(ds.x_test)
    # The training images stay uint8: `speed.fit_inputs` makes them float32 as the plan
    # says (for TensorFlow, one batch at a time inside its input pipeline).
    return Data(x_train, y_train, to_float(x_val), y_val,
                to_float(ds.x_test[:n_test]), ds.y_test[:n_test], ds.source, ds.notes)


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


def compile_model(config: dict[str, Any], train_samples: int, plan: speed.SpeedPlan | None = None):
    """Build and compile the model a config describes, as the speed plan says (Keras's
    defaults without one)."""
    model = build_model(config["model"], unroll=plan.unroll if plan else False)
    steps = math.ceil(train_samples / config["train"]["batch_size"])
    model.compile(
        optimizer=make_optimizer(config["train"], steps),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=plan.steps_per_execution if plan else
        config["train"]["steps_per_execution"],
        jit_compile=plan.jit_compile if plan else "auto",
    )
    return model


def build(config: dict[str, Any], data: Data, options: RuntimeOptions,
          log: Callable[[str], None] = print):
    """Start Keras on the device (and join the other processes), plan and apply the speed
    settings, compile the model. Returns the model, the plan, where it trains in words,
    and the `distribute.Cluster` (None when it trains on one device)."""
    where = backend.setup(options, deterministic=config["train"]["deterministic"])
    import keras

    cluster = None
    if options.distribute:
        from mnist_seq import distribute

        cluster = distribute.join(backend.name())
        cluster.check_batch(config["train"]["batch_size"], "train.batch_size")
        where = f"{where}, {cluster.describe()}"
    # Every process seeds alike: their initial weights must be the same.
    keras.utils.set_random_seed(config["train"]["seed"])
    machine = speed.machine_facts(where.startswith("GPU"), backend.name(), options.threads)
    plan = speed.plan_speed(config, machine, backend.name(), distributed=cluster is not None)
    notes = speed.apply_before_build(plan)
    with cluster.scope() if cluster else contextlib.nullcontext():
        model = compile_model(config, len(data.x_train), plan)
    notes += speed.apply_to_model(plan, model)
    for note in notes:
        log(f"Note: {note}")
    return model, plan, where, cluster


def fit(model, plan: speed.SpeedPlan, config: dict[str, Any], data: Data, run: RunDir,
        rows: Rows, restore=None, tensorboard: bool = False, extra_callbacks=(),
        verbose: int | None = None, cluster=None) -> Rows:
    """Train the remaining epochs, recording each in `rows` and the run folder
    (`extra_callbacks` run after that); on JAX over several devices, each process feeds
    its part of every batch."""
    import keras

    from mnist_seq import callbacks as cb

    tcfg = config["train"]
    guard = cb.Guard(run, rows)
    callbacks = [guard, cb.HistoryRecorder(run, rows), cb.BestModel(run, rows),
                 cb.EpochCheckpoint(run, restore), *extra_callbacks]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run / RunDir.TENSORBOARD)))
    val_batch = plan.validation_batch or tcfg["batch_size"]
    if cluster and cluster.feeds_parts:
        train = cluster.train_inputs(data.x_train, data.y_train, tcfg["batch_size"],
                                     tcfg["seed"], len(rows))
        validation = {"validation_data": cluster.eval_inputs(data.x_val, data.y_val, val_batch)}
    else:
        train = speed.fit_inputs(plan, model, data.x_train, data.y_train, tcfg["batch_size"],
                                 tcfg["seed"])
        validation = {"validation_data": (data.x_val, data.y_val),
                      "validation_batch_size": val_batch}
    with cb.first_ctrl_c_stops(guard):
        model.fit(
            **train,
            **validation,
            epochs=tcfg["epochs"],
            initial_epoch=len(rows),
            callbacks=callbacks,
            # A progress bar on a terminal; piped output gets one clean line per epoch.
            verbose=(1 if sys.stdout.isatty() else 2) if verbose is None else verbose,
        )
    return rows


def finish(model, plan: speed.SpeedPlan, config: dict[str, Any], data: Data, run: RunDir,
           rows: Rows, facts: dict[str, Any], score_test: bool = True,
           cluster=None) -> dict[str, Any]:
    """Save the final model, score the test set once (unless told not to: a sweep's
    trials leave it out), draw the curves, write metrics.json (last: it marks the run
    finished) and drop the resume state."""
    from mnist_seq.plotting import plot_curves

    run.save_model(model, RunDir.MODEL)
    test = score(model, data.x_test, data.y_test, cluster) if score_test else {}
    train_seconds = sum(r["seconds"] for r in rows)  # summed over every part of a resumed run
    best = rows[best_epoch(rows) or 0]
    metrics = {
        "test_loss": float(test["loss"]) if test else None,
        "test_accuracy": float(test["accuracy"]) if test else None,
        "best_epoch": int(best["epoch"]) + 1,
        "best_val_accuracy": best.get("val_accuracy"),
        "final_val_accuracy": rows[-1].get("val_accuracy"),
        "epochs": len(rows),
        "params": model.count_params(),
        "train_samples": len(data.x_train),
        "val_samples": len(data.x_val),
        "test_samples": len(data.x_test) if test else 0,
        "train_seconds": round(train_seconds, 2),
        "samples_per_second": round(len(data.x_train) * len(rows) / train_seconds, 1),
        "seed": config["train"]["seed"],
        "deterministic": config["train"]["deterministic"],
        "precision": plan.precision,
        "lstm_unrolled": plan.unroll,
        "xla": plan.jit_compile,
        "data_source": data.source,
        "distributed": cluster.facts() if cluster else None,
        **facts,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **backend.versions(),
    }
    run.save_figure(plot_curves({run.name: rows}), RunDir.CURVES)
    run.write_json(RunDir.METRICS, metrics)
    run.remove_backup()
    return metrics


def score(model, x: np.ndarray, y: np.ndarray, cluster=None) -> dict[str, float]:
    """Loss and accuracy over all of (x, y); over several JAX processes each feeds its
    part of every batch."""
    if cluster and cluster.feeds_parts:
        return model.evaluate(cluster.eval_inputs(x, y, 512), verbose=0, return_dict=True)
    return model.evaluate(x, y, batch_size=512, verbose=0, return_dict=True)


def train_and_evaluate(config: dict[str, Any], run: RunDir,
                       options: RuntimeOptions = DEFAULT_OPTIONS, *, resume: bool = False,
                       log: Callable[[str], None] = print, callbacks=(),
                       score_test: bool = True, verbose: int | None = None) -> dict[str, Any]:
    """Train the configured model, score the test set once, and fill the run folder.

    A new run folder (`RunDir.new`) is created only once the data, the device and the
    model are ready, so a failure before training leaves nothing behind. With `resume`,
    `run` is an unfinished run, continued from its last completed epoch. `callbacks`
    run after each epoch is recorded; `score_test=False` leaves the test set out;
    `verbose` is Keras's (None: a progress bar on a terminal, a line per epoch
    elsewhere). Returns the run's metrics.
    """
    tcfg = config["train"]
    # Read first: a run that cannot be resumed is said before the data and Keras load.
    rows, restore = run.resume_point() if resume else ([], None)
    name = backend.choose(options.backend)
    if options.distribute:
        from mnist_seq import distribute

        distribute.check(options.distribute, name)
        if (options.distribute.num_processes or 1) > 1:
            log(f"Joining {options.distribute.num_processes} processes at "
                f"{options.distribute.coordinator} (each waits up to "
                f"{distribute.JOIN_SECONDS // 60} minutes for the others to start)")
    data = load_data(config, options)
    for note in data.notes:
        log(f"Note: {note}")
    model, plan, where, cluster = build(config, data, options, log)
    if options.tensorboard:
        _require_tensorboard()
    if cluster and cluster.processes > 1:
        if run.timestamped:
            raise ConfigError("a run over several processes needs --run-dir: every process "
                              "must name the same run folder")
        run.writer = cluster.writer  # process 0 alone writes the run folder
        run.save_scope = cluster.alone
        if not cluster.writer:
            log = _quiet(log, f"Process {cluster.process} of {cluster.processes}")
            verbose = 0
    if resume:
        log(f"Resuming {run.path} after epoch {len(rows)} of {tcfg['epochs']}")
    else:
        run.create()
        run.write_config(config)
        # The untrained weights, so `inspect` can show what training changed.
        run.save_model(model, RunDir.INITIAL_WEIGHTS)
    log(f"Training {run.name} ({model.count_params():,} parameters) on {where}: "
        f"{len(data.x_train):,} train / {len(data.x_val):,} validation samples from "
        f"{data.source}, {tcfg['epochs']} epochs of batch {tcfg['batch_size']}")
    log(f"Speed: {plan.line}")
    log(f"Run folder: {run.path}")
    facts = {"device": where, "resumed": resume, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "command": options.command}
    hint = (f"To resume, start every process again with --resume {run.path} (and its "
            "--num-processes, --process-id and --coordinator, if given)")
    with cluster.lost_processes(hint) if cluster else contextlib.nullcontext():
        fit(model, plan, config, data, run, rows, restore, options.tensorboard, callbacks,
            verbose, cluster)
        metrics = finish(model, plan, config, data, run, rows, facts, score_test, cluster)
    if cluster:
        cluster.close()
    if score_test:
        log(f"Test accuracy {metrics['test_accuracy']:.4f}, loss {metrics['test_loss']:.4f} "
            f"({len(data.x_test):,} test samples); trained in "
            f"{metrics['train_seconds']:.1f} s")
    return metrics


def _quiet(log: Callable[[str], None], who: str) -> Callable[[str], None]:
    """A process that does not write the run folder says only where it stands and how it
    ended, each line naming it."""
    def say(line: str) -> None:
        if line.startswith(("Training ", "Test accuracy", "Note: ")):
            log(f"{who}: {line}")

    return say


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise MnistSeqError("--tensorboard needs TensorBoard: pip install "
                            "'mnist-seq[tensorboard]'") from None
