"""Write-verify programming of a target conductance map through any `Crossbar`.

Adaptive incremental-step pulse programming (ISPP, after Suh et al. 1995 and Alibart et al. 2012),
array-parallel: every iteration, each unfinished cell gets one pulse and one averaged verify read,
all in a single `Crossbar.pulse_and_read` call (the backend groups the cells as its hardware
allows). Per cell:

- error e = target - G; done ("converged") when |e| <= max(relative_tolerance * target,
  absolute_tolerance).
- polarity from the sign of e: SET (positive amplitude) when G < target, RESET otherwise.
- amplitude starts at v_start (reset_v_start for RESET) and grows by the cell's step while the
  last pulse of the same polarity moved the cell by less than 1 / hold_pulses of the remaining
  error (or not at all), up to v_max; it is held while the cell approaches at a good pace, and
  lowered by one step when the last change was at least the remaining error. Amplitudes are
  rounded to `amplitude_resolution` so that backends can group equal pulses of a row.
- overshoot (the sign of e flips): the step is multiplied by step_reduction (not below min_step)
  and the new polarity restarts one step below the amplitude it last used (not below its start).
- a cell that gets `stall_pulses` pulses in a row at v_max without moving and has never moved
  gets one probe in the opposite polarity (ramped the same way): if that moves it, it was only
  saturated at the edge of its window. A cell that stalls again (or stalls after having moved) is
  finished: "stuck" if no pulse ever moved it, else "unresponsive" (e.g. a target outside its own
  window). A cell that reaches `max_pulses` in this run is "max_pulses"; one whose endurance
  budget (limits.max_pulses_per_cell) is spent is "endurance".

The movement threshold of a cell is max(min_movement, movement_sigmas * s) * G, where s is the
relative standard deviation of the difference of two verify reads, measured at the start from two
read passes over the cells (robust median estimate).

After the loop, `verify_rounds` times, every converged cell is read again; cells that drifted out
of their band (disturbed while their neighbours were pulsed) are programmed again.

Progress events are dicts (stage "program"); `should_stop()` is checked between iterations and a
stop returns the partial result (unfinished cells "pending", `cancelled` True). A later call with
`finished=` that result skips the finished cells and continues the rest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from instruments.crossbar import Crossbar
from instruments.limits import LimitError
from simulation.config import (
    ConfigError,
    key_path,
    read_float,
    read_int,
    reject_unknown_keys,
    require_mapping,
)

STATUSES: tuple[str, ...] = (
    "skipped",
    "pending",
    "converged",
    "stuck",
    "unresponsive",
    "max_pulses",
    "endurance",
)
"""Cell status names; a status code is the index into this tuple."""

SKIPPED, PENDING, CONVERGED, STUCK, UNRESPONSIVE, MAX_PULSES, ENDURANCE = range(len(STATUSES))
FINISHED_CODES = (CONVERGED, STUCK, UNRESPONSIVE, MAX_PULSES, ENDURANCE)
"""Codes of cells that a resumed run does not program again."""

_ZERO_ALLOWED = (
    "relative_tolerance",
    "absolute_tolerance",
    "movement_sigmas",
    "min_movement",
    "amplitude_resolution",
)

ProgressCallback = Callable[[dict[str, Any]], None]
StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class WriteVerifyConfig:
    """Write-verify settings (SI units). Defaults suit the simulated SiOx chips.

    relative_tolerance, absolute_tolerance: band half-width max(rel * target, abs) (-, S).
    v_start, v_step, v_max: SET amplitude ramp (V, > 0); reset_*: RESET ramp magnitudes (V),
        None = same as SET.
    pulse_width: s. v_read: verify read voltage (V), None = the crossbar's default.
    averages: reads averaged per verify. max_pulses: per cell per run (resumes continue counting).
    step_reduction: step factor on overshoot (0, 1]; min_step: smallest step (V).
    hold_pulses: the amplitude keeps growing while a pulse moves the cell by less than
        |error| / hold_pulses. amplitude_resolution: amplitudes are rounded to this grid (V,
        0 = off) so backends can group equal pulses.
    stall_pulses: pulses in a row at v_max without movement before a cell is given up.
    movement_sigmas, min_movement: movement threshold (see the module docstring).

    v_max = 1.2 V keeps half-selected cells under the V/2 scheme at 0.6 V, below the simulated
    SiOx thresholds (0.7 V, sigma 0.03 V); with 1.6 V, V/2 pulses disturb neighbours and
    write-verify needed 1.5x more pulses (measured on the 32x32 preset).
    verify_rounds: re-read-and-reprogram rounds after the loop. progress_every: iterations
        between progress events.
    """

    relative_tolerance: float = 0.02
    absolute_tolerance: float = 5e-9
    v_start: float = 0.6
    v_step: float = 0.1
    v_max: float = 1.2
    reset_v_start: float | None = None
    reset_v_step: float | None = None
    reset_v_max: float | None = None
    pulse_width: float = 5e-5
    v_read: float | None = None
    averages: int = 4
    max_pulses: int = 100
    step_reduction: float = 0.7
    min_step: float = 0.01
    stall_pulses: int = 3
    hold_pulses: float = 4.0
    amplitude_resolution: float = 0.01
    movement_sigmas: float = 4.0
    min_movement: float = 0.002
    verify_rounds: int = 1
    progress_every: int = 1

    def __post_init__(self) -> None:
        where = "write-verify config"
        positive = (
            "v_start",
            "v_step",
            "v_max",
            "pulse_width",
            "step_reduction",
            "min_step",
            "hold_pulses",
        )
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{key_path(where, name)}: {value!r} must be a positive number")
        for name in ("reset_v_start", "reset_v_step", "reset_v_max", "v_read"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{key_path(where, name)}: {value!r} must be a positive number")
        for name in _ZERO_ALLOWED:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{key_path(where, name)}: {value!r} must be >= 0")
        if self.relative_tolerance == 0 and self.absolute_tolerance == 0:
            raise ConfigError(
                f"{where}: relative_tolerance and absolute_tolerance are both 0; no cell could "
                "ever converge"
            )
        if self.step_reduction > 1:
            raise ConfigError(
                f"{key_path(where, 'step_reduction')}: {self.step_reduction!r}; allowed: (0, 1]"
            )
        for polarity, prefix in ((+1, ""), (-1, "reset_")):
            low, _, high = self.ramp(polarity)
            if low > high:
                raise ConfigError(
                    f"{key_path(where, prefix + 'v_start')}: {low!r} V exceeds "
                    f"{prefix}v_max = {high!r} V"
                )
        minimums = {"averages": 1, "max_pulses": 1, "stall_pulses": 1, "progress_every": 1}
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(
                    f"{key_path(where, name)}: {value!r} must be an integer >= {minimum}"
                )
        if isinstance(self.verify_rounds, bool) or self.verify_rounds < 0:
            raise ConfigError(
                f"{key_path(where, 'verify_rounds')}: {self.verify_rounds!r} must be >= 0"
            )

    def ramp(self, polarity: int) -> tuple[float, float, float]:
        """(start, step, max) amplitude magnitudes in V for SET (+1) or RESET (-1) pulses."""
        if polarity > 0:
            return self.v_start, self.v_step, self.v_max
        start = self.v_start if self.reset_v_start is None else self.reset_v_start
        step = self.v_step if self.reset_v_step is None else self.reset_v_step
        ramp_max = self.v_max if self.reset_v_max is None else self.reset_v_max
        return start, step, ramp_max

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], where: str = "write_verify"
    ) -> WriteVerifyConfig:
        """Read a `[write_verify]` table; missing keys take the defaults, unknown keys raise."""
        table = require_mapping(config, where)
        names = [f.name for f in fields(cls)]
        reject_unknown_keys(table, names, where)
        values: dict[str, Any] = {}
        defaults = cls()
        for name in names:
            if name not in table:
                continue
            default = getattr(defaults, name)
            if isinstance(default, int) and not isinstance(default, bool):
                minimum = 0 if name == "verify_rounds" else 1
                values[name] = read_int(table, name, where, minimum=minimum)
            else:
                inclusive = name in _ZERO_ALLOWED
                values[name] = read_float(
                    table, name, where, minimum=0.0, exclusive_minimum=not inclusive
                )
        try:
            return cls(**values)
        except ConfigError as error:
            raise ConfigError(str(error).replace("write-verify config", where, 1)) from None

    def to_config(self) -> dict[str, Any]:
        """A TOML-ready table (None entries left out) that from_config reads back."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class ProgramResult:
    """Outcome of `program_map`; maps are (rows, cols).

    targets: S (NaN where not programmed). achieved: last averaged verify read in S (NaN where
    never read). pulses: pulses delivered, summed over resumed runs. status: names from STATUSES.
    tolerance: band half-width in S. read_noise: relative std of the difference of two verify
    reads, as measured. bus_round_trips: from crossbar.stats over this run (and resumed ones).
    """

    targets: np.ndarray
    achieved: np.ndarray
    pulses: np.ndarray
    status: np.ndarray
    tolerance: np.ndarray
    config: WriteVerifyConfig
    iterations: int = 0
    bus_round_trips: int = 0
    wall_time_s: float = 0.0
    read_noise: float = float("nan")
    cancelled: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.targets.shape)  # type: ignore[return-value]

    @property
    def status_codes(self) -> np.ndarray:
        """Status as int8 codes (indices into STATUSES), e.g. for HDF5."""
        lookup = {name: code for code, name in enumerate(STATUSES)}
        return np.vectorize(lookup.__getitem__, otypes=[np.int8])(self.status)

    @property
    def programmed(self) -> np.ndarray:
        """Cells this result programmed (any status but "skipped")."""
        return self.status != "skipped"

    @property
    def finished(self) -> np.ndarray:
        """Cells a resumed run skips (converged, stuck, unresponsive, max_pulses, endurance)."""
        return np.isin(self.status_codes, FINISHED_CODES)

    @property
    def relative_error(self) -> np.ndarray:
        """|achieved - target| / target (NaN where not programmed)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.abs(self.achieved - self.targets) / self.targets

    @property
    def within_tolerance(self) -> np.ndarray:
        """|achieved - target| <= tolerance (False where not programmed)."""
        with np.errstate(invalid="ignore"):
            return np.abs(self.achieved - self.targets) <= self.tolerance

    def count(self, status: str) -> int:
        return int(np.sum(self.status == status))

    def summary(self) -> dict[str, Any]:
        """Scalar metrics; errors are over programmed cells that are not stuck."""
        programmed = self.programmed
        cells = int(programmed.sum())
        scored = programmed & (self.status != "stuck") & np.isfinite(self.achieved)
        errors = self.relative_error[scored]
        pulses = self.pulses[programmed]
        metrics: dict[str, Any] = {
            "cells": cells,
            **{f"{name}_cells": self.count(name) for name in STATUSES[1:]},
            "mean_relative_error": float(errors.mean()) if errors.size else float("nan"),
            "p95_relative_error": float(np.percentile(errors, 95)) if errors.size else float("nan"),
            "max_relative_error": float(errors.max()) if errors.size else float("nan"),
            "within_tolerance": float(self.within_tolerance[scored].mean())
            if errors.size
            else float("nan"),
            "mean_pulses": float(pulses.mean()) if cells else 0.0,
            "max_pulses": int(pulses.max()) if cells else 0,
            "stuck_fraction": self.count("stuck") / cells if cells else 0.0,
            "iterations": self.iterations,
            "bus_round_trips": self.bus_round_trips,
            "wall_time_s": self.wall_time_s,
            "read_noise": self.read_noise,
            "cancelled": self.cancelled,
        }
        return metrics

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Maps for a session file: targets, achieved, pulses, status (int8 codes), tolerance."""
        return {
            "targets": self.targets,
            "achieved": self.achieved,
            "pulses": self.pulses,
            "status": self.status_codes,
            "tolerance": self.tolerance,
        }

    def metadata(self) -> dict[str, Any]:
        """Scalars and the config, JSON/HDF5-attribute friendly (with the status names)."""
        return {
            "config": self.config.to_config(),
            "statuses": list(STATUSES),
            "iterations": self.iterations,
            "bus_round_trips": self.bus_round_trips,
            "wall_time_s": self.wall_time_s,
            "read_noise": self.read_noise,
            "cancelled": self.cancelled,
        }

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]
    ) -> ProgramResult:
        """Rebuild a result from `to_arrays` and `metadata` (e.g. read back from a session file),
        so an interrupted run can resume with finished=result."""
        names = list(metadata.get("statuses", STATUSES))
        codes = np.asarray(arrays["status"], dtype=np.int64)
        return cls(
            targets=np.asarray(arrays["targets"], dtype=float),
            achieved=np.asarray(arrays["achieved"], dtype=float),
            pulses=np.asarray(arrays["pulses"], dtype=np.int64),
            status=np.asarray(names, dtype=f"<U{max(map(len, names))}")[codes],
            tolerance=np.asarray(arrays["tolerance"], dtype=float),
            config=WriteVerifyConfig.from_config(metadata.get("config", {}), "metadata.config"),
            iterations=int(metadata.get("iterations", 0)),
            bus_round_trips=int(metadata.get("bus_round_trips", 0)),
            wall_time_s=float(metadata.get("wall_time_s", 0.0)),
            read_noise=float(metadata.get("read_noise", float("nan"))),
            cancelled=bool(metadata.get("cancelled", False)),
        )


def tolerance_band(targets: np.ndarray, config: WriteVerifyConfig) -> np.ndarray:
    """Band half-width max(relative_tolerance * target, absolute_tolerance) in S."""
    return np.maximum(config.relative_tolerance * np.abs(targets), config.absolute_tolerance)


def estimate_read_noise(first: np.ndarray, second: np.ndarray) -> float:
    """Relative std of the difference of two reads of the same cells (robust: 1.4826 * median
    of |a - b| / mean(a, b)); 0 for no cells."""
    mean = 0.5 * (first + second)
    usable = np.isfinite(mean) & (mean > 0)
    if not usable.any():
        return 0.0
    relative = np.abs(first - second)[usable] / mean[usable]
    return float(1.4826 * np.median(relative))


def program_map(
    crossbar: Crossbar,
    targets: np.ndarray,
    config: WriteVerifyConfig | Mapping[str, Any] | None = None,
    mask: np.ndarray | None = None,
    finished: np.ndarray | ProgramResult | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> ProgramResult:
    """Program `targets` (rows, cols) in S into the crossbar by write-verify.

    mask: bool (rows, cols), cells to program (default: every finite target); the others are
    neither pulsed nor read. finished: bool mask or a previous ProgramResult whose finished cells
    are skipped (a result's maps, pulse counts and round trips carry over). on_progress(event)
    gets dicts with stage "program", iteration, done, total, status counts and the achieved,
    pulses and status (int8 codes) maps;
    should_stop() is polled between iterations.
    """
    if config is None:
        config = WriteVerifyConfig()
    elif not isinstance(config, WriteVerifyConfig):
        config = WriteVerifyConfig.from_config(config)
    shape = crossbar.shape
    targets = np.asarray(targets, dtype=float)
    if targets.shape != shape:
        raise ValueError(f"targets: shape {targets.shape} does not match the crossbar {shape}")
    if mask is None:
        mask = np.isfinite(targets)
    else:
        mask = np.asarray(mask)
        if mask.shape != shape or mask.dtype != bool:
            raise ValueError(
                f"mask: expected a bool array of shape {shape}, got {mask.dtype} {mask.shape}"
            )
    bad = mask & ~(np.isfinite(targets) & (targets > 0))
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(
            f"targets[{row}, {col}] = {targets[row, col]!r} S: targets of cells to program must be "
            "finite and > 0 S"
        )
    _check_limits(crossbar, config)

    previous = finished if isinstance(finished, ProgramResult) else None
    if previous is not None:
        if previous.shape != shape:
            raise ValueError(f"finished: result of shape {previous.shape}, crossbar is {shape}")
        done_before = previous.finished
    elif finished is not None:
        done_before = np.asarray(finished, dtype=bool)
        if done_before.shape != shape:
            raise ValueError(f"finished: expected shape {shape}, got {done_before.shape}")
    else:
        done_before = np.zeros(shape, dtype=bool)

    # Result maps, seeded from a previous result where it has finished cells.
    result_targets = np.where(mask, targets, np.nan)
    achieved = np.full(shape, np.nan)
    pulses_map = np.zeros(shape, dtype=np.int64)
    status_map = np.full(shape, SKIPPED, dtype=np.int8)
    rounds_before = iterations_before = 0
    if previous is not None:
        keep = previous.programmed
        result_targets = np.where(keep & ~mask, previous.targets, result_targets)
        achieved = np.where(keep, previous.achieved, achieved)
        pulses_map = previous.pulses.astype(np.int64).copy()
        status_map = np.where(keep, previous.status_codes, status_map).astype(np.int8)
        rounds_before, iterations_before = previous.bus_round_trips, previous.iterations
    todo = mask & ~done_before
    status_map[todo] = PENDING

    programmer = _Programmer(crossbar, config, result_targets, todo, pulses_map)
    start_time = time.perf_counter()
    start_trips = crossbar.stats.bus_round_trips
    history: list[dict[str, Any]] = []

    def partial(cancelled: bool) -> ProgramResult:
        programmer.write_into(achieved, pulses_map, status_map)
        return ProgramResult(
            targets=result_targets,
            achieved=achieved.copy(),
            pulses=pulses_map.copy(),
            status=np.asarray(STATUSES)[status_map],
            tolerance=np.where(
                np.isfinite(result_targets), tolerance_band(result_targets, config), np.nan
            ),
            config=config,
            iterations=iterations_before + programmer.iterations,
            bus_round_trips=rounds_before + crossbar.stats.bus_round_trips - start_trips,
            wall_time_s=(previous.wall_time_s if previous else 0.0)
            + time.perf_counter()
            - start_time,
            read_noise=programmer.read_noise,
            cancelled=cancelled,
            history=history,
        )

    def report(final: bool = False) -> None:
        counts = programmer.counts()
        history.append({"iteration": programmer.iterations, **counts})
        if on_progress is None:
            return
        if not final and programmer.iterations % config.progress_every:
            return
        programmer.write_into(achieved, pulses_map, status_map)
        on_progress(
            {
                "stage": "program",
                "iteration": programmer.iterations,
                "done": programmer.total - counts["pending"],
                "total": programmer.total,
                "counts": counts,
                "achieved": achieved.copy(),
                "pulses": pulses_map.copy(),
                "status": status_map.copy(),
                "final": final,
            }
        )

    if should_stop is not None and should_stop():
        return partial(cancelled=True)
    programmer.start()
    rounds_left = config.verify_rounds
    while True:
        while programmer.has_pending():
            if should_stop is not None and should_stop():
                report(final=True)
                return partial(cancelled=True)
            programmer.step()
            report()
        if rounds_left == 0 or programmer.total == 0:
            break
        rounds_left -= 1
        if should_stop is not None and should_stop():
            report(final=True)
            return partial(cancelled=True)
        if not programmer.verify():
            break
    report(final=True)
    return partial(cancelled=False)


def _check_limits(crossbar: Crossbar, config: WriteVerifyConfig) -> None:
    """Refuse a config whose ramps or width the crossbar's limits would refuse mid-run."""
    for polarity, prefix in ((+1, ""), (-1, "reset_")):
        ramp_max = config.ramp(polarity)[2]
        try:
            crossbar.limits.check_pulse(ramp_max, config.pulse_width, "write-verify")
        except LimitError as error:
            raise LimitError(f"write-verify config {prefix}v_max / pulse_width: {error}") from None
    if config.v_read is not None:
        crossbar.limits.check_read_voltage(config.v_read, "write-verify config v_read")


class _Programmer:
    """Per-cell state of one write-verify run (flat arrays over the cells to program)."""

    def __init__(
        self,
        crossbar: Crossbar,
        config: WriteVerifyConfig,
        targets: np.ndarray,
        todo: np.ndarray,
        pulses_before: np.ndarray,
    ) -> None:
        self.crossbar, self.config = crossbar, config
        self.cells = np.argwhere(todo).astype(np.int64)
        self.total = len(self.cells)
        rows, cols = self.cells[:, 0], self.cells[:, 1]
        n = self.total
        self.target = targets[rows, cols].astype(float)
        self.band = tolerance_band(self.target, config)
        self.g = np.full(n, np.nan)
        self.previous = np.full(n, np.nan)
        self.status = np.full(n, PENDING, dtype=np.int8)
        self.pulses = pulses_before[rows, cols].astype(np.int64)
        self.run_pulses = np.zeros(n, dtype=np.int64)
        self.polarity = np.zeros(n, dtype=np.int8)  # of the last pulse, 0 before the first
        self.amplitude = np.zeros(n)  # magnitude of the last pulse (V)
        self.last_used = np.zeros((n, 2))  # last magnitude per polarity: [:, 0] SET, [:, 1] RESET
        self.step_size = np.zeros(n)
        self.stall = np.zeros(n, dtype=np.int64)
        self.moved_ever = np.zeros(n, dtype=bool)
        self.probed = np.zeros(n, dtype=bool)
        self.forced = np.zeros(n, dtype=np.int8)  # polarity of a running probe, 0 when none
        self.read_noise = float("nan")
        self.iterations = 0
        self.starts = np.array([config.ramp(+1)[0], config.ramp(-1)[0]])
        self.steps = np.array([config.ramp(+1)[1], config.ramp(-1)[1]])
        self.maxima = np.array([config.ramp(+1)[2], config.ramp(-1)[2]])

    # -- bookkeeping ----------------------------------------------------------------------------

    def has_pending(self) -> bool:
        return bool(np.any(self.status == PENDING))

    def counts(self) -> dict[str, int]:
        counted = np.bincount(self.status, minlength=len(STATUSES))
        return {name: int(counted[code]) for code, name in enumerate(STATUSES) if code != SKIPPED}

    def write_into(self, achieved: np.ndarray, pulses: np.ndarray, status: np.ndarray) -> None:
        rows, cols = self.cells[:, 0], self.cells[:, 1]
        read = np.isfinite(self.g)
        achieved[rows[read], cols[read]] = self.g[read]
        pulses[rows, cols] = self.pulses
        status[rows, cols] = self.status

    def _read(self, index: np.ndarray) -> np.ndarray:
        conductances, _ = self.crossbar.read_cells(
            self.cells[index], self.config.v_read, self.config.averages
        )
        return conductances

    # -- phases ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Two read passes: the starting conductances and the read-noise estimate."""
        if self.total == 0:
            self.read_noise = 0.0
            return
        everything = np.arange(self.total)
        first, second = self._read(everything), self._read(everything)
        self.read_noise = estimate_read_noise(first, second)
        self.g = 0.5 * (first + second)
        self._finish_converged(everything)

    def verify(self) -> bool:
        """Re-read converged cells; reopen those out of their band. True if any reopened."""
        index = np.flatnonzero(self.status == CONVERGED)
        if index.size == 0:
            return False
        self.g[index] = self._read(index)
        drifted = index[np.abs(self.target[index] - self.g[index]) > self.band[index]]
        self.status[drifted] = PENDING
        self.polarity[drifted] = 0
        self.stall[drifted] = 0
        return drifted.size > 0

    def _finish_converged(self, index: np.ndarray) -> None:
        inside = np.abs(self.target[index] - self.g[index]) <= self.band[index]
        self.status[index[inside]] = CONVERGED

    def step(self) -> None:
        """One iteration: judge the last pulse, give up or probe, choose each pending cell's
        next pulse, pulse and verify them all in one call."""
        config = self.config
        index = np.flatnonzero(self.status == PENDING)
        g_now = self.g[index]
        last = self.polarity[index]
        amplitude = self.amplitude[index]
        step_size = self.step_size[index]

        # Did the last pulse move the cell in its own direction (an overshoot counts too)?
        threshold = np.maximum(config.min_movement, config.movement_sigmas * self.read_noise)
        threshold = threshold * np.abs(g_now)
        change = np.where(last != 0, (g_now - self.previous[index]) * last, 0.0)
        responded = (last != 0) & (change >= threshold)
        self.moved_ever[index[responded]] = True
        self.forced[index[responded]] = 0
        last_max = self.maxima[(last < 0).astype(np.int64)]
        at_max = (last != 0) & (amplitude >= last_max - 1e-12)
        stall = np.where(at_max & ~responded, self.stall[index] + 1, 0)

        # A cell that never moved and stalls gets one probe in the opposite polarity: if that
        # moves it, it was saturated at the edge of its window, not stuck.
        gave_up = stall >= config.stall_pulses
        probe = gave_up & ~self.moved_ever[index] & ~self.probed[index]
        self.probed[index[probe]] = True
        self.forced[index[probe]] = -last[probe]
        stall[probe] = 0
        gave_up &= ~probe
        self.stall[index] = stall
        self.status[index[gave_up]] = np.where(self.moved_ever[index[gave_up]], UNRESPONSIVE, STUCK)
        capped = ~gave_up & (self.run_pulses[index] >= config.max_pulses)
        self.status[index[capped]] = MAX_PULSES
        ledger = self.crossbar.ledger
        rows, cols = self.cells[index, 0], self.cells[index, 1]
        worn = ~gave_up & ~capped & (ledger.counts[rows, cols] >= ledger.budget)
        self.status[index[worn]] = ENDURANCE
        go = ~(gave_up | capped | worn)
        index, g_now, last, amplitude = index[go], g_now[go], last[go], amplitude[go]
        step_size, change, responded = step_size[go], change[go], responded[go]
        probe = probe[go]
        if index.size == 0:
            return

        # Polarity from the error sign (SET below the target), unless probing.
        error = self.target[index] - g_now
        forced = self.forced[index]
        sign = np.where(forced != 0, forced, np.where(error > 0, 1, -1)).astype(np.int8)
        side = (sign < 0).astype(np.int64)  # 0 SET, 1 RESET
        start, ramp_step, ramp_max = self.starts[side], self.steps[side], self.maxima[side]
        first = last == 0
        flipped = ~first & (last != sign)
        same = ~first & ~flipped

        # First pulse (or reopened after verify): full step. Overshoot: smaller step. Either way
        # the polarity restarts a step below the amplitude it last used (not below its start).
        step_size = np.where(first & (step_size == 0), ramp_step, step_size)
        overshoot = flipped & ~probe
        reduced = np.maximum(step_size * config.step_reduction, config.min_step)
        step_size = np.where(overshoot, reduced, step_size)
        restart = np.maximum(start, self.last_used[index, side] - step_size)
        amplitude = np.where(first | flipped, restart, amplitude)
        # Same polarity: ramp up while the cell does not move; hold while it moves; step down
        # when the last change was as large as the remaining error (it would overshoot).
        slow = same & (~responded | (change * config.hold_pulses < np.abs(error)))
        amplitude = np.where(slow, np.minimum(amplitude + step_size, ramp_max), amplitude)
        too_big = same & responded & (forced == 0) & (change >= np.abs(error))
        amplitude = np.where(too_big, np.maximum(amplitude - step_size, start), amplitude)
        self.step_size[index] = step_size

        if config.amplitude_resolution > 0:
            grid = config.amplitude_resolution
            amplitude = np.minimum(np.round(amplitude / grid) * grid, ramp_max)
        g_new = self.crossbar.pulse_and_read(
            self.cells[index],
            sign * amplitude,
            config.pulse_width,
            config.v_read,
            config.averages,
        )
        self.iterations += 1
        self.previous[index] = self.g[index]
        self.g[index] = g_new
        self.pulses[index] += 1
        self.run_pulses[index] += 1
        self.polarity[index] = sign
        self.amplitude[index] = amplitude
        self.last_used[index, side] = amplitude
        self._finish_converged(index)
