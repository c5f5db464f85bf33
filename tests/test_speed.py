"""Speed settings that change how training computes must not change what it computes."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_seq.config import validate


def _train(cfg, fused: bool):
    import keras

    from mnist_seq import backend
    from mnist_seq.train import compile_model

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 28, 28), dtype="float32"), np.arange(64) % 10
    keras.utils.set_random_seed(0)
    model = compile_model(cfg, len(x))
    if fused:
        assert backend.fuse_optimizer_updates(model.optimizer, model.trainable_variables)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    return model.get_weights() + [v.numpy() for v in model.optimizer.variables]


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
    plain, fused = _train(cfg, fused=False), _train(cfg, fused=True)
    assert len(plain) == len(fused)  # the same weights and optimizer state, nothing added
    for a, b in zip(plain, fused, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # The updates did move the weights: equal because the arithmetic is, not because idle.
    init = _initial_weights(cfg)
    assert any(not np.allclose(a, b) for a, b in zip(plain[:len(init)], init, strict=True))


def _initial_weights(cfg):
    import keras

    from mnist_seq.train import compile_model

    keras.utils.set_random_seed(0)
    return compile_model(cfg, 64).get_weights()


def test_optimizers_without_a_fused_op_are_left_alone():
    import keras

    from mnist_seq import backend

    backend.setup("cpu")
    opt = keras.optimizers.SGD(learning_rate=0.1)
    assert backend.fuse_optimizer_updates(opt, []) is False
    assert "update_step" not in vars(opt)
    opt = keras.optimizers.Adam(amsgrad=True)
    assert backend.fuse_optimizer_updates(opt, []) is False


@pytest.mark.parametrize(("model_type", "on_gpu", "fused"), [
    ("mlp", False, True), ("mlp", True, False), ("cnn", False, False), ("lstm", False, False),
])
def test_only_the_mlp_fuses_its_updates_and_only_on_a_cpu(model_type, on_gpu, fused):
    from mnist_seq.train import speed_settings

    speed = speed_settings(validate({"model": {"type": model_type}}), on_gpu=on_gpu)
    assert speed["fuse_updates"] is fused
