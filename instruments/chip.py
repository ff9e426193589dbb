"""`SimulatedChip`: a physical memristor crossbar in software, behind the simulated backend and
every wire-level emulator.

The chip only knows line voltages. `drive` applies voltages to word and bit lines (NaN = floating)
for a while; `read_batch` applies many read configurations without changing anything. Everything
else (which cell is selected, bias schemes, half-select disturb, sneak paths) follows from where
the voltages are put. SI units throughout: V, A, S, s, Ohm; arrays (row, col) = (word, bit line).

Physics, all seeded from `ChipParameters.seed` (numpy Generator streams for the chip's draws and for
its noise):

- State: each device holds a conductance G in its own window [G_off, G_on]; the window is the
  device preset's (g_off, g_on) times lognormal device-to-device factors exp(d2d_sigma * z).
- Current: Poole-Frenkel, I = sgn(V) c |V| exp(beta sqrt|V|), beta = (q/k_B T) sqrt(q/(pi d_eps)),
  with [ln c, ln d_eps] = slope ln(1/G) + intercept + residual (the preset's regression; the
  residual normals are drawn once per device and kept, so c and d_eps follow G). "ohmic" presets
  give I = G V. G is therefore the state variable, and a read's I/V differs from it (by ~1.8x at
  0.1 V for high-R SiOx); `conductances(v)` gives the ground-truth I/V.
- Switching, per pulse of width w (s) at device voltage V (word minus bit):
  V > V_set:    G += f (G_on - G),  V < -V_reset:  G -= f (G - G_off),
  f = min(1, rate (|V| - V_th) (w / reference_width)^width_exponent * exp(s z - s^2 / 2)),
  s = c2c_sigma, per-device thresholds V_set, V_reset drawn N(v_set, threshold_sigma^2) and z
  fresh per pulse. Half-selected cells see V/2 or V/3 and switch only when that crosses their
  threshold.
- Stuck devices: fractions stuck at G_off, at G_on, or at a log-uniformly drawn value in their
  window; they never switch or relax.
- Relaxation: after its last switching event at time t_p, a device's G drifts toward its resting
  value G_rest = G_off + rest_fraction (G_on - G_off):
  G(t) = G_rest + (G_p - G_rest) max(0, 1 - relaxation_rate ln(1 + (t - t_p) / relaxation_time)).
  `advance(s)` and the duration of each `drive` call move time on; reads do not.
- Read noise: every measured terminal current gets Gaussian noise of standard deviation
  sqrt((read_noise I)^2 + read_noise_floor^2) (divided by sqrt(averages) for averaged reads).
- Circuit: with every line driven and r_word = r_bit = 0, device voltages are V_word_i - V_bit_j
  exactly and everything is elementwise; floating lines or line resistance go through
  `simulation.circuit.solve_lines` (Newton's method for Poole-Frenkel devices).
"""

from __future__ import annotations

import math
import os
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from simulation.circuit import solve_lines
from simulation.config import (
    ConfigError,
    key_path,
    read_choice,
    read_float,
    read_int,
    reject_unknown_keys,
    require_mapping,
)
from simulation.current_models import Ohmic, PooleFrenkel
from simulation.device_model import DeviceModel
from simulation.iv import ROOM_TEMPERATURE, poole_frenkel_exponent_coefficient

INITIAL_STATES = ("off", "on", "rest", "random")
"""`initial_state` choices: every device at its G_off, its G_on, its resting value, or uniform."""

DEFAULT_DEVICE = "siox-high-r"

_MIN_WINDOW_RATIO = 1.1
"""Each device's G_on is at least this multiple of its G_off (after d2d variation)."""

_ELEMENTWISE_CHUNK = 2**21
"""Most device currents the elementwise read path evaluates at once."""

RELAXATION_STEP = 0.01
"""s: simulated-time resolution of relaxation (a programmed state's change over 10 ms is far below
read noise, and re-evaluating it at every reading would dominate emulated array reads)."""

_MAX_LEVEL_PAIRS = 36
"""read_batch evaluates devices once per (word level, bit level) pair when a batch uses at most this
many pairs of distinct voltages (bias-scheme reads use 1 to 9), then sums with matrix products."""

# name -> (kind, default, minimum, maximum, exclusive minimum); documented on ChipParameters.
_NUMBERS: dict[str, tuple[str, Any, float | None, float | None, bool]] = {
    "rows": ("int", 32, 1, 4096, False),
    "cols": ("int", 32, 1, 4096, False),
    "seed": ("int", 0, 0, None, False),
    "g_off": ("float", 5.25e-7, 0.0, None, True),
    "g_on": ("float", 2.62e-6, 0.0, None, True),
    "d2d_sigma": ("float", 0.1, 0.0, 2.0, False),
    "stuck_off_fraction": ("float", 0.01, 0.0, 1.0, False),
    "stuck_on_fraction": ("float", 0.005, 0.0, 1.0, False),
    "stuck_random_fraction": ("float", 0.005, 0.0, 1.0, False),
    "read_noise": ("float", 0.005, 0.0, 1.0, False),
    "read_noise_floor": ("float", 1e-11, 0.0, None, False),
    "v_set": ("float", 0.7, 0.0, None, True),
    "v_reset": ("float", 0.7, 0.0, None, True),
    "threshold_sigma": ("float", 0.03, 0.0, None, False),
    "set_rate": ("float", 0.5, 0.0, None, False),
    "reset_rate": ("float", 0.5, 0.0, None, False),
    "reference_width": ("float", 1e-5, 0.0, None, True),
    "width_exponent": ("float", 0.3, 0.0, 2.0, False),
    "c2c_sigma": ("float", 0.3, 0.0, 3.0, False),
    "relaxation_rate": ("float", 0.005, 0.0, 1.0, False),
    "relaxation_time": ("float", 1.0, 0.0, None, True),
    "rest_fraction": ("float", 0.3, 0.0, 1.0, False),
    "r_word": ("float", 0.0, 0.0, None, False),
    "r_bit": ("float", 0.0, 0.0, None, False),
    "temperature": ("float", ROOM_TEMPERATURE, 0.0, None, True),
}

CHIP_KEYS = (*_NUMBERS, "device", "initial_state")
"""Keys a [chip] table may hold."""


@dataclass(frozen=True)
class ChipParameters:
    """Everything that defines a simulated chip. Units: S, V, s, Ohm, K.

    rows, cols: word and bit lines. seed: seeds every random draw and all noise.
    device: the device preset (name in configs/devices) the window and I-V regression came from.
    g_off, g_on: nominal conductance window (S), the preset's unless overridden.
    current_model: the preset's I-V model, `PooleFrenkel` (its regression slope, intercept,
        residual_std, residual_correlation are used) or `Ohmic`.
    temperature: device temperature (K) of the Poole-Frenkel current.
    d2d_sigma: lognormal sigma of each device's own G_off and G_on (device-to-device).
    stuck_off_fraction, stuck_on_fraction, stuck_random_fraction: probabilities that a device is
        stuck at its G_off, its G_on, or a log-uniform value in its window (they must sum <= 1).
    read_noise: relative standard deviation of a measured current; read_noise_floor: absolute
        standard deviation (A) added in quadrature.
    v_set, v_reset: mean SET threshold (V > v_set) and RESET threshold (V < -v_reset), V;
        threshold_sigma: device-to-device standard deviation of both (V).
    set_rate, reset_rate: fraction of the remaining window moved per volt of overdrive by a pulse
        of reference_width (1/V); reference_width (s); width_exponent: steps scale as
        (width / reference_width) ** width_exponent; c2c_sigma: lognormal sigma of each step
        (cycle-to-cycle, mean-preserving).
    relaxation_rate: fraction of the distance to the resting value lost per e-fold of time since
        programming; relaxation_time: time scale (s) of that log-time law; rest_fraction: where in
        each device's window the resting value lies (0 = G_off, 1 = G_on).
    r_word, r_bit: resistance (Ohm) of one word-line / bit-line segment between adjacent cells.
    initial_state: "off", "on", "rest" or "random" (uniform in each device's window).
    """

    rows: int = 32
    cols: int = 32
    seed: int = 0
    device: str = DEFAULT_DEVICE
    g_off: float = 5.25e-7
    g_on: float = 2.62e-6
    current_model: PooleFrenkel | Ohmic = field(default_factory=PooleFrenkel.high_r_siox)
    temperature: float = ROOM_TEMPERATURE
    d2d_sigma: float = 0.1
    stuck_off_fraction: float = 0.01
    stuck_on_fraction: float = 0.005
    stuck_random_fraction: float = 0.005
    read_noise: float = 0.005
    read_noise_floor: float = 1e-11
    v_set: float = 0.7
    v_reset: float = 0.7
    threshold_sigma: float = 0.03
    set_rate: float = 0.5
    reset_rate: float = 0.5
    reference_width: float = 1e-5
    width_exponent: float = 0.3
    c2c_sigma: float = 0.3
    relaxation_rate: float = 0.005
    relaxation_time: float = 1.0
    rest_fraction: float = 0.3
    r_word: float = 0.0
    r_bit: float = 0.0
    initial_state: str = "off"

    def __post_init__(self) -> None:
        values = asdict(self)
        values.pop("current_model")
        _read_numbers(values, "chip")
        if self.g_on <= self.g_off:
            raise ConfigError(
                f"chip.g_on: {self.g_on!r} S must be larger than g_off = {self.g_off!r} S"
            )
        stuck = self.stuck_off_fraction + self.stuck_on_fraction + self.stuck_random_fraction
        if stuck > 1:
            raise ConfigError(f"chip: stuck fractions sum to {stuck!r}; allowed: <= 1")
        if self.initial_state not in INITIAL_STATES:
            raise ConfigError(
                f"chip.initial_state: {self.initial_state!r} is not allowed; "
                f"allowed: {list(INITIAL_STATES)}"
            )
        if not isinstance(self.current_model, PooleFrenkel | Ohmic):
            raise ConfigError(
                f"chip.current_model: {self.current_model!r} is not supported; the simulated chip "
                "implements 'poole_frenkel' and 'ohmic'"
            )

    def to_config(self) -> dict[str, Any]:
        """A [chip] table that `from_config` reads back (window from g_off/g_on, model from the
        preset named by `device`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "current_model"}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "chip") -> ChipParameters:
        """Read a [chip] table (keys `CHIP_KEYS`); unknown keys raise ConfigError naming them."""
        table = require_mapping(config, where)
        reject_unknown_keys(table, CHIP_KEYS, where)
        reference = table.get("device", DEFAULT_DEVICE)
        model = _load_device(reference, key_path(where, "device"))
        name = reference if isinstance(reference, str) else str(reference.get("name", "inline"))
        numbers = _read_numbers(table, where, model)
        if numbers["g_on"] <= numbers["g_off"]:
            raise ConfigError(
                f"{key_path(where, 'g_on')}: {numbers['g_on']!r} S must be larger than "
                f"g_off = {numbers['g_off']!r} S"
            )
        initial = read_choice(table, "initial_state", where, INITIAL_STATES, default="off")
        if "temperature" not in table and isinstance(model.current_model, PooleFrenkel):
            numbers["temperature"] = model.current_model.temperature
        try:
            return cls(
                device=name, current_model=model.current_model, initial_state=initial, **numbers
            )
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None


def _read_numbers(
    table: Mapping[str, Any], where: str, model: DeviceModel | None = None
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, (kind, default, minimum, maximum, exclusive) in _NUMBERS.items():
        if model is not None and name in ("g_off", "g_on"):
            default = getattr(model.g_range, name)
        if kind == "int":
            values[name] = read_int(table, name, where, default=default, minimum=minimum,
                                    maximum=maximum)  # fmt: skip
        else:
            values[name] = read_float(table, name, where, default=default, minimum=minimum,
                                      maximum=maximum, exclusive_minimum=exclusive)  # fmt: skip
    return values


def device_preset_path(name: str) -> Path:
    """configs/devices/<name>.toml (or $XBARLAB_CONFIG_DIR/devices), or a path to a .toml file."""
    candidate = Path(name)
    if candidate.suffix == ".toml":
        return candidate
    root = Path(
        os.environ.get("XBARLAB_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs")
    )
    return root / "devices" / f"{name}.toml"


def _load_device(reference: Any, where: str) -> DeviceModel:
    """A device preset by name or path, or an inline table, as a validated DeviceModel."""
    if isinstance(reference, Mapping):
        return DeviceModel.from_config(reference, where)
    if not isinstance(reference, str):
        raise ConfigError(f"{where}: expected a preset name or a table, got {reference!r}")
    path = device_preset_path(reference)
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.toml"))
        raise ConfigError(f"{where}: device preset {reference!r} not found; known: {known}")
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    model = DeviceModel.from_config(table, f"{path}:")
    if not isinstance(model.current_model, PooleFrenkel | Ohmic):
        raise ConfigError(
            f"{where}: preset {reference!r} uses current model {model.current_model.kind!r}; "
            "the simulated chip implements 'poole_frenkel' and 'ohmic'"
        )
    return model


class _Devices:
    """Per-device I(V) = V c exp(beta sqrt|V|) and dI/dV for fixed c (S), beta (V^-1/2)."""

    def __init__(self, c: np.ndarray, beta: np.ndarray) -> None:
        self.c, self.beta = c, beta
        self.linear = not np.any(beta)

    def current(self, volts: np.ndarray) -> np.ndarray:
        if self.linear:
            return volts * self.c
        return volts * self.c * np.exp(self.beta * np.sqrt(np.abs(volts)))

    def slope(self, volts: np.ndarray) -> np.ndarray:
        if self.linear:
            return np.broadcast_to(self.c, volts.shape)
        x = self.beta * np.sqrt(np.abs(volts))
        return self.c * np.exp(x) * (1.0 + 0.5 * x)

    def at(self, cells: Any) -> _Devices:
        """The devices at index `cells` (any numpy index into (rows, cols))."""
        return _Devices(self.c[cells], self.beta[cells])


class SimulatedChip:
    """A seeded memristor crossbar (see the module docstring for its physics).

    Thread-safe: every public method holds `lock` (an RLock emulators may also hold around a
    sequence of calls).
    """

    def __init__(self, parameters: ChipParameters | None = None) -> None:
        p = parameters if parameters is not None else ChipParameters()
        self.parameters = p
        self.shape: tuple[int, int] = (p.rows, p.cols)
        self.lock = threading.RLock()
        self.time: float = 0.0
        draws, noise = np.random.SeedSequence(p.seed).spawn(2)
        rng = np.random.default_rng(draws)
        self._noise = np.random.default_rng(noise)
        shape = self.shape
        self.g_off = p.g_off * np.exp(p.d2d_sigma * rng.standard_normal(shape))
        g_on = p.g_on * np.exp(p.d2d_sigma * rng.standard_normal(shape))
        self.g_on = np.maximum(g_on, _MIN_WINDOW_RATIO * self.g_off)
        self.v_set = np.maximum(p.v_set + p.threshold_sigma * rng.standard_normal(shape), 1e-3)
        self.v_reset = np.maximum(p.v_reset + p.threshold_sigma * rng.standard_normal(shape), 1e-3)
        self._normals = rng.standard_normal((2, *shape))
        self.g_rest = self.g_off + p.rest_fraction * (self.g_on - self.g_off)
        # Stuck devices: one uniform per device picks off / on / random / free.
        pick = rng.random(shape)
        edges = np.cumsum([p.stuck_off_fraction, p.stuck_on_fraction, p.stuck_random_fraction])
        self.stuck_kind = np.select(
            [pick < edges[0], pick < edges[1], pick < edges[2]], [1, 2, 3], default=0
        ).astype(np.int8)
        """0 free, 1 stuck at G_off, 2 stuck at G_on, 3 stuck at a drawn value (ground truth)."""
        self.stuck = self.stuck_kind > 0
        """bool (rows, cols): devices that never move (ground truth for tests)."""
        drawn = np.exp(rng.uniform(np.log(self.g_off), np.log(self.g_on)))
        initial = {
            "off": self.g_off,
            "on": self.g_on,
            "rest": self.g_rest,
            "random": rng.uniform(self.g_off, self.g_on),
        }[p.initial_state]
        g = np.select(
            [self.stuck_kind == 1, self.stuck_kind == 2, self.stuck_kind == 3],
            [self.g_off, self.g_on, drawn],
            default=initial,
        )
        self._g_programmed = g.astype(float)
        self._t_programmed = np.zeros(shape)
        self._cache: tuple[int, np.ndarray, _Devices] | None = None
        if isinstance(p.current_model, PooleFrenkel):
            model = p.current_model
            (a1, a2), (b1, b2) = model.slope, model.intercept
            s1, s2 = model.residual_std
            rho = model.residual_correlation
            self._pf: tuple[float, ...] | None = (a1, a2, b1, b2, s1, s2, rho)
        else:
            self._pf = None
        self._lowest_thresholds = (float(self.v_set.min()), float(self.v_reset.min()))
        self._read_limit = min(self._lowest_thresholds)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "chip") -> SimulatedChip:
        """A chip from a [chip] table (see `ChipParameters` for the keys and their defaults)."""
        return cls(ChipParameters.from_config(config, where))

    # -- ground truth ---------------------------------------------------------------------------

    def state(self) -> np.ndarray:
        """The state variable G (rows, cols) in S of every device now (after relaxation)."""
        with self.lock:
            return self._now()[0].copy()

    def set_state(self, g: np.ndarray) -> None:
        """Put every device (stuck ones included) at state G (rows, cols) in S now, as if just
        programmed: a shortcut for tests and teaching; real chips need write-verify."""
        g = np.asarray(g, dtype=float)
        if g.shape != self.shape or not np.all(np.isfinite(g) & (g > 0)):
            raise ValueError(f"set_state: expected finite positive G of shape {self.shape}")
        with self.lock:
            self._g_programmed = g.copy()
            self._t_programmed = np.full(self.shape, self.time)
            self._cache = None

    def poole_frenkel_parameters(self) -> tuple[np.ndarray, np.ndarray]:
        """Each device's Poole-Frenkel c (S) and d_epsilon (F) now, (rows, cols) each."""
        with self.lock:
            if self._pf is None:
                raise ValueError("poole_frenkel_parameters: this chip's devices are Ohmic")
            g = self._now()[0]
            log_c, log_d = self._log_parameters(g)
            return np.exp(log_c), np.exp(log_d)

    def device_currents(self, voltages: np.ndarray | float) -> np.ndarray:
        """Noise-free currents (..., rows, cols) in A of every device at device voltages
        (V_word - V_bit) broadcastable to (..., rows, cols)."""
        volts = np.asarray(voltages, dtype=float)
        volts = np.broadcast_to(volts, np.broadcast_shapes(volts.shape, self.shape))
        with self.lock:
            return self._now()[1].current(volts)

    def conductances(self, v_read: float = 0.1) -> np.ndarray:
        """Noise-free ground truth I/V of every device at v_read (rows, cols), S (for tests)."""
        if v_read == 0 or not math.isfinite(v_read):
            raise ValueError(f"v_read: {v_read!r} must be a finite non-zero voltage")
        return self.device_currents(float(v_read)) / v_read

    # -- time -----------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Let `seconds` (>= 0) of simulated time pass: programmed states relax."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"advance: seconds {seconds!r} must be finite and >= 0")
        with self.lock:
            self.time += float(seconds)

    # -- electrical access ----------------------------------------------------------------------

    def drive(
        self, word_voltages: np.ndarray, bit_voltages: np.ndarray, duration: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Apply voltages (V) to the word lines (rows,) and bit lines (cols,) for `duration`
        seconds; NaN = that line is floating (disconnected). Returns the currents (A) flowing
        from each line's terminal into the array: word (rows,), bit (cols,) (0 for floating
        lines). Device voltages are V_word_i - V_bit_j (solved through the circuit when lines
        float or line resistance is non-zero). Devices whose |voltage| exceeds their switching
        threshold change state (pulse physics); currents include read noise. Advances time."""
        words = self._check_lines(word_voltages, self.shape[0], "word_voltages")
        bits = self._check_lines(bit_voltages, self.shape[1], "bit_voltages")
        if not (math.isfinite(duration) and duration >= 0):
            raise ValueError(f"drive: duration {duration!r} s must be finite and >= 0")
        with self.lock:
            devices = self._now()[1]
            if self._all_driven(words, bits):
                word_out, bit_out, cells, volts = self._driven_blocks(words, bits, devices)
            else:
                solution = self._solve(words[None], bits[None], devices, True)
                volts = solution.device_voltages[0].ravel()
                cells = np.arange(volts.size)
                word_out, bit_out = solution.word_currents[0], solution.bit_currents[0]
            word_out = self._noisy(word_out, ~np.isnan(words), 1)
            bit_out = self._noisy(bit_out, ~np.isnan(bits), 1)
            if duration > 0:
                self._switch(cells, volts, float(duration))
                self.time += float(duration)
            return word_out, bit_out

    def read_batch(
        self, word_voltages: np.ndarray, bit_voltages: np.ndarray, averages: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Many independent read configurations at once: word (n, rows), bit (n, cols), NaN =
        floating; returns word currents (n, rows) and bit currents (n, cols) with read noise
        (each the mean of `averages` reads); no state change. Raises ValueError when a
        configuration could put more than the lowest switching threshold across a device."""
        words = np.atleast_2d(np.asarray(word_voltages, dtype=float))
        bits = np.atleast_2d(np.asarray(bit_voltages, dtype=float))
        if words.ndim != 2 or words.shape[1] != self.shape[0]:
            raise ValueError(f"word_voltages: expected (n, {self.shape[0]}), got {words.shape}")
        if bits.ndim != 2 or bits.shape[1] != self.shape[1] or len(bits) != len(words):
            raise ValueError(
                f"bit_voltages: expected ({len(words)}, {self.shape[1]}), got {bits.shape}"
            )
        if np.any(np.isinf(words)) or np.any(np.isinf(bits)):
            raise ValueError("read_batch: voltages must be finite or NaN (floating)")
        if averages < 1:
            raise ValueError(f"read_batch: averages {averages!r} must be >= 1")
        if words.shape[0] == 0:
            return np.zeros((0, self.shape[0])), np.zeros((0, self.shape[1]))
        with self.lock:
            devices = self._now()[1]
            if self._all_driven(words, bits):
                # Device voltages are exactly V_word - V_bit: the largest is max(w) - min(b).
                worst = max(
                    float(np.max(words.max(axis=1) - bits.min(axis=1))),
                    float(np.max(bits.max(axis=1) - words.min(axis=1))),
                )
                self._check_read_level(worst)
                word_out, bit_out = self._fast_currents(words, bits, devices)
            else:
                word_out, bit_out = self._solved_currents(words, bits, devices)
            word_out = self._noisy(word_out, ~np.isnan(words), averages)
            bit_out = self._noisy(bit_out, ~np.isnan(bits), averages)
            return word_out, bit_out

    # -- internals ------------------------------------------------------------------------------

    def _check_read_level(self, worst: float) -> None:
        if worst > self._read_limit:
            raise ValueError(
                f"read_batch: a device would see {worst:.4g} V, more than the lowest switching "
                f"threshold on this chip ({self._read_limit:.4g} V); use drive() to switch devices"
            )

    def _solved_currents(
        self, words: np.ndarray, bits: np.ndarray, devices: _Devices
    ) -> tuple[np.ndarray, np.ndarray]:
        """Terminal currents through the circuit solver, in chunks of configurations (each
        chunk's device voltages are checked against the switching thresholds)."""
        n = words.shape[0]
        rows, cols = self.shape
        word_out, bit_out = np.empty((n, rows)), np.empty((n, cols))
        step = max(1, _ELEMENTWISE_CHUNK // (rows * cols))
        for start in range(0, n, step):
            part = slice(start, start + step)
            solution = self._solve(words[part], bits[part], devices, True)
            self._check_read_level(float(np.max(np.abs(solution.device_voltages))))
            word_out[part], bit_out[part] = solution.word_currents, solution.bit_currents
        return word_out, bit_out

    @staticmethod
    def _check_lines(voltages: np.ndarray, size: int, name: str) -> np.ndarray:
        array = np.asarray(voltages, dtype=float)
        if array.shape != (size,):
            raise ValueError(f"{name}: expected shape ({size},), got {array.shape}")
        if np.any(np.isinf(array)):
            raise ValueError(f"{name}: voltages must be finite or NaN (floating)")
        return array

    def _all_driven(self, words: np.ndarray, bits: np.ndarray) -> bool:
        p = self.parameters
        return (
            p.r_word == 0 and p.r_bit == 0 and not (np.isnan(words).any() or np.isnan(bits).any())
        )

    def _log_parameters(
        self, g: np.ndarray, normals: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """ln c and ln d_epsilon per device at state G (the preset's regression on R = 1/G), with
        the devices' residual normals (2, *g.shape) (default: every device's)."""
        a1, a2, b1, b2, s1, s2, rho = self._pf  # type: ignore[misc]
        log_r = -np.log(g)
        z1, z2 = self._normals if normals is None else normals
        log_c = a1 * log_r + b1 + s1 * z1
        log_d = a2 * log_r + b2 + s2 * rho * z1 + s2 * math.sqrt(1.0 - rho * rho) * z2
        return log_c, log_d

    def _now(self) -> tuple[np.ndarray, _Devices]:
        """(G, device I-V) at the current time, cached until time moves on by RELAXATION_STEP;
        `_switch` updates the cache in place for the devices it changes."""
        # Relaxation is slow (log time): the state is re-evaluated every RELAXATION_STEP s of
        # simulated time, not at every reading.
        key = math.floor(self.time / RELAXATION_STEP)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        g = self._relaxed()
        c, beta = self._device_parameters(g, self._normals)
        devices = _Devices(c, beta)
        self._cache = (key, g, devices)
        return g, devices

    def _relaxed(self, cells: np.ndarray | None = None) -> np.ndarray:
        """States G (S) now: of every device (rows, cols), or of the flat cell indices `cells`."""

        def pick(array: np.ndarray) -> np.ndarray:
            return array if cells is None else array.ravel()[cells]

        g = np.array(pick(self._g_programmed), dtype=float)
        p = self.parameters
        if p.relaxation_rate == 0:
            return g
        age = np.maximum(self.time - pick(self._t_programmed), 0.0)
        keep = np.maximum(0.0, 1.0 - p.relaxation_rate * np.log1p(age / p.relaxation_time))
        rest = pick(self.g_rest)
        return np.where(pick(self.stuck), g, rest + (g - rest) * keep)

    def _device_parameters(self, g: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, ...]:
        """Poole-Frenkel c (S) and beta (V^-1/2) of devices at states g (Ohmic: c = g, beta =
        0), with their residual normals (2, *g.shape)."""
        if self._pf is None:
            return g, np.zeros_like(g)
        log_c, log_d = self._log_parameters(g, normals)
        beta = poole_frenkel_exponent_coefficient(np.exp(log_d), self.parameters.temperature)
        return np.exp(log_c), np.asarray(beta)

    def _solve(self, words: np.ndarray, bits: np.ndarray, devices: _Devices, voltages: bool):
        p = self.parameters
        if devices.linear:
            return solve_lines(words, bits, devices.c, p.r_word, p.r_bit,
                               return_device_voltages=voltages)  # fmt: skip
        return solve_lines(words, bits, None, p.r_word, p.r_bit, current=devices.current,
                           slope=devices.slope, return_device_voltages=voltages)  # fmt: skip

    def _fast_currents(
        self, words: np.ndarray, bits: np.ndarray, devices: _Devices
    ) -> tuple[np.ndarray, np.ndarray]:
        """Terminal currents of n fully driven configurations without line resistance."""
        n = words.shape[0]
        rows, cols = self.shape
        if devices.linear:
            g = devices.c
            word_out = words * g.sum(axis=1) - bits @ g.T
            bit_out = -(words @ g) + bits * g.sum(axis=0)
            return word_out, bit_out
        levels_w, index_w = np.unique(words, return_inverse=True)
        levels_b, index_b = np.unique(bits, return_inverse=True)
        index_w, index_b = index_w.reshape(words.shape), index_b.reshape(bits.shape)
        pairs = len(levels_w) * len(levels_b)
        word_out, bit_out = np.zeros((n, rows)), np.zeros((n, cols))
        if pairs <= _MAX_LEVEL_PAIRS:
            # Device (i, j) of configuration k sees level_w[a] - level_b[b] with a = index_w[k, i],
            # b = index_b[k, j]: evaluate each pair's currents once and sum with indicator matmuls.
            bit_masks = [(index_b == b).astype(float) for b in range(len(levels_b))]
            for a, level_w in enumerate(levels_w):
                word_mask = (index_w == a).astype(float)
                for b, level_b in enumerate(levels_b):
                    table = devices.current(np.full(self.shape, level_w - level_b))
                    word_out += word_mask * (bit_masks[b] @ table.T)
                    bit_out -= bit_masks[b] * (word_mask @ table)
            return word_out, bit_out
        step = max(1, _ELEMENTWISE_CHUNK // (rows * cols))
        for start in range(0, n, step):
            w, b = words[start : start + step], bits[start : start + step]
            flow = devices.current(w[:, :, None] - b[:, None, :])
            word_out[start : start + step] = flow.sum(axis=2)
            bit_out[start : start + step] = -flow.sum(axis=1)
        return word_out, bit_out

    def read_isolated(
        self, rows: np.ndarray, cols: np.ndarray, v_read: float, averages: int = 1
    ) -> np.ndarray | None:
        """Bit-line currents (n,) in A of single-cell reads with every other line grounded:
        word rows[k] at v_read, all bit lines at 0 V. With ideal lines (r_word = r_bit = 0) only
        the selected device's current reaches its bit line, so this is what `read_batch` returns
        for those configurations (same noise model) without evaluating the whole array per
        cell. None when the lines have resistance (use read_batch)."""
        p = self.parameters
        if p.r_word != 0 or p.r_bit != 0:
            return None
        self._check_read_level(abs(float(v_read)))
        with self.lock:
            devices = self._now()[1]
            currents = devices.at((rows, cols)).current(np.full(len(rows), float(v_read)))
            return self._noisy(-currents, np.ones(len(rows), dtype=bool), averages)

    def _noisy(self, currents: np.ndarray, measured: np.ndarray, averages: int) -> np.ndarray:
        """Currents plus Gaussian read noise; unmeasured (floating) terminals stay exactly 0."""
        p = self.parameters
        if p.read_noise == 0 and p.read_noise_floor == 0:
            return np.where(measured, currents, 0.0)
        std = np.hypot(p.read_noise * currents, p.read_noise_floor) / math.sqrt(averages)
        noisy = currents + std * self._noise.standard_normal(currents.shape)
        return np.where(measured, noisy, 0.0)

    def _driven_blocks(
        self, words: np.ndarray, bits: np.ndarray, devices: _Devices
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One fully driven configuration with ideal lines: terminal currents word (rows,) and
        bit (cols,) in A, and the flat indices and voltages (V) of the devices that could switch.

        Devices are grouped by (word level, bit level): a group at 0 V carries no current and
        is skipped, so a bias-scheme pulse touches one row and the selected columns, not the
        whole array."""
        rows, cols = self.shape
        levels_w, index_w = np.unique(words, return_inverse=True)
        levels_b, index_b = np.unique(bits, return_inverse=True)
        if len(levels_w) * len(levels_b) > _MAX_LEVEL_PAIRS:
            volts = words[:, None] - bits[None, :]
            flow = devices.current(volts)
            return flow.sum(axis=1), -flow.sum(axis=0), np.arange(volts.size), volts.ravel()
        word_out, bit_out = np.zeros(rows), np.zeros(cols)
        lowest_set, lowest_reset = self._lowest_thresholds
        cells, volts = [], []
        bit_groups = [np.flatnonzero(index_b == b) for b in range(len(levels_b))]
        for a, level_w in enumerate(levels_w):
            group_rows = np.flatnonzero(index_w == a)
            for level_b, group_cols in zip(levels_b, bit_groups, strict=True):
                volt = float(level_w - level_b)
                if volt == 0.0:
                    continue
                flow = devices.at(np.ix_(group_rows, group_cols)).current(np.asarray(volt))
                word_out[group_rows] += flow.sum(axis=1)
                bit_out[group_cols] -= flow.sum(axis=0)
                if volt > lowest_set or -volt > lowest_reset:
                    flat = (group_rows[:, None] * cols + group_cols[None, :]).ravel()
                    cells.append(flat)
                    volts.append(np.full(flat.size, volt))
        if not cells:
            return word_out, bit_out, np.zeros(0, dtype=int), np.zeros(0)
        cells_all, volts_all = np.concatenate(cells), np.concatenate(volts)
        order = np.argsort(cells_all, kind="stable")  # row-major, as the whole-array path
        return word_out, bit_out, cells_all[order], volts_all[order]

    def _switch(self, cells: np.ndarray, volts: np.ndarray, duration: float) -> None:
        """Pulse physics for devices at flat indices `cells` (row-major, increasing) seeing
        `volts` (V): beyond their thresholds they move toward G_on (SET) or G_off (RESET)."""
        p = self.parameters
        free = ~self.stuck.ravel()[cells]
        v_set, v_reset = self.v_set.ravel()[cells], self.v_reset.ravel()[cells]
        set_mask = (volts > v_set) & free
        reset_mask = (volts < -v_reset) & free
        if not (set_mask.any() or reset_mask.any()):
            return
        g_now, devices = self._now()
        g = g_now.ravel()[cells]
        new = g.copy()
        width = (duration / p.reference_width) ** p.width_exponent
        sigma = p.c2c_sigma
        for mask, overdrive, rate, target in (
            (set_mask, volts - v_set, p.set_rate, self.g_on),
            (reset_mask, -volts - v_reset, p.reset_rate, self.g_off),
        ):
            count = int(mask.sum())
            if not count:
                continue
            spread = np.exp(sigma * self._noise.standard_normal(count) - 0.5 * sigma * sigma)
            step = np.minimum(1.0, rate * overdrive[mask] * width * spread)
            new[mask] = g[mask] + step * (target.ravel()[cells[mask]] - g[mask])
        changed = cells[set_mask | reset_mask]
        np.put(self._g_programmed, changed, new[set_mask | reset_mask])
        np.put(self._t_programmed, changed, self.time + duration)
        # The cached state: the changed devices are at their programmed values now.
        fresh = self._relaxed(changed)
        c, beta = self._device_parameters(fresh, self._normals.reshape(2, -1)[:, changed])
        np.put(g_now, changed, fresh)
        np.put(devices.c, changed, c)
        np.put(devices.beta, changed, beta)
