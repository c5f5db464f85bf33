"""`mnist-seq sweep`: many runs of one config, with settings chosen by Optuna.

Optuna is the engine: its sampler picks each trial's settings, its pruner stops poor
trials, and its storage (a SQLite file in the sweep folder, or a database server that
several machines share) is the record of every trial. This module turns a trial into a
normal run folder trained by `train.train_and_evaluate` with the test set left out,
and at the end scores the best trial's model on the test set once.

A sweep folder holds `sweep.json` (the spec, the storage and the study), `study.db`
(the default storage), one run folder per trial run on this machine
(`trial-0003/`, with `trial.json`: state and settings), `best.yaml`, `best.json` and
the pictures `history.png`, `params.png` and `best-curves.png`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_seq.errors import MnistSeqError, RunDirError, TrainingDiverged, TrainingInterrupted
from mnist_seq.options import DEFAULT_OPTIONS, RuntimeOptions
from mnist_seq.rundir import RunDir, atomic_write
from mnist_seq.sweep_spec import SweepSpec, read_spec

SWEEP_JSON, DB, BEST_CONFIG, BEST_JSON = "sweep.json", "study.db", "best.yaml", "best.json"
HISTORY_PNG, PARAMS_PNG, CURVES_PNG = "history.png", "params.png", "best-curves.png"
LOCK, ASK_LOCK = ".sweep.lock", ".ask.lock"
BEST_CURVES = 5  # how many of the best trials best-curves.png overlays
INTERRUPTED = ("interrupted; finished trials are kept: run the same command again to continue "
               "the sweep")


class SweepInterrupted(MnistSeqError):
    """Ctrl-C: the sweep stopped; the same command continues it."""

    exit_code = 130


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs (the spec says what it tries)."""

    workers: int = 1  # trials at once on this machine, each in its own process
    storage: str | None = None  # a database URL; None: sqlite in the sweep folder
    study: str | None = None  # None: the spec file's name
    prune: bool = False


@dataclass(frozen=True)
class Sweep:
    """Everything a worker needs to run trials (picklable, for worker processes)."""

    spec: SweepSpec
    folder: Path
    storage: str
    study: str
    prune: bool
    options: RuntimeOptions

    def ran_here(self, trial) -> bool:
        """Whether the trial's run folder is in this sweep folder, on this machine. Every
        trial of the folder's own SQLite study is, even one killed before it was labelled."""
        if self.storage == default_storage(self.folder):
            return True
        return (trial.user_attrs.get("folder") == str(self.folder.absolute())
                and trial.user_attrs.get("host") == socket.gethostname())


def require_optuna() -> None:
    """Sweeps need Optuna, an optional dependency."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise MnistSeqError("sweeps need Optuna: pip install 'mnist-seq[sweep]'") from None


def default_storage(folder: Path) -> str:
    """The study's storage unless --storage says otherwise: SQLite in the sweep folder."""
    return f"sqlite:///{(folder / DB).absolute()}"


def trial_dir(folder: Path, number: int) -> RunDir:
    return RunDir(folder / f"trial-{number:04d}")


def run_sweep(spec_path: str | Path, sweep_dir: str | Path | None,
              how: SweepOptions = SweepOptions(), options: RuntimeOptions = DEFAULT_OPTIONS,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run trials until the spec's number have finished (counting those finished before:
    an existing sweep folder continues), then write the best config, score its model on
    the test set once, and draw the pictures. Returns the summary of best.json."""
    spec = read_spec(spec_path)
    folder = Path(sweep_dir or Path("sweeps") / spec.path.stem)
    storage = how.storage or default_storage(folder)
    name = how.study or spec.path.stem
    _claim_folder(folder, spec, storage)
    with _exclusive(folder):
        _check_data(spec, options)
        study = open_study(storage, name, spec, how.prune)
        atomic_write(folder / SWEEP_JSON, lambda p: p.write_text(json.dumps(
            {"study": name, "storage": safe_url(storage), "spec": spec.as_dict()}, indent=2)))
        sweep = Sweep(spec, folder, storage, name, how.prune, options)
        _fail_abandoned(sweep, study)
        done = count_trials(study)[0]
        log(f"Sweep {folder}: study '{name}' in {safe_url(storage)}, {done} of {spec.trials} "
            f"trials finished, {how.workers} worker{'s' if how.workers > 1 else ''}"
            + (", pruning" if how.prune else ""))
        if how.workers == 1:
            work(sweep, 0, log)
        else:
            _run_workers(sweep, how.workers)
        return finish_sweep(sweep, study, log)


def _claim_folder(folder: Path, spec: SweepSpec, storage: str) -> None:
    """A new folder, or an existing sweep of the same spec and storage."""
    state = folder / SWEEP_JSON
    if state.is_file():
        try:
            saved = json.loads(state.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RunDirError(f"{state} is unreadable ({e}); use a new --sweep-dir") from None
        if saved.get("spec") != spec.as_dict():
            raise RunDirError(f"{folder} holds a sweep of another spec; give a new --sweep-dir "
                              "to start this one")
        if saved.get("storage") != safe_url(storage):
            raise RunDirError(f"{folder} keeps its study in {saved.get('storage')}; give the "
                              "same --storage to continue it")
        return
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise RunDirError(f"{folder} exists and is not a sweep folder; give a new --sweep-dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create sweep folder {folder}: {e.strerror or e}") from None


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """One sweep command per folder at a time (machines sharing a study use a folder
    each)."""
    with open(folder / LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunDirError(f"another sweep is running in {folder}") from None
        yield


def _check_data(spec: SweepSpec, options: RuntimeOptions) -> None:
    """Missing data is said before any trial starts, not as a failure in each."""
    from mnist_seq import backend
    from mnist_seq.data import load_mnist

    backend.choose(options.backend)
    load_mnist(options.data_dir, spec.config({})["data"]["dir"])


def safe_url(url: str) -> str:
    """The storage URL with any password hidden."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        auth, at, host = rest.partition("@")
        user = auth.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***{at}{host}" if ":" in auth else url
    return url


def make_sampler(spec: SweepSpec, seed_offset: int = 0):
    """Optuna's grid sampler for `grid`, its TPE sampler for `search`."""
    import optuna

    class Grid(optuna.samplers.GridSampler):
        def after_trial(self, *args) -> None:
            """Optuna's grid sampler stops `Study.optimize` once every point is tried,
            and fails outside it; sweeps ask and tell, and stop by counting trials."""

    seed = None if spec.seed is None else spec.seed + seed_offset
    if spec.grid:
        return Grid({p.key: list(p.labels) for p in spec.params}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def open_study(storage: str, name: str, spec: SweepSpec, prune: bool):
    """Create or join the study; joining checks that it was made from the same spec."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(spec)
    # Not before 2 trials have finished, and never on the first epoch alone.
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) if prune
              else optuna.pruners.NopPruner())
    kwargs = ({"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else
              {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}})
    try:
        study = _create_or_load(storage, kwargs, name, sampler, pruner)
    except ImportError as e:  # the database's driver is not installed
        missing = getattr(e.__cause__, "name", None) or "its database driver"
        raise MnistSeqError(f"--storage {safe_url(storage)} needs the Python package "
                            f"'{missing}' (PostgreSQL: pip install 'mnist-seq[sweep]')") from None
    except Exception as e:  # SQLAlchemy's errors: a bad URL, a server that is not there
        if not e.__class__.__module__.startswith(("sqlalchemy", "optuna")):
            raise
        reason = " ".join(str(e).split("\n")[0].split())[:200]
        reason = reason.split(") ", 1)[-1] if reason.startswith("(") else reason
        raise MnistSeqError(f"cannot open the study storage {safe_url(storage)}: "
                            f"{reason}") from None
    made_from = spec.as_dict()
    if "spec" not in study.user_attrs:
        study.set_user_attr("spec", made_from)
    elif study.user_attrs["spec"] != made_from:
        raise MnistSeqError(f"study '{name}' in {safe_url(storage)} was made from another "
                            "spec; give another --study name")
    return study


def _create_or_load(storage: str, engine_kwargs: dict, name: str, sampler, pruner):
    import optuna
    import sqlalchemy.exc

    for attempt in range(3):
        try:
            rdb = optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs)
            return optuna.create_study(storage=rdb, study_name=name, sampler=sampler,
                                       pruner=pruner, direction="maximize", load_if_exists=True)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Machines that start at once on a new database race to create its tables
            # and types ("duplicate key", "already exists"): the loser finds them made on
            # the next try.
            if attempt == 2:
                raise
            time.sleep(1 + attempt)


def count_trials(study) -> tuple[int, int]:
    """(finished, running): finished trials completed, were pruned or failed on their
    own (diverged); trials stopped by Ctrl-C or a kill are not finished: others take
    their place."""
    from optuna.trial import TrialState

    finished = running = 0
    for t in study.get_trials(deepcopy=False):
        running += t.state == TrialState.RUNNING
        finished += (t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                     or (t.state == TrialState.FAIL and "failed" in t.user_attrs))
    return finished, running


def _fail_abandoned(sweep: Sweep, study) -> None:
    """Trials of this folder left running by a killed sweep: this command holds the
    folder's lock, so none of them can still be running. One killed after its run
    finished is told as complete; the others failed, and do not count as finished."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not sweep.ran_here(t):
            continue
        # A trial killed inside `study.ask` has only some of its params, and no folder:
        # its values are read only where its run folder exists.
        run = trial_dir(sweep.folder, t.number)
        if run.finished:
            value = run.read_metrics()["final_val_accuracy"]
            _mark(run, t.number, sweep.spec.values(t.params), "complete", value=value)
            study.tell(t.number, value)
            continue
        study.tell(t.number, state=TrialState.FAIL)
        if run.path.is_dir():
            _mark(run, t.number, sweep.spec.values(t.params), "interrupted",
                  "stopped by a kill")


def _mark(run: RunDir, number: int, values: dict[str, Any], state: str, note: str = "",
          value: float | None = None) -> None:
    run.write_json(RunDir.TRIAL, {"trial": number, "state": state, "value": value,
                                  "params": values, "note": note})


@contextlib.contextmanager
def _ask_lock(folder: Path) -> Iterator[None]:
    """Workers on this machine ask for trials one at a time, so that together they never
    start more trials than the spec wants."""
    with open(folder / ASK_LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def work(sweep: Sweep, worker: int, log: Callable[[str], None] = print) -> None:
    """Run trials until the sweep has as many finished or running as the spec wants."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from mnist_seq import backend

    backend.setup(sweep.options)  # Keras started quietly before the first trial imports it
    # A seeded sampler draws the same settings wherever it starts from the same seed:
    # each worker, and each continuation of a sweep, gets a seed of its own.
    study = open_study(sweep.storage, sweep.study, sweep.spec, sweep.prune)
    study.sampler = make_sampler(sweep.spec, worker + 1000 * len(study.get_trials(
        deepcopy=False)))
    dists = {p.key: CategoricalDistribution(list(p.labels)) if p.kind == "choice" else
             IntDistribution(p.low, p.high, step=p.step, log=p.log) if p.kind == "int" else
             FloatDistribution(p.low, p.high, log=p.log) for p in sweep.spec.params}
    with _ctrl_c_ends_the_sweep() as stop:
        while not stop:
            with _ask_lock(sweep.folder):
                if sum(count_trials(study)) >= sweep.spec.trials:
                    return
                trial = study.ask(dists)
                trial.set_user_attr("folder", str(sweep.folder.absolute()))
                trial.set_user_attr("host", socket.gethostname())
            run_trial(sweep, study, trial, log)
    raise SweepInterrupted(INTERRUPTED)


@contextlib.contextmanager
def _ctrl_c_ends_the_sweep() -> Iterator[list]:
    """The first Ctrl-C lets the trial in progress stop cleanly (training's own handler
    runs then) and starts no other; the list it yields is true once it came."""
    stop: list = []
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        stop.append(True)
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def run_trial(sweep: Sweep, study, trial, log: Callable[[str], None]) -> None:
    """Train one trial's run folder and tell the study how it ended."""
    from optuna.trial import TrialState

    from mnist_seq.callbacks import TrialPruned, TrialReporter
    from mnist_seq.train import train_and_evaluate

    spec = sweep.spec
    values = spec.values(trial.params)
    run = trial_dir(sweep.folder, trial.number)
    settings = ", ".join(p.describe(values[p.key]) for p in spec.params)
    log(f"trial {trial.number}: {settings}")
    try:
        # The test set stays out: only the best trial's model is scored, at the end.
        metrics = train_and_evaluate(
            spec.config(values), RunDir.new(run.name, run.path), sweep.options,
            log=lambda line: None, callbacks=[TrialReporter(trial, log)], score_test=False,
            verbose=0)
    except TrialPruned as e:
        _mark(run, trial.number, values, "pruned", f"stopped after epoch {e.args[0]}")
        study.tell(trial, state=TrialState.PRUNED)
        log(f"trial {trial.number}: pruned after epoch {e.args[0]}")
        return
    except TrainingDiverged as e:
        _mark(run, trial.number, values, "failed", str(e))
        trial.set_user_attr("failed", str(e))
        study.tell(trial, state=TrialState.FAIL)
        log(f"trial {trial.number}: failed: {e}")
        return
    except BaseException as e:
        interrupted = isinstance(e, TrainingInterrupted | KeyboardInterrupt)
        if not interrupted:
            trial.set_user_attr("failed", f"{e.__class__.__name__}: {e}"[:300])
        study.tell(trial, state=TrialState.FAIL)
        if run.path.is_dir():
            _mark(run, trial.number, values, "interrupted" if interrupted else "failed",
                  "stopped by Ctrl-C" if interrupted else str(e))
        if interrupted:
            raise SweepInterrupted(INTERRUPTED) from None
        raise
    finally:
        import keras

        keras.backend.clear_session()  # a worker trains many models: free the last one
    # The folder's record first: a kill between the two leaves a finished run that the
    # next command tells the study about, never a told trial with no record.
    value = metrics["final_val_accuracy"]
    _mark(run, trial.number, values, "complete", value=value)
    study.tell(trial, value)
    finished = count_trials(study)[0]
    log(f"trial {trial.number}: validation accuracy {value:.2%} in "
        f"{metrics['train_seconds']:.0f} s ({finished} of {spec.trials} finished; best "
        f"{study.best_value:.2%}, trial {study.best_trial.number})")


def _run_workers(sweep: Sweep, workers: int) -> None:
    """Trials at once in worker processes, the cores split between them."""
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // workers)
    sweep = dataclasses.replace(
        sweep, options=dataclasses.replace(sweep.options, threads=threads))
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked TF state
    procs = [context.Process(target=_worker_main, args=(sweep, i, os.getpid()))
             for i in range(workers)]
    for p in procs:
        p.start()
    interrupted = False
    for p in procs:
        while True:
            try:
                p.join()
                break
            except KeyboardInterrupt:  # the workers got it too: wait for them to stop
                interrupted = True
    codes = [p.exitcode for p in procs]
    if interrupted or SweepInterrupted.exit_code in codes or -signal.SIGINT in codes:
        raise SweepInterrupted(INTERRUPTED)
    if any(codes):
        raise MnistSeqError(f"a sweep worker failed (exit codes {codes}); finished trials are "
                            "kept: run the same command again to continue")


def _worker_main(sweep: Sweep, worker: int, parent: int) -> None:
    _die_with_parent(parent)
    try:
        work(sweep, worker, lambda line: print(line, flush=True))
    except MnistSeqError as e:
        if not isinstance(e, SweepInterrupted):
            print(f"Error: worker {worker}: {' '.join(str(e).split())}", flush=True)
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        raise SystemExit(SweepInterrupted.exit_code) from None
    except Exception as e:  # a bug: one line here too; the sweep command reports the exit
        print(f"Error: worker {worker}: unexpected {e.__class__.__name__}: {e}", flush=True)
        raise SystemExit(1) from None


def _die_with_parent(parent: int) -> None:
    """A worker whose sweep command is killed stops too, rather than train on unseen
    (Linux: the kernel's parent-death signal; elsewhere workers finish their trial)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def finish_sweep(sweep: Sweep, study, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write best.yaml, score the best trial's model on the test set (once: a finished
    sweep run again reuses the score), draw the pictures; returns best.json's content."""
    from optuna.trial import TrialState

    from mnist_seq.config import dump_config

    folder = sweep.folder
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    finished, running = count_trials(study)
    if not complete:
        raise MnistSeqError(f"no trial of the sweep in {folder} completed ({finished} "
                            "finished: pruned or failed); see `mnist-seq runs "
                            f"{folder}`")
    best = study.best_trial
    values = sweep.spec.values(best.params)
    config = sweep.spec.config(values)
    atomic_write(folder / BEST_CONFIG, lambda p: p.write_text(
        f"# Best of {len(complete)} completed trials of the sweep in {folder}: trial "
        f"{best.number}, validation accuracy {best.value:.4f}\n" + dump_config(config),
        encoding="utf-8"))
    summary = _score_best(sweep, best, values, config)
    _draw(sweep, trials, complete)
    log(f"{finished} of {sweep.spec.trials} trials finished"
        + (f", {running} still running elsewhere" if running else "")
        + f"; wrote {folder / BEST_CONFIG} and the pictures in {folder}")
    return summary


def _score_best(sweep: Sweep, best, values: dict[str, Any],
                config: dict[str, Any]) -> dict[str, Any]:
    from mnist_seq.evaluation import evaluate

    path = sweep.folder / BEST_JSON
    run = trial_dir(sweep.folder, best.number)
    summary = {"trial": best.number, "val_accuracy": best.value, "params": values,
               "run": str(run.path), "test_accuracy": None}
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("trial") == best.number and saved.get("test_accuracy") is not None:
            return saved
    if not (sweep.ran_here(best) and run.finished):
        summary["note"] = (f"trial {best.number} ran on {best.user_attrs.get('host')} in "
                           f"{best.user_attrs.get('folder')}; score it there with mnist-seq "
                           "evaluate")
    else:
        result = evaluate(run.path, sweep.options, config["data"]["max_test_samples"])
        summary["test_accuracy"] = result["accuracy"]
    atomic_write(path, lambda p: p.write_text(json.dumps(summary, indent=2)))
    return summary


def _draw(sweep: Sweep, trials: list, complete: list) -> None:
    from optuna.trial import TrialState

    from mnist_seq.plotting import plot_sweep_curves, plot_sweep_history, plot_sweep_params
    from mnist_seq.rundir import save_figure

    states = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}
    points = [(t.number, t.value if t.value is not None else
               (t.intermediate_values[max(t.intermediate_values)]
                if t.intermediate_values else None), states[t.state])
              for t in trials if t.state in states]
    save_figure(plot_sweep_history(points), sweep.folder / HISTORY_PNG)
    params = {p.key: ([p.value(t.params[p.key]) for t in complete], p.log, p.kind == "choice")
              for p in sweep.spec.params}
    save_figure(plot_sweep_params(params, [t.value for t in complete]),
                sweep.folder / PARAMS_PNG)
    top = sorted((t for t in complete if sweep.ran_here(t)),
                 key=lambda t: t.value, reverse=True)[:BEST_CURVES]
    histories = {f"trial {t.number}": trial_dir(sweep.folder, t.number).read_history()
                 for t in top}
    if histories:
        save_figure(plot_sweep_curves(histories), sweep.folder / CURVES_PNG)
