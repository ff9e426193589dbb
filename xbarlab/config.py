"""Loading TOML configs: device presets and experiments, validated with errors that name the
file, the key, the value and what is allowed."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simulation.config import (
    ConfigError,
    key_path,
    read_float,
    read_int,
    reject_unknown_keys,
    require_mapping,
)
from simulation.device_model import DeviceModel
from training.experiment import DataConfig, ExperimentConfig, read_training_table
from training.layers import SAMPLING_MODES
from training.networks import validate_spec

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_KEYS = ("name", "description", "device", "data", "network", "training", "evaluation")
EVALUATION_KEYS = ("repeats", "modes", "read_time")


def config_directory() -> Path:
    """configs/ of this checkout, or $XBARLAB_CONFIG_DIR."""
    return Path(os.environ.get("XBARLAB_CONFIG_DIR", REPOSITORY_ROOT / "configs"))


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error names the file."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None


def device_preset_names() -> list[str]:
    """Names of the presets in configs/devices (file names without .toml)."""
    return sorted(p.stem for p in (config_directory() / "devices").glob("*.toml"))


def device_preset_path(name: str) -> Path:
    """A preset name ("siox-high-r") or a path to a TOML file -> the file's path."""
    candidate = Path(name)
    if candidate.suffix == ".toml" or candidate.parent != Path("."):
        return candidate
    path = config_directory() / "devices" / f"{name}.toml"
    if not path.exists():
        raise ConfigError(
            f"device preset {name!r} does not exist; available: {device_preset_names()}"
        )
    return path


def load_device_model(reference: str | Mapping[str, Any], where: str = "device") -> DeviceModel:
    """A device model from a preset name, a TOML path or an inline table."""
    if isinstance(reference, str):
        path = device_preset_path(reference)
        return DeviceModel.from_config(read_toml(path), f"{path}:")
    return DeviceModel.from_config(require_mapping(reference, where), where)


def experiment_from_mapping(config: Mapping[str, Any], where: str) -> ExperimentConfig:
    """Build an experiment from a parsed TOML document; `where` names its source."""
    table = require_mapping(config, where)
    reject_unknown_keys(table, EXPERIMENT_KEYS, where)
    name = table.get("name", "experiment")
    if not isinstance(name, str):
        raise ConfigError(f"{key_path(where, 'name')}: expected a string, got {name!r}")
    device = None
    if "device" in table:
        device = load_device_model(table["device"], key_path(where, "device"))
    data = DataConfig.from_config(table.get("data", {}), key_path(where, "data"))
    network_where = key_path(where, "network")
    network = dict(require_mapping(table.get("network", {}), network_where))
    # Fail at load time, not after the data is read: the dataset fills shape and classes later.
    validate_spec({"input_shape": [1, 1, 1], "classes": 2, **network}, network_where)
    trainer, aware, sampling, chip_seed = read_training_table(
        table.get("training", {}), key_path(where, "training")
    )
    evaluation_where = key_path(where, "evaluation")
    evaluation = require_mapping(table.get("evaluation", {}), evaluation_where)
    reject_unknown_keys(evaluation, EVALUATION_KEYS, evaluation_where)
    modes = evaluation.get("modes", list(SAMPLING_MODES))
    if not isinstance(modes, list) or any(m not in SAMPLING_MODES for m in modes):
        raise ConfigError(
            f"{key_path(evaluation_where, 'modes')}: {modes!r} is not allowed; "
            f"allowed: a list drawn from {list(SAMPLING_MODES)}"
        )
    if aware and device is None:
        raise ConfigError(f"{key_path(where, 'training.aware')}: aware training needs a device")
    return ExperimentConfig(
        name=name,
        data=data,
        network=network,
        device=device,
        aware=aware,
        sampling=sampling,
        chip_seed=chip_seed,
        trainer=trainer,
        evaluation_repeats=read_int(evaluation, "repeats", evaluation_where, default=5, minimum=1),
        evaluation_modes=tuple(modes),
        read_time=read_float(
            evaluation,
            "read_time",
            evaluation_where,
            default=50e-9,
            minimum=0.0,
            exclusive_minimum=True,
        ),
    )


def load_experiment(path: str | Path) -> ExperimentConfig:
    """An experiment from configs/experiments/*.toml (or any path)."""
    path = Path(path)
    return experiment_from_mapping(read_toml(path), f"{path}:")
