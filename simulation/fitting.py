"""Fitting nonideality models to measured data (plain numpy arrays in, config tables out).

Every fitter takes arrays in SI units (S, V, A) and returns a frozen dataclass whose `to_config()`
is a table the existing simulation classes accept:

- `fit_g_range` -> `GRangeFit`: g_off, g_on (S) for `simulation.mapping.ConductanceRange`, from
  per-device pulse-response extremes (medians of per-device min and max, as Joksas et al. did for
  Ta/HfO2) or from percentiles of a conductance map, stuck devices excluded.
- `fit_stuck` -> `StuckFit`: stuck probability and the measured stuck values, as a
  `stuck_distribution` (KDE, `simulation.nonidealities.stuck`) table, plus `draws()` that freeze
  the measured chip's own defects (`stuck_draws_from_map`).
- `fit_d2d` -> `D2DFit`: lognormal shape parameters of R at the on and off extremes
  (`d2d_lognormal`).
- `fit_poole_frenkel` -> `PooleFrenkelFit`: per-device PF parameters from I-V curves, then the
  regression [ln c, ln d_epsilon] = slope ln R + intercept with residual std and correlation
  (`simulation.current_models.PooleFrenkel`).
- `fit_programming_noise` -> `ProgrammingNoiseFit`: sigma(G) polynomial of achieved - target after
  write-verify (`programming_noise`).
- `fit_device_model` builds a whole device-model table (`DeviceModel.from_config` accepts it).

No I/O and nothing of `instruments` is imported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from simulation.iv import BOLTZMANN, ELEMENTARY_CHARGE, ROOM_TEMPERATURE
from simulation.nonidealities.base import Draws
from simulation.nonidealities.stuck import stuck_draws_from_map


class FitError(ValueError):
    """The data cannot support the requested fit (too few points, wrong shapes, bad values)."""


def _array(values: npt.ArrayLike, name: str, ndim: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if ndim is not None and array.ndim != ndim:
        raise FitError(f"{name}: expected {ndim} dimension(s), got shape {array.shape}")
    return array


def _mask(mask: npt.ArrayLike | None, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A bool mask of `shape` (all False when None)."""
    if mask is None:
        return np.zeros(shape, dtype=bool)
    array = np.asarray(mask)
    if array.shape != shape:
        raise FitError(f"{name}: expected shape {shape}, got {array.shape}")
    return array.astype(bool)


# -- conductance range ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GRangeFit:
    """Fitted conductance window g_off < g_on (S); `method` says how, `devices` from how many."""

    g_off: float
    g_on: float
    method: str
    devices: int

    @property
    def ratio(self) -> float:
        return self.g_on / self.g_off

    def to_config(self) -> dict[str, float]:
        return {"g_off": float(self.g_off), "g_on": float(self.g_on)}


def device_extremes(curves: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per-device min and max (S) of pulse-response curves (devices..., reads)."""
    array = _array(curves, "pulse-response curves")
    if array.ndim < 2 or array.shape[-1] < 1:
        raise FitError(f"pulse-response curves: expected (devices, reads), got {array.shape}")
    return np.nanmin(array, axis=-1), np.nanmax(array, axis=-1)


def fit_g_range(
    conductances: npt.ArrayLike | None = None,
    *,
    g_min: npt.ArrayLike | None = None,
    g_max: npt.ArrayLike | None = None,
    stuck: npt.ArrayLike | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
    coverage: float = 0.5,
) -> GRangeFit:
    """G window (S) of the non-stuck devices.

    With per-device extremes `g_min`, `g_max` (e.g. from `device_extremes` of pulse-response
    curves): g_off = the `coverage` quantile of g_min and g_on = the (1 - coverage) quantile of
    g_max, so a fraction `coverage` of the devices can reach each end (0.5: the medians, the
    typical device; 0.95: a window nearly every device can be programmed across). Otherwise
    from a conductance map `conductances`: the given lower and upper percentiles (%). `stuck`
    (same shape) excludes devices.
    """
    if g_min is not None or g_max is not None:
        if g_min is None or g_max is None:
            raise FitError("fit_g_range: give both g_min and g_max, or a conductance map")
        low, high = _array(g_min, "g_min"), _array(g_max, "g_max")
        if low.shape != high.shape:
            raise FitError(f"fit_g_range: g_min {low.shape} and g_max {high.shape} differ in shape")
        keep = ~_mask(stuck, low.shape, "stuck") & np.isfinite(low) & np.isfinite(high)
        if not keep.any():
            raise FitError("fit_g_range: no non-stuck device with finite extremes")
        if not 0.0 < coverage < 1.0:
            raise FitError(f"fit_g_range: coverage {coverage!r} must be in (0, 1)")
        g_off = float(np.quantile(low[keep], coverage))
        g_on = float(np.quantile(high[keep], 1.0 - coverage))
        method = (
            "median of per-device extremes"
            if coverage == 0.5
            else f"per-device extremes, window reachable by {coverage:.0%} of devices"
        )
        devices = int(keep.sum())
    elif conductances is not None:
        lower, upper = percentiles
        if not 0.0 <= lower < upper <= 100.0:
            raise FitError(
                f"fit_g_range: percentiles {percentiles!r} must be 0 <= low < high <= 100"
            )
        values = _array(conductances, "conductances")
        keep = ~_mask(stuck, values.shape, "stuck") & np.isfinite(values)
        if not keep.any():
            raise FitError("fit_g_range: no non-stuck device with a finite conductance")
        g_off, g_on = (float(v) for v in np.percentile(values[keep], [lower, upper]))
        method, devices = f"map percentiles {lower:g}-{upper:g} %", int(keep.sum())
    else:
        raise FitError("fit_g_range: give a conductance map or per-device g_min and g_max")
    if not 0.0 < g_off < g_on:
        raise FitError(
            f"fit_g_range: fitted g_off = {g_off!r} S, g_on = {g_on!r} S; need 0 < g_off < g_on"
        )
    return GRangeFit(g_off, g_on, method, devices)


# -- stuck devices -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StuckFit:
    """Stuck devices of a measured array: mask (rows, cols), their values (S), probability."""

    mask: np.ndarray
    values: np.ndarray
    probability: float
    bandwidth: float | None = None

    @property
    def samples(self) -> np.ndarray:
        """Measured stuck conductances (S), one per stuck device."""
        return self.values[self.mask]

    def to_config(self) -> dict[str, Any]:
        """A stuck disturbance table: `stuck_distribution` (KDE over the measured values) when
        at least 2 distinct values exist, else `stuck_at_value` (one value or none)."""
        samples = [float(v) for v in self.samples]
        distinct = len(set(samples)) >= 2
        if distinct:
            config: dict[str, Any] = {
                "kind": "stuck_distribution",
                "probability": self.probability,
                "samples": samples,
            }
            if self.bandwidth is not None:
                config["bandwidth"] = self.bandwidth
            return config
        value = samples[0] if samples else 0.0
        return {"kind": "stuck_at_value", "probability": self.probability, "conductance": value}

    def draws(self) -> Draws:
        """Draws freezing this chip's defects into a stuck disturbance's realisation slot."""
        return stuck_draws_from_map(self.mask, np.where(self.mask, self.values, 0.0))


def stuck_from_curves(
    curves: npt.ArrayLike, g_off: float, g_on: float, fraction: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Joksas et al.'s rule: a device is stuck when (max - min) of its pulse-response curve
    (devices..., reads) is below `fraction` * (g_on - g_off); its stuck value is its mean (S).
    Returns (mask, values) of shape devices...."""
    array = _array(curves, "pulse-response curves")
    low, high = device_extremes(array)
    mask = (high - low) < fraction * (g_on - g_off)
    return mask, np.nanmean(array, axis=-1)


def fit_stuck(
    mask: npt.ArrayLike,
    values: npt.ArrayLike,
    *,
    bandwidth: float | None = None,
    tested: npt.ArrayLike | None = None,
) -> StuckFit:
    """Stuck map (bool (rows, cols)) and stuck values (S, same shape; used where stuck).

    probability = stuck devices / tested devices (`tested` mask, default all). `bandwidth` (S)
    is the KDE kernel width; None leaves Scott's rule over the samples to the simulation. All
    stuck values equal give a `stuck_at_value` table instead (see `StuckFit.to_config`).
    """
    stuck = np.asarray(mask).astype(bool)
    held = np.broadcast_to(_array(values, "stuck values"), stuck.shape).astype(np.float64)
    considered = np.ones_like(stuck) if tested is None else _mask(tested, stuck.shape, "tested")
    if not considered.any():
        raise FitError("fit_stuck: no device was tested")
    stuck = stuck & considered
    samples = held[stuck]
    if samples.size and (not np.all(np.isfinite(samples)) or np.any(samples < 0)):
        raise FitError("fit_stuck: stuck values must be finite and >= 0 S")
    probability = float(stuck.sum() / considered.sum())
    if bandwidth is not None and not bandwidth > 0:
        raise FitError(f"fit_stuck: bandwidth {bandwidth!r} S must be > 0")
    return StuckFit(stuck, held.copy(), probability, bandwidth)


# -- device-to-device variability ----------------------------------------------------------------


@dataclass(frozen=True)
class D2DFit:
    """Lognormal shape parameters (std of ln R) at the on (g_max) and off (g_min) extremes."""

    sigma_on: float
    sigma_off: float
    devices: int

    def to_config(self) -> dict[str, Any]:
        return {"kind": "d2d_lognormal", "sigma_on": self.sigma_on, "sigma_off": self.sigma_off}


def fit_d2d(
    g_min: npt.ArrayLike,
    g_max: npt.ArrayLike,
    *,
    stuck: npt.ArrayLike | None = None,
    read_noise: float = 0.0,
) -> D2DFit:
    """sigma_on = std(ln g_max), sigma_off = std(ln g_min) over non-stuck devices (ddof = 1).

    The std of ln R equals that of ln G. `read_noise` is the relative std of one extreme's
    measurement; its variance is subtracted in quadrature (floored at 0).
    """
    low, high = _array(g_min, "g_min"), _array(g_max, "g_max")
    if low.shape != high.shape:
        raise FitError(f"fit_d2d: g_min {low.shape} and g_max {high.shape} differ in shape")
    keep = ~_mask(stuck, low.shape, "stuck") & (low > 0) & (high > 0)
    if keep.sum() < 2:
        raise FitError(f"fit_d2d: need at least 2 non-stuck devices with G > 0, got {keep.sum()}")
    if not read_noise >= 0:
        raise FitError(f"fit_d2d: read_noise {read_noise!r} must be >= 0")

    def sigma(values: np.ndarray) -> float:
        variance = float(np.var(np.log(values[keep]), ddof=1)) - read_noise**2
        return math.sqrt(max(variance, 0.0))

    return D2DFit(sigma(high), sigma(low), int(keep.sum()))


# -- Poole-Frenkel -------------------------------------------------------------------------------


def beta_to_d_epsilon(beta: npt.ArrayLike, temperature: float = ROOM_TEMPERATURE) -> np.ndarray:
    """d_epsilon (F) from beta (V^-1/2): beta = (q / kT) sqrt(q / (pi d_epsilon))."""
    q = ELEMENTARY_CHARGE
    thermal = BOLTZMANN * temperature / q
    return q / (math.pi * (np.asarray(beta, dtype=np.float64) * thermal) ** 2)


@dataclass(frozen=True)
class PooleFrenkelDevices:
    """Per-device PF fits: ln c (c in S), beta (V^-1/2), ln d_epsilon (F), ln R (R in Ohm at
    the resistance voltage) and `valid` (beta > 0 and enough points)."""

    log_c: np.ndarray
    beta: np.ndarray
    log_d_epsilon: np.ndarray
    log_r: np.ndarray
    valid: np.ndarray


def fit_poole_frenkel_devices(
    voltages: npt.ArrayLike,
    currents: npt.ArrayLike,
    *,
    resistances: npt.ArrayLike | None = None,
    resistance_voltage: float = 0.1,
    min_voltage: float = 0.02,
    temperature: float = ROOM_TEMPERATURE,
) -> PooleFrenkelDevices:
    """Fit I = sgn(V) c |V| exp(beta sqrt|V|) to each device's I-V curve.

    voltages (points,) or (devices, points) in V, currents (devices, points) in A; both
    polarities are pooled (the model is odd in V). A least-squares line of ln(I / V) against
    sqrt|V| over points with |V| >= min_voltage and I / V > 0 gives ln c (intercept) and beta
    (slope). R (Ohm) is `resistances` if given, else |V / I| at +-resistance_voltage from the
    fitted curve (the paper's R at 0.1 V; the fit averages read noise out).
    """
    current = _array(currents, "currents")
    if current.ndim == 1:
        current = current[None, :]
    if current.ndim != 2:
        raise FitError(f"currents: expected (devices, points), got {current.shape}")
    voltage = np.broadcast_to(_array(voltages, "voltages"), current.shape)
    if not resistance_voltage > 0:
        raise FitError(f"resistance_voltage: {resistance_voltage!r} V must be > 0")
    devices = current.shape[0]
    log_c = np.full(devices, np.nan)
    beta = np.full(devices, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_volt = current / voltage
        usable = (np.abs(voltage) >= min_voltage) & np.isfinite(per_volt) & (per_volt > 0)
        for index in range(devices):
            points = usable[index]
            roots = np.sqrt(np.abs(voltage[index, points]))
            if points.sum() < 3 or np.ptp(roots) <= 0:
                continue
            slope, intercept = np.polyfit(roots, np.log(per_volt[index, points]), 1)
            beta[index], log_c[index] = slope, intercept
    valid = np.isfinite(beta) & (beta > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_d = np.where(
            valid, np.log(beta_to_d_epsilon(np.where(valid, beta, 1.0), temperature)), np.nan
        )
    if resistances is not None:
        log_r = np.log(np.broadcast_to(_array(resistances, "resistances"), (devices,)))
    else:
        # R = V / I = 1 / (c exp(beta sqrt(V))) at the resistance voltage.
        log_r = -(log_c + beta * math.sqrt(resistance_voltage))
    valid &= np.isfinite(log_r)
    return PooleFrenkelDevices(log_c, beta, log_d, log_r, valid)


@dataclass(frozen=True)
class PooleFrenkelFit:
    """[ln c, ln d_epsilon] = slope ln R + intercept + eps; eps with std `residual_std` and
    correlation `residual_correlation`; `devices` the per-device fits used."""

    slope: tuple[float, float]
    intercept: tuple[float, float]
    residual_std: tuple[float, float]
    residual_correlation: float
    temperature: float
    devices: PooleFrenkelDevices = field(repr=False)

    def to_config(self) -> dict[str, Any]:
        return {
            "kind": "poole_frenkel",
            "slope": [float(v) for v in self.slope],
            "intercept": [float(v) for v in self.intercept],
            "residual_std": [float(v) for v in self.residual_std],
            "residual_correlation": float(self.residual_correlation),
            "temperature": float(self.temperature),
        }


def fit_poole_frenkel(
    voltages: npt.ArrayLike,
    currents: npt.ArrayLike,
    *,
    resistances: npt.ArrayLike | None = None,
    resistance_voltage: float = 0.1,
    min_voltage: float = 0.02,
    temperature: float = ROOM_TEMPERATURE,
) -> PooleFrenkelFit:
    """Per-device PF fits (`fit_poole_frenkel_devices`), then ordinary least squares of ln c and
    ln d_epsilon against ln R over the valid devices (at least 3). residual_std uses ddof = 2; the
    correlation is that of the two residual vectors (0 when either is constant)."""
    per_device = fit_poole_frenkel_devices(
        voltages,
        currents,
        resistances=resistances,
        resistance_voltage=resistance_voltage,
        min_voltage=min_voltage,
        temperature=temperature,
    )
    valid = per_device.valid
    if valid.sum() < 3:
        raise FitError(
            f"fit_poole_frenkel: {int(valid.sum())} device(s) with a valid PF fit (beta > 0); "
            "need at least 3 at different resistances"
        )
    x = per_device.log_r[valid]
    if np.ptp(x) <= 0:
        raise FitError("fit_poole_frenkel: all devices have the same resistance; no regression")
    slopes, intercepts, residuals = [], [], []
    for y in (per_device.log_c[valid], per_device.log_d_epsilon[valid]):
        slope, intercept = np.polyfit(x, y, 1)
        slopes.append(float(slope))
        intercepts.append(float(intercept))
        residuals.append(y - (slope * x + intercept))
    dof = max(int(valid.sum()) - 2, 1)
    stds = [math.sqrt(float(np.sum(r**2)) / dof) for r in residuals]
    if stds[0] > 0 and stds[1] > 0:
        correlation = float(np.corrcoef(residuals[0], residuals[1])[0, 1])
        correlation = min(max(correlation, -1.0), 1.0)
    else:
        correlation = 0.0
    return PooleFrenkelFit(
        (slopes[0], slopes[1]),
        (intercepts[0], intercepts[1]),
        (stds[0], stds[1]),
        correlation,
        temperature,
        per_device,
    )


# -- programming noise ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgrammingNoiseFit:
    """sigma(G) = |c0 + c1 x + ...| (S), x = G (S) or G / g_on when `relative`; the binned data
    behind it: bin centres (S), RMS errors (S), counts."""

    coefficients: tuple[float, ...]
    relative: bool
    centres: np.ndarray = field(repr=False)
    rms: np.ndarray = field(repr=False)
    counts: np.ndarray = field(repr=False)

    def to_config(self) -> dict[str, Any]:
        return {
            "kind": "programming_noise",
            "coefficients": [float(c) for c in self.coefficients],
            "relative": self.relative,
        }

    def sigma(self, conductances: npt.ArrayLike, g_on: float | None = None) -> np.ndarray:
        """sigma (S) at conductances (S); relative fits need g_on."""
        g = np.asarray(conductances, dtype=np.float64)
        scale = 1.0
        if self.relative:
            if g_on is None:
                raise FitError("ProgrammingNoiseFit.sigma: a relative fit needs g_on")
            scale = g_on
        return scale * np.abs(np.polyval(self.coefficients[::-1], g / scale))


def fit_programming_noise(
    targets: npt.ArrayLike,
    achieved: npt.ArrayLike,
    *,
    valid: npt.ArrayLike | None = None,
    degree: int = 1,
    bins: int = 8,
    relative: bool = False,
    g_on: float | None = None,
) -> ProgrammingNoiseFit:
    """sigma(G) polynomial of degree `degree` from write-verify results (S).

    Cells (`valid` mask, default all finite) are split into `bins` equally populated bins of
    target; each bin's RMS of achieved - target is its sigma; a polynomial in the bin centres
    (mean target) is fitted by least squares weighted by sqrt(count). relative=True expresses it
    in u = G / g_on (g_on required), so the coefficients are dimensionless.
    """
    target = _array(targets, "targets").ravel()
    got = _array(achieved, "achieved").ravel()
    if target.shape != got.shape:
        raise FitError(f"fit_programming_noise: targets {target.shape} and achieved {got.shape}")
    keep = np.isfinite(target) & np.isfinite(got)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool).ravel()
    if degree < 0:
        raise FitError(f"fit_programming_noise: degree {degree!r} must be >= 0")
    bins = max(1, min(bins, int(keep.sum()) // 4))
    if keep.sum() < 2 * (degree + 1) or bins < degree + 1:
        raise FitError(
            f"fit_programming_noise: {int(keep.sum())} usable cells are too few for degree "
            f"{degree} (need {bins} >= degree + 1 bins of >= 4 cells)"
        )
    if relative and not (g_on is not None and g_on > 0):
        raise FitError("fit_programming_noise: relative=True needs g_on > 0 (S)")
    target, error = target[keep], got[keep] - target[keep]
    order = np.argsort(target, kind="stable")
    groups = np.array_split(order, bins)
    centres = np.array([target[g].mean() for g in groups])
    rms = np.array([math.sqrt(float(np.mean(error[g] ** 2))) for g in groups])
    counts = np.array([len(g) for g in groups])
    scale = g_on if relative else 1.0
    assert scale is not None
    x, y = centres / scale, rms / scale
    if degree == 0 or np.ptp(x) <= 0:
        coefficients = [float(np.average(y, weights=counts))] + [0.0] * degree
    else:
        coefficients = list(np.polyfit(x, y, degree, w=np.sqrt(counts))[::-1])
    return ProgrammingNoiseFit(
        tuple(float(c) for c in coefficients), relative, centres, rms, counts
    )


# -- whole device model --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceFit:
    """All fitted parts of a device model; `to_config` is a `DeviceModel.from_config` table.

    Disturbances act in the order D2D (device spread), programming noise, stuck devices (which
    override whatever was programmed).
    """

    g_range: GRangeFit
    poole_frenkel: PooleFrenkelFit | None = None
    stuck: StuckFit | None = None
    d2d: D2DFit | None = None
    programming_noise: ProgrammingNoiseFit | None = None
    name: str = "fitted"
    k_v: float = 0.5

    def to_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"name": self.name, **self.g_range.to_config(), "k_v": self.k_v}
        config["current_model"] = (
            self.poole_frenkel.to_config() if self.poole_frenkel is not None else {"kind": "ohmic"}
        )
        nonidealities = []
        if self.d2d is not None:
            nonidealities.append(self.d2d.to_config())
        if self.programming_noise is not None:
            nonidealities.append(self.programming_noise.to_config())
        if self.stuck is not None and self.stuck.probability > 0:
            nonidealities.append(self.stuck.to_config())
        config["nonidealities"] = nonidealities
        return config


def fit_device(
    *,
    conductance_map: npt.ArrayLike | None = None,
    pulse_curves: npt.ArrayLike | None = None,
    stuck_mask: npt.ArrayLike | None = None,
    stuck_values: npt.ArrayLike | None = None,
    iv_voltages: npt.ArrayLike | None = None,
    iv_currents: npt.ArrayLike | None = None,
    program_targets: npt.ArrayLike | None = None,
    program_achieved: npt.ArrayLike | None = None,
    program_valid: npt.ArrayLike | None = None,
    read_noise: float = 0.0,
    percentiles: tuple[float, float] = (2.0, 98.0),
    resistance_voltage: float = 0.1,
    temperature: float = ROOM_TEMPERATURE,
    noise_degree: int = 1,
    name: str = "fitted",
    k_v: float = 0.5,
) -> DeviceFit:
    """Fit every part the data allow.

    conductance_map (rows, cols) S; pulse_curves (devices, reads) S or (rows, cols, reads);
    stuck_mask / stuck_values (same leading shape as the map or the curves) from a stuck scan;
    iv_voltages (points,) V and iv_currents (devices, points) A; program_* from write-verify.
    G range: pulse-curve extremes if given, else map percentiles. Stuck devices: the given mask,
    else Joksas et al.'s rule on the pulse curves. D2D needs pulse curves.
    """
    curves = None if pulse_curves is None else _array(pulse_curves, "pulse_curves")
    mask = None if stuck_mask is None else np.asarray(stuck_mask, dtype=bool)
    values = None if stuck_values is None else _array(stuck_values, "stuck_values")
    g_min = g_max = None
    if curves is not None:
        g_min, g_max = device_extremes(curves)
        if mask is not None and mask.shape != g_min.shape:
            raise FitError(
                f"stuck_mask {mask.shape} must match the pulse curves' devices {g_min.shape}"
            )
    if curves is not None and mask is None:
        provisional = fit_g_range(g_min=g_min, g_max=g_max)
        mask, values = stuck_from_curves(curves, provisional.g_off, provisional.g_on)
    if g_min is not None:
        g_range = fit_g_range(g_min=g_min, g_max=g_max, stuck=mask)
    elif conductance_map is not None:
        map_values = _array(conductance_map, "conductance_map")
        map_mask = mask if mask is not None and mask.shape == map_values.shape else None
        g_range = fit_g_range(map_values, stuck=map_mask, percentiles=percentiles)
    else:
        raise FitError("fit_device: need a conductance map or pulse curves for the G range")
    stuck = None
    if mask is not None:
        if values is None:
            if conductance_map is None:
                raise FitError("fit_device: stuck_mask needs stuck_values or a conductance_map")
            values = _array(conductance_map, "conductance_map")
        stuck = fit_stuck(mask, values)
    d2d = None
    if g_min is not None and g_min.size >= 2:
        d2d = fit_d2d(g_min, g_max, stuck=mask, read_noise=read_noise)  # type: ignore[arg-type]
    poole_frenkel = None
    if iv_currents is not None:
        if iv_voltages is None:
            raise FitError("fit_device: iv_currents need iv_voltages")
        poole_frenkel = fit_poole_frenkel(
            iv_voltages,
            iv_currents,
            resistance_voltage=resistance_voltage,
            temperature=temperature,
        )
    noise = None
    if program_targets is not None and program_achieved is not None:
        noise = fit_programming_noise(
            program_targets, program_achieved, valid=program_valid, degree=noise_degree
        )
    return DeviceFit(g_range, poole_frenkel, stuck, d2d, noise, name, k_v)


def fit_device_model(**kwargs: Any) -> dict[str, Any]:
    """A full device-model config table (for `DeviceModel.from_config`) from measured arrays;
    the keyword arguments are those of `fit_device`."""
    return fit_device(**kwargs).to_config()


__all__: Sequence[str] = (
    "D2DFit",
    "DeviceFit",
    "FitError",
    "GRangeFit",
    "PooleFrenkelDevices",
    "PooleFrenkelFit",
    "ProgrammingNoiseFit",
    "StuckFit",
    "beta_to_d_epsilon",
    "device_extremes",
    "fit_d2d",
    "fit_device",
    "fit_device_model",
    "fit_g_range",
    "fit_poole_frenkel",
    "fit_poole_frenkel_devices",
    "fit_programming_noise",
    "fit_stuck",
    "stuck_from_curves",
)
