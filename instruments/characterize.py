"""Characterisation of a crossbar through the `Crossbar` API: typed records and the measurements
the fitters (`simulation.fitting`) turn into nonideality models.

- `read_map`: conductance map (rows, cols) in S, mean and std of repeated full-array reads.
- `measure_read_noise`: repeated reads, std / mean per cell.
- `stuck_scan`: a few strong SET then RESET pulses on every cell (array-parallel); a cell whose
  conductance range over the scan is below `threshold` times the median range of all cells is
  stuck (Joksas et al.'s rule "max - min < (G_on - G_off) / 2" with the chip's own swing); its
  value is the mean of its reads; the others are programmed back roughly to where they were.
- `pulse_response`: n SET pulses then n RESET pulses of fixed amplitude, read after each
  (potentiation / depression curves; their extremes give the G window and D2D spread).
- `iv_sweeps`: I-V curves of chosen cells, 0 -> +v_max -> 0 -> -v_max -> 0, |V| within
  limits.max_sweep_voltage (and below the switching thresholds, so the state is kept).
- `characterize(crossbar, config)`: the chosen parts in order (map, read noise, stuck scan, pulse
  response, I-V), with progress events and cancellation like `program_map`; the result's `fit()`
  gives a `simulation.fitting.DeviceFit` whose `to_config()` is a device-model table.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from instruments.crossbar import BiasScheme, Crossbar, as_cells
from instruments.program import (
    ProgramResult,
    ProgressCallback,
    StopCheck,
    WriteVerifyConfig,
    program_map,
)
from simulation.config import (
    ConfigError,
    key_path,
    read_choice,
    read_float,
    read_int,
    reject_unknown_keys,
    require_mapping,
)
from simulation.fitting import (
    DeviceFit,
    device_extremes,
    fit_d2d,
    fit_g_range,
    fit_poole_frenkel,
    fit_programming_noise,
    fit_stuck,
)

PARTS: tuple[str, ...] = ("map", "read_noise", "stuck_scan", "pulse_response", "iv")
REGIONS: tuple[str, ...] = ("all", "deployment")
"""Parts of `characterize`, in the order they run."""


class Cancelled(Exception):
    """Raised inside a part when should_stop() returned True (caught by `characterize`)."""


# -- records ---------------------------------------------------------------------------------


@dataclass
class ConductanceMap:
    """Mean conductances (rows, cols) in S of `averages` full reads at v_read (V), and their
    standard deviation (S, zero when averages = 1)."""

    conductances: np.ndarray
    std: np.ndarray
    v_read: float
    averages: int


@dataclass
class ReadNoise:
    """Per cell over `reads` repeated reads at v_read (V): mean (S), std (S, ddof = 1) and
    relative std = std / mean."""

    mean: np.ndarray
    std: np.ndarray
    v_read: float
    reads: int

    @property
    def relative(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.std / self.mean

    @property
    def median_relative(self) -> float:
        """Median relative std of one read over cells with a positive mean."""
        values = self.relative[np.isfinite(self.relative) & (self.mean > 0)]
        return float(np.median(values)) if values.size else float("nan")


@dataclass
class StuckScan:
    """Stuck-cell scan: reads (rows, cols, 1 + 2 pulses) before, after each SET and each RESET
    pulse (S); stuck (bool) where range < threshold * median range; values = mean of the reads
    (S); `tested` the scanned cells; `restore` the write-verify result that set cells back."""

    reads: np.ndarray
    stuck: np.ndarray
    values: np.ndarray
    tested: np.ndarray
    threshold: float
    swing: float
    set_amplitude: float
    reset_amplitude: float
    width: float
    restore: ProgramResult | None = None

    @property
    def before(self) -> np.ndarray:
        return self.reads[..., 0]

    @property
    def fraction(self) -> float:
        """Stuck cells / tested cells."""
        return float(self.stuck[self.tested].mean()) if self.tested.any() else 0.0


@dataclass
class PulseResponse:
    """Potentiation / depression curves: conductances (cells, 1 + 2 pulses) in S, read before,
    after each of `pulses` SET pulses (+set_amplitude V) and each RESET pulse (-reset_amplitude V),
    all of `width` s."""

    cells: np.ndarray
    conductances: np.ndarray
    pulses: int
    set_amplitude: float
    reset_amplitude: float
    width: float

    @property
    def potentiation(self) -> np.ndarray:
        return self.conductances[:, : self.pulses + 1]

    @property
    def depression(self) -> np.ndarray:
        return self.conductances[:, self.pulses :]

    def extremes(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-cell min and max conductance (S)."""
        return device_extremes(self.conductances)


@dataclass
class IVSweeps:
    """I-V curves of `cells` (n, 2): voltages (points,) in V, currents (n, points) in A;
    `targets` (n,) the conductances the cells were programmed to first (S), or None."""

    cells: np.ndarray
    voltages: np.ndarray
    currents: np.ndarray
    targets: np.ndarray | None = None


@dataclass(frozen=True)
class CharacterizeConfig:
    """What `characterize` measures and how (SI units).

    parts: subset of PARTS. v_read: V (None = the crossbar's). map_averages: full reads averaged.
    noise_reads: repeated reads for the read-noise estimate. stuck_pulses, stuck_set_amplitude,
    stuck_reset_amplitude, stuck_width, stuck_threshold, stuck_restore (restore tolerance,
    relative; 0 = do not restore). pulse_cells, pulse_count, pulse_set_amplitude,
    pulse_reset_amplitude, pulse_width: the pulse-response curves. iv_cells, iv_v_max, iv_points
    (per quarter branch), iv_spread (program the I-V cells to levels across the window first).
    seed: which cells are sampled. region: "all" cells, or "deployment": only the cells a
    caller passes as `region` to `characterize` (e.g. where a network will be placed) are
    stuck-scanned and sampled (the map and read noise always cover the whole array).
    """

    parts: tuple[str, ...] = PARTS
    v_read: float | None = None
    map_averages: int = 4
    noise_reads: int = 16
    stuck_pulses: int = 3
    stuck_set_amplitude: float = 1.6
    stuck_reset_amplitude: float = 1.6
    stuck_width: float = 1e-4
    stuck_threshold: float = 0.5
    stuck_restore: float = 0.1
    pulse_cells: int = 64
    pulse_count: int = 20
    pulse_set_amplitude: float = 1.2
    pulse_reset_amplitude: float = 1.2
    pulse_width: float = 1e-4
    iv_cells: int = 24
    iv_v_max: float = 0.5
    iv_points: int = 11
    iv_spread: bool = True
    iv_bias_scheme: str | None = "grounded"
    seed: int = 0
    region: str = "all"

    def __post_init__(self) -> None:
        where = "characterize config"
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown:
            raise ConfigError(f"{key_path(where, 'parts')}: {unknown!r} unknown; allowed: {PARTS}")
        object.__setattr__(self, "parts", tuple(p for p in PARTS if p in self.parts))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("parts", "v_read", "iv_spread", "iv_bias_scheme", "region"):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{key_path(where, f.name)}: expected a number, got {value!r}")
            if isinstance(f.default, int):
                minimum, allowed = (0, ">= 0") if f.name == "seed" else (1, ">= 1")
                bad = not isinstance(value, int) or value < minimum
            elif f.name == "stuck_restore":
                bad, allowed = not value >= 0, ">= 0"
            else:
                bad, allowed = not value > 0, "> 0"
            if bad:
                raise ConfigError(f"{key_path(where, f.name)}: {value!r}; allowed: {allowed}")
        schemes = [str(scheme) for scheme in BiasScheme]
        if self.iv_bias_scheme is not None and self.iv_bias_scheme not in schemes:
            raise ConfigError(
                f"{key_path(where, 'iv_bias_scheme')}: {self.iv_bias_scheme!r}; allowed: {schemes}"
            )
        if self.region not in REGIONS:
            raise ConfigError(
                f"{key_path(where, 'region')}: {self.region!r}; allowed: {list(REGIONS)}"
            )
        if self.v_read is not None and not self.v_read > 0:
            raise ConfigError(f"{key_path(where, 'v_read')}: {self.v_read!r} must be > 0 V")

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], where: str = "characterize"
    ) -> CharacterizeConfig:
        """Read a `[characterize]` table; missing keys take defaults, unknown keys raise."""
        table = require_mapping(config, where)
        defaults = cls()
        names = [f.name for f in fields(cls)]
        reject_unknown_keys(table, names, where)
        values: dict[str, Any] = {}
        for name in names:
            if name not in table:
                continue
            default = getattr(defaults, name)
            if name == "parts":
                parts = table[name]
                if isinstance(parts, str) or not isinstance(parts, Sequence):
                    raise ConfigError(f"{key_path(where, name)}: expected a list of {PARTS}")
                bad = [p for p in parts if p not in PARTS]
                if bad:
                    raise ConfigError(
                        f"{key_path(where, name)}: {bad!r} not allowed; allowed: {PARTS}"
                    )
                values[name] = tuple(parts)
            elif name == "region":
                values[name] = read_choice(table, name, where, REGIONS)
            elif name == "iv_bias_scheme":
                schemes = tuple(str(scheme) for scheme in BiasScheme)
                values[name] = read_choice(table, name, where, schemes)
            elif name == "iv_spread":
                if not isinstance(table[name], bool):
                    raise ConfigError(f"{key_path(where, name)}: expected true or false")
                values[name] = table[name]
            elif isinstance(default, int) and not isinstance(default, bool):
                values[name] = read_int(table, name, where, minimum=0 if name == "seed" else 1)
            elif name == "stuck_restore":
                values[name] = read_float(table, name, where, minimum=0.0)
            else:
                values[name] = read_float(table, name, where, minimum=0.0, exclusive_minimum=True)
        return cls(**values)

    def to_config(self) -> dict[str, Any]:
        config = {k: v for k, v in asdict(self).items() if v is not None}
        config["parts"] = list(self.parts)
        return config


@dataclass
class Characterisation:
    """Everything `characterize` measured; parts not run are None."""

    config: CharacterizeConfig
    record: dict[str, Any]
    map: ConductanceMap | None = None
    read_noise: ReadNoise | None = None
    stuck_scan: StuckScan | None = None
    pulse_response: PulseResponse | None = None
    iv: IVSweeps | None = None
    cancelled: bool = False
    wall_time_s: float = 0.0
    part_times_s: dict[str, float] = field(default_factory=dict)

    def fit(
        self,
        *,
        program: ProgramResult | None = None,
        name: str = "fitted",
        k_v: float = 0.5,
        resistance_voltage: float = 0.1,
        noise_degree: int = 1,
        window_coverage: float = 0.5,
    ) -> DeviceFit:
        """Fit a device model: G range from the pulse-response extremes (else map percentiles),
        stuck map and values from the stuck scan, D2D from the extremes, Poole-Frenkel from the
        I-V curves, programming noise from a write-verify `program` result if given.
        window_coverage: fraction of devices that can reach both ends of the fitted window
        (0.5: the typical device; higher for deployment by write-verify)."""
        stuck_mask = None if self.stuck_scan is None else self.stuck_scan.stuck
        noise = 0.0 if self.read_noise is None else self.read_noise.median_relative
        g_range = d2d = None
        if self.pulse_response is not None:
            cells = self.pulse_response.cells
            low, high = self.pulse_response.extremes()
            local = None if stuck_mask is None else stuck_mask[cells[:, 0], cells[:, 1]]
            g_range = fit_g_range(g_min=low, g_max=high, stuck=local, coverage=window_coverage)
            if len(cells) >= 2:
                d2d = fit_d2d(low, high, stuck=local, read_noise=noise)
        elif self.map is not None:
            g_range = fit_g_range(self.map.conductances, stuck=stuck_mask)
        if g_range is None:
            raise ValueError("Characterisation.fit: needs a pulse response or a conductance map")
        stuck = None
        if self.stuck_scan is not None:
            scan = self.stuck_scan
            stuck = fit_stuck(scan.stuck, scan.values, tested=scan.tested)
        poole_frenkel = None
        if self.iv is not None:
            poole_frenkel = fit_poole_frenkel(
                self.iv.voltages, self.iv.currents, resistance_voltage=resistance_voltage
            )
        programming_noise = None
        if program is not None:
            valid = program.programmed & (program.status != "stuck")
            programming_noise = fit_programming_noise(
                program.targets, program.achieved, valid=valid, degree=noise_degree
            )
        return DeviceFit(g_range, poole_frenkel, stuck, d2d, programming_noise, name, k_v)


# -- measurements ----------------------------------------------------------------------------


def _check(should_stop: StopCheck | None) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled


def read_map(
    crossbar: Crossbar,
    v_read: float | None = None,
    averages: int = 4,
    should_stop: StopCheck | None = None,
) -> ConductanceMap:
    """Conductance map: mean and std (S) of `averages` full-array reads at v_read (V)."""
    if averages < 1:
        raise ValueError(f"averages: {averages!r} must be >= 1")
    reads = []
    for _ in range(averages):
        _check(should_stop)
        reads.append(np.asarray(crossbar.read_all(v_read), dtype=float))
    stack = np.stack(reads)
    std = stack.std(axis=0, ddof=1) if averages > 1 else np.zeros_like(stack[0])
    v = crossbar.v_read if v_read is None else float(v_read)
    return ConductanceMap(stack.mean(axis=0), std, v, averages)


def measure_read_noise(
    crossbar: Crossbar,
    reads: int = 16,
    v_read: float | None = None,
    should_stop: StopCheck | None = None,
) -> ReadNoise:
    """Read noise from `reads` (>= 2) repeated full-array reads: mean, std per cell (S)."""
    if reads < 2:
        raise ValueError(f"reads: {reads!r} must be >= 2 to estimate a standard deviation")
    result = read_map(crossbar, v_read, reads, should_stop)
    return ReadNoise(result.conductances, result.std, result.v_read, reads)


def stuck_scan(
    crossbar: Crossbar,
    *,
    pulses: int = 3,
    set_amplitude: float = 1.6,
    reset_amplitude: float = 1.6,
    width: float = 1e-4,
    threshold: float = 0.5,
    restore: float = 0.1,
    mask: np.ndarray | None = None,
    v_read: float | None = None,
    averages: int = 2,
    should_stop: StopCheck | None = None,
) -> StuckScan:
    """Find stuck cells by trying to move every cell (in `mask`, default all).

    `pulses` SET pulses (+set_amplitude V) then `pulses` RESET pulses (-reset_amplitude V) of
    `width` s, array-parallel, read after each. A cell is stuck when its range of reads is below
    `threshold` times the median range of all tested cells (the chip's typical swing). With
    restore > 0, non-stuck cells are then written back to their first read within that relative
    tolerance (a quick write-verify, at most 30 pulses each).
    """
    shape = crossbar.shape
    tested = np.ones(shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    cells = np.argwhere(tested)
    n_reads = 1 + 2 * pulses
    reads = np.full((*shape, n_reads), np.nan)
    rows, cols = cells[:, 0], cells[:, 1]
    if len(cells) == 0:
        return StuckScan(
            reads,
            np.zeros(shape, bool),
            np.full(shape, np.nan),
            tested,
            threshold,
            0.0,
            set_amplitude,
            reset_amplitude,
            width,
        )
    reads[rows, cols, 0], _ = crossbar.read_cells(cells, v_read, averages)
    for k in range(2 * pulses):
        _check(should_stop)
        amplitude = set_amplitude if k < pulses else -reset_amplitude
        reads[rows, cols, k + 1] = crossbar.pulse_and_read(
            cells, amplitude, width, v_read, averages
        )
    spans = np.ptp(reads[rows, cols], axis=-1)
    swing = float(np.median(spans))
    stuck = np.zeros(shape, dtype=bool)
    stuck[rows, cols] = spans < threshold * swing
    values = np.full(shape, np.nan)
    values[rows, cols] = np.nanmean(reads[rows, cols], axis=-1)
    restored = None
    if restore > 0:
        _check(should_stop)
        config = WriteVerifyConfig(
            relative_tolerance=restore,
            max_pulses=30,
            verify_rounds=0,
            v_read=v_read,
            pulse_width=width,  # the scan's own width, already within the limits
        )
        targets = reads[..., 0]
        restored = program_map(
            crossbar, np.where(tested & ~stuck, targets, np.nan), config, should_stop=should_stop
        )
    return StuckScan(
        reads,
        stuck,
        values,
        tested,
        threshold,
        swing,
        set_amplitude,
        reset_amplitude,
        width,
        restored,
    )


def pulse_response(
    crossbar: Crossbar,
    cells: Any,
    *,
    pulses: int = 20,
    set_amplitude: float = 1.2,
    reset_amplitude: float = 1.2,
    width: float = 1e-4,
    v_read: float | None = None,
    averages: int = 1,
    should_stop: StopCheck | None = None,
) -> PulseResponse:
    """Potentiation then depression of `cells` (n, 2): read, `pulses` SET pulses of
    +set_amplitude V, `pulses` RESET pulses of -reset_amplitude V, reading after each (S)."""
    cells = as_cells(cells, crossbar.shape)
    crossbar.limits.check_pulse([set_amplitude, -reset_amplitude], width, "pulse response")
    curves = np.empty((len(cells), 1 + 2 * pulses))
    curves[:, 0], _ = crossbar.read_cells(cells, v_read, averages)
    for k in range(2 * pulses):
        _check(should_stop)
        amplitude = set_amplitude if k < pulses else -reset_amplitude
        curves[:, k + 1] = crossbar.pulse_and_read(cells, amplitude, width, v_read, averages)
    return PulseResponse(cells, curves, pulses, set_amplitude, reset_amplitude, width)


def sweep_voltages(v_max: float, points: int) -> np.ndarray:
    """0 -> +v_max -> 0 -> -v_max -> 0 in `points` steps per quarter (4 points + 1 values, V)."""
    if not v_max > 0 or points < 1:
        raise ValueError(f"sweep: need v_max > 0 and points >= 1, got {v_max!r}, {points!r}")
    up = np.linspace(0.0, v_max, points + 1)
    return np.concatenate([up, up[-2::-1], -up[1:], -up[-2::-1]])


def iv_sweeps(
    crossbar: Crossbar,
    cells: Any,
    *,
    v_max: float = 0.5,
    points: int = 11,
    bias_scheme: BiasScheme | str | None = BiasScheme.GROUNDED,
    should_stop: StopCheck | None = None,
) -> IVSweeps:
    """I-V curves of `cells` (n, 2) along `sweep_voltages(v_max, points)`; currents (n, points)
    in A. v_max must be within limits.max_sweep_voltage.

    bias_scheme: what unselected lines see during the sweeps (restored afterwards; None keeps the
    crossbar's). The default, grounded, keeps half-selected cells of the measured bit line at
    0 V, so the current is the cell's own (under V/2 the column's half-selected cells add theirs);
    it applies the full sweep voltage to the rest of the word line, so keep v_max below the
    switching thresholds.
    """
    cells = as_cells(cells, crossbar.shape)
    if v_max > crossbar.limits.max_sweep_voltage:
        raise ValueError(
            f"iv_v_max = {v_max!r} V exceeds limits.max_sweep_voltage = "
            f"{crossbar.limits.max_sweep_voltage!r} V"
        )
    voltages = sweep_voltages(v_max, points)
    currents = np.empty((len(cells), len(voltages)))
    previous = crossbar.bias_scheme
    if bias_scheme is not None:
        crossbar.set_bias_scheme(bias_scheme)
    try:
        for index, (row, col) in enumerate(cells):
            _check(should_stop)
            currents[index] = crossbar.iv_sweep(int(row), int(col), voltages)
    finally:
        crossbar.set_bias_scheme(previous)
    return IVSweeps(cells, voltages, currents)


def _sample_cells(rng: np.random.Generator, allowed: np.ndarray, count: int) -> np.ndarray:
    candidates = np.argwhere(allowed)
    if len(candidates) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    chosen = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return candidates[np.sort(chosen)]


def characterize(
    crossbar: Crossbar,
    config: CharacterizeConfig | Mapping[str, Any] | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    region: np.ndarray | None = None,
) -> Characterisation:
    """Run the configured parts in order; events {"stage": "characterize", "part", "done",
    "total"} before each part and at the end; a stop returns what was measured so far with
    cancelled = True. `region` (bool, rows x cols): the cells stuck-scanned and sampled for
    pulse response and I-V (default: all)."""
    if config is None:
        config = CharacterizeConfig()
    elif not isinstance(config, CharacterizeConfig):
        config = CharacterizeConfig.from_config(config)
    result = Characterisation(config, crossbar.record())
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    total = len(config.parts)

    def report(part: str, done: int) -> None:
        if on_progress is not None:
            on_progress({"stage": "characterize", "part": part, "done": done, "total": total})

    try:
        for done, part in enumerate(config.parts):
            report(part, done)
            _check(should_stop)
            part_start = time.perf_counter()
            _run_part(crossbar, config, result, part, rng, should_stop, region)
            result.part_times_s[part] = time.perf_counter() - part_start
    except Cancelled:
        result.cancelled = True
    result.wall_time_s = time.perf_counter() - started
    report("done", total)
    return result


def _run_part(
    crossbar: Crossbar,
    config: CharacterizeConfig,
    result: Characterisation,
    part: str,
    rng: np.random.Generator,
    should_stop: StopCheck | None,
    region: np.ndarray | None = None,
) -> None:
    shape = crossbar.shape
    allowed = np.ones(shape, dtype=bool) if region is None else np.asarray(region, dtype=bool)
    healthy = allowed.copy()
    if result.stuck_scan is not None:
        healthy &= ~result.stuck_scan.stuck
    if part == "map":
        result.map = read_map(crossbar, config.v_read, config.map_averages, should_stop)
    elif part == "read_noise":
        result.read_noise = measure_read_noise(
            crossbar, config.noise_reads, config.v_read, should_stop
        )
    elif part == "stuck_scan":
        result.stuck_scan = stuck_scan(
            crossbar,
            pulses=config.stuck_pulses,
            set_amplitude=config.stuck_set_amplitude,
            reset_amplitude=config.stuck_reset_amplitude,
            width=config.stuck_width,
            threshold=config.stuck_threshold,
            restore=config.stuck_restore,
            mask=region,
            v_read=config.v_read,
            should_stop=should_stop,
        )
    elif part == "pulse_response":
        cells = _sample_cells(rng, allowed, config.pulse_cells)
        result.pulse_response = pulse_response(
            crossbar,
            cells,
            pulses=config.pulse_count,
            set_amplitude=config.pulse_set_amplitude,
            reset_amplitude=config.pulse_reset_amplitude,
            width=config.pulse_width,
            v_read=config.v_read,
            should_stop=should_stop,
        )
    elif part == "iv":
        cells = _sample_cells(rng, healthy, config.iv_cells)
        targets = None
        window = _window(result) if config.iv_spread else None
        if window is not None and len(cells):
            low, high = window
            levels = np.geomspace(low, high, len(cells))
            targets = rng.permutation(levels)
            map_targets = np.full(shape, np.nan)
            map_targets[cells[:, 0], cells[:, 1]] = targets
            program_map(
                crossbar,
                map_targets,
                WriteVerifyConfig(
                    relative_tolerance=0.05,
                    verify_rounds=0,
                    v_read=config.v_read,
                    pulse_width=max(
                        WriteVerifyConfig().pulse_width, crossbar.limits.min_pulse_width
                    ),
                ),
                should_stop=should_stop,
            )
            _check(should_stop)
        result.iv = iv_sweeps(
            crossbar,
            cells,
            v_max=config.iv_v_max,
            points=config.iv_points,
            bias_scheme=config.iv_bias_scheme,
            should_stop=should_stop,
        )
        result.iv.targets = targets


def _window(result: Characterisation) -> tuple[float, float] | None:
    """Levels to spread I-V cells over: inside the pulse-response window, else the map's."""
    stuck = None if result.stuck_scan is None else result.stuck_scan.stuck
    try:
        if result.pulse_response is not None:
            cells = result.pulse_response.cells
            low, high = result.pulse_response.extremes()
            local = None if stuck is None else stuck[cells[:, 0], cells[:, 1]]
            fit = fit_g_range(g_min=low, g_max=high, stuck=local)
        elif result.map is not None:
            fit = fit_g_range(result.map.conductances, stuck=stuck, percentiles=(5.0, 95.0))
        else:
            return None
    except ValueError:
        return None
    ratio = fit.g_on / fit.g_off
    # Stay a little inside the window so every level is reachable.
    margin = ratio**0.05
    return fit.g_off * margin, fit.g_on / margin
