"""Characterisation through the Crossbar API on the simulated chip, and the round trip
characterise -> fit -> device model against the chip's known parameters."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from instruments import open_crossbar
from instruments.characterize import (
    CharacterizeConfig,
    characterize,
    iv_sweeps,
    measure_read_noise,
    pulse_response,
    read_map,
    stuck_scan,
    sweep_voltages,
)
from instruments.program import program_map
from simulation.config import ConfigError
from simulation.device_model import DeviceModel
from simulation.iv import poole_frenkel_exponent_coefficient

PRESET = Path(__file__).resolve().parents[2] / "configs" / "instruments"


def simulated(size: int = 16, residual_std: tuple[float, float] | None = None, **chip: object):
    """The 32x32 high-R SiOx preset, resized (and optionally with another PF residual)."""
    with (PRESET / "simulated-siox-high-r-32x32.toml").open("rb") as handle:
        config = tomllib.load(handle)
    config["chip"].update(rows=size, cols=size, **chip)
    if residual_std is not None:
        root = Path(__file__).resolve().parents[2]
        with (root / "configs" / "devices" / "siox-high-r.toml").open("rb") as handle:
            device = tomllib.load(handle)
        device["current_model"]["residual_std"] = list(residual_std)
        config["chip"]["device"] = device
    return open_crossbar(config)


def read_window(crossbar) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free I/V at 0.1 V of every device at its own G_off and G_on (ground truth)."""
    chip = crossbar.chip
    model = chip.parameters.current_model
    out = []
    for g in (chip.g_off, chip.g_on):
        log_r = -np.log(g)
        z1, z2 = chip._normals
        s1, s2 = model.residual_std
        rho = model.residual_correlation
        log_c = model.slope[0] * log_r + model.intercept[0] + s1 * z1
        log_d = (
            model.slope[1] * log_r + model.intercept[1] + s2 * (rho * z1 + np.sqrt(1 - rho**2) * z2)
        )
        beta = poole_frenkel_exponent_coefficient(np.exp(log_d), model.temperature)
        out.append(np.exp(log_c) * np.exp(beta * np.sqrt(0.1)))
    return out[0], out[1]


def test_config_validation_and_round_trip() -> None:
    config = CharacterizeConfig()
    assert CharacterizeConfig.from_config(config.to_config()) == config
    assert CharacterizeConfig.from_config({"parts": ["iv", "map"]}).parts == ("map", "iv")
    with pytest.raises(ConfigError, match="unknown key"):
        CharacterizeConfig.from_config({"iv_cell": 3}, "ch")
    with pytest.raises(ConfigError, match="parts"):
        CharacterizeConfig.from_config({"parts": ["maps"]}, "ch")
    with pytest.raises(ConfigError, match="iv_bias_scheme"):
        CharacterizeConfig.from_config({"iv_bias_scheme": "v/4"}, "ch")
    with pytest.raises(ConfigError, match="pulse_count"):
        CharacterizeConfig(pulse_count=0)


def test_sweep_voltages_cover_both_polarities() -> None:
    v = sweep_voltages(0.5, 5)
    assert v[0] == 0 and v[-1] == 0 and v.max() == 0.5 and v.min() == -0.5
    assert len(v) == 4 * 5 + 1


def test_map_and_read_noise_match_the_chip() -> None:
    with simulated(12) as crossbar:
        truth = crossbar.chip.conductances(0.1)
        conductance_map = read_map(crossbar, averages=8)
        np.testing.assert_allclose(conductance_map.conductances, truth, rtol=0.01)
        noise = measure_read_noise(crossbar, reads=32)
        # The chip's read noise is 0.5 % of the current (plus a negligible floor).
        assert noise.median_relative == pytest.approx(0.005, rel=0.15)


def test_iv_sweeps_measure_the_cells_own_current() -> None:
    with simulated(8) as crossbar:
        cells = np.array([[1, 2], [5, 7]])
        sweeps = iv_sweeps(crossbar, cells, v_max=0.5, points=5)
        truth = crossbar.chip.device_currents(sweeps.voltages[:, None, None])
        expected = truth[:, cells[:, 0], cells[:, 1]].T
        np.testing.assert_allclose(sweeps.currents, expected, rtol=0.03, atol=1e-10)
        assert crossbar.bias_scheme == "v/2"  # restored after the grounded sweeps
        with pytest.raises(ValueError, match="max_sweep_voltage"):
            iv_sweeps(crossbar, cells, v_max=2.0)


def test_pulse_response_rises_then_falls() -> None:
    with simulated(8) as crossbar:
        free = np.argwhere(~crossbar.chip.stuck)[:6]
        response = pulse_response(crossbar, free, pulses=10, set_amplitude=1.1, reset_amplitude=1.1)
        assert response.conductances.shape == (6, 21)
        assert np.all(response.potentiation[:, -1] > 2 * response.potentiation[:, 0])
        assert np.all(response.depression[:, -1] < 0.5 * response.depression[:, 0])
        np.testing.assert_array_equal(crossbar.ledger.counts[free[:, 0], free[:, 1]], 20)


def test_stuck_scan_finds_every_stuck_cell_and_restores_the_rest() -> None:
    with simulated(16, initial_state="random", stuck_off_fraction=0.05) as crossbar:
        before = crossbar.chip.conductances(0.1)
        scan = stuck_scan(crossbar)
        np.testing.assert_array_equal(scan.stuck, crossbar.chip.stuck)
        truth = crossbar.chip.conductances(0.1)
        np.testing.assert_allclose(scan.values[scan.stuck], truth[scan.stuck], rtol=0.02)
        free = ~scan.stuck
        assert scan.restore is not None and scan.restore.count("pending") == 0
        restored = np.abs(truth[free] - before[free]) / before[free]
        assert np.mean(restored <= 0.11) >= 0.98


def test_characterize_reports_progress_and_stops_cleanly() -> None:
    with simulated(8) as crossbar:
        events: list[dict] = []
        result = characterize(
            crossbar,
            {"parts": ["map", "read_noise", "iv"], "iv_cells": 4},
            on_progress=events.append,
        )
        assert [e["part"] for e in events] == ["map", "read_noise", "iv", "done"]
        assert result.map is not None and result.iv is not None and result.stuck_scan is None
        assert result.iv.currents.shape == (4, 4 * 11 + 1)
        calls = {"n": 0}

        def stop_in_second_part() -> bool:
            # Polled before each part and before each of the map's 4 reads.
            calls["n"] += 1
            return calls["n"] > 5

        stopped = characterize(
            crossbar, {"parts": ["map", "read_noise"]}, should_stop=stop_in_second_part
        )
        assert stopped.cancelled and stopped.map is not None and stopped.read_noise is None


def test_round_trip_recovers_g_range_stuck_fraction_and_pf_regression() -> None:
    """Characterise a chip with a residual-free PF regression, fit, compare with the truth.

    With residual_std = 0, R(0.1 V) = V / I is a function of the state G alone and the fitted
    regression on ln R(0.1 V) equals the chip's regression on ln(1 / G) up to that mapping."""
    with simulated(16, residual_std=(0.0, 0.0), stuck_off_fraction=0.04) as crossbar:
        result = characterize(
            crossbar, {"parts": ["stuck_scan", "pulse_response", "iv"], "pulse_cells": 48}
        )
        fit = result.fit()
        chip = crossbar.chip
        low, high = read_window(crossbar)
        free = ~chip.stuck
        assert fit.g_range.g_off == pytest.approx(np.median(low[free]), rel=0.05)
        assert fit.g_range.g_on == pytest.approx(np.median(high[free]), rel=0.05)
        assert fit.stuck is not None and fit.stuck.probability == chip.stuck.mean()
        pf = fit.poole_frenkel
        assert pf is not None
        model = chip.parameters.current_model
        assert pf.slope[0] == pytest.approx(model.slope[0], abs=0.03)
        assert pf.slope[1] == pytest.approx(model.slope[1], abs=0.03)
        assert pf.intercept[1] == pytest.approx(model.intercept[1], abs=0.3)
        assert max(pf.residual_std) < 0.02
        device = DeviceModel.from_config(fit.to_config(), "fitted")
        assert device.current_model.kind == "poole_frenkel"
        assert [d.kind for d in device.disturbances][-1] in ("stuck_distribution", "stuck_at_value")


def test_fit_includes_programming_noise_from_write_verify() -> None:
    with simulated(12, initial_state="random") as crossbar:
        low, high = read_window(crossbar)
        rng = np.random.default_rng(2)
        targets = rng.uniform(np.percentile(low, 95), np.percentile(high, 5), crossbar.shape)
        program = program_map(crossbar, targets)
        result = characterize(crossbar, {"parts": ["map"]})
        fit = result.fit(program=program, noise_degree=0)
        assert fit.programming_noise is not None
        # Converged cells sit inside the 2 % band: their RMS error is below 2 % of G_on.
        sigma = fit.programming_noise.coefficients[0]
        assert 0 < sigma < 0.02 * np.nanmax(targets)
