"""Current models: Poole-Frenkel (regression, fast path vs exact, gradients), power law, config."""

import math
import tomllib
import warnings
from pathlib import Path

import pytest
import scipy.stats
import torch

from simulation.config import ConfigError
from simulation.current_models import (
    CurrentModel,
    Ohmic,
    PooleFrenkel,
    PowerLaw,
    current_model_from_config,
    sample_truncated_normal,
)
from simulation.device_model import DeviceModel
from simulation.iv import poole_frenkel_exponent_coefficient

F64 = torch.float64
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "devices"
HIGH_R = (5.25e-7, 2.62e-6)
LOW_R = (9.97e-4, 3.51e-3)


def _array(seed, batch, rows, cols, window, dtype=F64, signed=True):
    generator = torch.Generator().manual_seed(seed)
    g_off, g_on = window
    conductances = g_off + (g_on - g_off) * torch.rand(rows, cols, generator=generator, dtype=dtype)
    voltages = 0.5 * torch.rand(batch, rows, generator=generator, dtype=dtype)
    if signed:
        voltages[:, ::3] *= -1.0
    voltages[0, :] = 0.0
    voltages[:, 1] = 0.0
    return voltages, conductances, generator


def _assert_within(got, want, scale, bound):
    """|got - want| <= bound * scale elementwise, up to float64 rounding."""
    slack = 1e-12 * scale.max()
    assert ((got - want).abs() <= bound * scale + slack).all()


def _exact(model, voltages, conductances, draws):
    device = model.device_currents(voltages, conductances, draws)
    currents = device.sum(dim=1)
    power = (voltages.unsqueeze(-1) * device).abs().sum(dim=(1, 2))
    return currents, power, device.abs().sum(dim=1)


# -- Poole-Frenkel: the regression and the paper's sanity values -----------------------------


def test_high_r_sanity_values() -> None:
    model = PooleFrenkel.high_r_siox(residual_std=(0.0, 0.0))
    log_c, log_d = model.log_parameters(torch.tensor([[1e-6]], dtype=F64), {})
    assert math.exp(log_c.item()) == pytest.approx(5.1e-7, rel=0.01)
    assert math.exp(log_d.item()) == pytest.approx(2.2e-17, rel=0.02)
    device = model.device_currents(
        torch.tensor([[0.25], [0.5]], dtype=F64), torch.tensor([[1e-6]], dtype=F64), {}
    )
    assert (device[1] / device[0]).item() == pytest.approx(2.96, abs=0.01)


def test_low_r_sanity_values() -> None:
    model = PooleFrenkel.low_r_siox(residual_std=(0.0, 0.0))
    device = model.device_currents(
        torch.tensor([[0.25], [0.5]], dtype=F64), torch.tensor([[1e-3]], dtype=F64), {}
    )
    assert (device[1] / device[0]).item() == pytest.approx(2.17, abs=0.01)


def test_draws_are_standard_normals_and_give_the_residual_covariance() -> None:
    model = PooleFrenkel.high_r_siox(residual_std=(0.1, 0.4), residual_correlation=0.6)
    generator = torch.Generator().manual_seed(0)
    draws = model.draw((400, 500), generator, F64)
    assert set(draws) == {"normals"} and draws["normals"].shape == (2, 400, 500)
    conductances = torch.full((400, 500), 1e-6, dtype=F64)
    log_c, log_d = model.log_parameters(conductances, draws)
    base_c, base_d = model.log_parameters(conductances, {})
    residuals = torch.stack([(log_c - base_c).flatten(), (log_d - base_d).flatten()])
    covariance = torch.cov(residuals)
    assert covariance[0, 0].sqrt().item() == pytest.approx(0.1, rel=0.01)
    assert covariance[1, 1].sqrt().item() == pytest.approx(0.4, rel=0.01)
    correlation = covariance[0, 1] / (covariance[0, 0] * covariance[1, 1]).sqrt()
    assert correlation.item() == pytest.approx(0.6, abs=0.01)
    # No residual spread -> nothing to draw.
    assert PooleFrenkel.high_r_siox(residual_std=(0.0, 0.0)).draw((3, 4)) == {}
    assert PooleFrenkel.high_r_siox().is_random


# -- Poole-Frenkel: the fast path ----------------------------------------------------------


@pytest.mark.parametrize("window,regression", [(HIGH_R, "high_r_siox"), (LOW_R, "low_r_siox")])
@pytest.mark.parametrize("basis", ["chebyshev", "taylor"])
@pytest.mark.parametrize("shape", [(5, 7, 3), (64, 785, 50), (40, 26, 20)])
def test_expanded_column_currents_match_the_exact_sums(window, regression, basis, shape) -> None:
    model = getattr(PooleFrenkel, regression)(expansion_basis=basis)
    voltages, conductances, generator = _array(sum(shape), *shape, window)
    draws = model.draw(conductances.shape, generator, F64)
    currents, power = model.expanded_column_currents(voltages, conductances, draws)
    expected, expected_power, scale = _exact(model, voltages, conductances, draws)
    bound = model.last_error_bound
    assert model.last_method == "expansion" and model.last_plan.basis == basis
    assert 0 < bound <= 1e-6
    _assert_within(currents, expected, scale, bound)
    _assert_within(power, expected_power, expected_power, bound)
    assert power[0] == 0.0  # the all-zero example


def test_one_example_is_exact_with_one_term() -> None:
    model = PooleFrenkel.high_r_siox()
    voltages, conductances, generator = _array(1, 1, 20, 6, HIGH_R)
    voltages[0] = torch.linspace(-0.5, 0.5, 20, dtype=F64)
    draws = model.draw(conductances.shape, generator, F64)
    currents, power = model.expanded_column_currents(voltages, conductances, draws)
    expected, expected_power, _ = _exact(model, voltages, conductances, draws)
    assert model.last_terms == 1 and model.last_error_bound == 0.0
    torch.testing.assert_close(currents, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(power, expected_power, rtol=1e-12, atol=0)


def test_column_currents_dispatch_small_exact_large_expanded() -> None:
    model = PooleFrenkel.high_r_siox()
    voltages, conductances, generator = _array(2, 8, 26, 20, HIGH_R)
    draws = model.draw(conductances.shape, generator, F64)
    currents, power = model.column_currents(voltages, conductances, draws)
    expected, expected_power, _ = _exact(model, voltages, conductances, draws)
    assert model.last_method == "exact" and model.last_error_bound == 0.0
    torch.testing.assert_close(currents, expected, rtol=1e-12, atol=1e-20)
    torch.testing.assert_close(power, expected_power, rtol=1e-12, atol=0)
    voltages, conductances, generator = _array(3, 64, 785, 50, HIGH_R, dtype=torch.float32)
    model.column_currents(voltages, conductances, model.draw(conductances.shape, generator))
    assert model.last_method == "expansion" and model.last_terms <= 8


def test_falls_back_to_exact_with_a_warning() -> None:
    model = PooleFrenkel.high_r_siox(max_terms=2)
    voltages, conductances, generator = _array(4, 64, 785, 12, HIGH_R)
    draws = model.draw(conductances.shape, generator, F64)
    with pytest.warns(RuntimeWarning, match="max_terms = 2"):
        currents, _ = model.column_currents(voltages, conductances, draws)
    assert model.last_method == "exact" and "max_terms" in model.last_fallback_reason
    expected, _, _ = _exact(model, voltages, conductances, draws)
    torch.testing.assert_close(currents, expected, rtol=1e-12, atol=1e-20)
    # float32 rounding magnified by a wide expansion is refused too.
    wide = PooleFrenkel.high_r_siox(residual_std=(0.1, 1.5))
    voltages32, conductances32, generator = _array(5, 64, 785, 12, HIGH_R, dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="rounding"):
        wide.column_currents(voltages32, conductances32, wide.draw((785, 12), generator))


def test_float32_fast_path_is_close_to_float64_exact() -> None:
    model = PooleFrenkel.high_r_siox()
    voltages, conductances, generator = _array(6, 64, 785, 50, HIGH_R, signed=False)
    draws = model.draw(conductances.shape, generator, F64)
    expected, _, scale = _exact(model, voltages, conductances, draws)
    currents, _ = model.column_currents(
        voltages.float(), conductances.float(), {"normals": draws["normals"].float()}
    )
    assert model.last_method == "expansion"
    _assert_within(currents.double(), expected, scale, 1e-5)


def _gradients(currents, power, inputs, weights):
    return torch.autograd.grad((currents * weights[0]).sum() + (power * weights[1]).sum(), inputs)


@pytest.mark.parametrize("tolerance,limit", [(1e-6, 1e-5), (1e-12, 1e-9)])
def test_fast_gradients_equal_exact_gradients(tolerance, limit) -> None:
    model = PooleFrenkel.high_r_siox(expansion_tolerance=tolerance)
    voltages, conductances, generator = _array(8, 32, 120, 30, HIGH_R)
    voltages.requires_grad_()
    conductances.requires_grad_()
    draws = model.draw(conductances.shape, generator, F64)
    weights = (
        torch.randn(32, 30, generator=generator, dtype=F64),
        1e3 * torch.rand(32, generator=generator, dtype=F64),
    )
    fast = _gradients(
        *model.expanded_column_currents(voltages, conductances, draws),
        (voltages, conductances),
        weights,
    )
    exact = _gradients(
        *CurrentModel.column_currents(model, voltages, conductances, draws),
        (voltages, conductances),
        weights,
    )
    for got, want in zip(fast, exact, strict=True):
        assert torch.isfinite(got).all()
        assert ((got - want).norm() / want.norm()).item() < limit
    # The zero voltages (a whole example and a whole row) have finite, correct slopes.
    assert torch.isfinite(fast[0][0]).all() and torch.isfinite(fast[0][:, 1]).all()


def test_gradcheck_of_the_fast_path() -> None:
    model = PooleFrenkel.high_r_siox(expansion_tolerance=1e-14)
    generator = torch.Generator().manual_seed(9)
    voltages = (torch.rand(5, 6, generator=generator, dtype=F64) - 0.3).requires_grad_()
    theta = (0.5 + 2 * torch.rand(6, 4, generator=generator, dtype=F64)).requires_grad_()
    draws = model.draw((6, 4), generator, F64)

    def crossbar(v, th):  # G = 1e-6 theta keeps gradcheck's perturbations relative
        currents, power = model.expanded_column_currents(v, 1e-6 * th, draws)
        return 1e6 * currents, 1e6 * power

    assert torch.autograd.gradcheck(crossbar, (voltages, theta))
    assert model.last_method == "expansion"

    def exact(v, th):
        currents, power = model.exact_column_currents(v, 1e-6 * th, draws)
        return 1e6 * currents, 1e6 * power

    assert torch.autograd.gradcheck(exact, (voltages, theta))


def test_device_model_composes_with_poole_frenkel() -> None:
    with (CONFIGS / "siox-high-r.toml").open("rb") as handle:
        config = tomllib.load(handle)
    device = DeviceModel.from_config(config, "siox-high-r.toml")
    assert isinstance(device.current_model, PooleFrenkel) and device.is_random
    assert DeviceModel.from_config(device.to_config()) == device
    generator = torch.Generator().manual_seed(0)
    realisation = device.draw((30, 8), generator)
    voltages = 0.5 * torch.rand(4, 30, generator=generator)
    conductances = torch.full((30, 8), 1e-6, requires_grad=True)
    currents, power = device.column_currents(voltages, conductances, realisation)
    assert currents.shape == (4, 8) and power.shape == (4,)
    currents.sum().backward()
    assert torch.isfinite(conductances.grad).all()


# -- Power law ------------------------------------------------------------------------------


def test_truncated_normal_draws_match_the_closed_form() -> None:
    generator = torch.Generator().manual_seed(0)
    for mean, std in ((2.99, 0.369), (2.13, 0.0953), (1.2, 0.3)):
        draws = sample_truncated_normal((200_000,), mean, std, 2.0, generator, F64)
        assert draws.min().item() >= 2.0
        alpha = (2.0 - mean) / std
        expected = scipy.stats.truncnorm(alpha, math.inf, loc=mean, scale=std)
        assert draws.mean().item() == pytest.approx(
            expected.mean(), abs=4 * expected.std() / math.sqrt(2e5)
        )
        assert draws.std().item() == pytest.approx(expected.std(), rel=0.01)
        # The whole distribution, not only its moments.
        assert scipy.stats.kstest(draws[:20_000].numpy(), expected.cdf).pvalue > 1e-3
    float32 = sample_truncated_normal((10_000,), 1.0, 0.2, 2.0, generator)
    assert float32.dtype == torch.float32 and float32.min().item() >= 2.0


def test_power_law_model() -> None:
    model = PowerLaw.high_r_siox()
    generator = torch.Generator().manual_seed(1)
    draws = model.draw((30, 8), generator, F64)
    assert draws["n"].shape == (30, 8) and draws["n"].min().item() >= 2.0
    voltages, conductances, _ = _array(2, 6, 30, 8, HIGH_R)
    voltages.requires_grad_()
    currents, power = model.column_currents(voltages, conductances, draws)
    device = model.device_currents(voltages, conductances, draws)
    torch.testing.assert_close(currents, device.sum(dim=1))
    (grad,) = torch.autograd.grad(currents.sum() + power.sum(), voltages)
    assert torch.isfinite(grad).all()
    # n = 2 everywhere is Ohmic.
    ohmic = PowerLaw(n_mean=2.0, n_std=0.0)
    assert ohmic.draw((3, 3)) == {}
    torch.testing.assert_close(
        ohmic.column_currents(voltages, conductances, {})[0],
        voltages @ conductances,
        rtol=1e-12,
        atol=0,
    )


# -- Configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        Ohmic(),
        PooleFrenkel.high_r_siox(),
        PooleFrenkel.low_r_siox(
            residual_std=(0.05, 0.5), residual_correlation=-0.2, temperature=300.0
        ),
        PooleFrenkel.high_r_siox(expansion_tolerance=1e-9, max_terms=20, expansion_basis="taylor"),
        PowerLaw.high_r_siox(),
        PowerLaw(n_mean=2.5, n_std=0.0, v_ref=0.1),
    ],
)
def test_config_round_trip(model) -> None:
    config = model.to_config()
    again = current_model_from_config(config, "test")
    assert again == model and again.to_config() == config
    assert hash(again) == hash(model)


@pytest.mark.parametrize(
    "name",
    [
        "siox-high-r.toml",
        "siox-low-r.toml",
        "siox-high-r-power-law.toml",
        "siox-low-r-power-law.toml",
    ],
)
def test_shipped_device_configs_load(name: str) -> None:
    with (CONFIGS / name).open("rb") as handle:
        config = tomllib.load(handle)
    model = current_model_from_config(config["current_model"], name)
    assert model.kind in ("poole_frenkel", "power_law")


def test_config_defaults() -> None:
    model = current_model_from_config(
        {"kind": "poole_frenkel", "slope": [-1.03, -0.0901], "intercept": [-0.251, -37.1]}, "x"
    )
    assert model == PooleFrenkel.high_r_siox()
    assert model.residual_std == (0.1, 0.4) and model.residual_correlation == 0.6
    assert model.temperature == 293.15 and model.expansion_tolerance == 1e-6
    assert (
        current_model_from_config({"kind": "power_law", "n_mean": 2.99, "n_std": 0.369}, "x").v_ref
        == 0.25
    )


@pytest.mark.parametrize(
    "changes,key",
    [
        ({"residual_correlation": 2.0}, "residual_correlation"),
        ({"residual_std": [0.1, -0.4]}, "residual_std[1]"),
        ({"slope": [-1.03]}, "slope"),
        ({"intercept": "x"}, "intercept"),
        ({"temperature": 0.0}, "temperature"),
        ({"expansion_tolerance": 0.0}, "expansion_tolerance"),
        ({"max_terms": 0}, "max_terms"),
        ({"expansion_basis": "legendre"}, "expansion_basis"),
        ({"residual_sdt": [0.1, 0.4]}, "residual_sdt"),
    ],
)
def test_bad_poole_frenkel_config_names_the_key(changes, key) -> None:
    config = {**PooleFrenkel.high_r_siox().to_config(), **changes}
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        current_model_from_config(config, "devices/x.toml: current_model")


@pytest.mark.parametrize(
    "changes,key",
    [
        ({"n_std": -0.1}, "n_std"),
        ({"v_ref": 0.0}, "v_ref"),
        ({"n_mean": 1.5, "n_std": 0.0}, "n_mean"),
        ({"n_mean": -20.0, "n_std": 0.1}, "n_mean"),
        ({"nmean": 2.0}, "nmean"),
    ],
)
def test_bad_power_law_config_names_the_key(changes, key) -> None:
    config = {**PowerLaw.high_r_siox().to_config(), **changes}
    with pytest.raises(ConfigError, match=key):
        current_model_from_config(config, "devices/x.toml: current_model")


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match="residual_correlation"):
        PooleFrenkel.high_r_siox(residual_correlation=-1.5)
    with pytest.raises(ConfigError, match="n_std"):
        PowerLaw(n_mean=2.5, n_std=-1.0)


def test_exponent_coefficient_of_the_model() -> None:
    model = PooleFrenkel.high_r_siox(residual_std=(0.0, 0.0), temperature=300.0)
    conductances = torch.tensor([[1e-6, 2e-6]], dtype=F64)
    _, log_d = model.log_parameters(conductances, {})
    _, beta = model._log_c_and_beta(conductances, {})
    expected = poole_frenkel_exponent_coefficient(torch.exp(log_d), 300.0)
    torch.testing.assert_close(beta, expected, rtol=1e-13, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.column_currents(torch.ones(2, 1, dtype=F64), conductances, {})
