"""A thin adapter over Optuna: the study in its storage, the sampler and the pruner, and
the races of several machines on one database.

Optuna is the engine of a sweep: its sampler picks each trial's settings, its pruner
stops poor trials, and its storage (a SQLite file in the sweep folder, or a database
server that several machines share) is the record of every trial.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from typing import Any

from mnist_seq.errors import MnistSeqError, first_line
from mnist_seq.sweep_spec import SweepSpec


def require_optuna() -> None:
    """Sweeps need Optuna, an optional dependency."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise MnistSeqError("sweeps need Optuna: pip install 'mnist-seq[sweep]'") from None


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


def distributions(spec: SweepSpec) -> dict[str, Any]:
    """Each parameter of the spec as the Optuna distribution a trial is asked from."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    return {p.key: CategoricalDistribution(list(p.labels)) if p.kind == "choice" else
            IntDistribution(p.low, p.high, step=p.step, log=p.log) if p.kind == "int" else
            FloatDistribution(p.low, p.high, log=p.log) for p in spec.params}


def open_study(storage: str, name: str, spec: SweepSpec, prune: bool,
               heartbeat: int | None = None):
    """Create or join the study; joining checks that it was made from the same spec.

    With `heartbeat` (seconds), each running trial says it is alive that often, and one
    silent for two beats is taken for dead: the next machine to ask fails it and queues a
    copy with the same settings (Optuna's retry callback), which that machine continues."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Not before 2 trials have finished, and never on the first epoch alone.
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) if prune
              else optuna.pruners.NopPruner())
    kwargs = ({"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else
              {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}})
    try:
        study = _create_or_load(storage, kwargs, name, make_sampler(spec), pruner, heartbeat)
    except ImportError as e:  # the database's driver is not installed
        missing = getattr(e.__cause__, "name", None) or "its database driver"
        raise MnistSeqError(f"--storage {safe_url(storage)} needs the Python package "
                            f"'{missing}' (PostgreSQL: pip install 'mnist-seq[sweep]')") from None
    except Exception as e:  # SQLAlchemy's errors: a bad URL, a server that is not there
        if not e.__class__.__module__.startswith(("sqlalchemy", "optuna")):
            raise
        raise MnistSeqError(f"cannot open the study storage {safe_url(storage)}: "
                            f"{_reason(e)}") from None
    made_from = spec.as_dict()
    if "spec" not in study.user_attrs:
        study.set_user_attr("spec", made_from)
    elif study.user_attrs["spec"] != made_from:
        raise MnistSeqError(f"study '{name}' in {safe_url(storage)} was made from another "
                            "spec; give another --study name")
    return study


def storage_failure(e: BaseException, storage: str) -> MnistSeqError | None:
    """A database error met while the sweep runs (a full disk, a server gone) as one line,
    or None for any other error. The trial in progress stays running in the study, and the
    next command continues it."""
    if not from_storage(e):
        return None
    return MnistSeqError(f"the study storage {safe_url(storage)} failed: {_reason(e)}; "
                         "finished trials are kept: run the same command again to continue")


def from_storage(e: BaseException) -> bool:
    """Whether the study's database raised `e` (SQLAlchemy's errors)."""
    return e.__class__.__module__.startswith("sqlalchemy")


def _reason(e: BaseException) -> str:
    """SQLAlchemy's message without its "(module.Class)" lead and its links."""
    reason = " ".join(first_line(e).split())
    return reason.split(") ", 1)[-1] if reason.startswith("(") else reason


def _create_or_load(storage: str, engine_kwargs: dict, name: str, sampler, pruner,
                    heartbeat: int | None):
    import optuna
    import sqlalchemy.exc

    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                beats = {} if heartbeat is None else {
                    "heartbeat_interval": heartbeat, "grace_period": 2 * heartbeat,
                    "heartbeat_stale_trial_callback":
                        optuna.storages.RetryHeartbeatStaleTrialCallback()}
                rdb = optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs, **beats)
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

    trials = study.get_trials(deepcopy=False)
    return (sum(map(_finished, trials)), sum(t.state == TrialState.RUNNING for t in trials))


def _finished(t) -> bool:
    from optuna.trial import TrialState

    return (t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and "failed" in t.user_attrs))


def one_too_many(study, trial, wanted: int) -> bool:
    """Machines sharing a study each ask under a lock of their own, so two may ask for
    the last trial at once: the later one (by number) is told failed, uncounted, and
    True returned for it."""
    from optuna.trial import TrialState

    live = sorted(t.number for t in study.get_trials(deepcopy=False)
                  if t.state == TrialState.RUNNING or _finished(t))
    if trial.number in live[:wanted]:
        return False
    fail(study, trial)
    return True


def fail_stale(study) -> None:
    """Fail the trials whose machine went silent, each queued again as a copy with the
    same settings (see open_study); nothing where the storage keeps no heartbeats."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental"
        optuna.storages.fail_stale_trials(study)


def ask(study, dists: dict[str, Any]):
    """A new trial, or first a queued copy of a dead machine's trial."""
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for `Study.optimize`; sweeps ask and
        # tell, and beat for their trials themselves (`alive`).
        warnings.simplefilter("ignore")
        return study.ask(dists)


def handle(study, number: int):
    """A trial to report to and tell, for trial `number` that the study holds as running
    (one a stopped sweep left, continued now)."""
    import optuna

    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return optuna.trial.Trial(study, frozen._trial_id)


def keep_alive(study, trials: list) -> list:
    """Beat once for each of `trials` (where the storage keeps heartbeats), so that no
    other machine takes them over; returns those still running after that."""
    for t in trials:
        with alive(study, t):
            pass
    numbers = {t.number for t in running(study)}
    return [t for t in trials if t.number in numbers]


@contextlib.contextmanager
def alive(study, trial) -> Iterator[None]:
    """Beat for `trial` while it trains, where the storage keeps heartbeats."""
    # Optuna's own beating thread, the one `Study.optimize` runs around each trial.
    from optuna.storages._heartbeat import get_heartbeat_thread

    with get_heartbeat_thread(trial._trial_id, study._storage):
        yield


def running(study) -> list:
    """The trials the study holds as running."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def complete(trials: list) -> list:
    """The trials of `trials` that completed."""
    from optuna.trial import TrialState

    return [t for t in trials if t.state == TrialState.COMPLETE]


def points(trials: list) -> list[tuple[int, float | None, str]]:
    """(number, value, state) of every complete or pruned trial, for the history picture:
    a pruned trial's value is its last reported one."""
    from optuna.trial import TrialState

    states = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}
    return [(t.number, t.value if t.value is not None else
             (t.intermediate_values[max(t.intermediate_values)]
              if t.intermediate_values else None), states[t.state])
            for t in trials if t.state in states]


def fail(study, trial, why: str | None = None) -> None:
    """Tell the study a trial failed: on its own (`why`: it counts as finished), or
    stopped from outside (None: another trial takes its place). `trial` is an asked
    trial, or a trial's number where there is no reason to record."""
    from optuna.trial import TrialState

    if why is not None:
        trial.set_user_attr("failed", why[:300])
    study.tell(trial, state=TrialState.FAIL)


def prune(study, trial) -> None:
    """Tell the study the pruner stopped a trial."""
    from optuna.trial import TrialState

    study.tell(trial, state=TrialState.PRUNED)
