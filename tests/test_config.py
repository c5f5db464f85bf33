"""Configs: bundled files hold the seed settings; overrides; every error names the key."""

from __future__ import annotations

import pytest

from mnist_seq.config import (
    bundled_configs,
    dump_config,
    load_config,
    parse_override,
    read_yaml,
    validate,
)
from mnist_seq.errors import ConfigError


def test_bundled_configs_hold_the_seed_settings():
    assert set(bundled_configs()) >= {"lstm", "lstm-single", "cnn", "mlp"}
    lstm = load_config("lstm")
    assert lstm["model"] == {"type": "lstm", "units": [128, 128, 128], "dropout": 0.25,
                             "recurrent_dropout": 0.0, "l2_last": 1e-4}
    assert (lstm["train"]["batch_size"], lstm["train"]["epochs"]) == (100, 10)
    single = load_config("lstm-single")
    assert single["model"]["units"] == [128]
    assert (single["train"]["batch_size"], single["train"]["epochs"]) == (128, 10)
    # Peak of the one-cycle schedule the config adds to the seed's Adam.
    assert (single["train"]["learning_rate"], single["train"]["lr_schedule"]) == (2e-3, "onecycle")
    cnn = load_config("cnn")
    assert [(c["filters"], c["kernel"], c["padding"], c["pool"]) for c in cnn["model"]["conv"]] \
        == [(20, 5, "same", 2), (50, 5, "same", 2)]
    assert cnn["model"]["dense"] == [500]
    assert (cnn["train"]["batch_size"], cnn["train"]["epochs"],
            cnn["train"]["validation_fraction"]) == (128, 12, 0.2)
    mlp = load_config("mlp")
    assert mlp["model"]["hidden"] == [512] and mlp["train"]["optimizer"] == "rmsprop"
    assert (mlp["train"]["batch_size"], mlp["train"]["epochs"]) == (128, 5)
    for cfg in (lstm, single, cnn):
        assert cfg["train"]["optimizer"] == "adam"


def test_overrides_reach_nested_keys_and_lists():
    cfg = load_config("cnn", overrides=[parse_override("train.epochs=3"),
                                        parse_override("model.dense=[64, 32]"),
                                        parse_override("data.dir=/some/where"),
                                        parse_override("train.learning_rate=1e-4")])
    assert cfg["train"]["epochs"] == 3 and cfg["model"]["dense"] == [64, 32]
    assert cfg["data"]["dir"] == "/some/where"
    assert cfg["train"]["learning_rate"] == pytest.approx(1e-4)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("lstm", overrides=[parse_override("train.epochs=2")])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path=path) == cfg


def test_user_file_merges_onto_defaults(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  type: mlp\n  hidden: [64]\ntrain:\n  epochs: 2\n")
    cfg = load_config(path=path)
    assert cfg["model"]["hidden"] == [64] and cfg["train"]["epochs"] == 2
    assert cfg["train"]["batch_size"] == 128 and cfg["data"]["max_train_samples"] is None


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"epoch": 3}}, r"unknown config key 'train.epoch'. Did you mean 'epochs'\?"),
        ({"trian": {}}, r"unknown config key 'trian'. Did you mean 'train'\?"),
        ({"model": {"type": "lstm", "unit": [3]}}, r"'model.unit'. Did you mean 'units'\?"),
        ({"model": {"type": "cnn", "conv": [{"filter": 3}]}},
         r"'model.conv.filter'. Did you mean 'filters'\?"),
        ({"model": {"type": "lsmt"}}, r"unknown model type 'lsmt'. Did you mean 'lstm'\?"),
        ({"train": {"epochs": "ten"}}, r"train.epochs: expected an integer, got str 'ten'"),
        ({"train": {"epochs": True}}, r"train.epochs: expected an integer, got bool True"),
        ({"train": {"epochs": 2.5}}, r"train.epochs: expected an integer, got float 2.5"),
        ({"train": {"learning_rate": "fast"}}, r"train.learning_rate: expected a number"),
        ({"model": {"type": "lstm", "units": 128}}, r"model.units: expected a list, got int"),
        ({"train": {"epochs": 0}}, r"train.epochs: got 0, expected an integer > 0"),
        ({"train": {"batch_size": 0}}, r"train.batch_size: got 0, expected an integer > 0"),
        ({"model": {"type": "lstm", "dropout": 1.0}}, r"model.dropout: got 1.0, expected a "
                                                      r"number in \[0, 1\)"),
        ({"train": {"validation_fraction": 1}}, r"validation_fraction: got 1.0, expected a "
                                                r"number in \(0, 1\)"),
        ({"train": {"validation_fraction": 0}}, r"validation_fraction: got 0.0"),
        ({"train": {"optimizer": "adma"}}, r"train.optimizer: got 'adma'. Did you mean 'adam'\?"),
        ({"model": {"type": "lstm", "units": [128, -1]}}, r"model.units: got -1"),
        ({"train": 5}, r"train: expected a mapping, got int 5"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(raw, message):
    with pytest.raises(ConfigError, match=message):
        validate(raw)


def test_unknown_bundled_model_suggests_a_name():
    with pytest.raises(ConfigError, match=r"unknown model 'lstm-singel'. Did you mean "
                                          r"'lstm-single'\? Available: .*mlp"):
        load_config("lstm-singel")


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(path=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  type: lstm\n  units: [128, 128\ntrain: {}\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+, column \d+"):
        read_yaml(bad)
    for empty in ("", "# only a comment\n\n"):
        bad.write_text(empty)
        with pytest.raises(ConfigError, match=r"bad.yaml: the config file is empty"):
            load_config(path=bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping with sections"):
        read_yaml(bad)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="'epochs' is a value, not a section"):
        load_config("mlp", overrides=[("train.epochs.x", 1)])


def test_fast_recipes_and_new_keys_validate():
    best = load_config("cnn-best")
    assert best["model"]["batch_norm"] is True
    assert best["model"]["augment"] == {"rotation": 0.03, "shift": 0.1, "zoom": 0.1}
    assert load_config("cnn-fast")["train"]["lr_schedule"] == "onecycle"
    with pytest.raises(ConfigError, match=r"model.augment.rotation: got 0.9, expected a number "
                                          r"in \[0, 0.5\]"):
        validate({"model": {"type": "cnn", "augment": {"rotation": 0.9}}})
    with pytest.raises(ConfigError, match=r"'model.augment.rotate'. Did you mean 'rotation'"):
        validate({"model": {"type": "cnn", "augment": {"rotate": 0.1}}})
    with pytest.raises(ConfigError, match=r"train.precision: got 'bf16'"):
        validate({"train": {"precision": "bf16"}})
    with pytest.raises(ConfigError, match=r"steps_per_execution: got 0"):
        validate({"train": {"steps_per_execution": 0}})


def test_xla_setting_takes_only_its_choices():
    with pytest.raises(ConfigError, match=r"train.xla: got 'yes'"):
        validate({"train": {"xla": "yes"}})
    # YAML reads an unquoted yes/on as true: the message still lists the choices.
    with pytest.raises(ConfigError, match=r"train.xla: expected one of: auto, enabled, "
                                          r"disabled, got bool True"):
        validate({"train": {"xla": True}})
