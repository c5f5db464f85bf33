"""Configs: bundled YAML files, user files, `--set` overrides and strict validation.

A config has three sections: `model` (its keys depend on `model.type`), `train`
and `data`. Every key has a default here or in the model registry, so an unknown
key is always an error (with a did-you-mean), never silently ignored.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from mnist_seq.errors import ConfigError, first_line
from mnist_seq.models import MODEL_DEFAULTS

TRAIN_DEFAULTS: dict[str, Any] = {
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "lr_schedule": "constant",  # cosine: decay to 0; onecycle: warm up 30%, then decay to 0
    "batch_size": 128,
    "epochs": 10,
    "validation_fraction": 0.1,
    "seed": 0,
    "deterministic": False,  # TensorFlow op determinism: identical reruns, a little slower
    "steps_per_execution": 64,  # batches per compiled call (an MLP on a CPU: a whole epoch)
    "precision": "auto",  # auto: bfloat16 compute for CNNs on CPUs with bf16 units
    "xla": "auto",  # auto: off on CPUs, Keras's choice on GPUs (see speed.choose_xla)
    # Keep the network as it learns (snapshots.py): off costs nothing; on, a CNN or MLP
    # trains one step per call, so each named batch can be seen.
    "snapshots": False,
}
DATA_DEFAULTS: dict[str, Any] = {
    "dir": None,  # folder with the IDX files or mnist.npz; None = env var or Keras cache
    "max_train_samples": None,  # train on a slice (smoke runs, tests)
    "max_test_samples": None,
}

# Keys whose default is None need their type spelt out.
NULLABLE_TYPES: dict[str, type] = {
    "data.dir": str,
    "data.max_train_samples": int,
    "data.max_test_samples": int,
}

# train.optimizer names and the Keras classes they stand for.
OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "sgd": "SGD"}

CHOICES: dict[str, tuple[str, ...]] = {
    "train.optimizer": tuple(OPTIMIZERS),
    "train.lr_schedule": ("constant", "cosine", "onecycle"),
    "train.precision": ("auto", "float32", "mixed_bfloat16", "mixed_float16"),
    "train.xla": ("auto", "enabled", "disabled"),
    "model.padding": ("same", "valid"),
    "model.conv.padding": ("same", "valid"),
    "model.activation": ("relu", "tanh", "sigmoid", "elu", "gelu", "selu", "swish"),
}

# (test, what is expected) per key; list elements are checked against the list's key.
RANGES: dict[str, tuple[Any, str]] = {
    "train.learning_rate": (lambda v: v > 0, "a number > 0"),
    "train.batch_size": (lambda v: v > 0, "an integer > 0"),
    "train.epochs": (lambda v: v > 0, "an integer > 0"),
    "train.validation_fraction": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "train.seed": (lambda v: v >= 0, "an integer >= 0"),
    "train.steps_per_execution": (lambda v: v >= 1, "an integer >= 1"),
    "data.max_train_samples": (lambda v: v > 0, "an integer > 0"),
    "data.max_test_samples": (lambda v: v > 0, "an integer > 0"),
    "model.dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "model.recurrent_dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "model.l2_last": (lambda v: v >= 0, "a number >= 0"),
    "model.units": (lambda v: v > 0, "integers > 0"),
    "model.hidden": (lambda v: v > 0, "integers > 0"),
    "model.dense": (lambda v: v > 0, "integers > 0"),
    "model.conv.filters": (lambda v: v > 0, "an integer > 0"),
    "model.conv.kernel": (lambda v: v > 0, "an integer > 0"),
    "model.conv.pool": (lambda v: v >= 1, "an integer >= 1 (1 = no pooling)"),
    "model.augment.rotation": (lambda v: 0 <= v <= 0.5, "a number in [0, 0.5]"),
    "model.augment.shift": (lambda v: 0 <= v <= 0.5, "a number in [0, 0.5]"),
    "model.augment.zoom": (lambda v: 0 <= v <= 0.5, "a number in [0, 0.5]"),
}


def configs_dir() -> Path:
    """The folder of bundled configs: inside the installed package, or the repo's configs/."""
    installed = Path(__file__).parent / "configs"
    return installed if installed.is_dir() else Path(__file__).parent.parent / "configs"


def bundled_configs() -> dict[str, Path]:
    """Bundled config files by name (file stem)."""
    return {p.stem: p for p in sorted(configs_dir().glob("*.yaml"))}


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """A ' Did you mean 'x'?' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with `yaml.safe_load`, turning every failure into a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e.__class__.__name__}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or first_line(e)
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        # Every key has a default, but a run of nothing but defaults from an empty file
        # is far more likely a wrong or unsaved file than a wish.
        raise ConfigError(f"{path}: the config file is empty (no settings, only comments "
                          "or blank lines); expected sections model/train/data")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping with sections model/train/data, "
            f"got a {type(data).__name__}"
        )
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """Parse one `--set key.sub=value`; the value is read as YAML (numbers, lists, null)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (for example train.epochs=3), got '{item}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not valid YAML: take it as a plain string
    return key, value


def apply_override(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a nested dict, creating sections as needed."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def load_config(
    name: str | None = None,
    path: str | Path | None = None,
    overrides: Iterable[tuple[str, Any]] = (),
) -> dict[str, Any]:
    """Load a bundled config by name or a user file, apply overrides, validate.

    Returns the full resolved config, every key present.
    """
    if name is not None and path is not None:
        raise ConfigError("give either --model NAME or --config FILE, not both")
    if path is None:
        available = bundled_configs()
        name = name or "lstm"
        if name not in available:
            raise ConfigError(
                f"unknown model '{name}'.{did_you_mean(name, available)} "
                f"Available: {', '.join(available)}"
            )
        path = available[name]
    raw = copy.deepcopy(read_yaml(path))
    for key, value in overrides:
        apply_override(raw, key, value)
    return validate(raw)


def defaults_for(model_type: str) -> dict[str, Any]:
    """The full default config for a model type."""
    return {
        "model": {"type": model_type, **copy.deepcopy(MODEL_DEFAULTS[model_type])},
        "train": dict(TRAIN_DEFAULTS),
        "data": dict(DATA_DEFAULTS),
    }


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Check a raw config against the defaults and return it merged onto them."""
    model = raw.get("model")
    model_type = model.get("type", "lstm") if isinstance(model, dict) else "lstm"
    if model_type not in MODEL_DEFAULTS:
        raise ConfigError(
            f"model.type: unknown model type {model_type!r}."
            f"{did_you_mean(str(model_type), MODEL_DEFAULTS)} "
            f"Expected one of: {', '.join(MODEL_DEFAULTS)}"
        )
    return _merge(defaults_for(model_type), raw, "")


def _merge(default: dict[str, Any], given: Any, path: str) -> dict[str, Any]:
    if not isinstance(given, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {_describe(given)}")
    out = copy.deepcopy(default)
    for key, value in given.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in default:
            raise ConfigError(
                f"unknown config key '{key_path}'.{did_you_mean(str(key), default)} "
                f"Allowed here: {', '.join(default)}"
            )
        out[key] = _check(default[key], value, key_path)
    return out


def _check(default: Any, value: Any, path: str) -> Any:
    """Type- and range-check one value against its default; return it normalised."""
    if isinstance(default, dict):
        return _merge(default, value, path)
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {_describe(value)}")
        # Each element follows the shape of the default's first element.
        return [_check(default[0], v, path) for v in value]
    expected = NULLABLE_TYPES.get(path, type(default))
    if value is None and path in NULLABLE_TYPES:
        return None
    value = _coerce(value, expected, path)
    if path in CHOICES and value not in CHOICES[path]:
        raise ConfigError(
            f"{path}: got {value!r}.{did_you_mean(str(value), CHOICES[path])} "
            f"Expected one of: {', '.join(CHOICES[path])}"
        )
    if path in RANGES:
        test, what = RANGES[path]
        if not test(value):
            raise ConfigError(f"{path}: got {value!r}, expected {what}")
    return value


def _coerce(value: Any, expected: type, path: str) -> Any:
    # bool is an int in Python; a YAML `true` for an epoch count is a mistake.
    if expected is float and not isinstance(value, bool):
        if isinstance(value, int | float):
            return float(value)
        # PyYAML reads `1e-4` (no dot) as a string; accept what float() reads.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool):
        return value
    name = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}
    what = (f"one of: {', '.join(CHOICES[path])}" if path in CHOICES
            else name.get(expected, expected.__name__))
    raise ConfigError(f"{path}: expected {what}, got {_describe(value)}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, lists of numbers inline: `units: [128, 128]`."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flat = all(not isinstance(x, dict | list) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


def dump_config(config: dict[str, Any]) -> str:
    """The config as YAML text, keys in their natural order."""
    return yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
