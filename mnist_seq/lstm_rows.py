"""Stacked LSTMs run row by row across their layers, on one model instance.

Keras runs each LSTM layer over all 28 rows before the next layer starts. Here the
layers' own cells run row by row instead: the model file stays Keras's, and only the
instance's `call` changes. On TensorFlow's CPU path training is written out row by row
and inference runs one loop over the rows; on JAX training is one scan over the rows
(the layers a row apart). Only `speed.apply_to_model` calls this, when the plan says so.

It reads how the model's layers are joined from a private Keras record
(`_inbound_nodes`), defensively: a model it cannot read is left as it was, and
tests/test_tf_speed.py and tests/test_jax.py fail loudly when a Keras release changes it.
"""

from __future__ import annotations

import itertools


def step_layers_together(model, backend: str = "tensorflow") -> bool:
    """Make this model instance run its stack of LSTMs row by row across the layers
    (layer 2 reads row t as soon as layer 1 has written it). On TensorFlow: written
    out for training, in one loop for inference; on JAX: one scan for training,
    Keras's call for inference. The saved model is Keras's. Returns False, changing
    nothing, where the model is not a plain chain of two or more LSTMs (each
    optionally followed by a Dropout) before its other layers.

    Keras runs each LSTM over all 28 rows before the next layer starts: its outputs
    are stacked into one tensor, dropped out and unstacked again, so the unrolled
    graph waits at every layer, forward and backward, and two ops at a time mostly
    run within one cell. Row by row, the cells of different layers run side by side:
    the 3-layer LSTM's training step took about 0.7x the time here
    (docs/performance.md). Each cell is the layer's own, called as Keras's loop calls
    it, and each Dropout draws its mask over the whole sequence as Keras does (once
    per step, from the layer's own seed), so the outputs are Keras's exactly; the
    weight gradients sum the rows in another order (differences about 1e-9).

    Inference (validation, the test score, snapshots) runs the same cells in one
    TensorFlow loop over the rows, the layers a row apart (`_layers_in_one_loop`):
    Keras's three loops, one a layer, ran one op at a time on the plan's one thread
    per op. Its outputs are Keras's exactly, and its graph, a few cells long,
    compiles sooner.

    On JAX, Keras scans each layer over the rows in turn; one scan whose turn k runs
    layer i on row k - i gives XLA the cells of all layers in one loop body, with
    nothing between them to wait for (`_one_scan`)."""
    stack = _lstm_stack(model)
    if stack is None:
        return False
    lstms, drops, tail = stack
    call = model.call
    train, infer = (_one_scan, None) if backend == "jax" else \
        (_layers_together, _layers_in_one_loop)

    def call_stepping_layers_together(inputs, training=None, mask=None, **kwargs):
        if mask is not None or kwargs or (not training and infer is None):
            return call(inputs, training=training, mask=mask, **kwargs)
        if training:
            return train(lstms, drops, tail, inputs)
        return infer(lstms, tail, inputs)

    model.call = call_stepping_layers_together
    return True


def _lstm_stack(model):
    """(LSTMs, the Dropout after each or None, the layers after them) when the model
    is a chain of 2 or more LSTMs the row-by-row training can run, else None."""
    import keras

    layers = model.layers
    if (len(model.inputs) != 1 or len(model.outputs) != 1 or not layers
            or not isinstance(layers[0], keras.layers.InputLayer)):
        return None
    lstms, drops, i = [], [], 1
    while i < len(layers) and isinstance(layers[i], keras.layers.LSTM):
        lstms.append(layers[i])
        i += 1
        drop = layers[i] if i < len(layers) and isinstance(layers[i], keras.layers.Dropout) \
            else None
        i += drop is not None
        drops.append(drop)
    tail = layers[i:]
    plain = all(_in_a_chain(layer, before) for before, layer in itertools.pairwise(layers))
    if len(lstms) < 2 or not plain or not all(_steppable(lstm) for lstm in lstms):
        return None
    if not all(lstm.return_sequences for lstm in lstms[:-1]) or lstms[-1].return_sequences:
        return None
    if any(d is not None and d.noise_shape is not None for d in drops):
        return None
    return lstms, drops, tail


def _in_a_chain(layer, before) -> bool:
    # One call of each layer, on the output of the layer listed before it (Keras's
    # private graph records: without them, nothing can be said, so no).
    try:
        nodes = layer._inbound_nodes
        return len(nodes) == 1 and [t._keras_history[0]
                                    for t in nodes[0].input_tensors] == [before]
    except (AttributeError, IndexError, TypeError):
        return False


def _steppable(lstm) -> bool:
    cell = lstm.cell
    return (not cell.dropout and not cell.recurrent_dropout and not lstm.go_backwards
            and not lstm.stateful and not lstm.return_state
            and not lstm.zero_output_for_mask and lstm.compute_dtype == "float32")


def _layers_together(lstms, drops, tail, inputs):
    """The training call of an LSTM stack, row by row across its layers."""
    import tensorflow as tf

    inputs = tf.cast(inputs, "float32")
    batch, rows = tf.shape(inputs)[0], inputs.shape[1]
    # Each Dropout between LSTMs draws its mask over the whole sequence, as the layer
    # does on the stacked outputs: scale where kept, 0 elsewhere, one row at a time.
    masks = [tf.unstack(drop(tf.ones([batch, rows, lstm.units]), training=True), axis=1)
             if drop is not None and lstm is not lstms[-1] else None
             for lstm, drop in zip(lstms, drops, strict=True)]
    states = [[tf.zeros([batch, lstm.units]), tf.zeros([batch, lstm.units])]
              for lstm in lstms]
    for t, x in enumerate(tf.unstack(inputs, axis=1)):
        for i, lstm in enumerate(lstms):
            x, states[i] = lstm.cell(x, states[i], training=True)
            if masks[i] is not None:
                x = x * masks[i][t]
    if drops[-1] is not None:
        x = drops[-1](x, training=True)
    for layer in tail:
        x = layer(x, training=True)
    return x


def _layers_in_one_loop(lstms, tail, inputs, rows_per_turn: int = 2):
    """The inference call of an LSTM stack in one loop over the rows: layer i works on
    row k - i in turn k, so the cells of one turn do not wait for each other and run
    side by side. The first and last turns, where some layers have no row yet or no
    more, are written out; each loop turn runs `rows_per_turn` rows, which kept the
    loop's own costs out of sight (docs/performance.md)."""
    import tensorflow as tf

    inputs = tf.cast(inputs, "float32")
    batch, rows, depth = tf.shape(inputs)[0], inputs.shape[1], len(lstms)
    xs = tf.transpose(inputs, [1, 0, 2])  # row-major, so xs[k] is row k of every image

    def turn(k, states, outs, layers):
        states, outs, last = list(states), list(outs), None
        for i in reversed(layers):  # each layer reads what the one below made last turn
            h, states[i] = lstms[i].cell(xs[k] if i == 0 else outs[i - 1], states[i],
                                         training=False)
            if i < depth - 1:
                outs[i] = h
            else:
                last = h
        return states, outs, last

    states = [[tf.zeros([batch, lstm.units])] * 2 for lstm in lstms]
    outs = [None] * (depth - 1)
    for k in range(depth - 1):  # the first turns: layers 0..k
        states, outs, _ = turn(k, states, outs, range(k + 1))
    full_turns = rows - depth + 1
    looped = full_turns - full_turns % rows_per_turn

    def body(k, states, outs, last):
        for j in range(rows_per_turn):
            states, outs, last = turn(k + j, states, outs, range(depth))
        return [k + rows_per_turn, states, outs, last]

    _, states, outs, last = tf.while_loop(
        lambda k, *_: k < depth - 1 + looped, body,
        [tf.constant(depth - 1), states, outs, tf.zeros([batch, lstms[-1].units])],
        maximum_iterations=looped // rows_per_turn, parallel_iterations=32)
    for k in range(depth - 1 + looped, rows + depth - 1):  # the rest, and the last turns
        states, outs, h = turn(k, states, outs, range(max(0, k - rows + 1), depth))
        last = h if h is not None else last
    x = last
    for layer in tail:
        x = layer(x, training=False)
    return x


def _one_scan(lstms, drops, tail, inputs):
    """The training call of an LSTM stack on JAX: one scan over rows + layers - 1 turns,
    layer i on row k - i in turn k. Each Dropout between LSTMs draws its mask over the
    whole sequence as the layer does; a layer before its first row or past its last
    keeps its state, so the turns at either end change nothing they should not."""
    import jax.numpy as jnp
    from jax import lax

    inputs = jnp.asarray(inputs, "float32")
    batch, rows, depth = inputs.shape[0], inputs.shape[1], len(lstms)
    turns = rows + depth - 1
    pad = jnp.zeros((depth - 1, batch, inputs.shape[2]), "float32")
    xs = jnp.concatenate([jnp.swapaxes(inputs, 0, 1), pad])  # turn k reads row k

    def ones(n, units):
        return jnp.ones((n, batch, units), "float32")

    masks = []  # turn k scales layer i's output of row k - i
    for i, (lstm, drop) in enumerate(zip(lstms[:-1], drops[:-1], strict=True)):
        mask = ones(rows, lstm.units) if drop is None else jnp.swapaxes(
            drop(jnp.ones((batch, rows, lstm.units), "float32"), training=True), 0, 1)
        masks.append(jnp.concatenate([ones(i, lstm.units), mask,
                                      ones(depth - 1 - i, lstm.units)]))
    k = jnp.arange(turns)
    live = jnp.stack([(k >= i) & (k < rows + i) for i in range(depth)], axis=1)

    def turn(carry, row):
        (states, outs), (x, scale, on) = carry, row
        new_states, new_outs = [], []
        for i, lstm in enumerate(lstms):
            h, state = lstm.cell(x if i == 0 else outs[i - 1], list(states[i]),
                                 training=True)
            new_states.append(tuple(jnp.where(on[i], a, b)
                                    for a, b in zip(state, states[i], strict=True)))
            if i < depth - 1:
                new_outs.append(h * scale[i])
        return (tuple(new_states), tuple(new_outs)), None

    def zeros(units):
        return jnp.zeros((batch, units), "float32")

    start = (tuple((zeros(lstm.units), zeros(lstm.units)) for lstm in lstms),
             tuple(zeros(lstm.units) for lstm in lstms[:-1]))
    (states, _), _ = lax.scan(turn, start, (xs, tuple(masks), live))
    x = states[-1][0]
    if drops[-1] is not None:
        x = drops[-1](x, training=True)
    for layer in tail:
        x = layer(x, training=True)
    return x
