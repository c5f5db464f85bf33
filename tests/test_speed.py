"""Speed settings that change how training computes must not change what it computes."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_seq.config import validate


def _train(cfg, fused: bool = False, one_call: bool = False):
    import keras

    from mnist_seq import backend
    from mnist_seq.train import compile_model

    rng = np.random.default_rng(0)
    # 60 samples: three batches of 16 and a last one of 12.
    x, y = rng.random((60, 28, 28), dtype="float32"), np.arange(60) % 10
    keras.utils.set_random_seed(0)
    model = compile_model(cfg, len(x))
    if fused:
        assert backend.fuse_optimizer_updates(model.optimizer, model.trainable_variables)
    data = {"x": x, "y": y, "batch_size": 16}
    if one_call:
        data = {"x": backend.epochs_in_one_call(model, x, y, 16, seed=0)}
    history = model.fit(**data, epochs=2, verbose=0, shuffle=False).history
    return model.get_weights() + [v.numpy() for v in model.optimizer.variables], history


@pytest.mark.parametrize(("model_type", "optimizer", "schedule"), [
    ("mlp", "rmsprop", "constant"),
    ("mlp", "adam", "cosine"),
    ("cnn", "adamw", "onecycle"),
])
def test_fused_optimizer_updates_match_keras(model_type, optimizer, schedule):
    from mnist_seq import backend

    backend.setup("cpu")
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

    from mnist_seq import backend

    backend.setup("cpu")
    cfg = validate({"model": {"type": "mlp"}, "train": {"epochs": 2, "batch_size": 16}})
    plain, plain_history = _train(cfg)
    monkeypatch.setattr(keras.random, "shuffle", lambda x, seed=None: x)
    one_call, one_call_history = _train(cfg, one_call=True)
    assert len(plain) == len(one_call)
    for a, b in zip(plain, one_call, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert plain_history.keys() == one_call_history.keys()
    for key, values in plain_history.items():
        np.testing.assert_allclose(values, one_call_history[key], atol=1e-6)


def _initial_weights(cfg):
    import keras

    from mnist_seq.train import compile_model

    keras.utils.set_random_seed(0)
    return compile_model(cfg, 60).get_weights()


def test_optimizers_without_a_fused_op_are_left_alone():
    import keras

    from mnist_seq import backend

    backend.setup("cpu")
    opt = keras.optimizers.SGD(learning_rate=0.1)
    assert backend.fuse_optimizer_updates(opt, []) is False
    assert "update_step" not in vars(opt)
    opt = keras.optimizers.Adam(amsgrad=True)
    assert backend.fuse_optimizer_updates(opt, []) is False


@pytest.mark.parametrize(("model_type", "on_gpu", "fused", "one_call"), [
    ("mlp", False, True, True), ("mlp", True, False, False), ("cnn", False, True, False),
    ("cnn", True, False, False), ("lstm", False, False, False),
])
def test_small_step_settings_go_where_they_paid_on_a_cpu(model_type, on_gpu, fused, one_call):
    from mnist_seq.train import speed_settings

    speed = speed_settings(validate({"model": {"type": model_type}}), on_gpu=on_gpu)
    assert speed["fuse_updates"] is fused and speed["one_call_epochs"] is one_call
    assert ("each epoch in one call" in speed["line"]) is one_call
    assert ("64 steps per execution" in speed["line"]) is not one_call
