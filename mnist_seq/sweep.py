"""`mnist-seq sweep`: many runs of one config, with settings chosen by Optuna.

The loop that runs trials and workers. A trial is a normal run folder trained by
`train.train_and_evaluate` with the test set left out; at the end the best trial's
model alone is scored on the test set, once. The folder and its files belong to
`sweep_folder.SweepFolder`, the study to the Optuna adapter `study.py`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_seq import study as studies
from mnist_seq.errors import MnistSeqError, TrainingDiverged, TrainingInterrupted
from mnist_seq.options import DEFAULT_OPTIONS, RuntimeOptions
from mnist_seq.rundir import RunDir
from mnist_seq.sweep_folder import SweepFolder
from mnist_seq.sweep_spec import SweepSpec, read_spec

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
    folder: SweepFolder
    storage: str
    study: str
    prune: bool
    options: RuntimeOptions

    def open(self):
        return studies.open_study(self.storage, self.study, self.spec, self.prune)

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
    with folder.exclusive():
        _check_data(spec, options)
        sweep = Sweep(spec, folder, storage, how.study or spec.path.stem, how.prune, options)
        study = sweep.open()
        folder.write_state(sweep.study, shown, spec.as_dict())
        _fail_abandoned(sweep, study)
        done = studies.count_trials(study)[0]
        log(f"Sweep {folder.path}: study '{sweep.study}' in {shown}, {done} of {spec.trials} "
            f"trials finished, {how.workers} worker{'s' if how.workers > 1 else ''}"
            + (", pruning" if how.prune else ""))
        if how.workers == 1:
            work(sweep, 0, log)
        else:
            _run_workers(sweep, how.workers)
        return finish_sweep(sweep, study, log)


def _check_data(spec: SweepSpec, options: RuntimeOptions) -> None:
    """Missing data is said before any trial starts, not as a failure in each."""
    from mnist_seq import backend
    from mnist_seq.data import load_mnist

    backend.choose(options.backend)
    load_mnist(options.data_dir, spec.config({})["data"]["dir"])


def _fail_abandoned(sweep: Sweep, study) -> None:
    """Trials of this folder left running by a killed sweep: this command holds the
    folder's lock, so none of them can still be running. One killed after its run
    finished is told as complete; the others failed, and do not count as finished."""
    for t in studies.running(study):
        if not sweep.ran_here(t):
            continue
        # A trial killed inside `study.ask` has only some of its params, and no folder:
        # its values are read only where its run folder exists.
        run = sweep.folder.trial(t.number)
        if run.finished:
            value = run.read_metrics()["final_val_accuracy"]
            sweep.folder.mark(t.number, sweep.spec.values(t.params), "complete", value=value)
            study.tell(t.number, value)
            continue
        studies.fail(study, t.number)
        if run.path.is_dir():
            sweep.folder.mark(t.number, sweep.spec.values(t.params), "interrupted",
                              "stopped by a kill")


def work(sweep: Sweep, worker: int, log: Callable[[str], None] = print) -> None:
    """Run trials until the sweep has as many finished or running as the spec wants."""
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
        while not stop:
            with sweep.folder.asking():
                if sum(studies.count_trials(study)) >= sweep.spec.trials:
                    return
                trial = study.ask(dists)
                if studies.one_too_many(study, trial, sweep.spec.trials):
                    return  # another machine asked at the same moment, and came first
                trial.set_user_attr("folder", str(sweep.folder.path.absolute()))
                trial.set_user_attr("host", socket.gethostname())
            run_trial(sweep, study, trial, log)
    raise SweepInterrupted(INTERRUPTED)


def run_trial(sweep: Sweep, study, trial, log: Callable[[str], None]) -> None:
    """Train one trial's run folder and tell the study how it ended."""
    from mnist_seq.callbacks import TrialPruned, TrialReporter
    from mnist_seq.train import train_and_evaluate

    spec, folder = sweep.spec, sweep.folder
    values = spec.values(trial.params)
    run = folder.trial(trial.number)
    log(f"trial {trial.number}: {', '.join(p.describe(values[p.key]) for p in spec.params)}")
    try:
        # The test set stays out: only the best trial's model is scored, at the end.
        metrics = train_and_evaluate(
            spec.config(values), RunDir.new(run.name, run.path), sweep.options,
            log=lambda line: None, callbacks=[TrialReporter(trial, log)], score_test=False,
            verbose=0).metrics
    except TrialPruned as e:
        folder.mark(trial.number, values, "pruned", f"stopped after epoch {e.args[0]}")
        studies.prune(study, trial)
        log(f"trial {trial.number}: pruned after epoch {e.args[0]}")
        return
    except TrainingDiverged as e:
        folder.mark(trial.number, values, "failed", str(e))
        studies.fail(study, trial, str(e))
        log(f"trial {trial.number}: failed: {e}")
        return
    except BaseException as e:
        interrupted = isinstance(e, TrainingInterrupted | KeyboardInterrupt)
        studies.fail(study, trial, None if interrupted else f"{e.__class__.__name__}: {e}")
        if run.path.is_dir():
            folder.mark(trial.number, values, "interrupted" if interrupted else "failed",
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
    folder.mark(trial.number, values, "complete", value=value)
    study.tell(trial, value)
    finished = studies.count_trials(study)[0]
    log(f"trial {trial.number}: validation accuracy {value:.2%} in "
        f"{metrics['train_seconds']:.0f} s ({finished} of {spec.trials} finished; best "
        f"{study.best_value:.2%}, trial {study.best_trial.number})")


def _run_workers(sweep: Sweep, workers: int) -> None:
    """Trials at once in worker processes, the cores split between them; a worker that
    fails sends its error back, and the sweep raises it once they have all stopped."""
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // workers)
    sweep = dataclasses.replace(
        sweep, options=dataclasses.replace(sweep.options, threads=threads))
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked TF state
    errors = context.SimpleQueue()
    procs = [context.Process(target=_worker_main, args=(sweep, i, os.getpid(), errors))
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
        raise MnistSeqError("; ".join(said) + "; finished trials are kept: run the same "
                            "command again to continue")
    if any(codes):
        raise MnistSeqError(f"a sweep worker failed (exit codes {codes}); finished trials are "
                            "kept: run the same command again to continue")


def _worker_main(sweep: Sweep, worker: int, parent: int, errors) -> None:
    """A worker process: its trials, and its error (if any) told to the sweep command."""
    from mnist_seq.processes import die_with_parent

    # A worker whose sweep command is killed stops too, rather than train on unseen.
    die_with_parent(parent)
    try:
        work(sweep, worker, lambda line: print(line, flush=True))
    except SweepInterrupted:
        raise SystemExit(SweepInterrupted.exit_code) from None
    except KeyboardInterrupt:
        raise SystemExit(SweepInterrupted.exit_code) from None
    except MnistSeqError as e:
        errors.put(f"worker {worker}: {e}")
        raise SystemExit(e.exit_code) from None
    except Exception as e:  # a bug: said in one line by the sweep command too
        errors.put(f"worker {worker}: unexpected {e.__class__.__name__}: {e}")
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

    run = sweep.folder.trial(best.number)
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
    histories = {f"trial {t.number}": folder.trial(t.number).read_history() for t in top}
    if histories:
        folder.save_figure(plot_sweep_curves(histories), folder.CURVES)
