"""`open_crossbar(config)`: build a `Crossbar` from an instrument config (TOML path or mapping).

A config names its `backend`; each backend class provides `from_config(config, where)`. Common
tables: `[limits]` (`SafetyLimits`) and `[read]` (v_read in V, nplc, averages). Emulated twins set
`emulate = true`: the emulators are started in this process on free localhost ports, the real
drivers connect to them, and closing the crossbar stops them.
"""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from instruments.crossbar import Crossbar
from simulation.config import ConfigError, key_path, read_choice, require_mapping

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "instruments"

BACKENDS: dict[str, str] = {
    "simulated": "instruments.simulated:SimulatedCrossbar",
    "smu-matrix": "instruments.composite:SmuMatrixCrossbar",
    "smu-mux": "instruments.mux_crossbar:SmuMuxCrossbar",
}
"""Backend name -> "module:class"; imported only when used (pyvisa stays unloaded for sims)."""


def load_instrument_config(config: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(config mapping, where) from a mapping, a path, or a name in configs/instruments/."""
    if isinstance(config, Mapping):
        return dict(config), "instrument config:"
    path = Path(config)
    if not path.exists() and not path.suffix:
        path = CONFIG_DIR / f"{config}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
        raise ConfigError(f"instrument config {str(config)!r} not found; known names: {known}")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle), f"{path}:"
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def backend_class(name: str) -> type[Crossbar]:
    module_name, class_name = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def open_crossbar(config: str | Path | Mapping[str, Any]) -> Crossbar:
    """A connected `Crossbar` (use it as a context manager) from an instrument config."""
    mapping, where = load_instrument_config(config)
    require_mapping(mapping, where)
    backend = read_choice(mapping, "backend", where, choices=tuple(BACKENDS))
    if mapping.get("emulate", False) is True:
        from instruments.emulators.launch import open_emulated

        return open_emulated(mapping, where)
    if "emulate" in mapping and not isinstance(mapping["emulate"], bool):
        raise ConfigError(f"{key_path(where, 'emulate')}: expected true or false")
    return backend_class(backend).from_config(mapping, where)  # type: ignore[attr-defined]
