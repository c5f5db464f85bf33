"""`mnist-seq sweep`: many runs of one config, with settings chosen by Optuna.

The loop that runs trials and workers. A trial is a normal run folder trained by
`trials.run_trial` (`train.train_and_evaluate` with the test set left out); at the end
the best trial's model alone is scored on the test set, once. The folder and its files belong to
`sweep_folder.SweepFolder`, the study to the Optuna adapter `study.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_seq import study as studies
from mnist_seq import trials
from mnist_seq.errors import MnistSeqError
from mnist_seq.options import DEFAULT_OPTIONS, RuntimeOptions
from mnist_seq.rundir import RunDir
from mnist_seq.sweep_folder import SweepFolder
from mnist_seq.sweep_spec import SweepSpec, read_spec
from mnist_seq.trials import INTERRUPTED, SweepInterrupted

BEST_CURVES = 5  # how many of the best trials best-curves.png overlays
@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs (the spec says what it tries)."""

    workers: int = 1  # trials at once on this machine, each in its own process
    storage: str | None = None  # a database URL; None: sqlite in the sweep folder
    study: str | None = None  # None: the spec file's name
    prune: bool = False
    # Seconds between a trial's heartbeats in a shared --storage: a trial silent for two
    # is taken over by another machine.
    heartbeat: int = 60


@dataclass(frozen=True)
class Sweep:
    """Everything a worker needs to run trials (picklable, for worker processes)."""

    spec: SweepSpec
    folder: SweepFolder
    storage: str
    study: str
    prune: bool
    options: RuntimeOptions
    heartbeat: int | None = None  # None: the folder's own SQLite, which one command holds

    def open(self):
        return studies.open_study(self.storage, self.study, self.spec, self.prune,
                                  self.heartbeat)

    def run_of(self, trial) -> RunDir:
        """The trial's run folder: its own in this folder, or the one of a trial whose
        machine died, which it continues."""
        path = trial.user_attrs.get("run")
        return RunDir(path) if path else self.folder.trial(trial.number)

    def ran_here(self, trial) -> bool:
        """Whether the trial's run folder is in this sweep folder, on this machine. Every
        trial of the folder's own SQLite study is, even one killed before it was labelled."""
        if self.storage == self.folder.default_storage:
            return True
        return (trial.user_attrs.get("folder") == str(self.folder.path.absolute())
                and trial.user_attrs.get("host") == socket.gethostname())


def run_sweep(spec_path: str | Path, sweep_dir: str | Path | None,
              how: SweepOptions = SweepOptions(), options: RuntimeOptions = DEFAULT_OPTIONS,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run trials until the spec's number have finished (counting those finished before:
    an existing sweep folder continues), then write the best config, score its model on
    the test set once, and draw the pictures. Returns the summary of best.json."""
    spec = read_spec(spec_path)
    folder = SweepFolder(sweep_dir or Path("sweeps") / spec.path.stem)
    storage = how.storage or folder.default_storage
    shown = studies.safe_url(storage)
    folder.claim(spec.as_dict(), shown)
    with folder.exclusive(), _storage_said(storage):
        _check_data(spec, options)
        sweep = Sweep(spec, folder, storage, how.study or spec.path.stem, how.prune, options,
                      None if storage == folder.default_storage else how.heartbeat)
        study = sweep.open()
        folder.write_state(sweep.study, shown, spec.as_dict())
        kept = trials.take_back(sweep, study)
        done = studies.count_trials(study)[0]
        log(f"Sweep {folder.path}: study '{sweep.study}' in {shown}, {done} of {spec.trials} "
            f"trials finished" + (f", {len(kept)} to continue" if kept else "")
            + f", {how.workers} worker{'s' if how.workers > 1 else ''}"
            + (", pruning" if how.prune else ""))
        if how.workers == 1:
            work(sweep, 0, log, kept)
        else:
            _run_workers(sweep, how.workers, kept)
        return finish_sweep(sweep, study, log)


@contextlib.contextmanager
def _storage_said(storage: str) -> Iterator[None]:
    try:
        yield
    except Exception as e:
        failure = studies.storage_failure(e, storage)
        if failure is None:
            raise
        raise failure from None


def _check_data(spec: SweepSpec, options: RuntimeOptions) -> None:
    """Missing data is said before any trial starts, not as a failure in each."""
    from mnist_seq import backend
    from mnist_seq.data import load_mnist

    backend.choose(options.backend)
    load_mnist(options.data_dir, spec.config({})["data"]["dir"])


def work(sweep: Sweep, worker: int, log: Callable[[str], None] = print,
         kept: list[int] = ()) -> None:
    """Continue the `kept` trials, then run new ones until the sweep has as many finished
    or running as the spec wants."""
    from mnist_seq import backend
    from mnist_seq.processes import first_ctrl_c

    backend.setup(sweep.options)  # Keras started quietly before the first trial imports it
    # A seeded sampler draws the same settings wherever it starts from the same seed:
    # each worker, and each continuation of a sweep, gets a seed of its own.
    study = sweep.open()
    study.sampler = studies.make_sampler(sweep.spec, worker + 1000 * len(study.get_trials(
        deepcopy=False)))
    dists = studies.distributions(sweep.spec)
    stop: list = []
    # The first Ctrl-C lets the trial in progress stop cleanly (training's own handler
    # runs then) and starts no other.
    with first_ctrl_c(lambda: stop.append(True)):
        for number in kept:
            if not stop:
                trials.run_trial(sweep, study, studies.handle(study, number), log)
        while not stop:
            with sweep.folder.asking():
                studies.fail_stale(study)  # first: a dead machine's trial is not running
                if sum(studies.count_trials(study)) >= sweep.spec.trials:
                    return
                trial = studies.ask(study, dists)
                if studies.one_too_many(study, trial, sweep.spec.trials):
                    return  # another machine asked at the same moment, and came first
                # A copy of a dead machine's trial (see study.open_study) carries its run
                # folder: it goes on there where this machine sees it, else starts anew.
                run = trial.user_attrs.get("run")
                if not (run and RunDir(run).resumable):
                    run = str(sweep.folder.trial(trial.number).path.absolute())
                trial.set_user_attr("run", run)
                trial.set_user_attr("folder", str(sweep.folder.path.absolute()))
                trial.set_user_attr("host", socket.gethostname())
            trials.run_trial(sweep, study, trial, log)
    raise SweepInterrupted(INTERRUPTED)


def _run_workers(sweep: Sweep, workers: int, kept: list[int]) -> None:
    """Trials at once in worker processes, the cores split between them; a worker that
    fails sends its error back, and the sweep raises it once they have all stopped."""
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // workers)
    sweep = dataclasses.replace(
        sweep, options=dataclasses.replace(sweep.options, threads=threads))
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked TF state
    errors = context.SimpleQueue()
    procs = [context.Process(target=_worker_main,
                             args=(sweep, i, kept[i::workers], os.getpid(), errors))
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
    said = []
    while not errors.empty():
        said.append(errors.get())
    if said:
        said = "; ".join(said)
        raise MnistSeqError(said if "again to continue" in said else said + "; finished "
                            "trials are kept: run the same command again to continue")
    if any(codes):
        raise MnistSeqError(f"a sweep worker failed (exit codes {codes}); finished trials are "
                            "kept: run the same command again to continue")


def _worker_main(sweep: Sweep, worker: int, kept: list[int], parent: int, errors) -> None:
    """A worker process: its trials, and its error (if any) told to the sweep command."""
    from mnist_seq.processes import die_with_parent

    # A worker whose sweep command is killed stops too, rather than train on unseen.
    die_with_parent(parent)
    try:
        work(sweep, worker, lambda line: print(line, flush=True), kept)
    except SweepInterrupted:
        raise SystemExit(SweepInterrupted.exit_code) from None
    except KeyboardInterrupt:
        raise SystemExit(SweepInterrupted.exit_code) from None
    except MnistSeqError as e:
        errors.put(f"worker {worker}: {e}")
        raise SystemExit(e.exit_code) from None
    except Exception as e:  # the storage failed, or a bug: said in one line by the sweep too
        failure = studies.storage_failure(e, sweep.storage)
        errors.put(f"worker {worker}: {failure}" if failure else
                   f"worker {worker}: unexpected {e.__class__.__name__}: {e}")
        raise SystemExit(1) from None


def finish_sweep(sweep: Sweep, study, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write best.yaml, score the best trial's model on the test set (once: a finished
    sweep run again reuses the score), draw the pictures; returns best.json's content."""
    from mnist_seq.config import dump_config

    folder = sweep.folder
    trials = study.get_trials(deepcopy=False)
    complete = studies.complete(trials)
    finished, running = studies.count_trials(study)
    if not complete:
        raise MnistSeqError(f"no trial of the sweep in {folder.path} completed ({finished} "
                            "finished: pruned or failed); see `mnist-seq runs "
                            f"{folder.path}`")
    best = study.best_trial
    values = sweep.spec.values(best.params)
    config = sweep.spec.config(values)
    folder.write_best_config(
        f"# Best of {len(complete)} completed trials of the sweep in {folder.path}: trial "
        f"{best.number}, validation accuracy {best.value:.4f}\n" + dump_config(config))
    summary = _score_best(sweep, best, values, config)
    _draw(sweep, trials, complete)
    log(f"{finished} of {sweep.spec.trials} trials finished"
        + (f", {running} still running elsewhere" if running else "")
        + f"; wrote {folder / folder.BEST_CONFIG} and the pictures in {folder.path}")
    return summary


def _score_best(sweep: Sweep, best, values: dict[str, Any],
                config: dict[str, Any]) -> dict[str, Any]:
    from mnist_seq.evaluation import evaluate

    run = sweep.run_of(best)
    summary = {"trial": best.number, "val_accuracy": best.value, "params": values,
               "run": str(run.path), "test_accuracy": None}
    saved = sweep.folder.read_best()
    if saved and saved.get("trial") == best.number and saved.get("test_accuracy") is not None:
        return saved
    if not (sweep.ran_here(best) and run.finished):
        summary["note"] = (f"trial {best.number} ran on {best.user_attrs.get('host')} in "
                           f"{best.user_attrs.get('folder')}; score it there with mnist-seq "
                           "evaluate")
    else:
        result = evaluate(run.path, sweep.options, config["data"]["max_test_samples"])
        summary["test_accuracy"] = result["accuracy"]
    sweep.folder.write_best(summary)
    return summary


def _draw(sweep: Sweep, trials: list, complete: list) -> None:
    from mnist_seq.plotting import plot_sweep_curves, plot_sweep_history, plot_sweep_params

    folder = sweep.folder
    folder.save_figure(plot_sweep_history(studies.points(trials)), folder.HISTORY)
    params = {p.key: ([p.value(t.params[p.key]) for t in complete], p.log, p.kind == "choice")
              for p in sweep.spec.params}
    folder.save_figure(plot_sweep_params(params, [t.value for t in complete]), folder.PARAMS)
    top = sorted((t for t in complete if sweep.ran_here(t)),
                 key=lambda t: t.value, reverse=True)[:BEST_CURVES]
    histories = {f"trial {t.number}": sweep.run_of(t).read_history() for t in top}
    if histories:
        folder.save_figure(plot_sweep_curves(histories), folder.CURVES)
