"""Separable expansion of exp(b * s) for b in an interval: Chebyshev in b, Bessel functions in s.

For |t| <= 1 the Jacobi-Anger / Chebyshev expansion of the exponential is

    exp(z t) = I_0(z) + 2 * sum_{k >= 1} I_k(z) T_k(t),

with I_k the modified Bessel functions of the first kind and T_k the Chebyshev polynomials. With
b = b0 + h t (b0 the midpoint and h the half-width of an interval of b) and s >= 0,

    exp(b s) = exp(b0 s) * sum_k a_k I_k(h s) T_k(t),      a_0 = 1, a_k = 2 (k >= 1),

which separates a function of s (one per row of a crossbar: the voltage) from a function of b
(one per device). Truncated after `terms` terms (k = 0 .. terms - 1), |T_k| <= 1 gives an absolute
error <= exp(b0 s) * 2 * sum_{k >= terms} I_k(h s), and since exp(b s) >= exp((b0 - h) s) the
relative error is at most

    exp(x) * 2 * sum_{k >= terms} I_k(x),      x = h * s,

which grows with x; `exp_chebyshev_error_bound` evaluates it and `terms_for_tolerance` picks the
smallest number of terms that meets a tolerance. This module holds the reusable pieces: I_k in torch
(differentiable), the Chebyshev basis in torch (differentiable) and the bound in plain floats.
"""

from __future__ import annotations

import functools
import math

import torch

MAX_EXPANSION_ARGUMENT = 60.0
"""Largest x = h * s for which the bound is evaluated; beyond, it is reported as infinite."""

_SERIES_RELATIVE_ERROR = 1e-17
"""Relative truncation error of the Bessel power series (below float64 rounding)."""


# ----------------------------------------------------------------------------------------------
# Modified Bessel functions of the first kind, I_k(x) for k = 0 .. orders - 1.


def bessel_i_float(order: int, x: float) -> float:
    """I_order(x) for a float x (power series, relative error ~1e-16 for |x| <= 60)."""
    if order < 0:
        raise ValueError(f"order must be >= 0, got {order}")
    half = 0.5 * x
    term = 1.0
    for m in range(1, order + 1):
        term *= half / m
    total = term
    y = half * half
    m = 0
    while True:
        m += 1
        term *= y / (m * (m + order))
        total += term
        if term <= _SERIES_RELATIVE_ERROR * abs(total) or term == 0.0:
            return total


def _series_length(y_max: float) -> int:
    """Number M of power-series terms with sum_{m >= M} y^m / (m!)^2 <= 1e-17 for y <= y_max.

    For every order k the series of I_k(x) / ((x/2)^k / k!) is sum_m y^m k! / (m! (m + k)!) with
    y = x^2 / 4, each term at most y^m / (m!)^2, so this M bounds the relative truncation error of
    every order at once.
    """
    term = 1.0  # y^m / (m!)^2 at m = 0
    m = 0
    while True:
        m += 1
        term *= y_max / (m * m)
        ratio = y_max / ((m + 1) * (m + 1))
        if ratio < 0.5 and term / (1.0 - ratio) <= _SERIES_RELATIVE_ERROR:
            return m


def _scaled_powers(z: torch.Tensor, count: int) -> torch.Tensor:
    """(..., count) tensor of z^j / j! for j = 0 .. count - 1 (a running product, no overflow for
    z below ~88 in float32 since z^j / j! <= exp(z))."""
    divisors = torch.arange(1, count, dtype=z.dtype, device=z.device)
    steps = z.unsqueeze(-1) / divisors
    ones = torch.ones((*z.shape, 1), dtype=z.dtype, device=z.device)
    return torch.cat([ones, steps], dim=-1).cumprod(dim=-1)


def _bessel_i_values(x: torch.Tensor, orders: int) -> torch.Tensor:
    """Forward values of I_0 .. I_{orders-1} at x, shape (..., orders), no autograd."""
    half = 0.5 * x
    y = half * half
    y_max = float(y.max()) if y.numel() else 0.0
    if not math.isfinite(y_max):
        raise ValueError("bessel_i: non-finite argument")
    limit = (
        0.25 * (18.0 if x.dtype in (torch.float32, torch.float16, torch.bfloat16) else 50.0) ** 2
    )
    if y_max > limit:
        raise ValueError(
            f"bessel_i: |x| = {2 * math.sqrt(y_max):.3g} is too large for the power series in "
            f"{x.dtype} (at most {2 * math.sqrt(limit):.3g})"
        )
    series = _series_length(y_max)
    # I_k(x) = [(x/2)^k / k!] * sum_m [y^m / m!] * [k! / (m + k)!]
    m = torch.arange(series, dtype=torch.float64)
    k = torch.arange(orders, dtype=torch.float64)
    log_coefficients = torch.lgamma(k + 1).unsqueeze(0) - torch.lgamma(m.unsqueeze(1) + k + 1)
    coefficients = log_coefficients.exp().to(dtype=x.dtype, device=x.device)
    sums = _scaled_powers(y, series) @ coefficients
    return _scaled_powers(half, orders) * sums


class _BesselI(torch.autograd.Function):
    """I_0 .. I_{orders-1}; backward by I_0' = I_1 and I_k' = (I_{k-1} + I_{k+1}) / 2."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, orders: int) -> torch.Tensor:  # type: ignore[override]
        values = _bessel_i_values(x, orders + 1)
        ctx.save_for_backward(values)
        return values[..., :orders].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (values,) = ctx.saved_tensors
        lower = torch.cat([values[..., 1:2], values[..., :-2]], dim=-1)
        derivative = 0.5 * (lower + values[..., 1:])
        return (grad * derivative).sum(dim=-1), None


def bessel_i(x: torch.Tensor, orders: int) -> torch.Tensor:
    """Modified Bessel functions I_0(x) .. I_{orders-1}(x), shape (*x.shape, orders).

    Power series summed to a relative truncation error below 1e-17, as one small matrix product
    per call; valid for |x| <= 18 in float32 and |x| <= 50 in float64 (raises beyond). The
    gradient with respect to x (first order only) uses the exact recurrence of the derivatives.
    """
    if orders < 1:
        raise ValueError(f"orders must be >= 1, got {orders}")
    return _BesselI.apply(x, orders)


# ----------------------------------------------------------------------------------------------
# Chebyshev polynomials T_k(t), k = 0 .. terms - 1.


def _chebyshev_values(t: torch.Tensor, terms: int) -> list[torch.Tensor]:
    values = [torch.ones_like(t)]
    if terms > 1:
        values.append(t)
    twice = 2.0 * t
    for _ in range(2, terms):
        values.append(torch.addcmul(-values[-2], twice, values[-1]))
    return values


class _ChebyshevBasis(torch.autograd.Function):
    """T_0(t) .. T_{terms-1}(t) stacked along `dim`; backward with T_k' = k U_{k-1}."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, terms: int, dim: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(t)
        ctx.terms, ctx.dim = terms, dim
        return torch.stack(_chebyshev_values(t, terms), dim=dim)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (t,) = ctx.saved_tensors
        grads = grad.unbind(dim=ctx.dim)
        result = torch.zeros_like(t)
        # U_0 = 1, U_1 = 2t, U_k = 2t U_{k-1} - U_{k-2};  T_k' = k U_{k-1}.
        twice = 2.0 * t
        previous, current = None, torch.ones_like(t)
        for k in range(1, ctx.terms):
            result.addcmul_(grads[k], current, value=float(k))
            if previous is None:
                previous, current = current, twice
            else:
                previous, current = current, torch.addcmul(-previous, twice, current)
        return result, None, None


def chebyshev_basis(t: torch.Tensor, terms: int, dim: int = -1) -> torch.Tensor:
    """Chebyshev polynomials T_0(t) .. T_{terms-1}(t) stacked along a new dimension `dim`.

    Three-term recurrence (stable on [-1, 1]); differentiable in t (first order), with a finite
    gradient at t = +-1, unlike cos(k arccos t).
    """
    if terms < 1:
        raise ValueError(f"terms must be >= 1, got {terms}")
    if dim < 0:
        dim += t.dim() + 1
    return _ChebyshevBasis.apply(t, terms, dim)


def expansion_weights(terms: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The factors a_k of exp(z t) = sum_k a_k I_k(z) T_k(t): 1, 2, 2, ..."""
    weights = torch.full((terms,), 2.0, dtype=dtype)
    weights[0] = 1.0
    return weights


# ----------------------------------------------------------------------------------------------
# Error bound and number of terms.


def exp_chebyshev_error_bound(x: float, terms: int) -> float:
    """Bound on the relative error of the `terms`-term expansion of exp(b s).

    exp(x) * 2 * sum_{k >= terms} I_k(x) with x = h * s (h the half-width of the interval of b,
    s >= 0); valid for every b in the interval. Infinite for x > MAX_EXPANSION_ARGUMENT.
    """
    if terms < 1:
        raise ValueError(f"terms must be >= 1, got {terms}")
    if not x >= 0.0:
        raise ValueError(f"x must be >= 0, got {x}")
    if x > MAX_EXPANSION_ARGUMENT:
        return math.inf
    return _tail_bounds(x, terms)[terms - 1]


@functools.lru_cache(maxsize=1024)
def _tail_bounds(x: float, terms: int) -> tuple[float, ...]:
    """exp(x) * 2 * sum_{k >= K} I_k(x) for K = 1 .. terms (one shared evaluation).

    Orders up to N - 1 are summed from the series; beyond, I_k(x) <= (x/2)^k / k! * I_0(x) (every
    series term of I_k is at most (x/2)^k / k! times that of I_0), and the geometric ratio
    x / (2 (k + 1)) < 1/2 bounds the rest: sum_{k >= N} <= 2 (x/2)^N / N! * I_0(x).
    """
    last = max(terms + 20, int(2 * x) + 20)
    values = [bessel_i_float(k, x) for k in range(last)]
    log_rest = last * math.log(max(0.5 * x, 1e-300)) - math.lgamma(last + 1)
    rest = 2.0 * math.exp(log_rest) * values[0] if x > 0 else 0.0
    tails = []
    tail = rest
    for k in range(last - 1, 0, -1):
        tail += values[k]
        if k <= terms:
            tails.append(tail)
    tails.reverse()
    scale = 2.0 * math.exp(x)
    return tuple(scale * value for value in tails[:terms])


def _round_up(x: float) -> float:
    """x rounded up to 9 significant bits (relative step <= 0.4 %), so that bounds cache well."""
    if x <= 0.0:
        return 0.0
    mantissa, exponent = math.frexp(x)
    return math.ldexp(math.ceil(mantissa * 512.0) / 512.0, exponent)


def terms_for_tolerance(x: float, tolerance: float, max_terms: int) -> tuple[int, float] | None:
    """Smallest number of terms K <= max_terms whose relative error bound at x is <= tolerance.

    Returns (K, bound) or None when even max_terms terms do not reach the tolerance. The bound is
    evaluated at x rounded up by at most 0.4 % (the bound grows with x, so it stays a bound).
    """
    if not math.isfinite(x) or x < 0.0:
        return None
    x = _round_up(x)
    if x > MAX_EXPANSION_ARGUMENT:
        return None
    for terms, bound in enumerate(_tail_bounds(x, max_terms), start=1):
        if bound <= tolerance:
            return terms, bound
    return None
