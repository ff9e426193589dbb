"""Start the emulated bench of an instrument config and open a crossbar on it.

`start_emulators(config, where)` builds one simulated chip (from the config's `[emulator.chip]`
table, else `[chip]`), the `Bench` around it, and one emulator per instrument of the config, each
served on 127.0.0.1 (free ports, or `[emulator.ports]`). `open_emulated(config, where)` then opens
the config's backend with its resources pointing at those servers, so the real drivers talk TCP to
the emulators unchanged; closing the crossbar also stops the emulators.

Backends:

- "smu-matrix": the SMU emulator ([smu] driver: keithley2600, keithley2450, keysight-b2900) and a
  707B emulator wired as the config says: `[matrix.rows]` roles -> bench terminals (drive ->
  the drive channel's terminal, sense -> the sense channel's, bias -> the bias channel's, gnd ->
  "gnd"), `[channel_map]` slot/column -> word or bit line. With `link = "tsp-link"` the matrix is
  attached to the 2600B emulator as node[N] and has no server of its own.
- "smu-mux": the SMU emulator and the serial multiplexer board emulator
  (instruments.emulators.mux_board.serve_mux_board), served over TCP; pyserial reaches it at
  "socket://127.0.0.1:PORT" (written into `[board] port`).

`[emulator]` keys: chip (table), ports (table instrument -> TCP port, 0 = free),
line_frequency (Hz, 50).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from instruments.crossbar import Crossbar
from instruments.emulators.bench import Bench
from instruments.emulators.server import EmulatorServer, LineEmulator
from simulation.config import (
    ConfigError,
    key_path,
    read_choice,
    read_float,
    read_int,
    reject_unknown_keys,
    require_mapping,
)

SMU_EMULATORS: dict[str, str] = {
    "keithley2600": "instruments.emulators.keithley2600:Keithley2600Emulator",
    "keithley2450": "instruments.emulators.keithley2450:Keithley2450Emulator",
    "keysight-b2900": "instruments.emulators.keysight_b2900:KeysightB2900Emulator",
}
"""[smu] driver -> emulator "module:class"; imported only when used."""

EMULATOR_KEYS = ("chip", "ports", "line_frequency")


@dataclass
class EmulatedLab:
    """One chip on one bench with its instrument emulators and their servers."""

    chip: Any
    bench: Bench
    emulators: dict[str, LineEmulator] = field(default_factory=dict)
    servers: dict[str, EmulatorServer] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)  # instrument -> non-VISA address
    stopped: bool = False

    @property
    def resources(self) -> dict[str, str]:
        """Instrument name -> address its driver opens (VISA resource or serial URL)."""
        resources = {name: server.resource for name, server in self.servers.items()}
        resources.update(self.urls)
        return resources

    def stop(self) -> None:
        """Stop every server (idempotent)."""
        if self.stopped:
            return
        self.stopped = True
        for server in self.servers.values():
            server.stop()

    def __enter__(self) -> EmulatedLab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _load(path: str) -> Any:
    module_name, name = path.split(":")
    return getattr(importlib.import_module(module_name), name)


def chip_table(config: Mapping[str, Any], where: str) -> tuple[Mapping[str, Any], str]:
    """The chip table of a config: [emulator.chip], else [chip]."""
    emulator = config.get("emulator", {})
    if isinstance(emulator, Mapping) and "chip" in emulator:
        path = key_path(key_path(where, "emulator"), "chip")
        return require_mapping(emulator["chip"], path), path
    if "chip" in config:
        return require_mapping(config["chip"], key_path(where, "chip")), key_path(where, "chip")
    raise ConfigError(f"{where} an emulated config needs an [emulator.chip] (or [chip]) table")


def make_chip(config: Mapping[str, Any], where: str) -> Any:
    from instruments.chip import SimulatedChip

    table, path = chip_table(config, where)
    return SimulatedChip.from_config(table, path)


def _smu_emulator(driver: str, bench: Bench, line_frequency: float) -> tuple[LineEmulator, Any]:
    """The SMU emulator and a function channel -> bench terminal name."""
    cls = _load(SMU_EMULATORS[driver])
    emulator = cls(bench, "smu", prefix="smu", line_frequency=line_frequency)

    def terminal(channel: str) -> str:
        return f"smu.{channel}"  # every SMU emulator names its channels "<prefix>.<channel>"

    return emulator, terminal


def _port(ports: Mapping[str, Any], name: str, where: str) -> int:
    return read_int(ports, name, where, default=0, minimum=0, maximum=65535)


def start_emulators(
    config: Mapping[str, Any], where: str = "instrument config:", chip: Any = None
) -> EmulatedLab:
    """Chip, bench and started emulator servers for every instrument of the config.

    chip: an already built chip object (same API as SimulatedChip) instead of the config's table.
    """
    require_mapping(config, where)
    backend = read_choice(config, "backend", where, ("smu-matrix", "smu-mux"))
    emulator_table = require_mapping(config.get("emulator", {}), key_path(where, "emulator"))
    reject_unknown_keys(emulator_table, EMULATOR_KEYS, key_path(where, "emulator"))
    ports_where = key_path(key_path(where, "emulator"), "ports")
    ports = require_mapping(emulator_table.get("ports", {}), ports_where)
    line_frequency = read_float(
        emulator_table, "line_frequency", key_path(where, "emulator"), default=50.0, minimum=1.0
    )
    if chip is None:
        chip = make_chip(config, where)
    bench = Bench(chip)
    lab = EmulatedLab(chip=chip, bench=bench)
    try:
        if backend == "smu-matrix":
            _start_smu_matrix(config, where, lab, ports, ports_where, line_frequency)
        else:
            _start_smu_mux(config, where, lab, ports, ports_where, line_frequency)
    except BaseException:
        lab.stop()
        raise
    return lab


def _start_smu_matrix(
    config: Mapping[str, Any],
    where: str,
    lab: EmulatedLab,
    ports: Mapping[str, Any],
    ports_where: str,
    line_frequency: float,
) -> None:
    from instruments.composite import parse_wiring
    from instruments.emulators.keithley707b import Keithley707BEmulator

    wiring, settings = parse_wiring(config, where)
    smu, terminal = _smu_emulator(settings["smu_driver"], lab.bench, line_frequency)
    roles = {"drive": terminal(wiring.drive), "gnd": "gnd"}
    if wiring.sense is not None:
        roles["sense"] = terminal(wiring.sense)
    rows = {letter: roles[role] for role, letter in wiring.rows.items() if role in roles}
    if wiring.bias is not None and "bias" in wiring.rows:
        rows[wiring.rows["bias"]] = terminal(wiring.bias)
    columns: dict[tuple[int, int], tuple[str, int]] = {}
    for index, line in enumerate(wiring.word_lines):
        columns[line] = ("word", index)
    for index, line in enumerate(wiring.bit_lines):
        columns[line] = ("bit", index)
    matrix = Keithley707BEmulator(
        lab.bench, "matrix", rows=rows, columns=columns, slots=settings["slots"]
    )
    lab.emulators.update({"smu": smu, "matrix": matrix})
    lab.servers["smu"] = EmulatorServer(smu, _port(ports, "smu", ports_where)).start()
    if settings["link"] == "tsp-link":
        smu.link(settings["node"], matrix)  # type: ignore[attr-defined]
    else:
        lab.servers["matrix"] = EmulatorServer(matrix, _port(ports, "matrix", ports_where)).start()


def _start_smu_mux(
    config: Mapping[str, Any],
    where: str,
    lab: EmulatedLab,
    ports: Mapping[str, Any],
    ports_where: str,
    line_frequency: float,
) -> None:
    """SMU + serial mux board (instruments/mux_crossbar.py and instruments/emulators/mux_board.py):
    the board emulator is built and served by mux_board.serve_mux_board from the config, its
    HI input cabled to the SMU channel named by [smu] channel."""
    from instruments.emulators.mux_board import serve_mux_board

    smu_table = require_mapping(config.get("smu"), key_path(where, "smu"))
    driver = read_choice(smu_table, "driver", key_path(where, "smu"), tuple(SMU_EMULATORS))
    smu, terminal = _smu_emulator(driver, lab.bench, line_frequency)
    channel = smu_table.get("channel", "a" if driver == "keithley2600" else "1")
    lab.emulators["smu"] = smu
    lab.servers["smu"] = EmulatorServer(smu, _port(ports, "smu", ports_where)).start()
    server = serve_mux_board(lab.bench, config, where, hi_terminal=terminal(str(channel)))
    lab.emulators["mux"] = server.emulator
    lab.servers["mux"] = server
    lab.urls["mux"] = server.url


def emulated_config(config: Mapping[str, Any], lab: EmulatedLab) -> dict[str, Any]:
    """A copy of the config whose instrument addresses point at the lab's servers."""
    rewritten = copy.deepcopy(dict(config))
    resources = lab.resources
    if "smu" in resources:
        rewritten["smu"]["resource"] = resources["smu"]
    if "matrix" in resources:
        rewritten["matrix"]["resource"] = resources["matrix"]
    if "matrix" in rewritten:
        # a client of these emulators may use their emulator-only extensions (extra slots)
        rewritten["matrix"]["emulated"] = True
    if "mux" in resources:
        rewritten.setdefault("board", {})["port"] = resources["mux"]
    return rewritten


def open_emulated(
    config: Mapping[str, Any], where: str = "instrument config:", chip: Any = None
) -> Crossbar:
    """A connected crossbar of the config's backend on freshly started emulators; its close()
    (or leaving its `with` block) also stops them. The lab is at `crossbar.emulation`."""
    from instruments.factory import backend_class

    backend = read_choice(config, "backend", where, ("smu-matrix", "smu-mux"))
    lab = start_emulators(config, where, chip=chip)
    try:
        crossbar = backend_class(backend).from_config(  # type: ignore[attr-defined]
            emulated_config(config, lab), where
        )
    except BaseException:
        lab.stop()
        raise
    release = crossbar._close

    def close_and_stop() -> None:
        try:
            release()
        finally:
            lab.stop()

    crossbar._close = close_and_stop  # type: ignore[method-assign]
    crossbar.emulation = lab  # type: ignore[attr-defined]
    return crossbar
