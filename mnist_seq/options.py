"""Runtime options: how and where a command runs, as opposed to what it trains (the config)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEVICES = ("auto", "cpu", "gpu")
BACKENDS = ("tensorflow", "jax")
DEFAULT_BACKEND = "tensorflow"


@dataclass(frozen=True)
class RuntimeOptions:
    """Options every command that loads Keras shares.

    device: auto, cpu or gpu. backend: tensorflow or jax (None: $KERAS_BACKEND, else
    tensorflow). debug: the backend's logs and full tracebacks.
    data_dir: where MNIST is (before $MNIST_SEQ_DATA and the config's data.dir).
    tensorboard: also write TensorBoard logs (train). command: the command line, recorded
    in metrics.json. threads: the CPU cores this process may use (None: all of them; a
    sweep's workers share the machine).
    """

    device: str = "auto"
    backend: str | None = None
    debug: bool = False
    data_dir: str | Path | None = None
    tensorboard: bool = False
    command: str = ""
    threads: int | None = None


DEFAULT_OPTIONS = RuntimeOptions()
