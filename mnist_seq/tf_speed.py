"""TensorFlow-only speed tricks for training on a CPU in one process.

Only `speed.apply_*` calls these, and only when the speed plan says so: for the
TensorFlow backend, on a CPU, in a single process. A run on another backend, on
a GPU or under a distribution never touches this module.

Two tricks reach into Keras: fused updates read the optimizer's slot variables
(`_get_variable_index`, `_momentums`, `_velocities`), and one-call epochs replace
`train_step` on one model instance (stacked LSTMs run row by row: `lstm_rows`).
`keras_internals_present` checks the slots; tests/test_tf_speed.py fails loudly when
a Keras release changes any of it, and the trick is then skipped rather than run on
a guess.
"""

from __future__ import annotations


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


# Grappler passes whose work grows with the unrolled LSTM's graph (28 steps x layers,
# forward and backward): off, its first epoch compiled about 4 s sooner here, but seed
# 0 of the full config trained to a lower accuracy, so the plan leaves them on; the A/B
# script (scripts/ab.py, rewrites=light) can still try it (docs/performance.md).
HEAVY_REWRITES = ("constant_folding", "arithmetic_optimization", "layout_optimizer",
                  "remapping")


# Grappler passes that leave the unrolled LSTM's arithmetic as it is: with them off it
# trained to the same weights bit for bit, and its first epoch compiled about 0.5 s
# sooner (docs/performance.md). Only constant folding and arithmetic optimization
# changed the rounding, so they stay on.
IDLE_REWRITES = ("layout_optimizer", "dependency_optimization", "remapping",
                 "shape_optimization", "loop_optimization", "function_optimization",
                 "pin_to_host_optimization", "implementation_selector", "debug_stripper")


def rewrites_off(names=HEAVY_REWRITES) -> None:
    """Turn these Grappler passes off for this process (default `HEAVY_REWRITES`)."""
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({name: False for name in names})


def unroll_for_training(model) -> None:
    """Make this model instance's recurrent layers write their 28 steps out as one graph
    when training, and keep Keras's loop everywhere else (validation, the test score).

    Unrolled, the 3-layer LSTM trained 1.39x faster per epoch on a CPU, but tracing the
    unrolled graph costs seconds each time a function is traced; for a forward pass
    alone the loop is about as fast and traces in a fraction of the time
    (docs/performance.md). The layers' config keeps `unroll=False`, so the saved model
    is Keras's default LSTM, and `evaluate`, `predict` and `serve` load the loop too."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.RNN):
            layer.inner_loop = _unrolled_when_training(layer, layer.inner_loop)


def _unrolled_when_training(layer, inner_loop):
    # Keras reads `unroll` while tracing `inner_loop`, and `training` is a Python bool
    # then; it is set back at once, so `get_config` (the saved model) never sees it.
    def unrolled_when_training(sequences, initial_state, mask, training=False):
        layer.unroll = bool(training)
        try:
            return inner_loop(sequences, initial_state, mask, training=training)
        finally:
            layer.unroll = False

    return unrolled_when_training


def fuse_lstm_for_training(model) -> bool:
    """Make this model instance's LSTM layers train with TensorFlow's fused LSTM op
    (`BlockLSTM`: the 28 steps and their gradient in one op each), and keep Keras's loop
    everywhere else (validation, the test score). Returns False, changing nothing,
    where a layer is not the plain LSTM the op computes (float32, tanh and sigmoid, a
    bias, no dropout inside the layer, not reversed, not stateful).

    Same arithmetic as Keras's LSTM cell, on the layer's own variables: a test compares
    outputs and gradients. The op is TensorFlow's, so the saved model is Keras's
    default LSTM, which loads anywhere."""
    import keras

    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.RNN)]
    if not all(_block_lstm_fits(layer) for layer in layers):
        return False
    for layer in layers:
        layer.inner_loop = _fused_when_training(layer, layer.inner_loop)
    return True


def _block_lstm_fits(layer) -> bool:
    import keras

    cell = getattr(layer, "cell", None)
    return (isinstance(layer, keras.layers.LSTM) and cell.use_bias
            and layer.compute_dtype == "float32"
            and cell.activation is keras.activations.tanh
            and cell.recurrent_activation is keras.activations.sigmoid
            and not cell.dropout and not cell.recurrent_dropout
            and not layer.go_backwards and not layer.stateful)


def _fused_when_training(layer, inner_loop):
    def fused_when_training(sequences, initial_state, mask, training=False):
        if not training or mask is not None:
            return inner_loop(sequences, initial_state, mask, training=training)
        return _block_lstm(layer.cell, sequences, initial_state)

    return fused_when_training


def _block_lstm(cell, sequences, initial_state):
    """Keras's LSTM over a batch of sequences, as one `BlockLSTM` op. Returns what
    Keras's `inner_loop` does: the last output, all outputs, the last states.

    BlockLSTM orders its gates input, cell, forget, output (Keras: input, forget, cell,
    output) and reads one weight matrix for [input, previous output]. Its V2 takes
    Keras's order, but TensorFlow 2.21 registers V1's gradient for it, which gives the
    forget and cell gates each other's weight gradients; V1 with no forget bias and no
    clipping is Keras's cell exactly."""
    import tensorflow as tf

    def gates(t, axis):
        i, f, c, o = tf.split(t, 4, axis=axis)
        return tf.concat([i, c, f, o], axis=axis)

    x = tf.transpose(sequences, [1, 0, 2])  # time first
    weights = gates(tf.concat([cell.kernel.value, cell.recurrent_kernel.value], 0), 1)
    no_peephole = tf.zeros([cell.units], x.dtype)
    h0, c0 = initial_state
    _, cs, _, _, _, _, h = tf.raw_ops.BlockLSTM(
        seq_len_max=tf.cast(tf.shape(x)[0], tf.int64), x=x, cs_prev=c0, h_prev=h0,
        w=weights, wci=no_peephole, wcf=no_peephole, wco=no_peephole,
        b=gates(cell.bias.value, 0), forget_bias=0.0, cell_clip=-1.0, use_peephole=False)
    return h[-1], tf.transpose(h, [1, 0, 2]), [h[-1], cs[-1]]


def keras_internals_present(optimizer) -> bool:
    """Whether the optimizer (built) exposes the slot variables the fused updates use."""
    import keras

    slots = ["_velocities"]
    if isinstance(optimizer, keras.optimizers.Adam):
        slots.append("_momentums")
    return hasattr(optimizer, "_get_variable_index") and all(
        isinstance(getattr(optimizer, s, None), list) for s in slots)


def fuse_optimizer_updates(optimizer, variables) -> bool:
    """Make Adam (AdamW) or RMSprop update each variable with one fused TensorFlow op
    (ResourceApplyAdam / ResourceApplyRMSProp, the same arithmetic) instead of Keras's
    ten or so small ops. The optimizer stays Keras's own class with its own state, so
    saved models and checkpoints are unchanged. Returns False, changing nothing, for
    other optimizers and options (AMSGrad, momentum, centered RMSprop), or when this
    Keras release no longer has the slots it reads."""
    import keras
    import tensorflow as tf

    adam = isinstance(optimizer, keras.optimizers.Adam) and not optimizer.amsgrad
    rmsprop = (isinstance(optimizer, keras.optimizers.RMSprop) and not optimizer.momentum
               and not optimizer.centered)
    if not (adam or rmsprop):
        return False
    optimizer.build(variables)
    if not keras_internals_present(optimizer):
        return False

    def slot(name: str, variable):
        return getattr(optimizer, name)[optimizer._get_variable_index(variable)].value.handle

    if adam:
        def update_step(gradient, variable, learning_rate):
            dtype = variable.dtype
            step = tf.cast(optimizer.iterations + 1, dtype)
            beta_1, beta_2 = tf.cast(optimizer.beta_1, dtype), tf.cast(optimizer.beta_2, dtype)
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle, m=slot("_momentums", variable),
                v=slot("_velocities", variable),
                beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
                lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
                epsilon=tf.cast(optimizer.epsilon, dtype), grad=tf.cast(gradient, dtype))
    else:
        # TensorFlow's kernel writes its step into a momentum buffer; with momentum 0
        # that buffer holds no state, so it is scratch space outside the optimizer's
        # (saved) variables.
        scratch = [tf.Variable(tf.zeros_like(v.value if hasattr(v, "value") else v),
                               trainable=False) for v in variables]

        def update_step(gradient, variable, learning_rate):
            dtype = variable.dtype
            tf.raw_ops.ResourceApplyRMSProp(
                var=variable.handle, ms=slot("_velocities", variable),
                mom=scratch[optimizer._get_variable_index(variable)].handle,
                lr=tf.cast(learning_rate, dtype), rho=tf.cast(optimizer.rho, dtype),
                momentum=tf.cast(0.0, dtype), epsilon=tf.cast(optimizer.epsilon, dtype),
                grad=tf.cast(gradient, dtype))
    optimizer.update_step = update_step  # this instance only: Keras calls it per variable
    return True


def epochs_in_one_call(model, x, y, batch_size: int, seed: int):
    """Make `model.fit` train each epoch in one TensorFlow call; returns the dataset to
    fit on (`x`, uint8 pixels, and `y` held in memory as one element, so fit counts one
    step per epoch; each batch is scaled to [0, 1] after it is sliced).

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
            keras_step((to_unit(tf.gather(x, idx)), tf.gather(y, idx)))
            return start + batch_size

        end = tf.while_loop(lambda start: start < n, one_batch, [tf.constant(0)])
        with tf.control_dependencies(end):
            return model.get_metrics_result()

    model.train_step = train_step
    return tf.data.Dataset.from_tensors((x, y))


def to_unit(pixels):
    """uint8 pixels to float32 in [0, 1], inside a TensorFlow graph: the same figures as
    `data.to_float`."""
    import tensorflow as tf

    return tf.cast(pixels, tf.float32) / 255.0


def pixel_batches(x, y, batch_size: int, seed: int):
    """Shuffled batches (reshuffled every epoch) of uint8 images `x`, scaled to [0, 1]
    one batch at a time. The uint8 training set is a quarter of the float32 one to copy
    into TensorFlow, and no float32 copy of it is ever made: `cnn-fast` started its
    first epoch about 0.3 s sooner (docs/performance.md)."""
    import tensorflow as tf

    x, y = tf.constant(x), tf.constant(y)
    order = tf.data.Dataset.range(len(y)).shuffle(len(y), seed=seed,
                                                  reshuffle_each_iteration=True)
    # Whole batches only, when they divide the set (nothing is dropped): the batch size
    # is then known when tracing, and the unrolled LSTM's step has no shape ops to make.
    return (order.batch(batch_size, drop_remainder=len(y) % batch_size == 0)
            .map(lambda i: (to_unit(tf.gather(x, i)), tf.gather(y, i)), num_parallel_calls=2)
            .prefetch(2).with_options(without_autotune()))


def without_autotune():
    """tf.data options with its autotuner off. The autotuner keeps a thread per iterator
    that sleeps between tunings, and destroying the iterator (at the end of `fit`)
    waits for that thread to wake: 1 to 10 s after the last epoch of `cnn-fast` on a
    2-core AMD EPYC (AVX2), seen with gdb in `RootDataset::Iterator::~Iterator`. A
    gather and a scaling per batch need no tuning: two at a time, two batches ahead."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def onednn_enabled() -> bool | None:
    """Whether TensorFlow runs its oneDNN CPU kernels (None if this TensorFlow cannot say)."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # no public API for this
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())
