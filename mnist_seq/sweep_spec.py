"""Sweep specs: which config to start from, what to fix, what to search, validated as
strictly as a config.

    base: mlp                  # a bundled config name or a config file
    trials: 20
    seed: 0                    # the sampler's seed (optional)
    set:                       # fixed overrides for every trial
      train.epochs: 3
    search:                    # or grid: {KEY: [VALUE, ...]} to try every combination
      train.learning_rate: {log_uniform: [1.0e-4, 1.0e-2]}
      model.dropout: {uniform: [0.0, 0.5]}
      model.hidden: {choice: [[128], [256], [512]]}
      train.batch_size: {int: [64, 256], step: 64}

Every value a trial can get is checked against the config's own rules before the
first trial starts, so a wrong type or range fails at once, not in trial 7.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_seq.config import apply_override, bundled_configs, did_you_mean, read_yaml, validate
from mnist_seq.errors import ConfigError

SPEC_KEYS = ("base", "trials", "seed", "set", "search", "grid")
# Distribution name -> the extra keys it takes besides its range or choices.
DISTRIBUTIONS = {"uniform": (), "log_uniform": (), "int": ("step", "log"), "choice": ()}


@dataclass(frozen=True)
class Param:
    """One searched config key. `choices` (choice and grid) are the config values; Optuna
    sees them as `labels`, since it only stores numbers, strings, booleans and None."""

    key: str
    kind: str  # uniform, log_uniform, int, choice
    low: float | int | None = None
    high: float | int | None = None
    step: int = 1
    log: bool = False
    choices: tuple = ()

    @property
    def labels(self) -> tuple:
        return tuple(_label(c) for c in self.choices)

    def value(self, sampled: Any) -> Any:
        """The config value for what Optuna sampled."""
        if self.kind == "choice":
            return self.choices[self.labels.index(sampled)]
        return sampled

    def describe(self, value: Any) -> str:
        if isinstance(value, float):
            return f"{self.key}={value:.3g}"
        return f"{self.key}={json.dumps(value)}"


@dataclass(frozen=True)
class SweepSpec:
    path: Path
    base: str  # as written: a bundled name or a file
    base_raw: dict[str, Any]  # the base config as read, before overrides
    trials: int
    seed: int | None
    fixed: dict[str, Any]
    params: tuple[Param, ...]
    grid: bool

    def config(self, values: dict[str, Any]) -> dict[str, Any]:
        """The validated config of one trial: base, then `set`, then the trial's values."""
        raw = copy.deepcopy(self.base_raw)
        for key, value in {**self.fixed, **values}.items():
            apply_override(raw, key, value)
        return validate(raw)

    def values(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """A trial's config values from what Optuna sampled (its `params`)."""
        return {p.key: p.value(sampled[p.key]) for p in self.params}

    def as_dict(self) -> dict[str, Any]:
        """What makes two specs the same sweep (the base as read, not its file name), as
        plain JSON values, so that it compares equal to a copy read back from JSON."""
        return json.loads(json.dumps(
            {"base": self.base_raw, "trials": self.trials, "seed": self.seed,
             "set": self.fixed, "grid": self.grid,
             "params": [[p.key, p.kind, p.low, p.high, p.step, p.log, list(p.choices)]
                        for p in self.params]}))


def _label(value: Any) -> Any:
    return value if value is None or isinstance(value, bool | int | float | str) else (
        json.dumps(value))


def read_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec; every mistake is a ConfigError naming the spec key."""
    path = Path(path)
    raw = read_yaml(path)
    for key in raw:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{path}: unknown sweep spec key '{key}'."
                              f"{did_you_mean(str(key), SPEC_KEYS)} Allowed: "
                              f"{', '.join(SPEC_KEYS)}")
    if "base" not in raw:
        raise ConfigError(f"{path}: 'base' is missing: a bundled config name "
                          f"({', '.join(bundled_configs())}) or a config file")
    base = raw["base"]
    base_raw = _read_base(path, base)
    if ("search" in raw) == ("grid" in raw):
        raise ConfigError(f"{path}: give either 'search' (distributions) or 'grid' "
                          "(lists of values), not both and not neither")
    fixed = _mapping(path, raw, "set")
    grid = "grid" in raw
    section = _mapping(path, raw, "grid" if grid else "search")
    if not section:
        raise ConfigError(f"{path}: '{'grid' if grid else 'search'}' is empty: name at least "
                          "one config key to vary")
    params = tuple((_grid_param if grid else _search_param)(path, k, v)
                   for k, v in section.items())
    for key in fixed:
        if key in section:
            raise ConfigError(f"{path}: '{key}' is both fixed (set) and varied")
    size = math.prod(len(p.choices) for p in params) if grid else None
    trials = raw.get("trials", size)
    if trials is None:
        raise ConfigError(f"{path}: 'trials' is missing: how many trials to run")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"{path}: trials: expected an integer >= 1, got {trials!r}")
    if grid and trials > size:
        raise ConfigError(f"{path}: trials: {trials} is more than the grid's {size} "
                          "combinations")
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"{path}: seed: expected an integer >= 0, got {seed!r}")
    spec = SweepSpec(path, str(base), base_raw, trials, seed, fixed, params, grid)
    _check_values(spec)
    return spec


def _read_base(path: Path, base: Any) -> dict[str, Any]:
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: expected a config name or file, got {base!r}")
    bundled = bundled_configs()
    if base in bundled:
        return read_yaml(bundled[base])
    file = (path.parent / base) if not Path(base).is_absolute() else Path(base)
    if file.suffix in (".yaml", ".yml") or file.exists():
        raw = read_yaml(file)
        validate(raw)  # the base must be a valid config by itself
        return raw
    raise ConfigError(f"{path}: base: '{base}' is neither a bundled config "
                      f"({', '.join(bundled)}) nor a config file.{did_you_mean(base, bundled)}")


def _mapping(path: Path, raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key}: expected a mapping of config keys, got "
                          f"{type(value).__name__} {value!r}")
    return value


def _search_param(path: Path, key: str, dist: Any) -> Param:
    where = f"{path}: search.{key}"
    if not isinstance(dist, dict) or not dist:
        raise ConfigError(f"{where}: expected a distribution such as {{uniform: [0.0, 0.5]}}, "
                          f"got {dist!r}")
    kinds = [k for k in dist if k in DISTRIBUTIONS]
    if len(kinds) != 1:
        unknown = next((k for k in dist if k not in DISTRIBUTIONS), None)
        hint = did_you_mean(str(unknown), DISTRIBUTIONS) if unknown is not None else ""
        raise ConfigError(f"{where}: expected exactly one distribution of "
                          f"{', '.join(DISTRIBUTIONS)}, got {', '.join(map(str, dist))}.{hint}")
    kind = kinds[0]
    for extra in dist:
        if extra != kind and extra not in DISTRIBUTIONS[kind]:
            raise ConfigError(f"{where}: '{extra}' does not go with {kind}"
                              + (f" (allowed: {', '.join(DISTRIBUTIONS[kind])})"
                                 if DISTRIBUTIONS[kind] else ""))
    if kind == "choice":
        choices = dist[kind]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choice: expected a non-empty list, got {choices!r}")
        return Param(key, kind, choices=tuple(choices))
    bounds = dist[kind]
    number = int if kind == "int" else (int, float)
    if (not isinstance(bounds, list) or len(bounds) != 2
            or any(isinstance(b, bool) or not isinstance(b, number) for b in bounds)):
        what = "integers" if kind == "int" else "numbers"
        raise ConfigError(f"{where}: {kind}: expected [low, high], two {what}, got {bounds!r}")
    low, high = bounds
    if low >= high:
        raise ConfigError(f"{where}: {kind}: empty or reversed range [{low}, {high}]: "
                          "expected low < high")
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"{where}: log_uniform: the range must be above 0, got [{low}, "
                          f"{high}]")
    step, log = dist.get("step", 1), dist.get("log", False)
    if kind == "int":
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ConfigError(f"{where}: step: expected an integer >= 1, got {step!r}")
        if (high - low) % step:
            raise ConfigError(f"{where}: step: {step} does not divide the range [{low}, {high}]")
        if not isinstance(log, bool) or (log and (step != 1 or low < 1)):
            raise ConfigError(f"{where}: log: expected true or false, and with true a range "
                              "from 1 up and no step")
        return Param(key, kind, low, high, step=step, log=log)
    return Param(key, kind, float(low), float(high), log=kind == "log_uniform")


def _grid_param(path: Path, key: str, values: Any) -> Param:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{path}: grid.{key}: expected a non-empty list of values, got "
                          f"{values!r}")
    return Param(key, "choice", choices=tuple(values))


def _check_values(spec: SweepSpec) -> None:
    """Build the config with `set` and each extreme or choice of every parameter."""
    try:
        spec.config({})
    except ConfigError as e:
        raise ConfigError(f"{spec.path}: set: {e}") from None
    for p in spec.params:
        candidates = p.choices if p.kind == "choice" else (p.low, p.high)
        for value in candidates:
            try:
                spec.config({p.key: value})
            except ConfigError as e:
                section = "grid" if spec.grid else "search"
                raise ConfigError(f"{spec.path}: {section}.{p.key}: {e}") from None

