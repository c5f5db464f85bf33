"""Every bundled config builds a model that maps (N, 28, 28) to (N, 10) probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_seq.config import bundled_configs, load_config

# Parameter counts worked out by hand from the seed architectures.
LSTM_3X128 = 4 * (128 * (28 + 128) + 128) + 2 * 4 * (128 * 256 + 128) + (128 * 10 + 10)
LENET = (5 * 5 * 20 + 20) + (5 * 5 * 20 * 50 + 50) + (7 * 7 * 50 * 500 + 500) + (500 * 10 + 10)
MLP = (784 * 512 + 512) + (512 * 10 + 10)


@pytest.mark.parametrize("name", sorted(bundled_configs()))
def test_bundled_config_builds_and_predicts(name):
    from mnist_seq import backend
    from mnist_seq.options import RuntimeOptions

    backend.setup(RuntimeOptions(device="cpu"))
    from mnist_seq.models import build_model

    model = build_model(load_config(name)["model"])
    out = np.asarray(model(np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)))
    assert out.shape == (3, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    expected = {"lstm": LSTM_3X128, "cnn": LENET, "mlp": MLP}.get(name)
    if expected is not None:
        assert model.count_params() == expected


def test_lstm_reads_rows_as_timesteps():
    from mnist_seq import backend
    from mnist_seq.options import RuntimeOptions

    backend.setup(RuntimeOptions(device="cpu"))
    from mnist_seq.models import build_model

    model = build_model(load_config("lstm")["model"])
    lstms = [layer for layer in model.layers if layer.__class__.__name__ == "LSTM"]
    assert [tuple(layer.output.shape) for layer in lstms] == [(None, 28, 128), (None, 28, 128),
                                                               (None, 128)]
    assert lstms[-1].kernel_regularizer is not None and lstms[0].kernel_regularizer is None


def test_every_model_type_has_its_row_in_the_table():
    from mnist_seq.kinds import KINDS
    from mnist_seq.models import BUILDERS, MODEL_DEFAULTS

    assert set(KINDS) == set(BUILDERS) == set(MODEL_DEFAULTS)
    for name, kind in KINDS.items():
        assert (kind.reader is None) == (kind.card is None), name
        assert callable(kind.pictures), name
