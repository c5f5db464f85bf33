"""Training: `train_and_evaluate(config, run)` in three steps over one `Session`.

    session = build(config, run, options)   data, Keras, the cluster, the plan, the model,
                                            then the run folder (nothing is made before)
    fit(session)                            the epochs, recorded as they finish
    finish(session)                         model.keras, test score, curves, metrics.json

A run survives being killed: the weights and optimizer state are saved after every
epoch (RUN/backup), and `resume=True` continues from the last completed epoch.

With `options.distribute`, one model trains on every device of every process
(`distribute.py`): the config's batch size is the global batch, process 0 alone writes
the run folder, and validation and test figures cover the whole sets. Without it the
session's cluster is a local one, whose steps do nothing.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnist_seq import backend, distribute, origin, speed
from mnist_seq.config import OPTIMIZERS
from mnist_seq.data import Dataset, find_mnist, needs_download, split_train_val, to_float
from mnist_seq.errors import MnistSeqError, WriteError
from mnist_seq.models import build_model, build_state
from mnist_seq.options import DEFAULT_OPTIONS, RuntimeOptions
from mnist_seq.rundir import Rows, RunDir, best_epoch


@dataclass
class Data:
    """The splits a run trains, validates and tests on: uint8 training and test images
    (scaled where they are used), float32 validation images in [0, 1]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    notes: list[str] = field(default_factory=list)


def load_data(config: dict[str, Any], read: Callable[[], Dataset]) -> Data:
    """MNIST (from `read`, a reader `data.find_mnist` found) split as the config says: a
    seeded validation fraction of the training set, optionally a slice of it, and the
    first N test images."""
    tcfg, dcfg = config["train"], config["data"]
    ds = read()
    x_train, y_train, x_val, y_val = split_train_val(
        ds.x_train, ds.y_train, tcfg["validation_fraction"], tcfg["seed"],
        dcfg["max_train_samples"])
    n_test = dcfg["max_test_samples"] or len(ds.x_test)
    # The training images stay uint8: `speed.fit_inputs` makes them float32 as the plan
    # says (for TensorFlow, one batch at a time inside its input pipeline).
    return Data(x_train, y_train, to_float(x_val), y_val, ds.x_test[:n_test],
                ds.y_test[:n_test], ds.source, ds.notes)


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
    model = build_model(config["model"])
    steps = math.ceil(train_samples / config["train"]["batch_size"])
    model.compile(
        optimizer=make_optimizer(config["train"], steps),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=plan.steps_per_execution if plan else
        config["train"]["steps_per_execution"],
        jit_compile=plan.jit_compile if plan else "auto",
    )
    build_state(model)
    return model


@dataclass
class Session:
    """One training run, from `build` to `finish`: what it trains, on what, and where
    it writes. `rows` grows by one record per finished epoch."""

    config: dict[str, Any]
    options: RuntimeOptions
    data: Data
    model: Any
    plan: speed.SpeedPlan
    cluster: distribute.Cluster
    run: RunDir
    rows: Rows
    restore: Path | None  # the checkpoint a resumed run starts from
    facts: dict[str, Any]  # where and how it ran, for metrics.json
    log: Callable[[str], None]
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json, once finished
    # Wall seconds of each step outside the epochs themselves (metrics.json), so the
    # fixed costs of a run can be seen and cut.
    phases: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = round(time.perf_counter() - start, 3)


def build(config: dict[str, Any], run: RunDir, options: RuntimeOptions = DEFAULT_OPTIONS, *,
          resume: bool = False, log: Callable[[str], None] = print) -> Session:
    """Everything a run needs before its first epoch: the data, Keras on its device, the
    cluster, the speed plan, the compiled model; then the run folder (`run` is a
    `RunDir.new` still to be made, or with `resume` an unfinished run)."""
    # Read first: a run that cannot be resumed is said before the data and Keras load.
    rows, restore = run.resume_point() if resume else ([], None)
    for line in distribute.check(options.distribute, backend.choose(options.backend),
                                 named_run=not run.timestamped):
        log(line)
    data, where, phases = _data_and_backend(config, options)
    ready = time.perf_counter()
    for note in data.notes:
        log(f"Note: {note}")
    cluster = distribute.join(backend.name(), options.distribute)
    cluster.check_batch(config["train"]["batch_size"], "train.batch_size")
    cluster.check_run_dir(named_run=not run.timestamped)
    if options.tensorboard:
        _require_tensorboard()
    if not cluster.writer:
        log = _quiet(log, f"Process {cluster.process} of {cluster.processes}")
    where = ", ".join(filter(None, (where, cluster.describe())))
    model, plan = _compile(config, data, options, cluster, where, log)
    session = Session(config, options, data, model, plan, cluster,
                      run.shared(writer=cluster.writer, save_scope=cluster.alone), rows,
                      restore, {"device": where, "resumed": resume,
                                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                "command": options.command}, log)
    with session.timed("start"):
        _start(session)
    session.phases |= phases | {"compile": round(time.perf_counter() - ready
                                                 - session.phases["start"], 3)}
    return session


def _data_and_backend(config: dict[str, Any],
                      options: RuntimeOptions) -> tuple[Data, str, dict[str, float]]:
    """The data, read while Keras and its backend load (both mostly wait on the disk or
    run C code that lets the other thread go on): about 0.2 s sooner on 2 cores. Where
    MNIST must be downloaded, Keras does it, so it loads first. Returns the data, where
    training runs, and the seconds each took ("data": the wait for it after Keras)."""
    deterministic = config["train"]["deterministic"]
    start = time.perf_counter()
    # A data path that is missing or holds no MNIST files is said before Keras loads.
    read = find_mnist(options.data_dir, config["data"]["dir"])
    if needs_download(options.data_dir, config["data"]["dir"]):
        data = load_data(config, read)
        loaded = time.perf_counter()
        where = backend.setup(options, deterministic=deterministic)
        return data, where, {"data": round(loaded - start, 3),
                             "keras": round(time.perf_counter() - loaded, 3)}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reading = pool.submit(load_data, config, read)
        try:
            where = backend.setup(options, deterministic=deterministic)
        finally:
            keras_ready = time.perf_counter()
            data = reading.result()  # its error first, as when the data was read first
    return data, where, {"data": round(time.perf_counter() - keras_ready, 3),
                         "keras": round(keras_ready - start, 3)}


def _compile(config: dict[str, Any], data: Data, options: RuntimeOptions,
             cluster: distribute.Cluster, where: str, log: Callable[[str], None]):
    """Plan the speed settings for this machine and compile the model as they say."""
    import keras

    # Every process seeds alike: their initial weights must be the same.
    keras.utils.set_random_seed(config["train"]["seed"])
    machine = speed.machine_facts(where.startswith("GPU"), backend.name(), options.threads)
    plan = speed.plan_speed(config, machine, backend.name(), distributed=cluster.distributed)
    notes = speed.apply_before_build(plan)
    with cluster.scope():
        model = compile_model(config, len(data.x_train), plan)
    notes += speed.apply_to_model(plan, model)
    for note in notes:
        log(f"Note: {note}")
    return model, plan


def _start(s: Session) -> None:
    """Create a new run's folder, its config and initial weights (only now: a failure
    before this leaves nothing), and say what trains where."""
    tcfg = s.config["train"]
    if s.facts["resumed"]:
        s.log(f"Resuming {s.run.path} after epoch {len(s.rows)} of {tcfg['epochs']}")
    else:
        s.run.create()
        try:
            s.run.write_config(s.config)
            origin.record(s.run, backend.name(), s.data.source, s.cluster.facts())
            # The untrained weights, so `inspect` can show what training changed.
            s.run.save_model(s.model, RunDir.INITIAL_WEIGHTS)
        except WriteError:
            shutil.rmtree(s.run.path, ignore_errors=True)  # made just now: nothing to keep
            raise
    s.log(f"Training {s.run.name} ({s.model.count_params():,} parameters) on "
          f"{s.facts['device']}: {len(s.data.x_train):,} train / {len(s.data.x_val):,} "
          f"validation samples from {s.data.source}, {tcfg['epochs']} epochs of batch "
          f"{tcfg['batch_size']}")
    s.log(f"Speed: {s.plan.line}")
    s.log(f"Run folder: {s.run.path}")


def fit(s: Session, callbacks=(), verbose: int | None = None) -> Rows:
    """Train the remaining epochs, recording each in `s.rows` and the run folder
    (`callbacks` run after that); `verbose` is Keras's (None: a progress bar on a
    terminal, a line per epoch elsewhere; a process that does not write says nothing)."""
    import keras

    from mnist_seq import callbacks as cb
    from mnist_seq.processes import first_ctrl_c

    tcfg, data = s.config["train"], s.data
    guard = cb.Guard(s.run, s.rows)
    every = [guard, cb.HistoryRecorder(s.run, s.rows), cb.BestModel(s.run, s.rows),
             cb.EpochCheckpoint(s.run, s.restore), *callbacks]
    if tcfg["snapshots"] and s.run.writer:
        every.insert(1, _snapshot_keeper(s))
    if s.options.tensorboard:
        every.append(keras.callbacks.TensorBoard(log_dir=str(s.run / RunDir.TENSORBOARD)))
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    if s.run.writer:
        from mnist_seq.plotting import preload

        preload()  # for the curves drawn at the end
    with first_ctrl_c(guard.stop), s.timed("fit"):
        s.model.fit(
            **s.cluster.train_inputs(s.plan, s.model, data.x_train, data.y_train,
                                     tcfg["batch_size"], tcfg["seed"], len(s.rows)),
            **s.cluster.validation(data.x_val, data.y_val,
                                   s.plan.validation_batch or tcfg["batch_size"]),
            epochs=tcfg["epochs"],
            initial_epoch=len(s.rows),
            callbacks=every,
            verbose=verbose if s.run.writer else 0,
        )
    return s.rows


def _snapshot_keeper(s: Session):
    """The callback that keeps snapshots, continuing those a resumed run kept before the
    epoch it trains again."""
    from mnist_seq.callbacks import SnapshotKeeper
    from mnist_seq.kinds import KINDS
    from mnist_seq.snapshots import Snapshots

    kind = s.config["model"]["type"]
    kept = s.run.read_snapshots() if s.facts["resumed"] else None
    kept = kept.up_to(len(s.rows)) if kept else Snapshots(kind, s.data.x_test[0])
    return SnapshotKeeper(s.run, kept, KINDS[kind].snapshot, KINDS[kind].snapshot_batches)


def finish(s: Session, score_test: bool = True) -> dict[str, Any]:
    """Save the final model, score the test set once (unless told not to: a sweep's
    trials leave it out), draw the curves, write metrics.json (last: it marks the run
    finished) and drop the resume state."""
    from mnist_seq.evaluation import score
    from mnist_seq.plotting import plot_curves

    with s.timed("save"):
        s.run.save_model(s.model, RunDir.MODEL)
    with s.timed("score"):
        test = score(s.model, s.data.x_test, s.data.y_test, cluster=s.cluster) \
            if score_test else {}
    with s.timed("curves"):
        s.run.save_figure(plot_curves({s.run.name: s.rows}), RunDir.CURVES)
    s.metrics = _metrics(s, test)
    s.run.write_json(RunDir.METRICS, s.metrics)
    s.run.remove_backup()
    if test:
        s.log(f"Test accuracy {test['accuracy']:.4f}, loss {test['loss']:.4f} "
              f"({len(s.data.x_test):,} test samples); trained in "
              f"{s.metrics['train_seconds']:.1f} s")
    return s.metrics


def _metrics(s: Session, test: dict[str, float]) -> dict[str, Any]:
    """metrics.json: the run's figures and where and how it ran."""
    from mnist_seq.machine import cpu

    train_seconds = sum(r["seconds"] for r in s.rows)  # over every part of a resumed run
    best = s.rows[best_epoch(s.rows) or 0]
    tcfg = s.config["train"]
    return {
        "test_loss": test.get("loss"),
        "test_accuracy": test.get("accuracy"),
        "best_epoch": int(best["epoch"]) + 1,
        "best_val_accuracy": best.get("val_accuracy"),
        "final_val_accuracy": s.rows[-1].get("val_accuracy"),
        "epochs": len(s.rows),
        "params": s.model.count_params(),
        "train_samples": len(s.data.x_train),
        "val_samples": len(s.data.x_val),
        "test_samples": len(s.data.x_test) if test else 0,
        "train_seconds": round(train_seconds, 2),
        "samples_per_second": round(len(s.data.x_train) * len(s.rows) / train_seconds, 1),
        "seed": tcfg["seed"],
        "deterministic": tcfg["deterministic"],
        "precision": s.plan.precision,
        "lstm_unrolled": s.plan.unroll,
        "lstm_layers_together": s.plan.layers_together,
        "xla": s.plan.jit_compile,
        "data_source": s.data.source,
        "distributed": s.cluster.facts(),
        "cpu": cpu().as_dict(),
        # fit: model.fit's wall time, whose epochs are `train_seconds` (this process only)
        "phase_seconds": dict(s.phases),
        **s.facts,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **backend.versions(),
    }


def train_and_evaluate(config: dict[str, Any], run: RunDir,
                       options: RuntimeOptions = DEFAULT_OPTIONS, *, resume: bool = False,
                       log: Callable[[str], None] = print, callbacks=(),
                       score_test: bool = True, verbose: int | None = None) -> Session:
    """Train the configured model, score the test set once, and fill the run folder.

    `run` is a new run folder (`RunDir.new`, created only once the data, the device
    and the model are ready) or, with `resume`, an unfinished run continued from its
    last completed epoch. `callbacks` run after each epoch is recorded; `score_test=False`
    leaves the test set out; `verbose` as for `fit`. Returns the finished session (its
    `metrics` are metrics.json's).
    """
    session = build(config, run, options, resume=resume, log=log)
    try:
        with session.cluster.lost_processes(
                f"To resume, start every process again with --resume {session.run.path} "
                "(and its --num-processes, --process-id and --coordinator, if given)"):
            fit(session, callbacks, verbose)
            finish(session, score_test)
    except WriteError as e:  # a full disk: what was written is whole, and resumes
        raise WriteError(e.what, e.path, "the finished epochs are kept: make room, then "
                         f"resume with: mnist-seq train --resume {session.run.path}") from None
    session.cluster.close()
    return session


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
