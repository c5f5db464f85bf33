"""Runtime options: how and where a command runs, as opposed to what it trains (the config)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEVICES = ("auto", "cpu", "gpu")
BACKENDS = ("tensorflow", "jax")
DEFAULT_BACKEND = "tensorflow"


def cache_root() -> Path:
    """Where mnist-seq keeps what it can make again but would rather not (ONNX Runtime
    Web's files, JAX's compiled steps): $MNIST_SEQ_CACHE, else ~/.cache/mnist-seq."""
    return Path(os.environ.get("MNIST_SEQ_CACHE") or Path.home() / ".cache" / "mnist-seq")


@dataclass(frozen=True)
class DistributeOptions:
    """How one model trains on several devices or processes (`train --distribute`).

    num_processes, process_id, coordinator (HOST:PORT): a JAX run over several
    processes; all None: one process, or whatever `jax.distributed.initialize()`
    detects by itself (SLURM, Open MPI, Kubernetes). cpu_devices: split the CPU into
    that many logical devices, to try data parallelism without GPUs.
    """

    num_processes: int | None = None
    process_id: int | None = None
    coordinator: str | None = None
    cpu_devices: int | None = None

    @property
    def several_processes(self) -> bool:
        """Whether the command line names more than one process."""
        return (self.num_processes or 1) > 1


@dataclass(frozen=True)
class RuntimeOptions:
    """Options every command that loads Keras shares.

    device: auto, cpu or gpu. backend: tensorflow or jax (None: $KERAS_BACKEND, else
    tensorflow). debug: the backend's logs and full tracebacks.
    data_dir: where MNIST is (before $MNIST_SEQ_DATA and the config's data.dir).
    tensorboard: also write TensorBoard logs (train). command: the command line, recorded
    in metrics.json. threads: the CPU cores this process may use (None: all of them; a
    sweep's workers share the machine). distribute: train on every device and process
    (None: one device).
    """

    device: str = "auto"
    backend: str | None = None
    debug: bool = False
    data_dir: str | Path | None = None
    tensorboard: bool = False
    command: str = ""
    threads: int | None = None
    distribute: DistributeOptions | None = None


DEFAULT_OPTIONS = RuntimeOptions()
