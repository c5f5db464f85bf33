"""One sweep trial: its run folder trained, or continued where a stop left it, and the
study told how it ended. A trial stopped from outside (a kill, Ctrl-C, a full disk, a
failing storage) is never told failed: it stays running in the study, and the next
sweep command continues it as the same trial (`take_back`)."""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mnist_seq import study as studies
from mnist_seq.errors import MnistSeqError, TrainingDiverged, TrainingInterrupted, WriteError
from mnist_seq.rundir import RunDir

if TYPE_CHECKING:
    from mnist_seq.sweep import Sweep

KEPT = "finished trials are kept: make room, then run the same command again to continue"
INTERRUPTED = ("interrupted; finished trials are kept: run the same command again to continue "
               "the sweep")


class SweepInterrupted(MnistSeqError):
    """Ctrl-C: the sweep stopped; the same command continues it."""

    exit_code = 130


def take_back(sweep: Sweep, study) -> list[int]:
    """Trials of this folder that a stopped sweep left running: this command holds the
    folder's lock, so none of them can still be running. One whose run finished is told
    complete; one with all its settings is kept running, to be continued in its own run
    folder as the trial it was (returned); one stopped inside `study.ask`, before its
    settings were drawn, failed: another takes its place."""
    keys = {p.key for p in sweep.spec.params}
    kept = []
    for t in studies.running(study):
        if not sweep.ran_here(t):
            continue
        run = sweep.run_of(t)
        if run.finished:
            value = run.read_metrics()["final_val_accuracy"]
            sweep.folder.mark(t.number, sweep.spec.values(t.params), "complete", value=value,
                              run=run)
            study.tell(t.number, value)
        elif set(t.params) == keys:
            kept.append(t)
        else:
            studies.fail(study, t.number)
    # Said alive at once, so that no other machine sharing the study takes them over.
    return [t.number for t in studies.keep_alive(study, kept)]


def run_trial(sweep: Sweep, study, trial, log: Callable[[str], None]) -> None:
    """Train one trial's run folder (continuing it where a stop left it) and tell the
    study how it ended."""
    spec, folder = sweep.spec, sweep.folder
    values = spec.values(trial.params)
    run = sweep.run_of(trial)
    mark = functools.partial(folder.mark, trial.number, values, run=run)
    if run.finished:  # the machine that trained it stopped before telling the study
        _told(sweep, study, trial, run.read_metrics(), mark, log)
        return
    if run.path.is_dir() and not run.resumable:
        shutil.rmtree(run.path)  # stopped between making the folder and writing its config
    resumed = run.resumable
    if resumed:
        epochs = len(run.resume_point()[0])
        mark("running", f"continued after a stop, from epoch {epochs}",
             resumed=(run.read_trial() or {}).get("resumed", 0) + 1)
        log(f"trial {trial.number}: continuing {run.path} after epoch {epochs}")
    else:
        log(f"trial {trial.number}: "
            f"{', '.join(p.describe(values[p.key]) for p in spec.params)}")
    try:
        with studies.alive(study, trial):
            metrics = _train(sweep, trial, run, resumed, log)
    except BaseException as e:
        _stopped(study, trial, e, mark, log)
        return
    _told(sweep, study, trial, metrics, mark, log)


def _train(sweep: Sweep, trial, run: RunDir, resume: bool, log: Callable[[str], None]):
    from mnist_seq.callbacks import TrialReporter
    from mnist_seq.train import train_and_evaluate

    config = run.read_config() if resume else sweep.spec.config(
        sweep.spec.values(trial.params))
    try:
        # The test set stays out: only the best trial's model is scored, at the end.
        return train_and_evaluate(
            config, run if resume else RunDir.new(run.name, run.path), sweep.options,
            resume=resume, log=lambda line: None, callbacks=[TrialReporter(trial, log)],
            score_test=False, verbose=0).metrics
    finally:
        import keras

        keras.backend.clear_session()  # a worker trains many models: free the last one


def _stopped(study, trial, e: BaseException, mark: Callable, log: Callable[[str], None]):
    """How a trial that did not complete is told: pruned, failed on its own, or stopped
    from outside, which leaves it running in the study for the next command to continue."""
    from mnist_seq.callbacks import TrialPruned

    if isinstance(e, TrialPruned):
        mark("pruned", f"stopped after epoch {e.args[0]}")
        studies.prune(study, trial)
        log(f"trial {trial.number}: pruned after epoch {e.args[0]}")
    elif isinstance(e, TrainingDiverged):
        mark("failed", str(e))
        studies.fail(study, trial, str(e))
        log(f"trial {trial.number}: failed: {e}")
    elif isinstance(e, TrainingInterrupted | KeyboardInterrupt):
        mark("interrupted", "stopped by Ctrl-C; the same command continues it")
        raise SweepInterrupted(INTERRUPTED) from None
    elif isinstance(e, WriteError):  # a full disk: the trial continues once there is room
        raise MnistSeqError(f"trial {trial.number}: {e.what}; {KEPT}") from None
    elif studies.from_storage(e):
        raise e  # the study cannot be told: the trial stays running, to be continued
    else:
        studies.fail(study, trial, f"{e.__class__.__name__}: {e}")
        with contextlib.suppress(MnistSeqError):  # the folder may not be there
            mark("failed", str(e))
        raise e


def _told(sweep: Sweep, study, trial, metrics: dict[str, Any], mark: Callable,
          log: Callable[[str], None]) -> None:
    # The folder's record first: a kill between the two leaves a finished run that the
    # next command tells the study about, never a told trial with no record.
    value = metrics["final_val_accuracy"]
    mark("complete", value=value)
    study.tell(trial, value)
    log(f"trial {trial.number}: validation accuracy {value:.2%} in "
        f"{metrics['train_seconds']:.0f} s ({studies.count_trials(study)[0]} of "
        f"{sweep.spec.trials} finished; best {study.best_value:.2%}, trial "
        f"{study.best_trial.number})")
