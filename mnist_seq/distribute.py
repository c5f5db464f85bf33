"""One model trained on every device of every process, on the engines made for it.

- JAX: `keras.distribution.DataParallel` over the devices of all processes, which
  `jax.distributed` joins into one group (gloo collectives between CPUs, NCCL between
  GPUs). Each process feeds its own part of every global batch (`shards.py`), so
  Keras's own dataset sharding is off.
- TensorFlow: `tf.distribute.MirroredStrategy` over this machine's GPUs (or logical
  CPU devices). Several processes need JAX: MultiWorkerMirroredStrategy fails inside
  Keras 3's `fit` (keras-team/keras#20585).

`check` runs before anything loads; `start_jax`/`start_tensorflow` while the backend
starts (device counts and the process group are fixed before its first use); `join`
then says where this process stands (`Cluster`). A run on one device has a `Cluster`
too, a local one, whose scope, saving and lost-process checks do nothing: training
code never asks whether it is distributed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mnist_seq.errors import ConfigError, MnistSeqError, first_line
from mnist_seq.options import DistributeOptions

# A process silent this long is taken for dead by JAX's coordination service, which
# then stops the others (JAX's default is 100 s). A process that dies outright is
# noticed sooner: its connections close, and the next collective step fails.
HEARTBEAT_SECONDS = 30
# How long the processes wait for each other to start (JAX's default).
JOIN_SECONDS = 300
ENGINES = {"jax": "keras.distribution.DataParallel", "tensorflow": "tf.distribute.MirroredStrategy"}


class ProcessLost(MnistSeqError):
    """Another process of a distributed run stopped."""


RUN_DIR_NEEDED = ("a run over several processes needs --run-dir: every process must name "
                  "the same run folder")


def check(options: DistributeOptions | None, backend: str, named_run: bool = True) -> list[str]:
    """Raise ConfigError for settings that cannot work, before anything loads (`named_run`:
    the run folder was named, as every process must); return what to tell the user
    before the processes join."""
    if options is None:
        return []
    n, i, address = options.num_processes, options.process_id, options.coordinator
    given = [n is not None, i is not None, address is not None]
    if any(given) and not all(given):
        raise ConfigError("--num-processes, --process-id and --coordinator go together (or "
                          "give none, where jax.distributed finds the cluster by itself: "
                          "SLURM, Open MPI, Kubernetes)")
    if n is not None and not 0 <= i < n:
        raise ConfigError(f"--process-id: got {i}, expected 0 to {n - 1} for {n} processes")
    if address is not None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--coordinator: got {address!r}, expected HOST:PORT, e.g. "
                              "10.0.0.1:1234")
    if backend == "tensorflow" and options.several_processes:
        raise ConfigError("several processes need --backend jax: TensorFlow's "
                          "MultiWorkerMirroredStrategy does not work with Keras 3's fit "
                          "(keras-team/keras#20585); on TensorFlow, --distribute uses this "
                          "machine's GPUs")
    if not options.several_processes:
        return []
    # Said before joining: a process that raised after joining could tear the group
    # down while another was still on its way there.
    if not named_run:
        raise ConfigError(RUN_DIR_NEEDED)
    return [f"Joining {n} processes at {address} (each waits up to {JOIN_SECONDS // 60} "
            "minutes for the others to start)"]


def start_jax(options: DistributeOptions) -> None:
    """Split the CPU into logical devices and join the other processes, if asked (JAX
    imported, its devices not yet used)."""
    import jax

    if options.cpu_devices:
        jax.config.update("jax_num_cpu_devices", options.cpu_devices)
    # CPUs exchange gradients over TCP with gloo; GPUs use NCCL whatever this says.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if options.num_processes == 1:
        return
    if options.process_id == 0:
        _require_free_port(options.coordinator)
    try:
        jax.distributed.initialize(options.coordinator, options.num_processes,
                                   options.process_id,
                                   initialization_timeout=JOIN_SECONDS,
                                   heartbeat_timeout_seconds=HEARTBEAT_SECONDS)
    except Exception as e:  # the runtime raises its own types; they all mean the same
        if isinstance(e, ValueError) and options.num_processes is None:
            return  # no cluster found around this process: it trains alone
        where = options.coordinator or "the detected coordinator"
        raise MnistSeqError(f"cannot join the other processes at {where}: "
                            f"{first_line(e, 300)}") from None


def start_tensorflow(options: DistributeOptions) -> None:
    """Split the CPU into logical devices, if asked (TensorFlow imported, not started)."""
    import tensorflow as tf

    if options.cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * options.cpu_devices)


@dataclass(frozen=True)
class Cluster:
    """Where this process stands in a distributed run, and the engine that runs it; a
    local cluster (`Cluster.local`) is one process on one device, with no engine."""

    backend: str
    process: int = 0  # this process's index; process 0 writes the run folder
    processes: int = 1
    devices: int = 1  # over all processes: every global batch splits into this many parts
    engine: Any = None  # the DataParallel distribution or the MirroredStrategy

    @classmethod
    def local(cls, backend: str) -> Cluster:
        return cls(backend)

    @property
    def writer(self) -> bool:
        return self.process == 0

    @property
    def several_processes(self) -> bool:
        return self.processes > 1

    @property
    def distributed(self) -> bool:
        """Whether an engine spreads the model (False for a local cluster)."""
        return self.engine is not None

    @property
    def feeds_parts(self) -> bool:
        """Whether each process hands Keras its own part of every batch (JAX); Mirrored-
        Strategy splits whole batches itself."""
        return self.backend == "jax" and self.distributed

    def describe(self) -> str:
        """The distribution in words ("" for a local cluster)."""
        if not self.distributed:
            return ""
        where = (f"{self.devices} devices in {self.processes} processes"
                 if self.processes > 1 else f"{self.devices} device"
                 + ("s" if self.devices > 1 else ""))
        return f"data parallel over {where} ({ENGINES[self.backend]})"

    def facts(self) -> dict[str, Any] | None:
        """What metrics.json records of the distribution (None: none)."""
        if not self.distributed:
            return None
        return {"engine": ENGINES[self.backend], "processes": self.processes,
                "devices": self.devices}

    def scope(self):
        """Where the model must be built: the strategy's scope on TensorFlow (JAX's
        distribution is set for the whole process)."""
        if self.backend == "tensorflow" and self.distributed:
            return self.engine.scope()
        return contextlib.nullcontext()

    def check_run_dir(self, named_run: bool) -> None:
        """Raise ConfigError where several processes would write unnamed run folders (a
        cluster JAX found by itself, SLURM and the like, is known only now)."""
        if self.several_processes and not named_run:
            raise ConfigError(RUN_DIR_NEEDED)

    def check_batch(self, batch: int, what: str) -> None:
        """Raise ConfigError unless every global batch splits evenly over the devices."""
        if self.feeds_parts and batch % self.devices:
            raise ConfigError(f"{what}: got {batch}, which does not split evenly over "
                              f"{self.devices} devices; use a multiple of {self.devices}")

    def train_inputs(self, plan, model, x: np.ndarray, y: np.ndarray, batch: int, seed: int,
                     first_epoch: int) -> dict[str, Any]:
        """The training set (uint8 pixels) as `model.fit` keyword arguments: as the speed
        plan wants it, or on JAX over several devices this process's part of every global
        batch, in an order each epoch that every process shares."""
        if not self.feeds_parts:
            from mnist_seq.speed import fit_inputs

            return fit_inputs(plan, model, x, y, batch, seed)
        from mnist_seq.shards import ShardedBatches

        return {"x": ShardedBatches(x, y, batch, self.process, self.processes, self.devices,
                                    seed, first_epoch), "shuffle": False}

    def eval_inputs(self, x: np.ndarray, y: np.ndarray, batch: int) -> dict[str, Any]:
        """A validation or test set, all of it, as `model.evaluate` keyword arguments; on
        JAX over several devices this process's part of every batch (`batch` rounded up
        to split evenly)."""
        if not self.feeds_parts:
            return {"x": x, "y": y, "batch_size": batch}
        from mnist_seq.shards import ShardedBatches

        batch = -(-batch // self.devices) * self.devices
        return {"x": ShardedBatches(x, y, batch, self.process, self.processes, self.devices)}

    def validation(self, x: np.ndarray, y: np.ndarray, batch: int) -> dict[str, Any]:
        """The validation set as `model.fit` keyword arguments (see `eval_inputs`)."""
        if self.feeds_parts:
            return {"validation_data": self.eval_inputs(x, y, batch)["x"]}
        return {"validation_data": (x, y), "validation_batch_size": batch}

    @contextlib.contextmanager
    def lost_processes(self, resume_hint: str) -> Iterator[None]:
        """Turn a collective step that failed because another process stopped into one
        line that names it (with two processes, the other one; else its host)."""
        if not self.several_processes:
            yield
            return
        try:
            yield
        except Exception as e:  # JAX raises its runtime's errors as several types
            text = str(e)
            if isinstance(e, MnistSeqError) or not re.search(
                    r"[Gg]loo|[Cc]onnection (closed|reset)|UNAVAILABLE|heartbeat|NCCL", text):
                raise
            if self.processes == 2:
                who = f"process {1 - self.process} of 2"
            else:
                peer = re.findall(r"\[([^\]]+)\]:\d+", text)
                who = "a process" + (f" on {peer[-1]}" if peer else "")
            raise ProcessLost(f"{who} stopped (its connection closed), so process "
                              f"{self.process} stops too. {resume_hint}") from None

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        """Outside the distribution, for what one process does by itself: saving a model
        makes a few variables of its own, and under the distribution every process
        would have to make them together."""
        if not self.feeds_parts:
            yield
            return
        import keras

        keras.distribution.set_distribution(None)
        try:
            yield
        finally:
            keras.distribution.set_distribution(self.engine)

    def close(self) -> None:
        """Leave the process group together with the others, after a run that ended well
        (a process that left alone would look dead to those still working)."""
        if self.feeds_parts and self.several_processes:
            import jax

            jax.distributed.shutdown()


def join(backend: str, options: DistributeOptions | None) -> Cluster:
    """The distribution over every device this run can see (the backend started, with
    `start_jax`/`start_tensorflow` done), or a local cluster when not asked for one."""
    if options is None:
        return Cluster.local(backend)
    if backend == "jax":
        import jax
        import keras

        devices = jax.devices()
        distribution = keras.distribution.DataParallel(devices=devices)
        distribution.auto_shard_dataset = False  # each process feeds its own part
        keras.distribution.set_distribution(distribution)
        return Cluster("jax", jax.process_index(), jax.process_count(), len(devices),
                       distribution)
    import tensorflow as tf

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
    return Cluster("tensorflow", 0, 1, strategy.num_replicas_in_sync, strategy)


def _require_free_port(address: str) -> None:
    """Process 0 serves the others on the coordinator's port, on every address of its
    machine; JAX crashes when that port is taken, so it is tried first."""
    from mnist_seq.processes import port_taken

    port = int(address.rpartition(":")[2])
    e = port_taken("", port)
    if e is not None:
        raise MnistSeqError(f"--coordinator {address}: port {port} is in use on this "
                            f"machine ({e.strerror}); choose another port")
