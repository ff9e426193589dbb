"""Fitters recover known parameters from synthetic data generated with those parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simulation.current_models import PooleFrenkel
from simulation.device_model import DeviceModel
from simulation.fitting import (
    FitError,
    beta_to_d_epsilon,
    device_extremes,
    fit_d2d,
    fit_device,
    fit_device_model,
    fit_g_range,
    fit_poole_frenkel,
    fit_poole_frenkel_devices,
    fit_programming_noise,
    fit_stuck,
    stuck_from_curves,
)
from simulation.iv import poole_frenkel_current, poole_frenkel_exponent_coefficient
from simulation.nonidealities import disturbance_from_config

G_OFF, G_ON = 5.25e-7, 2.62e-6


def test_g_range_from_extremes_is_median_of_non_stuck_devices() -> None:
    rng = np.random.default_rng(1)
    g_min = G_OFF * np.exp(0.1 * rng.standard_normal(2001))
    g_max = G_ON * np.exp(0.1 * rng.standard_normal(2001))
    stuck = np.zeros(2001, dtype=bool)
    stuck[:300] = True
    g_min[:300] = g_max[:300] = 1e-3  # stuck devices far away must not count
    fit = fit_g_range(g_min=g_min, g_max=g_max, stuck=stuck)
    assert fit.g_off == np.median(g_min[300:])
    assert fit.g_on == np.median(g_max[300:])
    assert fit.g_off == pytest.approx(G_OFF, rel=0.02)
    assert fit.g_on == pytest.approx(G_ON, rel=0.02)
    assert fit.devices == 1701
    assert fit.to_config() == {"g_off": fit.g_off, "g_on": fit.g_on}


def test_g_range_from_map_percentiles() -> None:
    values = np.linspace(1e-6, 2e-6, 101).reshape(1, 101)
    fit = fit_g_range(values, percentiles=(10.0, 90.0))
    assert fit.g_off == pytest.approx(1.1e-6, rel=1e-12)
    assert fit.g_on == pytest.approx(1.9e-6, rel=1e-12)
    stuck = values > 1.5e-6
    assert fit_g_range(values, stuck=stuck, percentiles=(0.0, 100.0)).g_on == pytest.approx(1.5e-6)


def test_g_range_errors_name_the_problem() -> None:
    with pytest.raises(FitError, match="g_min and g_max"):
        fit_g_range(g_min=[1e-6])
    with pytest.raises(FitError, match="percentiles"):
        fit_g_range([1e-6, 2e-6], percentiles=(50.0, 10.0))
    with pytest.raises(FitError, match="no non-stuck"):
        fit_g_range([1e-6, 2e-6], stuck=[True, True])


def test_stuck_rule_and_fit_give_a_valid_stuck_distribution() -> None:
    rng = np.random.default_rng(2)
    devices, reads = 400, 40
    ramp = np.concatenate(
        [np.linspace(G_OFF, G_ON, reads // 2), np.linspace(G_ON, G_OFF, reads // 2)]
    )
    curves = np.tile(ramp, (devices, 1)) * (1 + 0.01 * rng.standard_normal((devices, reads)))
    truth = rng.random(devices) < 0.1
    stuck_values = rng.uniform(G_OFF, G_ON, devices)
    curves[truth] = stuck_values[truth, None] * (
        1 + 0.01 * rng.standard_normal((truth.sum(), reads))
    )
    mask, values = stuck_from_curves(curves, G_OFF, G_ON)
    np.testing.assert_array_equal(mask, truth)
    np.testing.assert_allclose(values[truth], stuck_values[truth], rtol=0.01)
    fit = fit_stuck(mask, values)
    assert fit.probability == truth.mean()
    config = fit.to_config()
    assert config["kind"] == "stuck_distribution"
    assert len(config["samples"]) == truth.sum()
    disturbance = disturbance_from_config(config, "fitted stuck")
    assert disturbance.probability == truth.mean()
    draws = fit_stuck(mask.reshape(20, 20), values.reshape(20, 20)).draws()
    assert torch.equal(draws["stuck"], torch.as_tensor(truth.reshape(20, 20)))
    np.testing.assert_array_equal(draws["values"].numpy()[truth.reshape(20, 20)], values[truth])


def test_stuck_fit_with_one_value_and_tested_mask() -> None:
    mask = np.array([[True, False], [False, False]])
    fit = fit_stuck(mask, 3e-7, tested=[[True, True], [True, False]])
    assert fit.probability == pytest.approx(1 / 3)
    assert fit.to_config() == {"kind": "stuck_at_value", "probability": 1 / 3, "conductance": 3e-7}
    disturbance_from_config(fit.to_config(), "x")
    with pytest.raises(FitError, match="finite and >= 0"):
        fit_stuck(mask, -1.0)


def test_d2d_recovers_lognormal_sigmas_and_removes_read_noise() -> None:
    rng = np.random.default_rng(3)
    n = 20000
    g_max = G_ON * np.exp(0.3 * rng.standard_normal(n))
    g_min = G_OFF * np.exp(0.5 * rng.standard_normal(n))
    fit = fit_d2d(g_min, g_max)
    # The std of a sample std of n normals is sigma / sqrt(2 n) ~ 0.0025 here.
    assert fit.sigma_on == pytest.approx(0.3, abs=0.01)
    assert fit.sigma_off == pytest.approx(0.5, abs=0.01)
    noisy_max = g_max * np.exp(0.2 * rng.standard_normal(n))
    noisy_min = g_min * np.exp(0.2 * rng.standard_normal(n))
    corrected = fit_d2d(noisy_min, noisy_max, read_noise=0.2)
    assert corrected.sigma_on == pytest.approx(0.3, abs=0.015)
    assert corrected.sigma_off == pytest.approx(0.5, abs=0.015)
    config = fit.to_config()
    assert config["kind"] == "d2d_lognormal"
    disturbance_from_config(config, "fitted d2d")


def test_poole_frenkel_device_fit_is_exact_on_noise_free_curves() -> None:
    c = np.array([5e-7, 1e-6, 2e-6])
    d_eps = np.array([2e-17, 5e-17, 1e-16])
    voltages = np.concatenate([np.linspace(0.0, 0.5, 51), -np.linspace(0.0, 0.5, 51)])
    currents = poole_frenkel_current(
        torch.tensor(voltages, dtype=torch.float64)[None, :],
        torch.tensor(c)[:, None],
        torch.tensor(d_eps)[:, None],
    ).numpy()
    fit = fit_poole_frenkel_devices(voltages, currents)
    assert fit.valid.all()
    np.testing.assert_allclose(np.exp(fit.log_c), c, rtol=1e-9)
    np.testing.assert_allclose(np.exp(fit.log_d_epsilon), d_eps, rtol=1e-9)
    beta = np.array([poole_frenkel_exponent_coefficient(d) for d in d_eps])
    np.testing.assert_allclose(fit.beta, beta, rtol=1e-9)
    np.testing.assert_allclose(beta_to_d_epsilon(beta), d_eps, rtol=1e-12)
    # R is V / I at 0.1 V, as in the paper.
    at_tenth = np.abs(voltages - 0.1).argmin()
    np.testing.assert_allclose(np.exp(fit.log_r), 0.1 / currents[:, at_tenth], rtol=1e-9)


def test_poole_frenkel_regression_recovers_the_simulation_model() -> None:
    """Curves from PooleFrenkel.device_currents (with drawn residuals) -> the same regression."""
    truth = PooleFrenkel.high_r_siox(residual_std=(0.1, 0.4), residual_correlation=0.6)
    devices = 3000
    generator = torch.Generator().manual_seed(4)
    conductances = torch.exp(
        torch.empty((1, devices), dtype=torch.float64).uniform_(
            math.log(G_OFF), math.log(G_ON), generator=generator
        )
    )
    draws = truth.draw((1, devices), generator, torch.float64)
    voltages = torch.linspace(-0.5, 0.5, 41, dtype=torch.float64)[:, None]
    currents = truth.device_currents(voltages, conductances, draws)[:, 0, :].T.numpy()
    fit = fit_poole_frenkel(voltages.numpy().ravel(), currents, resistances=1 / conductances[0])
    assert fit.devices.valid.all()
    # ln R spans ln 5 = 1.6, std 0.46: the slope's standard error is ~0.4 / (0.46 sqrt 3000).
    assert fit.slope[0] == pytest.approx(-1.03, abs=0.02)
    assert fit.slope[1] == pytest.approx(-0.0901, abs=0.06)
    assert fit.intercept[0] == pytest.approx(-0.251, abs=0.3)
    assert fit.intercept[1] == pytest.approx(-37.1, abs=0.9)
    assert fit.residual_std[0] == pytest.approx(0.1, rel=0.05)
    assert fit.residual_std[1] == pytest.approx(0.4, rel=0.05)
    assert fit.residual_correlation == pytest.approx(0.6, abs=0.04)
    model = PooleFrenkel.from_config(fit.to_config(), "fitted")
    assert model.slope == pytest.approx(fit.slope)


def test_poole_frenkel_needs_three_superlinear_devices() -> None:
    voltages = np.linspace(-0.5, 0.5, 21)
    ohmic = np.outer([1e-6, 2e-6, 3e-6], voltages)  # beta = 0: not PF
    with pytest.raises(FitError, match="valid PF fit"):
        fit_poole_frenkel(voltages, ohmic)


def test_programming_noise_recovers_a_linear_sigma() -> None:
    rng = np.random.default_rng(5)
    n = 40000
    targets = rng.uniform(G_OFF, G_ON, n)
    c0, c1 = 5e-9, 0.02
    achieved = targets + (c0 + c1 * targets) * rng.standard_normal(n)
    fit = fit_programming_noise(targets, achieved, degree=1, bins=10)
    assert fit.coefficients[0] == pytest.approx(c0, abs=2e-9)
    assert fit.coefficients[1] == pytest.approx(c1, rel=0.05)
    sigma = fit.sigma([G_OFF, G_ON])
    np.testing.assert_allclose(sigma, [c0 + c1 * G_OFF, c0 + c1 * G_ON], rtol=0.03)
    relative = fit_programming_noise(targets, achieved, bins=10, relative=True, g_on=G_ON)
    np.testing.assert_allclose(relative.sigma([G_OFF, G_ON], g_on=G_ON), sigma, rtol=1e-6)
    for item in (fit, relative):
        disturbance_from_config(item.to_config(), "fitted programming noise")
    constant = fit_programming_noise(targets, targets + 1e-8 * rng.standard_normal(n), degree=0)
    assert constant.coefficients == pytest.approx((1e-8,), rel=0.02)


def test_programming_noise_rejects_too_few_cells() -> None:
    with pytest.raises(FitError, match="too few"):
        fit_programming_noise([1e-6, 2e-6], [1e-6, 2e-6], degree=2)


def test_fit_device_model_builds_a_loadable_device_model() -> None:
    rng = np.random.default_rng(6)
    rows, cols, reads = 16, 16, 30
    ramp = np.concatenate(
        [np.geomspace(G_OFF, G_ON, reads // 2), np.geomspace(G_ON, G_OFF, reads // 2)]
    )
    spread = np.exp(0.2 * rng.standard_normal((rows, cols, 1)))
    curves = ramp * spread * (1 + 0.005 * rng.standard_normal((rows, cols, reads)))
    stuck = rng.random((rows, cols)) < 0.08
    stuck_values = rng.uniform(G_OFF, G_ON, (rows, cols))
    curves[stuck] = stuck_values[stuck, None]
    truth = PooleFrenkel.high_r_siox(residual_std=(0.05, 0.2), residual_correlation=0.5)
    generator = torch.Generator().manual_seed(7)
    g = torch.tensor(np.geomspace(G_OFF, G_ON, 50))[None, :]
    voltages = torch.linspace(-0.5, 0.5, 21, dtype=torch.float64)[:, None]
    currents = truth.device_currents(voltages, g, truth.draw((1, 50), generator, torch.float64))
    targets = rng.uniform(G_OFF, G_ON, 500)
    config = fit_device_model(
        pulse_curves=curves,
        iv_voltages=voltages.numpy().ravel(),
        iv_currents=currents[:, 0, :].T.numpy(),
        program_targets=targets,
        program_achieved=targets + 1e-8 * rng.standard_normal(500),
        name="unit test chip",
    )
    model = DeviceModel.from_config(config, "fitted")
    assert model.name == "unit test chip"
    assert model.g_range.g_off == pytest.approx(G_OFF, rel=0.05)
    assert model.g_range.g_on == pytest.approx(G_ON, rel=0.05)
    kinds = [d.kind for d in model.disturbances]
    assert kinds == ["d2d_lognormal", "programming_noise", "stuck_distribution"]
    assert model.disturbances[0].sigma_on == pytest.approx(0.2, abs=0.03)
    assert model.disturbances[2].probability == pytest.approx(stuck.mean())
    assert model.current_model.kind == "poole_frenkel"
    fit = fit_device(conductance_map=curves[..., 0], name="map only")
    assert fit.to_config()["current_model"] == {"kind": "ohmic"}
    assert fit.stuck is None and fit.d2d is None
    low, high = device_extremes(curves)
    assert low.shape == (rows, cols) and np.all(high >= low)
