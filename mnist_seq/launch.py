"""From what `mnist-seq train` was asked to a training run: the shortcut flags as config
overrides, what `--resume` allows, the new run folder's name, and, for a distributed
JAX run, the child process that trains (`processes.run_child`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist_seq.errors import ConfigError
from mnist_seq.options import DistributeOptions, RuntimeOptions
from mnist_seq.rundir import RunDir

# The train command's shortcut flags and the config keys they set.
SHORTCUTS = {
    "epochs": "train.epochs", "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate", "seed": "train.seed",
    "deterministic": "train.deterministic", "max_train_samples": "data.max_train_samples",
    "max_test_samples": "data.max_test_samples", "snapshots": "train.snapshots",
}


@dataclass(frozen=True)
class TrainRequest:
    """What the train command was asked, as given (nothing read yet).

    model: a bundled config's name; config_file: the user's own YAML; sets: KEY=VALUE
    overrides; shortcuts: values of the SHORTCUTS flags (None: not given); run_dir: the
    new run folder (else a timestamped one under runs_root); resume: a run to continue.
    """

    model: str | None = None
    config_file: str | None = None
    sets: tuple[str, ...] = ()
    shortcuts: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None
    runs_root: str = "runs"
    resume: str | None = None


def overrides(request: TrainRequest) -> list[tuple[str, Any]]:
    """The --set overrides, then the shortcut flags', parsed."""
    from mnist_seq.config import parse_override

    unknown = set(request.shortcuts) - set(SHORTCUTS)
    if unknown:
        raise ValueError(f"unknown shortcuts {sorted(unknown)}; expected {sorted(SHORTCUTS)}")
    given = [parse_override(s) for s in request.sets]
    for flag, value in request.shortcuts.items():
        if value is True:
            value = "true"
        if value is not None and value is not False:
            given.append(parse_override(f"{SHORTCUTS[flag]}={value}"))
    return given


def prepare(request: TrainRequest) -> tuple[dict[str, Any], RunDir]:
    """The config to train and its run folder (still to be made, or the run to resume);
    raises ConfigError for a --resume with settings of its own."""
    from mnist_seq.config import load_config

    changes = overrides(request)
    if request.resume:
        if changes or request.model or request.config_file or request.run_dir:
            raise ConfigError("--resume continues a run with its own config.yaml; drop "
                              "--model, --config, --run-dir and every config override")
        run = RunDir(request.resume).require_resumable()
        return run.read_config(), run
    config_file = request.config_file
    config = load_config(request.model if not config_file else None, config_file, changes)
    name = Path(config_file).stem if config_file else (request.model or "lstm")
    return config, RunDir.new(name, request.run_dir, request.runs_root)


def distribute_options(distribute: bool, num_processes: int | None = None,
                       process_id: int | None = None, coordinator: str | None = None,
                       cpu_devices: int | None = None) -> DistributeOptions | None:
    """--distribute and its flags (any of which implies it), or None: one device."""
    given = (num_processes, process_id, coordinator, cpu_devices)
    if not distribute and all(v is None for v in given):
        return None
    return DistributeOptions(*given)


def needs_child(options: RuntimeOptions) -> bool:
    """Whether this process hands the training to a child: a distributed JAX run, whose
    runtime may end a process from C++, and only once (the child trains)."""
    from mnist_seq import backend, processes

    return (options.distribute is not None and backend.resolve(options.backend) == "jax"
            and not processes.inside())


def train(request: TrainRequest, options: RuntimeOptions, argv: list[str],
          log: Callable[[str], None] = print) -> RunDir | None:
    """Run the train command: in a child process (`argv`, the command's arguments) where
    `needs_child`, else here. Returns the run folder this process wrote, or None (a
    process of a distributed run other than process 0, or the child's parent)."""
    if request.resume:  # on the backend and data it started on, unless told otherwise
        from mnist_seq.origin import resume_options

        options = resume_options(RunDir(request.resume), options, log)
    if needs_child(options):
        from mnist_seq.processes import run_child

        run_child(argv, request.resume or request.run_dir or "RUN_DIR", options.debug)
        return None
    config, run = prepare(request)
    from mnist_seq.train import train_and_evaluate

    session = train_and_evaluate(config, run, options, resume=bool(request.resume), log=log)
    return session.run if session.run.writer else None
