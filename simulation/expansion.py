"""Separable expansions of exp(b s) for crossbars: one factor per row (s), one per device (b).

A Poole-Frenkel device current is V c exp(b s) with s = sqrt|V| (one per row and example) and b =
beta (one per device). Take, per row, the interval [b0 - h, b0 + h] of b over the row's devices and
the interval [m - r, m + r] of s over the batch; with t = (b - b0) / h and x = h (s - m),

    exp(b s) = exp(b0 s) * exp((b - b0) m) * exp(x t),      |t| <= 1, |x| <= X = h r.

Centring s at m (rather than expanding around s = 0) halves the argument, and a batch whose
voltages are all equal per row (r = 0) is exact with one term. The remaining factor exp(z), z = x t
in [-X, X], is approximated by a polynomial p(z) = sum_{k < K} q_k (z / X)^k; since (z / X)^k =
u^k t^k with u = x / X, every term separates into a row factor u^k and a device factor t^k:

    exp(b s) ~ exp(b0 s) exp((b - b0) m) sum_k q_k u^k t^k.

Two polynomials, both with a bound on the relative error of every term exp(b s):

* "chebyshev": the Chebyshev (Jacobi-Anger) expansion exp(X w) = I_0(X) + 2 sum_{k >= 1} I_k(X)
  T_k(w), |w| <= 1, truncated after K terms (I_k the modified Bessel functions of the first kind,
  T_k the Chebyshev polynomials) and rewritten in powers of w. |T_k| <= 1 bounds the absolute
  error by 2 sum_{k >= K} I_k(X); since exp(z) >= exp(-X), the relative error is at most
  exp(X) * 2 sum_{k >= K} I_k(X) (`exp_chebyshev_error_bound`). This is the same bound as the
  bivariate expansion exp(x t) = sum_k a_k I_k(x) T_k(t) (Bessel row factors, Chebyshev device
  factors) with the same number of terms, but the factors u^k and t^k cost one multiplication
  each instead of a Bessel series and a three-term recurrence;
* "taylor": q_k = X^k / k!, relative error <= exp(X) sum_{k >= K} X^k / k!
  (`exp_taylor_error_bound`); about one to three terms more than Chebyshev.

Rounding: the terms of the sum may cancel; sum_k |q_k| / exp(-X) (`ExpansionPlan.amplification`,
about exp(2X) for small X) bounds how much the dtype's rounding of the terms is magnified, and
`plan_expansion` refuses plans where that times the dtype's epsilon exceeds the tolerance. This
module also holds I_k and T_k as differentiable torch functions (`bessel_i`, `chebyshev_basis`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

BASES = ("chebyshev", "taylor")
"""Names of the expansion polynomials."""

MAX_EXPANSION_ARGUMENT = 60.0
"""Largest X for which the bounds are evaluated; beyond, they are infinite."""

MAX_BESSEL_ARGUMENT = 50.0
"""Largest |x| for which `bessel_i` evaluates its power series."""

_SERIES_RELATIVE_ERROR = 1e-17
"""Relative truncation error of the float Bessel series (below float64 rounding)."""


# ----------------------------------------------------------------------------------------------
# Modified Bessel functions of the first kind.


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
        if abs(term) <= _SERIES_RELATIVE_ERROR * abs(total) or term == 0.0:
            return total


def _series_length(y_max: float) -> int:
    """Number M of power-series terms with sum_{m >= M} y^m / (m!)^2 <= 1e-17 for y <= y_max.

    The series of I_k(x) / ((x/2)^k / k!) is sum_m y^m k! / (m! (m + k)!) with y = x^2 / 4, each
    term at most y^m / (m!)^2, so this M bounds the relative truncation error of every order.
    """
    term = 1.0
    m = 0
    while True:
        m += 1
        term *= y_max / (m * m)
        ratio = y_max / ((m + 1) * (m + 1))
        if ratio < 0.5 and term / (1.0 - ratio) <= _SERIES_RELATIVE_ERROR:
            return m


@functools.lru_cache(maxsize=256)
def _bessel_power_coefficients(orders: int, count: int) -> torch.Tensor:
    """A (count, orders), float64, with I_k(x) = sum_j (x^j / j!) A[j, k] + (terms j >= count).

    I_k(x) = sum_m (x/2)^(2m+k) / (m! (m+k)!), so A[2m+k, k] = j! / (2^j m! (m+k)!) (a binomial
    coefficient over 2^j, in [0, 1]); sum_k a_k A[j, k] = 1 with a = (1, 2, 2, ...).
    """
    coefficients = torch.zeros(count, orders, dtype=torch.float64)
    for k in range(orders):
        for j in range(k, count, 2):
            m = (j - k) // 2
            coefficients[j, k] = math.exp(
                math.lgamma(j + 1) - j * math.log(2.0) - math.lgamma(m + 1) - math.lgamma(m + k + 1)
            )
    return coefficients


def _scaled_powers(x: torch.Tensor, count: int) -> torch.Tensor:
    """(count, *x.shape) tensor of x^j / j!, j = 0 .. count - 1 (each at most exp|x|)."""
    powers = x.new_empty((count, *x.shape))
    powers[0] = 1.0
    zero = x.new_zeros(())
    for j in range(1, count):
        torch.addcmul(zero, powers[j - 1], x, value=1.0 / j, out=powers[j])
    return powers


def _bessel_values(x: torch.Tensor, orders: int) -> torch.Tensor:
    """I_0 .. I_{orders-1} at x, shape (orders, *x.shape), no autograd."""
    x_max = float(x.abs().max()) if x.numel() else 0.0
    if not x_max <= MAX_BESSEL_ARGUMENT:
        raise ValueError(
            f"bessel_i: |x| = {x_max:.3g} is outside the power series' range "
            f"(at most {MAX_BESSEL_ARGUMENT:g})"
        )
    count = orders + 2 * _series_length(0.25 * x_max * x_max)
    coefficients = _bessel_power_coefficients(orders, count).to(x.dtype)
    powers = _scaled_powers(x, count)
    return (coefficients.T @ powers.reshape(count, -1)).reshape(orders, *x.shape)


class _BesselI(torch.autograd.Function):
    """I_0 .. I_{orders-1}; backward by I_0' = I_1 and I_k' = (I_{k-1} + I_{k+1}) / 2."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, orders: int) -> torch.Tensor:  # type: ignore[override]
        values = _bessel_values(x, orders + 1)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(values)
        return values[:orders].movedim(0, -1).contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (values,) = ctx.saved_tensors
        lower = torch.cat([values[1:2], values[:-2]])
        slopes = 0.5 * (lower + values[1:])
        return (grad.movedim(-1, 0) * slopes).sum(dim=0), None


def bessel_i(x: torch.Tensor, orders: int) -> torch.Tensor:
    """Modified Bessel functions I_0(x) .. I_{orders-1}(x), shape (*x.shape, orders).

    Power series summed to a relative truncation error below 1e-17, as one matrix product of the
    scaled powers x^j / j! with a fixed coefficient matrix (the terms of one order share a sign,
    so nothing cancels); |x| <= 50 (raises beyond). Differentiable in x (first order) with the
    exact derivatives I_0' = I_1, I_k' = (I_{k-1} + I_{k+1}) / 2.
    """
    if orders < 1:
        raise ValueError(f"orders must be >= 1, got {orders}")
    return _BesselI.apply(x, orders)


# ----------------------------------------------------------------------------------------------
# Chebyshev polynomials.


class _ChebyshevBasis(torch.autograd.Function):
    """T_0(t) .. T_{terms-1}(t) stacked along dim 0; backward with T_k' = k U_{k-1}."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, terms: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(t)
        values = t.new_empty((terms, *t.shape))
        values[0] = 1.0
        if terms > 1:
            values[1] = t
        twice = 2.0 * t
        for k in range(2, terms):
            torch.mul(twice, values[k - 1], out=values[k]).sub_(values[k - 2])
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (t,) = ctx.saved_tensors
        result = torch.zeros_like(t)
        twice = 2.0 * t
        previous, current = torch.zeros_like(t), torch.ones_like(t)  # U_{-1}, U_0
        for k in range(1, grad.shape[0]):
            result.addcmul_(grad[k], current, value=float(k))
            previous, current = current, torch.mul(twice, current).sub_(previous)
        return result, None


def chebyshev_basis(t: torch.Tensor, terms: int, dim: int = -1) -> torch.Tensor:
    """Chebyshev polynomials T_0(t) .. T_{terms-1}(t) stacked along a new dimension `dim`.

    Three-term recurrence (stable on [-1, 1]); differentiable in t (first order), with a finite
    gradient at t = +-1, unlike cos(k arccos t).
    """
    if terms < 1:
        raise ValueError(f"terms must be >= 1, got {terms}")
    return _ChebyshevBasis.apply(t, terms).movedim(0, dim)


# ----------------------------------------------------------------------------------------------
# Error bounds and the choice of basis and number of terms.


@functools.lru_cache(maxsize=1024)
def _chebyshev_tails(x: float, terms: int) -> tuple[float, ...]:
    """exp(x) * 2 * sum_{k >= K} I_k(x) for K = 1 .. terms.

    Orders below N are summed from their series; beyond, I_k(x) <= (x/2)^k / k! * I_0(x) (each
    series term of I_k is at most (x/2)^k / k! times that of I_0) and the ratio x / (2 (k + 1)) <
    1/2 bounds the rest by 2 (x/2)^N / N! * I_0(x).
    """
    last = max(terms + 20, int(2 * x) + 20)
    values = [bessel_i_float(k, x) for k in range(last)]
    rest = 0.0
    if x > 0:
        rest = 2.0 * math.exp(last * math.log(0.5 * x) - math.lgamma(last + 1)) * values[0]
    tails = []
    tail = rest
    for k in range(last - 1, 0, -1):
        tail += values[k]
        if k <= terms:
            tails.append(tail)
    tails.reverse()
    return tuple(2.0 * math.exp(x) * value for value in tails)


@functools.lru_cache(maxsize=1024)
def _taylor_tails(x: float, terms: int) -> tuple[float, ...]:
    """exp(x) * sum_{k >= K} x^k / k! for K = 1 .. terms (the rest beyond N = terms + 2x + 20
    bounded by twice its first term, the ratio x / (k + 1) being below 1/2)."""
    last = terms + int(2 * x) + 20
    values = [math.exp(k * math.log(x) - math.lgamma(k + 1)) if x > 0 else 0.0 for k in range(last)]
    tail = 2.0 * values[-1]
    tails = []
    for k in range(last - 2, 0, -1):
        tail += values[k]
        if k <= terms:
            tails.append(tail)
    tails.reverse()
    return tuple(math.exp(x) * value for value in tails)


def _check_bound_arguments(x: float, terms: int) -> None:
    if terms < 1:
        raise ValueError(f"terms must be >= 1, got {terms}")
    if not x >= 0.0:
        raise ValueError(f"x must be >= 0, got {x}")


def exp_chebyshev_error_bound(x: float, terms: int) -> float:
    """Relative error bound exp(x) * 2 * sum_{k >= terms} I_k(x) of the `terms`-term Chebyshev
    expansion of exp(x t), |x| <= x, |t| <= 1 (infinite for x > MAX_EXPANSION_ARGUMENT)."""
    _check_bound_arguments(x, terms)
    return math.inf if x > MAX_EXPANSION_ARGUMENT else _chebyshev_tails(x, terms)[terms - 1]


def exp_taylor_error_bound(x: float, terms: int) -> float:
    """Relative error bound exp(x) * sum_{k >= terms} x^k / k! of the `terms`-term Taylor
    expansion of exp(x t), |x| <= x, |t| <= 1 (infinite for x > MAX_EXPANSION_ARGUMENT)."""
    _check_bound_arguments(x, terms)
    return math.inf if x > MAX_EXPANSION_ARGUMENT else _taylor_tails(x, terms)[terms - 1]


def _round_up(x: float) -> float:
    """x rounded up to 9 significant bits (relative step <= 0.4 %), so that plans cache well."""
    if x <= 0.0:
        return 0.0
    mantissa, exponent = math.frexp(x)
    return math.ldexp(math.ceil(mantissa * 512.0) / 512.0, exponent)


def _first_below(tails: tuple[float, ...], tolerance: float) -> int | None:
    for terms, bound in enumerate(tails, start=1):
        if bound <= tolerance:
            return terms
    return None


@functools.lru_cache(maxsize=64)
def chebyshev_monomials(terms: int) -> tuple[tuple[int, ...], ...]:
    """Integer power coefficients of T_0 .. T_{terms-1}: T_k(w) = sum_j C[k][j] w^j."""
    rows: list[list[int]] = [[1], [0, 1]]
    for k in range(2, terms):
        following = [0] * (k + 1)
        for j, value in enumerate(rows[k - 1]):
            following[j + 1] += 2 * value
        for j, value in enumerate(rows[k - 2]):
            following[j] -= value
        rows.append(following)
    return tuple(tuple(row) for row in rows[:terms])


@functools.lru_cache(maxsize=1024)
def exp_polynomial_coefficients(x: float, terms: int, basis: str) -> tuple[float, ...]:
    """q_0 .. q_{terms-1} with exp(x w) ~ sum_k q_k w^k on |w| <= 1 (x >= 0).

    "chebyshev": the truncated Chebyshev-Bessel series sum_{k < terms} a_k I_k(x) T_k(w) in
    powers of w (a = 1, 2, 2, ...); "taylor": x^k / k!.
    """
    if basis == "taylor":
        return tuple(math.exp(k * math.log(x) - math.lgamma(k + 1)) if x > 0 else float(k == 0)
                     for k in range(terms))  # fmt: skip
    if basis != "chebyshev":
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    coefficients = [0.0] * terms
    for k, row in enumerate(chebyshev_monomials(terms)):
        weight = (1.0 if k == 0 else 2.0) * bessel_i_float(k, x)
        for j, value in enumerate(row):
            coefficients[j] += weight * value
    return tuple(coefficients)


@dataclass(frozen=True)
class ExpansionPlan:
    """exp(z) ~ sum_k q_k (z / x_max)^k for |z| <= x_max, with its error bound."""

    basis: str
    terms: int
    """K: the number of separable products (the crossbar does K matrix products)."""
    coefficients: tuple[float, ...]
    """q_0 .. q_{K-1}."""
    error_bound: float
    """Bound on the relative error of every expanded exponential: truncation, plus the float64
    rounding of the coefficients (not the rounding of the evaluation: see `amplification`)."""
    x_max: float
    """X (rounded up by at most 0.4 %, so that plans cache well)."""
    amplification: float
    """sum_k |q_k| / exp(-X): how much the rounding of the terms can be magnified."""

    @property
    def inverse_x_max(self) -> float:
        """1 / X (0 when X = 0, where one term is exact and u is never used)."""
        return 1.0 / self.x_max if self.x_max > 0 else 0.0


def _coefficient_error(x: float, terms: int, basis: str) -> float:
    """Bound on the relative error of p(z) caused by computing its coefficients in float64.

    Chebyshev: each q_j = sum_k w_k C[k][j] (w_k = a_k I_k(x), each within a few ulps) errs by at
    most ~4 eps sum_k |w_k| |C[k][j]|; summed over j (|w|^j <= 1) and divided by exp(-x). This
    grows like (1 + sqrt 2)^K and rules out long expansions of large x; Taylor's q_k are exact to a
    few ulps.
    """
    eps = 4.0 * 2.0**-52
    if x == 0.0:
        return 0.0  # p = 1 exactly
    if basis == "taylor":
        return eps * math.exp(x) * sum(exp_polynomial_coefficients(x, terms, basis))
    total = 0.0
    for k, row in enumerate(chebyshev_monomials(terms)):
        weight = (1.0 if k == 0 else 2.0) * bessel_i_float(k, x)
        total += weight * sum(abs(value) for value in row)
    return eps * math.exp(x) * total


@functools.lru_cache(maxsize=4096)
def _plan(x: float, tolerance: float, max_terms: int, basis: str) -> ExpansionPlan | None:
    tails = (_chebyshev_tails if basis == "chebyshev" else _taylor_tails)(x, max_terms)
    first = _first_below(tails, tolerance)
    if first is None:
        return None
    for terms in range(first, max_terms + 1):
        bound = tails[terms - 1] + _coefficient_error(x, terms, basis)
        if bound <= tolerance:
            coefficients = exp_polynomial_coefficients(x, terms, basis)
            amplification = math.exp(x) * sum(abs(q) for q in coefficients)
            return ExpansionPlan(basis, terms, coefficients, bound, x, amplification)
    return None


def plan_expansion(
    x: float,
    tolerance: float,
    max_terms: int,
    basis: str = "chebyshev",
    epsilon: float = 0.0,
) -> ExpansionPlan | None:
    """The shortest polynomial expansion of exp(z), |z| <= x, within a relative tolerance.

    Returns None when max_terms terms are not enough, when x is not finite, or when the
    rounding of the dtype (`epsilon`, e.g. torch.finfo(dtype).eps) magnified by the plan's
    amplification exceeds the tolerance. The bound is evaluated at x rounded up by at most
    0.4 % (it grows with x, so it stays a bound).
    """
    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    if not math.isfinite(x) or x < 0.0:
        return None
    x = _round_up(x)
    if x > MAX_EXPANSION_ARGUMENT:
        return None
    plan = _plan(x, tolerance, max_terms, basis)
    if plan is None or plan.amplification * epsilon > tolerance:
        return None
    return plan


def terms_for_tolerance(x: float, tolerance: float, max_terms: int) -> tuple[int, float] | None:
    """Smallest number of Chebyshev terms K <= max_terms with exp_chebyshev_error_bound(x, K) <=
    tolerance, and that bound (at x rounded up by <= 0.4 %); None if there is none."""
    if not math.isfinite(x) or x < 0.0:
        return None
    x = _round_up(x)
    if x > MAX_EXPANSION_ARGUMENT:
        return None
    tails = _chebyshev_tails(x, max_terms)
    terms = _first_below(tails, tolerance)
    return None if terms is None else (terms, tails[terms - 1])


# ----------------------------------------------------------------------------------------------
# The whole crossbar in one autograd function.


def sqrt_row_arguments(
    voltages: torch.Tensor,
    centre: torch.Tensor,
    half_width: torch.Tensor,
    midpoint: torch.Tensor,
    inverse_x_max: float,
    root: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """s = sqrt|V| (unless given), u = h (s - m) / X and e = exp(b0 s), without autograd."""
    if root is None:
        root = voltages.detach().abs().sqrt_()
    slope = half_width * inverse_x_max
    u = torch.addcmul(-midpoint * slope, root, slope)
    growth = torch.mul(root, centre).exp_()
    return root, u, growth


class _SqrtCrossbar(torch.autograd.Function):
    """I = sum_k q_k F_k @ W_k with F_k = V e u^k and W_k = C t^k, and the device power.

    The terms are streamed: F_k = F_{k-1} u and W_k = W_{k-1} t live one at a time ((batch, rows)
    and (rows, cols) tensors that stay in cache) and the backward recomputes them rather than
    keeping (terms, ...) stacks. Gradients are written out (no autograd inside).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        voltages: torch.Tensor,
        log_c: torch.Tensor,
        b: torch.Tensor,
        centre: torch.Tensor,
        half_width: torch.Tensor,
        midpoint: torch.Tensor,
        plan: ExpansionPlan,
        root: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inverse, q = plan.inverse_x_max, plan.coefficients
        root, u, growth = sqrt_row_arguments(voltages, centre, half_width, midpoint, inverse, root)
        row_scale = voltages * growth
        # t = (b - b0) / h and W_0 = C = c exp((b - b0) m)
        inverse_half = half_width.reciprocal().unsqueeze(1)
        t = torch.addcmul(-centre.unsqueeze(1) * inverse_half, b, inverse_half)
        scale = torch.addcmul(log_c, t, (half_width * midpoint).unsqueeze(1)).exp_()
        # All currents of a row share the sign of V: sum_j |V_bi I_bij| = V_bi r_bi with the row
        # current r_bi = sum_j I_bij = sum_k q_k F_k(b, i) sum_j W_k(i, j).
        weight_sums = scale.new_empty((plan.terms, scale.shape[0]))
        ones = scale.new_ones(scale.shape[-1])
        features = (torch.empty_like(u), torch.empty_like(u))  # ping-pong buffers
        weights = (torch.empty_like(t), torch.empty_like(t))
        feature, weight = row_scale, scale
        for k in range(plan.terms):
            if k > 0:
                feature = torch.mul(feature, u, out=features[k % 2])
                weight = torch.mul(weight, t, out=weights[k % 2])
            torch.mv(weight, ones, out=weight_sums[k])
            if k == 0:
                currents = torch.mm(feature, weight).mul_(q[0])
                row_currents = (feature * weight_sums[0]).mul_(q[0])
            else:
                currents.addmm_(feature, weight, alpha=q[k])
                row_currents.addcmul_(feature, weight_sums[k], value=q[k])
        power = torch.linalg.vecdot(voltages, row_currents)
        ctx.set_materialize_grads(False)
        ctx.plan = plan
        saved = (voltages, t, scale, row_scale, u, root, growth, weight_sums, row_currents, centre)
        ctx.save_for_backward(*saved, half_width * inverse, inverse_half, midpoint)
        return currents, power

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx, grad_currents: torch.Tensor | None, grad_power: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        voltages, t, scale, row_scale, u, root, growth, weight_sums = ctx.saved_tensors[:8]
        row_currents, centre, u_slope, inverse_half, midpoint = ctx.saved_tensors[8:]
        q = ctx.plan.coefficients
        need_v, need_c, need_b = ctx.needs_input_grad[:3]
        need_g = need_c or need_b
        if grad_currents is None:
            grad_currents = voltages.new_zeros((voltages.shape[0], scale.shape[-1]))
        # dL/dr_bi for the row currents r (power = sum_i V r); None when the power is unused.
        row_grad = None if grad_power is None else grad_power.unsqueeze(1) * voltages
        grad_log = grad_t = value_sum = slope_sum = None
        if need_g:  # W_k = C t^k: dW_k/dlnC = W_k, dW_k/dt = k W_{k-1}
            grad_log = torch.empty_like(scale)
            grad_t = torch.zeros_like(t) if ctx.plan.terms == 1 else torch.empty_like(t)
        if need_v:  # F_k = V e u^k: sum_k q_k dL/dF_k u^k and its derivative in u
            value_sum, slope_sum = torch.zeros_like(u), torch.zeros_like(u)
        features = (torch.empty_like(u), torch.empty_like(u))  # ping-pong buffers
        weights = (torch.empty_like(t), torch.empty_like(t))
        powers = (torch.empty_like(u), torch.empty_like(u))
        grad_w = torch.empty_like(t) if need_g else None
        feature, weight, previous = row_scale, scale, scale
        u_power = u_previous = u  # u^k and u^(k-1), used from k = 1 and k = 2 on
        for k in range(ctx.plan.terms):
            if k > 0:
                previous, weight = weight, torch.mul(weight, t, out=weights[k % 2])
                feature = torch.mul(feature, u, out=features[k % 2])
            if need_v and k > 1:
                u_previous, u_power = u_power, torch.mul(u_power, u, out=powers[k % 2])
            if need_g:
                # dL/dW_k = q_k (F_k^T dL/dI + sum_b dL/dr_b F_k(b, i) in every column)
                torch.mm(feature.T, grad_currents, out=grad_w)
                if row_grad is not None:
                    grad_w.add_((row_grad * feature).sum(dim=0).unsqueeze(1))
                if k == 0:
                    torch.mul(grad_w, weight, out=grad_log).mul_(q[0])
                else:
                    grad_log.addcmul_(grad_w, weight, value=q[k])
                if k == 1:
                    torch.mul(grad_w, previous, out=grad_t).mul_(q[1])
                elif k > 1:
                    grad_t.addcmul_(grad_w, previous, value=q[k] * k)
            if need_v:
                # dL/dF_k = q_k (dL/dI W_k^T + dL/dr sum_j W_k)
                grad_f = torch.mm(grad_currents, weight.T)
                if row_grad is not None:
                    grad_f.addcmul_(row_grad, weight_sums[k])
                if k == 0:
                    value_sum.add_(grad_f, alpha=q[0])
                else:
                    value_sum.addcmul_(grad_f, u_power, value=q[k])
                    if k == 1:
                        slope_sum.add_(grad_f, alpha=q[1])
                    else:
                        slope_sum.addcmul_(grad_f, u_previous, value=q[k] * k)
        grad_v = None
        if need_v:
            # F_k = V e u^k with e = exp(b0 s), u = (h / X)(s - m) and V ds/dV = |V| / (2 s) =
            # s / 2 (also the limit at V = 0), so
            # dF_k/dV = e [u^k + (s / 2) (b0 u^k + (h / X) k u^(k-1))].
            half_root = 0.5 * root
            grad_v = value_sum * torch.addcmul(torch.ones_like(root), centre, half_root)
            grad_v.addcmul_(slope_sum, u_slope * half_root).mul_(growth)
            if grad_power is not None:
                grad_v.addcmul_(grad_power.unsqueeze(1), row_currents)
        grad_b = None
        if need_g:  # ln C = ln c + (b - b0) m and t = (b - b0) / h
            grad_b = grad_t.mul_(inverse_half).addcmul_(grad_log, midpoint.unsqueeze(1))
        return grad_v, grad_log, grad_b, None, None, None, None, None


def sqrt_crossbar(
    voltages: torch.Tensor,
    log_c: torch.Tensor,
    b: torch.Tensor,
    centre: torch.Tensor,
    half_width: torch.Tensor,
    midpoint: torch.Tensor,
    plan: ExpansionPlan,
    root: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bit-line currents (batch, cols) and device power (batch,) of the expanded crossbar.

    I_bj = sum_i V_bi c_ij exp(b_ij s_bi), s = sqrt|V|, with every row's b_ij in [b0 - h, b0 + h]
    (centre b0, half_width h) and s_bi in [m - r, m + r] (midpoint m), h r <= plan.x_max. With
    t = (b - b0) / h and u = h (s - m) / X it is evaluated as sum_k q_k F_k @ W_k, F_k = V
    exp(b0 s) u^k and W_k = c exp((b - b0) m) t^k (see the module docstring). Power: sum_ij
    |V_bi I_bij| = sum_i V_bi sum_j I_bij (every current of a row has the sign of V).
    Differentiable in voltages, log_c and b (first order; the exact derivative of the expansion);
    b0, h and m are constants. root: sqrt|V| if already at hand.
    """
    centre, half_width, midpoint = (x.detach() for x in (centre, half_width, midpoint))
    root = None if root is None else root.detach()
    return _SqrtCrossbar.apply(voltages, log_c, b, centre, half_width, midpoint, plan, root)
