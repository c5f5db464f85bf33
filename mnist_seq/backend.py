"""Start Keras once, quietly, on the device the user asked for.

Everything here runs lazily, at the first command that needs Keras, so that
`mnist-seq --help` stays instant.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from typing import Any

from mnist_seq.errors import MnistSeqError
from mnist_seq.options import DEFAULT_OPTIONS, DEVICES, RuntimeOptions

BACKEND = "tensorflow"


def setup(options: RuntimeOptions = DEFAULT_OPTIONS, deterministic: bool = False) -> str:
    """Set the backend and device, import Keras, and return where training runs, in words
    ("CPU (2 cores)", "GPU (NVIDIA H100)")."""
    device, debug = options.device, options.debug
    if device not in DEVICES:
        raise MnistSeqError(f"--device: got {device!r}, expected one of {', '.join(DEVICES)}")
    # An explicit KERAS_BACKEND beats ~/.keras/keras.json, which would otherwise win silently.
    os.environ.setdefault("KERAS_BACKEND", BACKEND)
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # must be set before TensorFlow starts
    # TensorFlow turns its oneDNN CPU kernels on by itself only on CPUs with AVX-512
    # VNNI/BF16 or AMX; on AVX2 CPUs (Zen 3, most laptops) they stay off, although they
    # made LeNet up to 1.9x faster on one (as reported to this project; not measured by
    # us). On this project's AVX-512 CPU, turning them off made the unrolled 3-layer
    # LSTM 1.7x slower (README, Performance). A user's own setting wins; TensorFlow
    # reads it once, when it loads.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    with _quiet_stderr(enabled=not debug):
        import keras  # noqa: F401
        import tensorflow as tf
    if not debug:
        tf.get_logger().setLevel("ERROR")
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    if options.threads:
        from mnist_seq import tf_speed

        tf_speed.set_op_threads(options.threads, 1)
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        cuda = tf.test.is_built_with_cuda()
        raise MnistSeqError(
            "--device gpu: TensorFlow sees no GPU "
            + ("(check the driver and CUDA_VISIBLE_DEVICES)" if cuda
               else "(this TensorFlow has no CUDA; pip install 'mnist-seq[gpu]')")
        )
    if gpus and device != "cpu":
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                 for g in gpus]
        return f"GPU ({', '.join(names)})"
    return f"CPU ({os.cpu_count()} cores)"


@contextlib.contextmanager
def _quiet_stderr(enabled: bool):
    """Silence the C++ log lines TensorFlow prints while it loads (they ignore
    TF_CPP_MIN_LOG_LEVEL because they come before logging is set up)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def versions() -> dict[str, Any]:
    """Versions and thread settings a run needs to be repeated."""
    import keras
    import numpy
    import tensorflow as tf

    return {
        "backend": keras.backend.backend(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        # 0 means TensorFlow's default (as many as cores).
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "onednn": onednn_enabled(),
    }


def onednn_enabled() -> bool | None:
    """Whether TensorFlow runs its oneDNN CPU kernels (None if this TensorFlow cannot say)."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # no public API for this
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())
