"""Programming noise: std of G' - G equals sigma(G), units of the coefficients, clamp at 0 S."""

import math

import pytest
import torch

from simulation.mapping import ConductanceRange
from simulation.nonidealities import ProgrammingNoise

G_RANGE = ConductanceRange(g_off=1.0e-6, g_on=1.0e-4)
N = 100_000


def test_std_of_change_matches_sigma() -> None:
    noise = ProgrammingNoise([1.0e-6, 0.05])
    levels = torch.tensor([1.0e-5, 5.0e-5, 1.0e-4], dtype=torch.float64).unsqueeze(1)
    g = levels.expand(-1, N)
    draws = noise.draw(tuple(g.shape), G_RANGE, torch.Generator().manual_seed(20), torch.float64)
    change = noise.apply(g, draws, G_RANGE) - g
    sigma = 1.0e-6 + 0.05 * levels.squeeze(1)
    measured = change.std(dim=1)
    # Standard error of a normal sample's std: sigma / sqrt(2 (N - 1)); the clamp at 0 S is
    # more than 6 sigma away at every level.
    assert bool(((measured / sigma - 1).abs() < 5 / math.sqrt(2 * (N - 1))).all())
    assert bool((change.mean(dim=1).abs() < 5 * sigma / math.sqrt(N)).all())


def test_polynomial_in_siemens_and_relative_units() -> None:
    g = torch.tensor([[2.0e-6, 3.0e-5, 1.0e-4]], dtype=torch.float64)
    absolute = ProgrammingNoise([1.0e-6, 0.02, 300.0])
    expected = 1.0e-6 + 0.02 * g + 300.0 * g**2
    torch.testing.assert_close(
        absolute.standard_deviation(g, G_RANGE), expected, rtol=1e-12, atol=0
    )
    relative = ProgrammingNoise([0.01, 0.02, 0.03], relative=True)
    u = g / G_RANGE.g_on
    expected = G_RANGE.g_on * (0.01 + 0.02 * u + 0.03 * u**2)
    torch.testing.assert_close(
        relative.standard_deviation(g, G_RANGE), expected, rtol=1e-12, atol=0
    )
    g_on = G_RANGE.g_on
    same = ProgrammingNoise([0.01 * g_on, 0.02, 0.03 / g_on])
    torch.testing.assert_close(same.standard_deviation(g, G_RANGE), expected, rtol=1e-12, atol=0)


def test_negative_polynomial_means_the_same_spread() -> None:
    g = torch.tensor([[1.0e-5, 5.0e-5]], dtype=torch.float64)
    positive = ProgrammingNoise([2.0e-6, 0.01]).standard_deviation(g, G_RANGE)
    negative = ProgrammingNoise([-2.0e-6, -0.01]).standard_deviation(g, G_RANGE)
    torch.testing.assert_close(positive, negative, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_coefficients_are_identity(dtype: torch.dtype) -> None:
    noise = ProgrammingNoise([0.0, 0.0, 0.0])
    g = torch.linspace(1e-6, 1e-4, 60, dtype=dtype).reshape(6, 10)
    draws = noise.draw((6, 10), G_RANGE, torch.Generator().manual_seed(21), dtype)
    out = noise.apply(g, draws, G_RANGE)
    assert out.dtype == dtype
    assert torch.equal(out, g)


def test_never_negative() -> None:
    noise = ProgrammingNoise([2.0e-5])
    g = torch.full((100, 100), 1.0e-6, requires_grad=True)
    draws = noise.draw((100, 100), G_RANGE, torch.Generator().manual_seed(22))
    out = noise.apply(g, draws, G_RANGE)
    assert bool((out >= 0).all())
    assert int((out == 0).sum()) > 1000  # many devices were clamped, so the test bites
    out.sum().backward()
    assert g.grad is not None
    assert torch.equal(g.grad, (out > 0).float())


def test_gradcheck_float64() -> None:
    unit_range = ConductanceRange(1.0, 10.0)
    noise = ProgrammingNoise([0.05, 0.02, 0.003])
    g = torch.tensor([[1.0, 2.5, 4.0], [6.0, 8.0, 10.0]], dtype=torch.float64, requires_grad=True)
    draws = noise.draw((2, 3), unit_range, torch.Generator().manual_seed(23), torch.float64)
    assert torch.autograd.gradcheck(lambda x: noise.apply(x, draws, unit_range), (g,))
    relative = ProgrammingNoise([0.01, 0.05], relative=True)
    assert torch.autograd.gradcheck(lambda x: relative.apply(x, draws, unit_range), (g,))


def test_same_seed_same_draws() -> None:
    noise = ProgrammingNoise([1.0e-6])
    first = noise.draw((4, 6), G_RANGE, torch.Generator().manual_seed(24), torch.float64)
    second = noise.draw((4, 6), G_RANGE, torch.Generator().manual_seed(24), torch.float64)
    other = noise.draw((4, 6), G_RANGE, torch.Generator().manual_seed(25), torch.float64)
    assert first["z"].dtype == torch.float64
    assert torch.equal(first["z"], second["z"])
    assert not torch.equal(first["z"], other["z"])
