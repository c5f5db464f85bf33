"""TensorFlow's CPU tricks change how training computes, never what it computes; and the
Keras internals they lean on are still there."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from mnist_seq.config import validate


@pytest.fixture(autouse=True)
def _keras_on_the_cpu():
    from mnist_seq import backend
    from mnist_seq.options import RuntimeOptions

    backend.setup(RuntimeOptions(device="cpu"))
    import keras

    # A CNN trained earlier in this process leaves its bfloat16 policy set.
    keras.mixed_precision.set_global_policy("float32")


def _train(cfg, fused: bool = False, one_call: bool = False):
    import keras

    from mnist_seq import tf_speed
    from mnist_seq.data import to_float
    from mnist_seq.train import compile_model

    rng = np.random.default_rng(0)
    # 60 samples: three batches of 16 and a last one of 12.
    pixels, y = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), np.arange(60) % 10
    keras.utils.set_random_seed(0)
    model = compile_model(cfg, len(y))
    if fused:
        assert tf_speed.fuse_optimizer_updates(model.optimizer, model.trainable_variables)
    data = {"x": to_float(pixels), "y": y, "batch_size": 16}
    if one_call:
        data = {"x": tf_speed.epochs_in_one_call(model, pixels, y, 16, seed=0)}
    history = model.fit(**data, epochs=2, verbose=0, shuffle=False).history
    return model.get_weights() + [v.numpy() for v in model.optimizer.variables], history


def _initial_weights(cfg):
    import keras

    from mnist_seq.train import compile_model

    keras.utils.set_random_seed(0)
    return compile_model(cfg, 60).get_weights()


@pytest.mark.parametrize(("model_type", "optimizer", "schedule"), [
    ("mlp", "rmsprop", "constant"),
    ("mlp", "adam", "cosine"),
    ("cnn", "adamw", "onecycle"),
])
def test_fused_optimizer_updates_match_keras(model_type, optimizer, schedule):
    cfg = validate({"model": {"type": model_type},
                    "train": {"optimizer": optimizer, "lr_schedule": schedule, "epochs": 2,
                              "batch_size": 16, "steps_per_execution": 4}})
    (plain, _), (fused, _) = _train(cfg), _train(cfg, fused=True)
    assert len(plain) == len(fused)  # the same weights and optimizer state, nothing added
    for a, b in zip(plain, fused, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # The updates did move the weights: equal because the arithmetic is, not because idle.
    init = _initial_weights(cfg)
    assert any(not np.allclose(a, b) for a, b in zip(plain[:len(init)], init, strict=True))


def test_epochs_in_one_call_train_as_keras_does(monkeypatch):
    """The same batches in the same order (shuffling turned off here) give the same
    weights, optimizer state (its step count too) and per-epoch figures as Keras's fit."""
    import keras

    cfg = validate({"model": {"type": "mlp"}, "train": {"epochs": 2, "batch_size": 16}})
    plain, plain_history = _train(cfg)
    monkeypatch.setattr(keras.random, "shuffle", lambda x, seed=None: x)
    one_call, one_call_history = _train(cfg, one_call=True)
    assert len(plain) == len(one_call)
    for a, b in zip(plain, one_call, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert plain_history.keys() == one_call_history.keys()
    for key, values in plain_history.items():
        np.testing.assert_allclose(values, one_call_history[key], atol=1e-5)


def _while_loops(fn, x) -> int:
    """How many while loops the graph `fn(x)` traces to holds."""
    import tensorflow as tf

    graph = tf.function(fn).get_concrete_function(x).graph
    return sum(op.type in ("While", "StatelessWhile") for op in graph.get_operations())


def test_lstms_are_unrolled_for_training_only_and_compute_the_same():
    """Training's graph has the 28 rows written out; inference keeps Keras's loop, and both
    give what a Keras LSTM written out everywhere gives. The saved config stays Keras's
    default, so the model file is a plain LSTM."""
    import keras

    from mnist_seq.models import build_model
    from mnist_seq.tf_speed import unroll_for_training

    cfg = validate({"model": {"type": "lstm", "units": [16, 16]}})["model"]
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    unrolled = build_model(cfg, unroll=True)
    unrolled.set_weights(model.get_weights())
    unroll_for_training(model)
    x = np.random.default_rng(0).random((8, 28, 28), dtype=np.float32)
    assert _while_loops(lambda v: model(v, training=True), x) == 0
    assert _while_loops(lambda v: model(v, training=False), x) == 2  # one per LSTM
    assert _while_loops(lambda v: unrolled(v, training=False), x) == 0
    expected = np.asarray(unrolled(x, training=True))
    for training in (True, False):
        np.testing.assert_allclose(np.asarray(model(x, training=training)), expected,
                                   atol=1e-6)
    assert [layer.get_config()["unroll"] for layer in model.layers
            if isinstance(layer, keras.layers.LSTM)] == [False, False]


def test_the_fused_lstm_op_trains_as_keras_lstms_do():
    """The fused op (an A/B setting of scripts/ab.py) gives Keras's outputs and gradients,
    with one BlockLSTM op per layer in training's graph and Keras's loop elsewhere; a layer
    the op cannot compute leaves the model as it was."""
    import keras
    import tensorflow as tf

    from mnist_seq.models import build_model
    from mnist_seq.tf_speed import fuse_lstm_for_training

    cfg = validate({"model": {"type": "lstm", "units": [16, 12]}})["model"]
    keras.utils.set_random_seed(0)
    keras_lstm, fused = build_model(cfg), build_model(cfg)
    for layer in keras_lstm.layers:  # a real forget-gate bias, so gates cannot swap unseen
        if isinstance(layer, keras.layers.LSTM):
            layer.cell.bias.assign(np.random.default_rng(1).normal(size=layer.cell.bias.shape))
    fused.set_weights(keras_lstm.get_weights())
    assert fuse_lstm_for_training(fused)
    x = np.random.default_rng(0).random((8, 28, 28), dtype=np.float32)
    graph = tf.function(lambda v: fused(v, training=True)).get_concrete_function(x).graph
    assert [op.type for op in graph.get_operations()].count("BlockLSTM") == 2
    assert _while_loops(lambda v: fused(v, training=False), x) == 2

    def gradients(model):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = tf.reduce_sum(out * np.arange(10, dtype=np.float32))
        return out, tape.gradient(loss, model.trainable_variables)

    (expected, keras_grads), (out, grads) = gradients(keras_lstm), gradients(fused)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-6)
    for g, k in zip(grads, keras_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(k), atol=1e-6)
    recurrent_dropout = build_model({**cfg, "recurrent_dropout": 0.1})
    assert not fuse_lstm_for_training(recurrent_dropout)
    assert _while_loops(lambda v: recurrent_dropout(v, training=True), x) == 2


def test_stacked_lstms_train_row_by_row_as_keras_trains_them():
    """Row by row across the layers, training gives Keras's outputs exactly (the same
    dropout masks) and its gradients to rounding; inference, in one loop over the rows,
    gives Keras's outputs exactly. Models the row-by-row call cannot run are left as
    they were."""
    import keras
    import tensorflow as tf

    from mnist_seq.lstm_rows import step_layers_together
    from mnist_seq.models import build_lstm, build_model
    from mnist_seq.tf_speed import unroll_for_training

    cfg = validate({"model": {"type": "lstm", "units": [16, 12, 8], "dropout": 0.25,
                              "l2_last": 1e-3}})["model"]
    keras.utils.set_random_seed(0)
    keras_lstm, stepped = build_model(cfg), build_model(cfg)
    stepped.set_weights(keras_lstm.get_weights())
    for model in (keras_lstm, stepped):
        unroll_for_training(model)
    assert step_layers_together(stepped)
    drops = [[layer for layer in m.layers if isinstance(layer, keras.layers.Dropout)]
             for m in (keras_lstm, stepped)]
    for a, b in zip(*drops, strict=True):
        b.seed_generator.state.assign(a.seed_generator.state)
    x = np.random.default_rng(0).random((8, 28, 28), dtype=np.float32)

    def gradients(model):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = tf.reduce_sum(out * np.arange(10, dtype=np.float32)) + sum(model.losses)
        return np.asarray(out), tape.gradient(loss, model.trainable_variables)

    (expected, keras_grads), (out, grads) = gradients(keras_lstm), gradients(stepped)
    np.testing.assert_array_equal(out, expected)
    for g, k in zip(grads, keras_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(k), atol=1e-6)
    assert not np.array_equal(out, np.asarray(stepped(x, training=False)))  # dropout on
    # Inference: one loop over the rows for the whole stack, Keras's outputs exactly,
    # eagerly and as the graph validation and the test score run.
    for call in (lambda m, v: m(v, training=False), tf.function(
            lambda m, v: m(v, training=False), reduce_retracing=True)):
        np.testing.assert_array_equal(np.asarray(call(stepped, x)),
                                      np.asarray(call(keras_lstm, x)))
    assert _while_loops(lambda v: keras_lstm(v, training=False), x) == 3
    assert _while_loops(lambda v: stepped(v, training=False), x) == 1
    assert _while_loops(lambda v: stepped(v, training=True), x) == 0
    two, stepped_two = (build_model({**cfg, "units": [16, 12]}) for _ in range(2))
    stepped_two.set_weights(two.get_weights())
    assert step_layers_together(stepped_two)  # 27 full turns: one left out of the loop
    np.testing.assert_array_equal(np.asarray(stepped_two(x, training=False)),
                                  np.asarray(two(x, training=False)))

    single = build_model({**cfg, "units": [16]})
    probe = build_lstm(cfg, probe=True)
    recurrent_dropout = build_model({**cfg, "recurrent_dropout": 0.1})
    for model in (single, probe, recurrent_dropout):
        call = model.call
        assert not step_layers_together(model) and model.call == call


@pytest.mark.parametrize("model_type", ["lstm", "mlp"])
def test_the_first_training_step_is_traced_once(model_type):
    """The optimizer's and the metrics' variables exist before fit, so tf.function does not
    trace the step a second time; the metrics start from nothing."""
    import keras

    from mnist_seq.train import compile_model

    cfg = validate({"model": {"type": model_type, **({"units": [16]} if model_type == "lstm"
                                                     else {})},
                    "train": {"batch_size": 16, "steps_per_execution": 2}})
    keras.utils.set_random_seed(0)
    model = compile_model(cfg, 32)
    assert model.optimizer.built and all(not np.any(v.numpy()) for m in model.metrics
                                         for v in m.variables)
    traces, step = [], model.train_step

    def counted(data):
        traces.append(1)  # Python runs only while tracing
        return step(data)

    model.train_step = counted
    x = np.random.default_rng(0).random((32, 28, 28), dtype=np.float32)
    model.fit(x, np.arange(32) % 10, batch_size=16, epochs=2, verbose=0)
    assert len(traces) == 1


def test_pixel_batches_scale_and_reshuffle_every_epoch():
    """Each epoch yields every image once, scaled exactly as `data.to_float`, in a new
    order; the labels travel with their images."""
    from mnist_seq import tf_speed
    from mnist_seq.data import to_float

    pixels = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    labels = np.arange(50)  # a label per image, to follow each one
    batches = tf_speed.pixel_batches(pixels, labels, 16, seed=0)
    orders = []
    for _ in range(2):
        xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in batches], strict=True)
        assert [len(b) for b in ys] == [16, 16, 16, 2]
        x, y = np.concatenate(xs), np.concatenate(ys)
        assert x.dtype == np.float32 and sorted(y) == list(range(50))
        np.testing.assert_array_equal(x, to_float(pixels[y]))
        orders.append(list(y))
    assert orders[0] != orders[1] and orders[0] != list(range(50))
    # No autotuner thread, whose sleep the iterator's teardown would wait out.
    assert batches.options().autotune.enabled is False
    # The batch size is known to the traced step where the batches are all whole.
    assert batches.element_spec[0].shape.as_list() == [None, 28, 28]
    whole = tf_speed.pixel_batches(pixels[:48], labels[:48], 16, seed=0)
    assert whole.element_spec[0].shape.as_list() == [16, 28, 28]
    assert sorted(np.concatenate([y.numpy() for _, y in whole])) == list(range(48))


def test_optimizers_without_a_fused_op_are_left_alone():
    import keras

    from mnist_seq import tf_speed

    opt = keras.optimizers.SGD(learning_rate=0.1)
    assert tf_speed.fuse_optimizer_updates(opt, []) is False
    assert "update_step" not in vars(opt)
    opt = keras.optimizers.Adam(amsgrad=True)
    assert tf_speed.fuse_optimizer_updates(opt, []) is False


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop"])
def test_the_keras_internals_fused_updates_read_are_there(name):
    """Fails when a Keras release renames or reshapes the optimizer slots: then
    fuse_optimizer_updates falls back to Keras's own updates, and this says why."""
    import keras

    from mnist_seq import tf_speed

    variables = [keras.Variable(np.zeros((3, 2), "float32")),
                 keras.Variable(np.zeros(5, "float32"))]
    opt = getattr(keras.optimizers, name)()
    opt.build(variables)
    assert tf_speed.keras_internals_present(opt), f"keras {keras.__version__} changed {name}"
    slots = ["_velocities"] + (["_momentums"] if name != "RMSprop" else [])
    for i, v in enumerate(variables):
        assert opt._get_variable_index(v) == i
        for slot in slots:
            held = getattr(opt, slot)[i]
            assert tuple(held.shape) == tuple(v.shape) and held.value.handle.dtype == "resource"
    # One-call epochs call the public train_step and get_metrics_result of a model.
    assert callable(keras.Model.train_step) and callable(keras.Model.get_metrics_result)


def test_a_changed_keras_surface_means_plain_keras_updates():
    import keras

    from mnist_seq import tf_speed

    class Renamed(keras.optimizers.Adam):
        """As if a Keras release had renamed the second-moment slots."""

        def build(self, variables):
            super().build(variables)
            self._second_moments = self.__dict__.pop("_velocities")

    opt = Renamed()
    assert tf_speed.fuse_optimizer_updates(opt, [keras.Variable(np.zeros(3, "float32"))]) \
        is False
    assert "update_step" not in vars(opt)


def test_op_threads_are_fixed_once_tensorflow_runs():
    # A fresh process: in this one, earlier tests may have started TensorFlow already.
    code = """
import tensorflow as tf
from mnist_seq import backend, tf_speed
from mnist_seq.options import RuntimeOptions
backend.setup(RuntimeOptions(device="cpu"))
print(tf_speed.set_op_threads(1, 2))
tf.constant(1.0) + 1  # the runtime starts with the first op
print(tf_speed.set_op_threads(1, 2), tf_speed.set_op_threads(2, 2))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True", "False"]


def _train_twice(between: str) -> list[str]:
    """In a fresh process (the rewrite options hold for the whole process): train a
    2-layer LSTM a few steps as the plan trains it on a CPU, run `between` (Python),
    train it again from the same seed. Returns the Grappler passes then off, and how
    far apart the two runs' weights are."""
    code = f"""
import numpy as np, tensorflow as tf
from mnist_seq import backend, tf_speed
from mnist_seq.options import RuntimeOptions
backend.setup(RuntimeOptions(device="cpu"))
import keras
from mnist_seq.models import build_model
from mnist_seq.config import validate
from mnist_seq.lstm_rows import step_layers_together
rng = np.random.default_rng(0)
x, y = rng.random((96, 28, 28), dtype=np.float32), rng.integers(0, 10, 96)
def trained():
    keras.utils.set_random_seed(0)
    model = build_model(validate({{"model": {{"type": "lstm", "units": [16, 16]}}}})["model"])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    tf_speed.unroll_for_training(model)
    assert step_layers_together(model, "tensorflow")  # the plan's way for stacked LSTMs
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False)
    return np.concatenate([np.ravel(w) for w in model.get_weights()])
before = trained()
{between}
options = tf.config.optimizer.get_experimental_options()
print(sorted(k for k, v in options.items() if v is False and not k.startswith("disable_")))
print(float(np.abs(trained() - before).max()))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.splitlines()[-2:]


def test_the_idle_rewrites_off_train_to_the_same_weights_bit_for_bit():
    from mnist_seq.tf_speed import IDLE_REWRITES

    names, diff = _train_twice("tf_speed.rewrites_off(tf_speed.IDLE_REWRITES)")
    assert names == str(sorted(IDLE_REWRITES))
    assert float(diff) == 0.0


def test_light_rewrites_turn_the_heavy_passes_off_and_keep_the_arithmetic_close():
    from mnist_seq.tf_speed import HEAVY_REWRITES

    names, diff = _train_twice("tf_speed.rewrites_off()")
    assert names == str(sorted(HEAVY_REWRITES))
    assert float(diff) < 1e-5


def test_a_cnn_trains_with_onednn_capped_at_avx2(data_dir, tmp_path):
    # On a CPU with bfloat16 units and oneDNN capped at AVX2 (as an AVX2-only CPU has
    # it), bfloat16 convolutions failed to build: the plan must train them in float32.
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run(
        [sys.executable, "-m", "mnist_seq", "train", "--model", "cnn-fast", "--epochs", "1",
         "--max-train-samples", "300", "--max-test-samples", "200", "--data-dir",
         str(data_dir), "--run-dir", str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "precision float32" in out.stdout
    assert "oneDNN on up to AVX2 (ONEDNN_MAX_CPU_ISA)" in out.stdout
    assert (tmp_path / "run" / "metrics.json").is_file()
