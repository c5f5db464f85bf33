"""Start TensorFlow/Keras once, quietly, on the device the user asked for.

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

DEVICES = ("auto", "cpu", "gpu")


def setup(device: str = "auto", debug: bool = False, deterministic: bool = False) -> str:
    """Set the backend and device, import Keras, and return where training runs, in words."""
    if device not in DEVICES:
        raise MnistSeqError(f"--device: got {device!r}, expected one of {', '.join(DEVICES)}")
    # An explicit KERAS_BACKEND beats ~/.keras/keras.json, which would otherwise win silently.
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # must be set before TensorFlow starts
    # TensorFlow turns its oneDNN CPU kernels on by itself only on CPUs with AVX-512
    # VNNI/BF16 or AMX; on AVX2 CPUs (Zen 3, most laptops) they stay off, although they
    # made LeNet up to 1.9x faster on one (as reported in this project's speed issue; not
    # measured by us). On this project's AVX-512 CPU, turning them off made the unrolled
    # 3-layer LSTM 1.7x slower (README, Performance). A user's own setting wins;
    # TensorFlow reads it once, when it loads.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    with _quiet_stderr(enabled=not debug):
        import keras  # noqa: F401
        import tensorflow as tf
    if not debug:
        tf.get_logger().setLevel("ERROR")
    if deterministic:
        tf.config.experimental.enable_op_determinism()
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


def onednn_enabled() -> bool | None:
    """Whether TensorFlow runs its oneDNN CPU kernels (None if this TensorFlow cannot say)."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # no public API for this
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def set_op_threads(intra: int, inter: int) -> bool:
    """Size TensorFlow's thread pools: `intra` threads inside one op, `inter` ops at once.
    Returns False when TensorFlow has started running ops in this process already
    (the pools are fixed then) and they differ."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        return False
    return True


def fuse_optimizer_updates(optimizer, variables) -> bool:
    """Make Adam (AdamW) or RMSprop update each variable with one fused TensorFlow op
    (ResourceApplyAdam / ResourceApplyRMSProp, the same arithmetic) instead of Keras's
    ten or so small ops. The optimizer stays Keras's own class with its own state, so
    saved models, backups and resuming are unchanged. Returns False, changing nothing,
    for other optimizers and options (AMSGrad, momentum, centered RMSprop)."""
    import keras
    import tensorflow as tf

    if isinstance(optimizer, keras.optimizers.Adam) and not optimizer.amsgrad:
        def update_step(gradient, variable, learning_rate):
            i = optimizer._get_variable_index(variable)
            dtype = variable.dtype
            step = tf.cast(optimizer.iterations + 1, dtype)
            beta_1, beta_2 = tf.cast(optimizer.beta_1, dtype), tf.cast(optimizer.beta_2, dtype)
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle, m=optimizer._momentums[i].value.handle,
                v=optimizer._velocities[i].value.handle,
                beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
                lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
                epsilon=tf.cast(optimizer.epsilon, dtype), grad=tf.cast(gradient, dtype))
    elif (isinstance(optimizer, keras.optimizers.RMSprop) and not optimizer.momentum
          and not optimizer.centered):
        # TensorFlow's kernel writes its step into a momentum buffer; with momentum 0
        # that buffer holds no state, so it is scratch space outside the optimizer's
        # (saved) variables.
        scratch = [tf.Variable(tf.zeros_like(v.value if hasattr(v, "value") else v),
                               trainable=False) for v in variables]

        def update_step(gradient, variable, learning_rate):
            i = optimizer._get_variable_index(variable)
            dtype = variable.dtype
            tf.raw_ops.ResourceApplyRMSProp(
                var=variable.handle, ms=optimizer._velocities[i].value.handle,
                mom=scratch[i].handle, lr=tf.cast(learning_rate, dtype),
                rho=tf.cast(optimizer.rho, dtype), momentum=tf.cast(0.0, dtype),
                epsilon=tf.cast(optimizer.epsilon, dtype), grad=tf.cast(gradient, dtype))
    else:
        return False
    optimizer.build(variables)
    optimizer.update_step = update_step  # this instance only: Keras calls it per variable
    return True


def epochs_in_one_call(model, x, y, batch_size: int, seed: int):
    """Make `model.fit` train each epoch in one TensorFlow call; returns the dataset to
    fit on (`x`, `y` held in memory as one element, so fit counts one step per epoch).

    Each call shuffles, then runs Keras's own `train_step` on every batch in a graph
    loop. The usual path hands each batch over from tf.data's threads, a fixed cost
    per batch that tells where the batch's arithmetic is small: the MLP's epochs ran
    1.15x faster this way on 2 cores (README, Performance). The model and what it
    saves are unchanged; only this instance's `train_step` is replaced. Keras's
    callbacks then see one batch per epoch."""
    import keras
    import tensorflow as tf

    keras_step = model.train_step
    seeds = keras.random.SeedGenerator(seed)

    def train_step(data):
        x, y = data
        n = tf.shape(x)[0]
        order = keras.random.shuffle(tf.range(n), seed=seeds)

        def one_batch(start):
            idx = order[start:start + batch_size]
            keras_step((tf.gather(x, idx), tf.gather(y, idx)))
            return start + batch_size

        end = tf.while_loop(lambda start: start < n, one_batch, [tf.constant(0)])
        with tf.control_dependencies(end):
            return model.get_metrics_result()

    model.train_step = train_step
    return tf.data.Dataset.from_tensors((x, y))


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere it is
    emulated, and slower than float32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision(setting: str, model_type: str, on_gpu: bool) -> str:
    """Resolve `train.precision: auto`. Measured on a 2-core AVX512-BF16 CPU: bfloat16
    made LeNet about 1.6x faster and the MLP no faster; LSTMs stay float32 (bf16 hurts
    their recurrence)."""
    if setting != "auto":
        return setting
    if model_type == "cnn" and not on_gpu and cpu_has_bf16():
        return "mixed_bfloat16"
    return "float32"


def choose_xla(setting: str, on_gpu: bool) -> bool | str:
    """Resolve `train.xla` into Keras's `jit_compile`. "auto" leaves XLA off on a CPU:
    on this project's 2-core CPU it made LeNet several times slower (XLA's CPU
    convolutions lose to oneDNN), the looped LSTM slower than the unrolled one without
    XLA, and the MLP 1.2-1.5x faster per epoch but about 1 s slower to start, about
    even over its 5 epochs, with a lower seed-0 accuracy (README, Performance). On a
    GPU "auto" leaves it to Keras: XLA on, except where a layer cannot be compiled
    (the cuDNN LSTM)."""
    if setting != "auto":
        return setting == "enabled"
    return "auto" if on_gpu else False


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
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "onednn": onednn_enabled(),
    }
