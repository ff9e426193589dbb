"""D2D lognormal: mean preservation in R, sigma interpolation in R, identity, gradients."""

import math

import pytest
import torch

from simulation.mapping import ConductanceRange
from simulation.nonidealities import D2DLognormal

G_RANGE = ConductanceRange(g_off=1.0e-6, g_on=1.0e-4)
R_ON, R_OFF = 1 / G_RANGE.g_on, 1 / G_RANGE.g_off
N = 100_000


def disturbed_resistances(
    disturbance: D2DLognormal, resistances: list[float], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """N devices per nominal R (rows); returns nominal R (rows, 1) and R' (rows, N)."""
    r = torch.tensor(resistances, dtype=torch.float64).unsqueeze(1)
    g = (1 / r).expand(-1, N)
    draws = disturbance.draw(
        tuple(g.shape), G_RANGE, torch.Generator().manual_seed(seed), torch.float64
    )
    return r, 1 / disturbance.apply(g, draws, G_RANGE)


def test_mean_of_resistance_is_preserved() -> None:
    disturbance = D2DLognormal(sigma_on=0.05, sigma_off=0.5)
    resistances = [0.5 * R_ON, R_ON, 0.5 * (R_ON + R_OFF), R_OFF, 3 * R_OFF]
    r, r_disturbed = disturbed_resistances(disturbance, resistances, seed=10)
    sigma = disturbance.shape_parameter(1 / r, G_RANGE)
    # Relative standard error of the mean of N lognormal draws: sqrt(exp(sigma^2) - 1) / sqrt(N).
    standard_error = torch.sqrt(torch.expm1(sigma**2) / N)
    relative_error = (r_disturbed.mean(dim=1, keepdim=True) / r - 1).abs()
    assert bool((relative_error < 4 * standard_error).all()), (relative_error, standard_error)


def test_sigma_is_linear_in_resistance_and_constant_outside() -> None:
    disturbance = D2DLognormal(sigma_on=0.1, sigma_off=0.4)
    r = torch.tensor(
        [R_ON, R_OFF, 0.5 * (R_ON + R_OFF), R_ON + 0.25 * (R_OFF - R_ON), 0.1 * R_ON, 10 * R_OFF],
        dtype=torch.float64,
    )
    sigma = disturbance.shape_parameter(1 / r, G_RANGE)
    expected = torch.tensor([0.1, 0.4, 0.25, 0.175, 0.1, 0.4], dtype=torch.float64)
    torch.testing.assert_close(sigma, expected, rtol=1e-12, atol=1e-12)


def test_std_of_log_resistance_equals_sigma() -> None:
    disturbance = D2DLognormal(sigma_on=0.1, sigma_off=0.4)
    resistances = [0.2 * R_ON, R_ON, 0.5 * (R_ON + R_OFF), R_OFF, 5 * R_OFF]
    expected = torch.tensor([0.1, 0.1, 0.25, 0.4, 0.4], dtype=torch.float64)
    _, r_disturbed = disturbed_resistances(disturbance, resistances, seed=11)
    log_std = torch.log(r_disturbed).std(dim=1)
    # Standard error of a normal sample's std: sigma / sqrt(2 (N - 1)).
    assert bool(((log_std - expected).abs() < 5 * expected / math.sqrt(2 * (N - 1))).all())


def test_log_resistance_follows_the_formula_exactly() -> None:
    disturbance = D2DLognormal(sigma_on=0.2, sigma_off=0.3)
    g = torch.tensor([[1.0e-4, 5.0e-5], [1.0e-5, 1.0e-6]], dtype=torch.float64)
    draws = disturbance.draw((2, 2), G_RANGE, torch.Generator().manual_seed(1), torch.float64)
    sigma = disturbance.shape_parameter(g, G_RANGE)
    log_r = torch.log(1 / disturbance.apply(g, draws, G_RANGE))
    expected = torch.log(1 / g) - sigma**2 / 2 + sigma * draws["z"]
    torch.testing.assert_close(log_r, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_sigma_is_identity(dtype: torch.dtype) -> None:
    disturbance = D2DLognormal(0.0, 0.0)
    g = torch.linspace(0.5e-6, 2e-4, 50, dtype=dtype).reshape(5, 10)
    draws = disturbance.draw((5, 10), G_RANGE, torch.Generator().manual_seed(2), dtype)
    out = disturbance.apply(g, draws, G_RANGE)
    assert out.dtype == dtype
    assert torch.equal(out, g)


def test_gradcheck_float64() -> None:
    unit_range = ConductanceRange(1.0, 10.0)
    disturbance = D2DLognormal(sigma_on=0.1, sigma_off=0.5)
    generator = torch.Generator().manual_seed(3)
    # Away from the kinks of sigma(R) at g_off and g_on; includes values outside the window.
    g = torch.tensor([[0.5, 1.3, 2.0], [4.5, 9.2, 13.0]], dtype=torch.float64, requires_grad=True)
    draws = disturbance.draw((2, 3), unit_range, generator, torch.float64)
    assert torch.autograd.gradcheck(lambda x: disturbance.apply(x, draws, unit_range), (g,))


def test_zero_conductance_stays_zero_with_finite_gradient() -> None:
    disturbance = D2DLognormal(0.1, 0.5)
    g = torch.tensor([[0.0, 1.0e-5]], requires_grad=True)
    draws = disturbance.draw((1, 2), G_RANGE, torch.Generator().manual_seed(4))
    out = disturbance.apply(g, draws, G_RANGE)
    assert out[0, 0].item() == 0.0
    out.sum().backward()
    assert g.grad is not None and bool(torch.isfinite(g.grad).all())


def test_same_seed_same_draws() -> None:
    disturbance = D2DLognormal(0.1, 0.5)
    first = disturbance.draw((4, 6), G_RANGE, torch.Generator().manual_seed(5))
    second = disturbance.draw((4, 6), G_RANGE, torch.Generator().manual_seed(5))
    other = disturbance.draw((4, 6), G_RANGE, torch.Generator().manual_seed(6))
    assert first["z"].dtype == torch.float32
    assert torch.equal(first["z"], second["z"])
    assert not torch.equal(first["z"], other["z"])
