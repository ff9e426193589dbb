"""Benchmark: write-verify programming of seeded target maps (32x32 and 128x64) on

- "simulated": `SimulatedCrossbar` (configs/instruments/simulated-siox-high-r-<size>.toml);
- "2600B script": the emulated Keithley 2600B + 707B on TSP-Link, TSP-script fast path (one bus
  round trip per write-verify iteration of up to 2048 cells);
- "2600B per-command": the same emulators, matrix on its own bus, one command per action
  (`use_script = false`, `link = "bus"`): the classic PC loop.

Every setup of one size programs the same chip (the simulated preset's [chip] table, also used as
the emulators' [emulator.chip]) to the same targets: uniform random (seeded) inside the common
window of the free devices, i.e. between the highest G_off and the lowest G_on of the devices that
are not stuck, as noise-free I/V at v_read (ground truth from the chip built with initial_state
"off" / "on"). 128x64 on the emulated 707B uses its emulator-only extra slots (16 slots of 12
columns for 192 lines).

Write-verify: `WriteVerifyConfig` defaults except pulse_width = 100 us (the emulated SMU config's
shortest SMU-timed pulse, used everywhere so all setups program alike).

Reported per setup: pulses per cell (mean, max), relative error (mean, 95th percentile) and the
fraction within tolerance of the non-stuck programmed cells, bus round trips (total, per cell,
per write-verify iteration, per iteration and word line touched), one write-verify iteration of
one whole row instrumented alone (n different amplitudes, and one shared amplitude), wall time
here, and the estimated time on real hardware from benchmarks.latency_model (GPIB and LAN). The
emulated setups' counts are measured (transports' round trips and writes, the emulated 707B's
relay switches); the simulated setup has no bus, so its counts are derived for the 2600B script
path from the operations it ran (the same derivation is checked against the emulated script
path's measured counts). Then a table beside peers-lab.md section 3.7's 32x32 figures.

    .venv/bin/python -m benchmarks.bench_write_verify [--sizes 32x32,128x64]
        [--setups simulated,script,command] [--quick] [--script-cells 2048]
        [--command-cells 1024] [--seed 0] [--nplc 0.1] [--relay-settle 0.004]

The emulators are slow per reading here (about 0.7 ms at 32x32, 1.5 ms at 128x64 on this
machine), so the emulated setups program at most --script-cells / --command-cells cells (the
first whole rows; all of a 32x32 chip by default, a quarter / an eighth of 128x64); --quick caps
them at 256 cells. The simulated setup always programs the whole chip.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.latency_model import FAST, GPIB, LAN, SLOW, LatencyModel, OperationCounts
from instruments import open_crossbar
from instruments.chip import ChipParameters, SimulatedChip
from instruments.crossbar import Crossbar, as_cells
from instruments.factory import load_instrument_config
from instruments.program import ProgramResult, WriteVerifyConfig, program_map

SIZES = {"32x32": "simulated-siox-high-r-32x32", "128x64": "simulated-siox-high-r-128x64"}
SETUPS = ("simulated", "script", "command")
SETUP_NAMES = {
    "simulated": "simulated",
    "script": "2600B script",
    "command": "2600B per-command",
}
EMULATED_CONFIG = "keithley2600-707b-emulated"
SCRIPT_CHUNK = 2048  # instruments.composite.SCRIPT_CHUNK: most cells per script call
COLUMNS_PER_SLOT = 12  # 707B card columns
PULSE_WIDTH = 1e-4  # s
REPLY_TIMEOUT = 600.0  # s, [smu] / [matrix] timeout of the emulated setups


# -- targets -------------------------------------------------------------------------------------


def common_window(chip_table: dict[str, Any], v_read: float) -> tuple[float, float]:
    """(lower, upper) in S: the read conductance window (noise-free I/V at v_read) every free
    device of the chip reaches: max of their G_off, min of their G_on."""
    edges = []
    for state in ("off", "on"):
        table = dict(chip_table, initial_state=state)
        chip = SimulatedChip(ChipParameters.from_config(table, "chip"))
        edges.append(chip.conductances(v_read)[~chip.stuck])
    return float(edges[0].max()), float(edges[1].min())


def make_targets(
    chip_table: dict[str, Any], shape: tuple[int, int], v_read: float, seed: int
) -> np.ndarray:
    lower, upper = common_window(chip_table, v_read)
    return np.random.default_rng(seed).uniform(lower, upper, shape)


# -- counting --------------------------------------------------------------------------------


class OperationRecorder:
    """Wraps a crossbar's read_cells, read_all and pulse_and_read to count read setups, readings
    and pulse events (cells of one word line with one amplitude share one), and the counts the
    2600B script path would need for the same operations (one call per SCRIPT_CHUNK cells; one
    relay switch per cell read, per pulse event and per call's final open)."""

    def __init__(self, crossbar: Crossbar) -> None:
        self.crossbar = crossbar
        self.readings = self.read_setups = self.pulse_events = 0
        self.script_calls = self.script_switches = 0
        self.iterations: list[tuple[int, int, int]] = []
        """Per pulse_and_read call: (word lines touched, measured round trips, script calls)."""
        averages = getattr(crossbar, "default_averages", getattr(crossbar, "averages", 1))
        read_cells, read_all = crossbar.read_cells, crossbar.read_all
        pulse_and_read = crossbar.pulse_and_read

        def counted_read_cells(cells: Any, v_read: float | None = None, averages: int = 1):
            result = read_cells(cells, v_read, averages)
            n = len(as_cells(cells, crossbar.shape))
            self._reads(n, averages)
            calls = math.ceil(n / SCRIPT_CHUNK)
            self.script_calls += calls
            self.script_switches += n + calls
            return result

        def counted_read_all(v_read: float | None = None, *, with_currents: bool = False):
            result = read_all(v_read, with_currents=with_currents)
            n = crossbar.shape[0] * crossbar.shape[1]
            self._reads(n, averages)
            self.script_calls += 1
            self.script_switches += n + 1
            return result

        def counted_pulse_and_read(
            cells: Any,
            amplitude: Any,
            width: float,
            v_read: float | None = None,
            averages: int = 1,
        ):
            cells = as_cells(cells, crossbar.shape)
            amplitudes = np.broadcast_to(np.asarray(amplitude, dtype=float), (len(cells),))
            before = crossbar.stats.bus_round_trips
            result = pulse_and_read(cells, amplitude, width, v_read, averages)
            self.iterations.append(
                (
                    len(np.unique(cells[:, 0])),
                    crossbar.stats.bus_round_trips - before,
                    math.ceil(len(cells) / SCRIPT_CHUNK),
                )
            )
            self._reads(len(cells), averages)
            for start in range(0, len(cells), SCRIPT_CHUNK):
                part = slice(start, start + SCRIPT_CHUNK)
                events = pulse_events(cells[part], amplitudes[part])
                self.pulse_events += events
                self.script_calls += 1
                self.script_switches += events + len(cells[part]) + 1
            return result

        crossbar.read_cells = counted_read_cells  # type: ignore[method-assign]
        crossbar.read_all = counted_read_all  # type: ignore[method-assign]
        crossbar.pulse_and_read = counted_pulse_and_read  # type: ignore[method-assign]

    def _reads(self, cells: int, averages: int) -> None:
        self.read_setups += cells
        self.readings += cells * averages


def pulse_events(cells: np.ndarray, amplitudes: np.ndarray) -> int:
    """Distinct (word line, amplitude) pairs among the pulsed cells (amplitude != 0)."""
    pulsed = amplitudes != 0
    return len(set(zip(cells[pulsed, 0].tolist(), amplitudes[pulsed].tolist(), strict=True)))


class RelayCounter:
    """Counts the emulated 707B's relay switches: top-level relay commands (close, open,
    exclusive close, open all) that changed at least one relay (one settle time each)."""

    def __init__(self, matrix: Any) -> None:
        self.matrix = matrix
        self.switches = 0
        self._depth = 0
        for name in ("close_set", "open_set", "exclusive_set", "open_everything"):
            setattr(matrix, name, self._wrap(getattr(matrix, name)))

    def _wrap(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1
            before = self.matrix.relay_operations
            try:
                return inner(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0 and self.matrix.relay_operations != before:
                    self.switches += 1

        return call


@dataclass
class Counter:
    """Snapshots of one crossbar's operation counts (measured where there is a bus)."""

    crossbar: Crossbar
    recorder: OperationRecorder
    relays: RelayCounter | None = None
    tsp_link: bool = False

    def snapshot(self) -> OperationCounts:
        r = self.recorder
        common = {
            "readings": r.readings,
            "read_setups": r.read_setups,
            "pulse_events": r.pulse_events,
            "pulse_width": PULSE_WIDTH,
        }
        if self.relays is None:  # no bus: the 2600B script path's counts, derived
            return OperationCounts(
                bus_round_trips=r.script_calls,
                relay_switches=r.script_switches,
                link_commands=r.script_switches,
                **common,
            )
        transports = {
            id(t): t for t in (self.crossbar.smu.transport, self.crossbar.matrix.transport)
        }  # type: ignore[attr-defined]
        writes = sum(len(t.sent) - t.round_trips for t in transports.values())
        return OperationCounts(
            bus_round_trips=self.crossbar.stats.bus_round_trips,
            bus_writes=writes,
            relay_switches=self.relays.switches,
            relay_operations=self.relays.matrix.relay_operations,
            link_commands=self.relays.switches if self.tsp_link else 0,
            **common,
        )

    def derived_script(self) -> tuple[int, int]:
        """(round trips, relay switches) the script path needs for what was recorded."""
        return self.recorder.script_calls, self.recorder.script_switches


# -- setups ----------------------------------------------------------------------------------


def emulated_config(sim_config: dict[str, Any], setup: str) -> dict[str, Any]:
    """The emulated 2600B + 707B config wired to the simulated preset's chip and size."""
    config, _ = load_instrument_config(EMULATED_CONFIG)
    config = copy.deepcopy(config)
    chip = dict(sim_config["chip"])
    rows, cols = int(chip["rows"]), int(chip["cols"])
    config["emulator"]["chip"] = chip
    # A script call over 2048 cells with 4 readings each runs longer than the shipped 10 s reply
    # timeout on these emulators (about 1.5 ms per reading at 128x64), and would on a real 2600B
    # too (relay settle + apertures, about 27 s by the latency model).
    config["smu"]["timeout"] = config["matrix"]["timeout"] = REPLY_TIMEOUT
    if (rows, cols) != (32, 32):
        names = [
            f"{1 + k // COLUMNS_PER_SLOT}/{1 + k % COLUMNS_PER_SLOT:02d}"
            for k in range(rows + cols)
        ]
        config["channel_map"] = {"word_lines": names[:rows], "bit_lines": names[rows:]}
        config["matrix"]["slots"] = max(6, math.ceil((rows + cols) / COLUMNS_PER_SLOT))
    if setup == "command":
        config["smu"]["use_script"] = False
        config["matrix"]["link"] = "bus"
        config["matrix"]["resource"] = "TCPIP::127.0.0.1::0::SOCKET"  # replaced by the launcher
    return config


@dataclass
class Record:
    """One setup's run."""

    setup: str
    size: str
    shape: tuple[int, int]
    cells: int
    rows_programmed: int
    result: ProgramResult
    program: OperationCounts
    derived_script: tuple[int, int]
    measured: bool
    iterations: list[tuple[int, int, int]]
    row_distinct: OperationCounts
    row_shared: OperationCounts
    full_read: OperationCounts | None
    wall_total: float
    chip_time: float
    notes: list[str] = field(default_factory=list)


def run_setup(
    setup: str,
    size: str,
    sim_config: dict[str, Any],
    targets: np.ndarray,
    max_cells: int | None,
    config: WriteVerifyConfig,
) -> Record:
    start = time.perf_counter()
    if setup == "simulated":
        crossbar = open_crossbar(copy.deepcopy(sim_config))
    else:
        crossbar = open_crossbar(emulated_config(sim_config, setup))
    with crossbar:
        rows, cols = crossbar.shape
        chip = crossbar.chip if setup == "simulated" else crossbar.emulation.chip  # type: ignore[attr-defined]
        recorder = OperationRecorder(crossbar)
        relays = None
        if setup != "simulated":
            relays = RelayCounter(crossbar.emulation.emulators["matrix"])  # type: ignore[attr-defined]
        counter = Counter(crossbar, recorder, relays, tsp_link=setup == "script")
        full_read = None
        if (rows, cols) == (32, 32):
            before = counter.snapshot()
            crossbar.read_all()
            full_read = counter.snapshot() - before
        program_rows = rows if max_cells is None else max(1, min(rows, max_cells // cols))
        mask = np.zeros((rows, cols), dtype=bool)
        mask[:program_rows] = True
        before, chip_before = counter.snapshot(), chip.time
        derived_before = counter.derived_script()
        result = program_map(crossbar, targets, config, mask=mask)
        program = counter.snapshot() - before
        chip_time = chip.time - chip_before
        derived = tuple(np.subtract(counter.derived_script(), derived_before).tolist())
        iterations = list(recorder.iterations)
        # One write-verify iteration of one whole row, instrumented alone (amplitudes below the
        # switching thresholds: 0.2-0.5 V, V/2 half-selected cells at <= 0.25 V).
        row_cells = np.stack([np.zeros(cols, dtype=np.int64), np.arange(cols)], axis=1)
        distinct = np.round(np.linspace(0.2, 0.5, cols), 4)
        before = counter.snapshot()
        crossbar.pulse_and_read(row_cells, distinct, PULSE_WIDTH, None, config.averages)
        middle = counter.snapshot()
        crossbar.pulse_and_read(row_cells, 0.4, PULSE_WIDTH, None, config.averages)
        row_shared = counter.snapshot() - middle
        row_distinct = middle - before
    notes = []
    if program_rows < rows:
        notes.append(
            f"rows 0-{program_rows - 1} only ({program_rows * cols} of {rows * cols} cells)"
        )
    return Record(
        setup=setup,
        size=size,
        shape=(rows, cols),
        cells=int(mask.sum()),
        rows_programmed=program_rows,
        result=result,
        program=program,
        derived_script=derived,  # type: ignore[arg-type]
        measured=setup != "simulated",
        iterations=iterations,
        row_distinct=row_distinct,
        row_shared=row_shared,
        full_read=full_read,
        wall_total=time.perf_counter() - start,
        chip_time=chip_time,
        notes=notes,
    )


# -- output ----------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def seconds(value: float) -> str:
    if value >= 120:
        return f"{value / 60:.1f} min"
    if value >= 1:
        return f"{value:.1f} s"
    return f"{value * 1e3:.1f} ms"


def span(low: float, high: float) -> str:
    return f"{seconds(low)} - {seconds(high)}"


def label(record: Record) -> str:
    return f"{record.size} {SETUP_NAMES[record.setup]}"


def quality_table(records: list[Record]) -> str:
    rows = []
    for r in records:
        s = r.result.summary()
        rows.append(
            [
                label(r),
                str(r.cells),
                f"{s['mean_pulses']:.1f} / {s['max_pulses']}",
                f"{100 * s['mean_relative_error']:.2f} % / {100 * s['p95_relative_error']:.2f} %",
                f"{100 * s['within_tolerance']:.1f} %",
                f"{s['converged_cells']}/{s['stuck_cells']}/{s['unresponsive_cells']}",
                str(s["iterations"]),
                seconds(r.result.wall_time_s),
                seconds(r.wall_total),
            ]
        )
    header = [
        "setup",
        "cells",
        "pulses/cell mean / max",
        "rel. error mean / p95",
        "within tol.",
        "converged/stuck/unresp.",
        "iterations",
        "wall (program)",
        "wall (setup)",
    ]
    return table(header, rows)


def bus_table(records: list[Record]) -> str:
    rows = []
    for r in records:
        c = r.program
        touched = sum(t[0] for t in r.iterations)
        trips = sum(t[1] if r.measured else t[2] for t in r.iterations)
        mark = "" if r.measured else " (derived)"
        per_iteration = f"{trips / len(r.iterations):.2f}"
        per_row = f"{trips / touched:.3f}"
        row_iter = f"{r.row_distinct.bus_round_trips} / {r.row_shared.bus_round_trips}"
        rows.append(
            [
                label(r),
                f"{c.bus_round_trips}{mark}",
                f"{c.bus_round_trips / r.cells:.3f}",
                per_iteration,
                per_row,
                row_iter,
                f"{c.bus_writes}",
                f"{c.relay_switches}" + (f" ({c.relay_operations})" if r.measured else ""),
                f"{c.readings} / {c.pulse_events}",
                seconds(r.chip_time) if r.measured else "-",
            ]
        )
    header = [
        "setup",
        "bus round trips",
        "per cell",
        "per iteration",
        "per (iteration x row)",
        "1-row iteration: n amps / 1 amp",
        "bus writes",
        "relay switches (relay ops)",
        "readings / pulse events",
        "chip time (emulated)",
    ]
    return table(header, rows)


def time_table(records: list[Record], models: Sequence[LatencyModel]) -> str:
    rows = []
    for r in records:
        cells = [label(r) + ("" if r.measured else " (derived, script path)")]
        for model in models:
            total = model.time(r.program)
            cells.append(seconds(total))
        parts = models[0].breakdown(r.program)
        total = sum(parts.values())
        cells.append(", ".join(f"{k} {100 * v / total:.0f} %" for k, v in parts.items() if v > 0))
        cells.append(seconds(models[0].time(r.program) / max(1, int(r.result.pulses.sum()))))
        rows.append(cells)
    header = (
        ["setup"]
        + [f"est. {m.name}" for m in models]
        + [
            "GPIB breakdown",
            "GPIB per cell-iteration",
        ]
    )
    return table(header, rows)


REFERENCE = {
    # peers-lab.md section 3.7 (32x32): per-device read, full read, per write-verify iteration,
    # programming 1024 cells with ~10-20 iterations per cell.
    "pc-1": ("3-5 + 2-6 + 20 ms", "~25-35 s", "~30-40 ms", "2-10 min"),
    "pc-0.1": ("~6-12 ms", "~6-12 s", "~10-15 ms", "2-10 min"),
    "script": ("~3.5-5 ms", "~4-5 s", "~5-8 ms", "1-2 min"),
}


def reference_table(records: list[Record], nplc: float, relay: tuple[float, float]) -> str:
    by_setup = {r.setup: r for r in records if r.size == "32x32"}
    plan = []
    if "command" in by_setup:
        plan += [
            ("SMU + 707B, PC loop (per-command), 1 NPLC", "command", 1.0, "pc-1"),
            (f"same, {nplc:g} NPLC", "command", nplc, "pc-0.1"),
        ]
    if "script" in by_setup:
        plan += [
            (f"2600B + 707B, TSP script, {nplc:g} NPLC", "script", nplc, "script"),
            ("same, 1 NPLC", "script", 1.0, None),
        ]
    elif "simulated" in by_setup:
        plan += [(f"TSP script (derived), {nplc:g} NPLC", "simulated", nplc, "script")]
    rows = []
    for name, setup, plc, ref in plan:
        r = by_setup[setup]
        low = FAST.with_(nplc=plc, relay_settle=relay[0])
        high = SLOW.with_(nplc=plc, relay_settle=relay[1])
        full = r.full_read
        assert full is not None
        per_cell = r.shape[0] * r.shape[1]
        pulses = int(r.result.pulses.sum())
        scale = per_cell / r.cells
        reference = REFERENCE[ref] if ref else ("-", "-", "-", "-")
        rows.append(
            [
                name,
                span(low.time(full) / per_cell, high.time(full) / per_cell),
                reference[0],
                span(low.time(full), high.time(full)),
                reference[1],
                span(low.time(r.program) / pulses, high.time(r.program) / pulses),
                reference[2],
                span(low.time(r.program) * scale, high.time(r.program) * scale),
                reference[3],
            ]
        )
    header = [
        "setup (32x32)",
        "per-device read",
        "ref",
        "full 32x32 read",
        "ref",
        "per write-verify iteration (per cell)",
        "ref",
        "programming 1024 cells",
        "ref",
    ]
    return table(header, rows)


# -- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32x32,128x64", help="comma list of " + ",".join(SIZES))
    parser.add_argument(
        "--setups", default=",".join(SETUPS), help="comma list of " + ",".join(SETUPS)
    )
    parser.add_argument(
        "--script-cells",
        type=int,
        default=2048,
        help="most cells the emulated script path programs (first whole rows; default 2048)",
    )
    parser.add_argument(
        "--command-cells",
        type=int,
        default=1024,
        help="most cells the per-command path programs (first whole rows; default 1024)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="at most 256 cells per emulated setup (smoke run)"
    )
    parser.add_argument("--seed", type=int, default=0, help="targets' seed")
    parser.add_argument("--nplc", type=float, default=0.1, help="model aperture (NPLC at 50 Hz)")
    parser.add_argument(
        "--relay-settle", type=float, default=4e-3, help="model relay settle per switch (s)"
    )
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    for name in sizes:
        if name not in SIZES:
            parser.error(f"--sizes: {name!r} is not one of {sorted(SIZES)}")
    for name in setups:
        if name not in SETUPS:
            parser.error(f"--setups: {name!r} is not one of {list(SETUPS)}")
    models = [
        GPIB.with_(nplc=args.nplc, relay_settle=args.relay_settle),
        LAN.with_(nplc=args.nplc, relay_settle=args.relay_settle),
    ]
    config = WriteVerifyConfig(pulse_width=PULSE_WIDTH)

    records: list[Record] = []
    for size in sizes:
        sim_config, _ = load_instrument_config(SIZES[size])
        chip = sim_config["chip"]
        shape = (int(chip["rows"]), int(chip["cols"]))
        v_read = float(sim_config.get("read", {}).get("v_read", 0.1))
        targets = make_targets(chip, shape, v_read, args.seed)
        for setup in setups:
            limit = {"simulated": None, "script": args.script_cells}.get(setup, args.command_cells)
            if args.quick and setup != "simulated":
                limit = min(limit or 256, 256)
            record = run_setup(setup, size, sim_config, targets, limit, config)
            records.append(record)
            print(
                f"[{label(record)}] {record.cells} cells, {seconds(record.wall_total)}"
                + (f"; {'; '.join(record.notes)}" if record.notes else ""),
                flush=True,
            )

    print()
    print(
        f"Write-verify: defaults except pulse_width = {PULSE_WIDTH * 1e6:.0f} us "
        f"(tolerance {100 * config.relative_tolerance:g} %, {config.averages} readings per "
        f"verify); targets uniform in the common window, seed {args.seed}."
    )
    print("Errors over programmed cells that are not stuck.")
    print()
    print(quality_table(records))
    print()
    print("Bus and operation counts of the program run (measured on the emulators; derived for")
    print("the simulated chip as the 2600B script path would need them):")
    print()
    print(bus_table(records))
    print()
    checks = [
        f"{r.size}: derived {r.derived_script[0]} round trips / {r.derived_script[1]} relay "
        f"switches vs measured {r.program.bus_round_trips} / {r.program.relay_switches}"
        for r in records
        if r.setup == "script"
    ]
    if checks:
        print("Script-path derivation check: " + "; ".join(checks))
        print()
    print(
        f"Estimated time on real hardware (latency model, {args.nplc:g} NPLC at 50 Hz, relay "
        f"{args.relay_settle * 1e3:g} ms per switch; GPIB 1 ms / LAN 0.3 ms per round trip):"
    )
    print()
    print(time_table(records, models))
    if any(r.size == "32x32" and r.full_read is not None for r in records):
        print()
        print(
            "Beside peers-lab.md section 3.7 (32x32). Ours: low - high = LAN socket 0.3 ms + "
            "3 ms relays - GPIB 1 ms + 5 ms relays; per-device read = full read / 1024; per "
            "iteration = run time / pulses; programming scaled to 1024 cells:"
        )
        print()
        print(reference_table(records, args.nplc, (3e-3, 5e-3)))


if __name__ == "__main__":
    main()
