"""Validated reading of configuration mappings (from TOML files or code).

Every error names where the value came from (file and key path), the value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


def key_path(where: str, key: str | int) -> str:
    """Join a location ("configs/devices/x.toml: current_model") and a key into one path."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    if not where:
        return str(key)
    separator = " " if where.endswith(":") else "."
    return f"{where}{separator}{key}"


def require_mapping(value: Any, where: str) -> Mapping[str, Any]:
    """Return value if it is a mapping (a TOML table), else raise naming where."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table (mapping), got {value!r}")
    return value


def reject_unknown_keys(config: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    """Raise if config holds keys that are not in allowed (catches typos in config files)."""
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed keys are {', '.join(map(repr, sorted(allowed)))}"
        )


def read_float(
    config: Mapping[str, Any],
    key: str,
    where: str,
    *,
    default: float | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> float:
    """Read a finite real number, optionally bounded; missing keys take default if given."""
    path = key_path(where, key)
    if key not in config:
        if default is None:
            raise ConfigError(f"{path}: required number is missing")
        return float(default)
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{path}: expected a finite number, got {value!r}")
    if minimum is not None:
        too_small = value <= minimum if exclusive_minimum else value < minimum
        if too_small:
            relation = ">" if exclusive_minimum else ">="
            raise ConfigError(f"{path}: {value!r} is out of range; allowed: {relation} {minimum!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{path}: {value!r} is out of range; allowed: <= {maximum!r}")
    return value


def read_int(
    config: Mapping[str, Any],
    key: str,
    where: str,
    *,
    default: int | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """Read an integer, optionally bounded; missing keys take default if given."""
    path = key_path(where, key)
    if key not in config:
        if default is None:
            raise ConfigError(f"{path}: required integer is missing")
        return int(default)
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{path}: {value!r} is out of range; allowed: >= {minimum!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{path}: {value!r} is out of range; allowed: <= {maximum!r}")
    return value


def read_choice(
    config: Mapping[str, Any],
    key: str,
    where: str,
    choices: Sequence[str],
    *,
    default: str | None = None,
) -> str:
    """Read a string that must be one of choices."""
    path = key_path(where, key)
    if key not in config:
        if default is None:
            raise ConfigError(f"{path}: required value is missing; allowed: {list(choices)}")
        return default
    value = config[key]
    if value not in choices:
        raise ConfigError(f"{path}: {value!r} is not allowed; allowed: {list(choices)}")
    return str(value)


def read_float_list(
    config: Mapping[str, Any],
    key: str,
    where: str,
    *,
    length: int | None = None,
    minimum: float | None = None,
    default: Sequence[float] | None = None,
) -> list[float]:
    """Read a list of finite numbers (optionally of a fixed length and lower bound)."""
    path = key_path(where, key)
    if key not in config:
        if default is None:
            raise ConfigError(f"{path}: required list of numbers is missing")
        return [float(v) for v in default]
    values = config[key]
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ConfigError(f"{path}: expected a list of numbers, got {values!r}")
    if length is not None and len(values) != length:
        raise ConfigError(f"{path}: expected {length} numbers, got {len(values)} ({values!r})")
    return [_element(value, f"{path}[{index}]", minimum) for index, value in enumerate(values)]


def _element(value: Any, path: str, minimum: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{path}: expected a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{path}: {value!r} is out of range; allowed: >= {minimum!r}")
    return float(value)


class ConfigIdentity:
    """Equality, hash and repr from `to_config()`: two objects with equal configs are equal."""

    def to_config(self) -> dict[str, Any]:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.to_config() == self.to_config()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(repr(sorted(self.to_config().items())))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items() if k != "kind")
        return f"{type(self).__name__}({fields})"
