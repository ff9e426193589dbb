"""Chebyshev-Bessel machinery: I_k, T_k, the bounds, the plans and the expanded crossbar."""

import math

import numpy as np
import pytest
import scipy.special
import torch

from simulation.expansion import (
    bessel_i,
    bessel_i_float,
    chebyshev_basis,
    chebyshev_monomials,
    exp_chebyshev_error_bound,
    exp_polynomial_coefficients,
    exp_taylor_error_bound,
    plan_expansion,
    sqrt_crossbar,
    terms_for_tolerance,
)

F64 = torch.float64


def test_bessel_i_matches_scipy_over_a_grid() -> None:
    x = torch.linspace(-20.0, 20.0, 161, dtype=F64)
    values = bessel_i(x, 16).numpy()
    expected = scipy.special.iv(np.arange(16)[None, :], x.numpy()[:, None])
    np.testing.assert_allclose(values, expected, rtol=1e-12, atol=0)
    small = torch.tensor([0.0, 1e-8, 1e-3, 0.3], dtype=F64)
    expected_small = scipy.special.iv(np.arange(6)[None, :], small.numpy()[:, None])
    np.testing.assert_allclose(bessel_i(small, 6).numpy(), expected_small, rtol=1e-12, atol=0)


def test_bessel_i_float_matches_scipy() -> None:
    for order in (0, 1, 5, 17, 40):
        for x in (0.0, 0.05, 1.3, 7.0, 33.0):
            assert bessel_i_float(order, x) == pytest.approx(scipy.special.iv(order, x), rel=1e-13)


def test_bessel_i_gradient_and_range() -> None:
    x = torch.tensor([-3.0, -0.2, 0.0, 0.7, 4.5], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: bessel_i(z, 5), (x,))
    with pytest.raises(ValueError, match="outside"):
        bessel_i(torch.tensor([60.0], dtype=F64), 3)


def test_chebyshev_basis_matches_cosines_and_has_finite_gradient_at_ends() -> None:
    t = torch.linspace(-1.0, 1.0, 51, dtype=F64)
    basis = chebyshev_basis(t, 9)
    assert basis.shape == (51, 9)
    expected = torch.cos(torch.arange(9, dtype=F64) * torch.arccos(t).unsqueeze(-1))
    torch.testing.assert_close(basis, expected, rtol=0, atol=1e-13)
    ends = torch.tensor([-1.0, -0.3, 1.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: chebyshev_basis(z, 7, dim=0), (ends,))
    (grad,) = torch.autograd.grad(chebyshev_basis(ends, 4).sum(), ends)
    # d/dt sum_k T_k at t = 1 is sum_k k^2 = 0 + 1 + 4 + 9.
    assert grad[2].item() == pytest.approx(14.0)


def test_chebyshev_monomials() -> None:
    rows = chebyshev_monomials(6)
    assert rows[2] == (-1, 0, 2)
    assert rows[5] == (0, 5, 0, -20, 0, 16)
    w = 0.37
    for k, row in enumerate(rows):
        assert sum(c * w**j for j, c in enumerate(row)) == pytest.approx(math.cos(k * math.acos(w)))


@pytest.mark.parametrize("basis", ["chebyshev", "taylor"])
@pytest.mark.parametrize("x", [0.05, 0.4, 1.0, 3.0])
def test_polynomial_error_is_below_the_bound(basis: str, x: float) -> None:
    w = np.linspace(-1.0, 1.0, 4001)
    bound_of = exp_chebyshev_error_bound if basis == "chebyshev" else exp_taylor_error_bound
    for terms in (2, 4, 7, 10):
        q = exp_polynomial_coefficients(x, terms, basis)
        poly = np.polynomial.polynomial.polyval(w, q)
        relative = np.abs(poly - np.exp(x * w)) / np.exp(x * w)
        bound = bound_of(x, terms)
        assert relative.max() <= bound * (1 + 1e-9) + 1e-15
        if bound > 1e-12:
            assert relative.max() > bound / 20  # the bound is not vacuous


def test_bounds_shrink_with_terms_and_grow_with_x() -> None:
    for bound in (exp_chebyshev_error_bound, exp_taylor_error_bound):
        assert bound(0.5, 6) < bound(0.5, 5) < bound(0.5, 4)
        assert bound(0.4, 6) < bound(0.5, 6) < bound(0.6, 6)
        assert bound(0.0, 1) == 0.0
        assert bound(100.0, 5) == math.inf
    # Chebyshev gains about 2^(K-1) over Taylor.
    assert exp_chebyshev_error_bound(0.5, 8) < exp_taylor_error_bound(0.5, 8) / 50


def test_terms_for_tolerance_is_the_smallest() -> None:
    found = terms_for_tolerance(0.47, 1e-6, 32)
    assert found is not None
    terms, bound = found
    assert bound <= 1e-6
    assert exp_chebyshev_error_bound(0.47 * 1.004, terms - 1) > 1e-6
    assert terms_for_tolerance(0.47, 1e-6, terms - 1) is None
    assert terms_for_tolerance(float("nan"), 1e-6, 32) is None


def test_plans() -> None:
    chebyshev = plan_expansion(0.47, 1e-6, 32, "chebyshev")
    taylor = plan_expansion(0.47, 1e-6, 32, "taylor")
    assert chebyshev is not None and taylor is not None
    assert (chebyshev.terms, taylor.terms) == (6, 8)
    assert chebyshev.error_bound <= 1e-6 and taylor.error_bound <= 1e-6
    assert chebyshev.x_max >= 0.47 and chebyshev.x_max <= 0.47 * 1.004
    assert chebyshev.amplification == pytest.approx(
        math.exp(chebyshev.x_max) * sum(abs(q) for q in chebyshev.coefficients)
    )
    # One exact term at X = 0; too few terms or too coarse a dtype -> no plan.
    zero = plan_expansion(0.0, 1e-6, 32)
    assert zero is not None and zero.terms == 1 and zero.error_bound == 0.0
    assert plan_expansion(0.47, 1e-6, 5) is None
    assert plan_expansion(3.0, 1e-6, 32, epsilon=torch.finfo(torch.float32).eps) is None
    assert plan_expansion(3.0, 1e-6, 32, epsilon=torch.finfo(F64).eps) is not None
    # The float64 rounding of the coefficients enters the bound; it grows like (1 + sqrt 2)^K and
    # rules out long expansions of wide intervals.
    wide = plan_expansion(8.0, 1e-6, 64)
    assert wide is not None
    assert wide.error_bound > exp_chebyshev_error_bound(wide.x_max, wide.terms)
    assert plan_expansion(15.0, 1e-6, 64) is None
    with pytest.raises(ValueError, match="basis"):
        plan_expansion(0.5, 1e-6, 32, "legendre")


def _crossbar_case(seed: int, batch: int, rows: int, cols: int):
    generator = torch.Generator().manual_seed(seed)
    voltages = 0.5 * torch.rand(batch, rows, generator=generator, dtype=F64) - 0.1
    voltages[0, :2] = 0.0
    log_c = -14.0 + 0.3 * torch.randn(rows, cols, generator=generator, dtype=F64)
    b = 1.9 * torch.exp(0.2 * torch.randn(rows, cols, generator=generator, dtype=F64))
    return voltages, log_c, b


def _intervals(voltages: torch.Tensor, b: torch.Tensor):
    low, high = b.amin(dim=1), b.amax(dim=1)
    root = voltages.abs().sqrt()
    root_low, root_high = root.amin(dim=0), root.amax(dim=0)
    centre, half = 0.5 * (low + high), 0.5 * (high - low)
    midpoint = 0.5 * (root_low + root_high)
    x_max = float((half * 0.5 * (root_high - root_low)).max())
    return centre, half, midpoint, x_max


def test_expanded_exponentials_stay_within_the_bound() -> None:
    """exp(b s) as exp(b0 s) exp((b - b0) m) sum_k q_k u^k t^k over random rows and batches."""
    for seed in range(4):
        voltages, _, b = _crossbar_case(seed, 16, 9, 7)
        centre, half, midpoint, x_max = _intervals(voltages, b)
        for basis in ("chebyshev", "taylor"):
            plan = plan_expansion(x_max, 1e-6, 32, basis)
            assert plan is not None
            s = voltages.abs().sqrt().unsqueeze(-1)  # (batch, rows, 1)
            t = (b - centre[:, None]) / half[:, None]
            u = half * (s.squeeze(-1) - midpoint) / plan.x_max  # (batch, rows)
            series = sum(q * u.unsqueeze(-1) ** k * t**k for k, q in enumerate(plan.coefficients))
            approx = (
                torch.exp(centre[:, None] * s + (b - centre[:, None]) * midpoint[:, None]) * series
            )
            relative = ((approx - torch.exp(b * s)) / torch.exp(b * s)).abs().max().item()
            assert relative <= plan.error_bound
            assert relative < 1e-6


@pytest.mark.parametrize("basis", ["chebyshev", "taylor"])
def test_sqrt_crossbar_matches_elementwise_sums(basis: str) -> None:
    voltages, log_c, b = _crossbar_case(7, 12, 30, 11)
    centre, half, midpoint, x_max = _intervals(voltages, b)
    plan = plan_expansion(x_max, 1e-9, 32, basis)
    assert plan is not None
    currents, power = sqrt_crossbar(voltages, log_c, b, centre, half, midpoint, plan)
    device = (
        voltages.unsqueeze(-1)
        * torch.exp(log_c)
        * torch.exp(b * voltages.abs().sqrt().unsqueeze(-1))
    )
    expected = device.sum(dim=1)
    scale = device.abs().sum(dim=1)
    assert ((currents - expected).abs() / scale).max() <= plan.error_bound + 1e-14
    expected_power = (voltages.unsqueeze(-1) * device).abs().sum(dim=(1, 2))
    assert ((power - expected_power).abs() / expected_power).max() <= plan.error_bound + 1e-14


def test_sqrt_crossbar_gradcheck_with_fixed_plan() -> None:
    generator = torch.Generator().manual_seed(3)
    voltages = (0.4 * torch.rand(4, 5, generator=generator, dtype=F64) + 0.05).requires_grad_()
    voltages.data[1, 2] = -0.2
    log_c = (0.3 * torch.randn(5, 3, generator=generator, dtype=F64)).requires_grad_()
    b = (1.5 + 0.5 * torch.rand(5, 3, generator=generator, dtype=F64)).requires_grad_()
    centre, half, midpoint, x_max = _intervals(voltages.detach(), b.detach())
    half = half * 1.5  # room for gradcheck's perturbations of b
    for basis in ("chebyshev", "taylor"):
        plan = plan_expansion(x_max * 1.6, 1e-4, 32, basis)
        assert plan is not None

        def crossbar(v, lc, bb, plan=plan):
            return sqrt_crossbar(v, lc, bb, centre, half, midpoint, plan)

        assert torch.autograd.gradcheck(crossbar, (voltages, log_c, b))
