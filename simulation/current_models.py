"""Device current models I(V, G): how much current a device of conductance G passes at V.

Like a disturbance, a current model separates its per-device randomness (`draw`) from the
computation. `device_currents` is the exact elementwise reference, (batch, rows, cols) in A;
`column_currents` returns what a crossbar needs, the bit-line currents (batch, cols) in A and the
device power sum |V * I| over the array per example (batch,) in W, as fast as the model allows.
"""

from __future__ import annotations

import functools
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from simulation.config import (
    ConfigError,
    ConfigIdentity,
    key_path,
    read_choice,
    read_float,
    read_float_list,
    read_int,
    reject_unknown_keys,
    require_mapping,
)
from simulation.expansion import (
    BASES,
    ExpansionPlan,
    plan_expansion,
    sqrt_crossbar,
)
from simulation.iv import (
    ROOM_TEMPERATURE,
    poole_frenkel_current,
    poole_frenkel_exponent_coefficient,
    power_law_current,
)
from simulation.nonidealities.base import Draws

CURRENT_MODELS: dict[str, type[CurrentModel]] = {}
"""Config name ("kind") -> class, filled by subclasses as they are defined."""

_ELEMENTWISE_CHUNK = 2**22
"""Largest number of device currents the elementwise path holds at once."""


class CurrentModel(ConfigIdentity, ABC):
    """A (possibly nonlinear, possibly random) I-V model applied to every device of an array."""

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is not None:
            if kind in CURRENT_MODELS:
                raise TypeError(f"current model kind {kind!r} is defined twice")
            CURRENT_MODELS[kind] = cls

    @property
    def is_linear(self) -> bool:
        """True when I = G V exactly, so an array's currents are one matrix product."""
        return False

    def draw(
        self,
        shape: tuple[int, int],
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Draws:
        """Sample per-device random variables for an array of `shape`; none by default."""
        return {}

    @abstractmethod
    def device_currents(
        self, voltages: torch.Tensor, conductances: torch.Tensor, draws: Draws
    ) -> torch.Tensor:
        """Exact per-device currents (batch, rows, cols) in A for voltages (batch, rows) in V."""

    def column_currents(
        self, voltages: torch.Tensor, conductances: torch.Tensor, draws: Draws
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bit-line currents (batch, cols) in A and device power (batch,) in W.

        The default sums the exact device currents in chunks of examples so memory stays bounded.
        """
        rows, cols = conductances.shape
        step = max(1, _ELEMENTWISE_CHUNK // max(1, rows * cols))
        currents, powers = [], []
        for start in range(0, voltages.shape[0], step):
            chunk = voltages[start : start + step]
            device = self.device_currents(chunk, conductances, draws)
            currents.append(device.sum(dim=-2))
            powers.append((chunk.unsqueeze(-1) * device).abs().sum(dim=(-2, -1)))
        return torch.cat(currents), torch.cat(powers)

    @abstractmethod
    def to_config(self) -> dict[str, Any]:
        """A TOML-ready table that `current_model_from_config` turns back into an equal object."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> CurrentModel:
        """Build from a config table (without checking "kind"); errors name `where` and the key."""


class Ohmic(CurrentModel):
    """I = G V: the ideal, linear device."""

    kind = "ohmic"

    @property
    def is_linear(self) -> bool:
        return True

    def device_currents(
        self, voltages: torch.Tensor, conductances: torch.Tensor, draws: Draws
    ) -> torch.Tensor:
        return voltages.unsqueeze(-1) * conductances

    def column_currents(
        self, voltages: torch.Tensor, conductances: torch.Tensor, draws: Draws
    ) -> tuple[torch.Tensor, torch.Tensor]:
        currents = voltages @ conductances
        # |V I| summed over a row is V^2 * sum_j G_ij since all G >= 0.
        power = (voltages * voltages) @ conductances.sum(dim=-1)
        return currents, power

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> Ohmic:
        reject_unknown_keys(config, ["kind"], where)
        return cls()


_TINY_HALF_WIDTH = 1e-3
"""Smallest half-width of a row's interval of beta, relative to its midpoint (see PooleFrenkel)."""

_EXACT_BELOW = 2**19
"""PooleFrenkel computes arrays with fewer device currents than this (batch * rows * cols)
exactly: up to about this size the fused elementwise path is as fast as the expansion (measured
on 2 CPU cores: 33k currents 0.3 ms against 0.55 ms forward + backward, 630k both 1.9 ms)."""


def _read_pair(config: Mapping[str, Any], key: str, where: str, **kwargs: Any) -> tuple[float, ...]:
    return tuple(read_float_list(config, key, where, length=2, **kwargs))


class PooleFrenkel(CurrentModel):
    """Poole-Frenkel conduction with parameters drawn from a regression on resistance.

    Per device, with R = 1/G in Ohm (G in S, already disturbed):

        [ln c, ln d_epsilon] = slope * ln R + intercept + eps,    eps ~ N(0, Sigma),
        I = sgn(V) c |V| exp((q / (k_B T)) sqrt(q |V| / (pi d_epsilon)))
          = sgn(V) c |V| exp(beta sqrt|V|),        beta = (q / (k_B T)) sqrt(q / (pi d_epsilon))

    (Joksas et al. 2022, published version; `simulation.iv.poole_frenkel_current`). Sigma has
    standard deviations `residual_std` = [s1, s2] (of ln c and ln d_epsilon) and correlation
    `residual_correlation` rho; `draw` returns independent standard normals z (2, rows, cols) and
    eps = L z with the Cholesky factor L = [[s1, 0], [rho s2, s2 sqrt(1 - rho^2)]], so a draw does
    not depend on G. The paper's fits (`high_r_siox`, `low_r_siox`): high-R SiOx slope =
    [-1.03, -0.0901], intercept = [-0.251, -37.1]; low-R SiOx slope = [-1.12, -1.34], intercept =
    [0.628, -25.9]. Sigma was never published; the default residual_std = [0.1, 0.4],
    residual_correlation = 0.6 is our estimate from crude PF fits to 30 digitised edge-state curves
    (std of ln c residuals 0.02-0.15, of ln d_epsilon 0.35-0.5, correlation 0.5-0.8).

    `column_currents` is fast with a bounded error (`simulation.expansion`). Per row i, take the
    interval [b0_i - h_i, b0_i + h_i] of beta over the row's devices and [m_i - r_i, m_i + r_i] of
    s = sqrt|V| over the batch (both detached, recomputed every call); with t = (beta - b0) / h,
    u = h (s - m) / X and X = max_i h_i r_i,

        exp(beta s) = exp(b0 s) exp((beta - b0) m) exp(X u t),   exp(X u t) ~ sum_k q_k u^k t^k,

    where sum_k q_k w^k is the K-term Chebyshev-Bessel expansion of exp(X w), |w| <= 1, in powers
    of w (`expansion_basis` "chebyshev", default) or its Taylor series ("taylor"). Then

        I_bj = sum_k q_k F_k @ W_k,   F_k = V exp(b0 s) u^k (batch, rows),
                                      W_k = c exp((beta - b0) m) t^k (rows, cols):

    K matrix products. K is the smallest number of terms whose bound on the relative error of
    every device current, exp(X) 2 sum_{k >= K} I_k(X) (Taylor: exp(X) sum_{k >= K} X^k / k!), is
    <= `expansion_tolerance` (default 1e-6, at most `max_terms` terms); the bound is in
    `last_error_bound`, the plan in `last_plan`. Centring s at m halves X compared with expanding
    around V = 0; a batch whose voltages are equal per row (e.g. one example) is exact with K = 1.
    Bit-line currents differ from the exact ones by at most tolerance * sum_i |I_bij|, plus
    rounding; the power sum_ij |V_bi I_bij| = sum_i V_bi sum_j I_bij (all currents of a row share
    the sign of V) by at most the tolerance, relative. Gradients reach V and G (through c and beta)
    by autodiff, through fused autograd functions with hand-written backward passes that give the
    exact derivative of the expansion; the intervals, K and the bound stay outside the graph. A
    row's half-width is at least 1e-3 of its midpoint, so t stays well-conditioned when its devices
    are all equal.

    Falls back to the exact elementwise path (`exact_column_currents`, fused, chunked over the
    batch): silently for arrays of fewer than 2^19 device currents (batch * rows * cols), where it
    is as fast; with a RuntimeWarning and `last_fallback_reason` when `max_terms` terms cannot meet
    the tolerance or when the dtype's rounding, magnified by the expansion (about exp(2X)), could
    exceed it.
    """

    kind = "poole_frenkel"

    _KEYS: ClassVar[tuple[str, ...]] = (
        "kind",
        "slope",
        "intercept",
        "residual_std",
        "residual_correlation",
        "temperature",
        "expansion_tolerance",
        "max_terms",
        "expansion_basis",
    )

    def __init__(
        self,
        slope: Sequence[float],
        intercept: Sequence[float],
        residual_std: Sequence[float] = (0.1, 0.4),
        residual_correlation: float = 0.6,
        temperature: float = ROOM_TEMPERATURE,
        expansion_tolerance: float = 1e-6,
        max_terms: int = 32,
        expansion_basis: str = "chebyshev",
    ) -> None:
        values = self._read(
            {
                "slope": list(slope),
                "intercept": list(intercept),
                "residual_std": list(residual_std),
                "residual_correlation": residual_correlation,
                "temperature": temperature,
                "expansion_tolerance": expansion_tolerance,
                "max_terms": max_terms,
                "expansion_basis": expansion_basis,
            },
            self.kind,
        )
        self.slope: tuple[float, ...] = values["slope"]
        self.intercept: tuple[float, ...] = values["intercept"]
        self.residual_std: tuple[float, ...] = values["residual_std"]
        self.residual_correlation: float = values["residual_correlation"]
        self.temperature: float = values["temperature"]
        self.expansion_tolerance: float = values["expansion_tolerance"]
        self.max_terms: int = values["max_terms"]
        self.expansion_basis: str = values["expansion_basis"]
        self.last_method: str | None = None
        """"expansion" or "exact": how the last `column_currents` call computed."""
        self.last_plan: ExpansionPlan | None = None
        """Basis, number of terms and bound of the last expanded call."""
        self.last_error_bound: float | None = None
        """Bound on the relative error of every device current in the last call (0 when exact)."""
        self.last_fallback_reason: str | None = None
        """Why the last call could not use the expansion (None when it did)."""

    @classmethod
    def high_r_siox(cls, **kwargs: Any) -> PooleFrenkel:
        """The paper's high-resistance SiOx regression (with our default Sigma unless given)."""
        return cls(slope=(-1.03, -0.0901), intercept=(-0.251, -37.1), **kwargs)

    @classmethod
    def low_r_siox(cls, **kwargs: Any) -> PooleFrenkel:
        """The paper's low-resistance SiOx regression (with our default Sigma unless given)."""
        return cls(slope=(-1.12, -1.34), intercept=(0.628, -25.9), **kwargs)

    @property
    def last_terms(self) -> int | None:
        """Number of expansion terms K of the last call (None when it was exact)."""
        return None if self.last_plan is None else self.last_plan.terms

    @staticmethod
    def _read(config: Mapping[str, Any], where: str) -> dict[str, Any]:
        return {
            "slope": _read_pair(config, "slope", where),
            "intercept": _read_pair(config, "intercept", where),
            "residual_std": _read_pair(
                config, "residual_std", where, minimum=0.0, default=(0.1, 0.4)
            ),
            "residual_correlation": read_float(
                config, "residual_correlation", where, default=0.6, minimum=-1.0, maximum=1.0
            ),
            "temperature": read_float(
                config,
                "temperature",
                where,
                default=ROOM_TEMPERATURE,
                minimum=0.0,
                exclusive_minimum=True,
            ),
            "expansion_tolerance": read_float(
                config,
                "expansion_tolerance",
                where,
                default=1e-6,
                minimum=0.0,
                exclusive_minimum=True,
                maximum=0.5,
            ),
            "max_terms": read_int(config, "max_terms", where, default=32, minimum=1, maximum=64),
            "expansion_basis": read_choice(
                config, "expansion_basis", where, BASES, default="chebyshev"
            ),
        }

    def to_config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "slope": list(self.slope),
            "intercept": list(self.intercept),
            "residual_std": list(self.residual_std),
            "residual_correlation": self.residual_correlation,
            "temperature": self.temperature,
            "expansion_tolerance": self.expansion_tolerance,
            "max_terms": self.max_terms,
            "expansion_basis": self.expansion_basis,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> PooleFrenkel:
        reject_unknown_keys(config, cls._KEYS, where)
        return cls(**cls._read(config, where))

    @property
    def is_random(self) -> bool:
        """True unless both residual standard deviations are 0."""
        return any(std > 0 for std in self.residual_std)

    def draw(
        self,
        shape: tuple[int, int],
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Draws:
        """Independent standard normals "normals" (2, rows, cols); none if Sigma = 0."""
        if not self.is_random:
            return {}
        return {"normals": torch.randn((2, *shape), generator=generator, dtype=dtype)}

    def log_parameters(
        self, conductances: torch.Tensor, draws: Draws
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ln c (c in S) and ln d_epsilon (d_epsilon in F) per device, each (rows, cols)."""
        log_r = -torch.log(conductances)
        log_c = self.slope[0] * log_r + self.intercept[0]
        log_d = self.slope[1] * log_r + self.intercept[1]
        normals = draws.get("normals")
        if normals is not None:
            s1, s2 = self.residual_std
            rho = self.residual_correlation
            log_c = log_c + s1 * normals[0]
            log_d = log_d + (s2 * rho) * normals[0] + (s2 * math.sqrt(1.0 - rho * rho)) * normals[1]
        return log_c, log_d

    def _log_c_and_beta(
        self, conductances: torch.Tensor, draws: Draws, differentiable: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ln c and beta (V^-1/2) per device, in few tensor operations (one autograd node, or
        none with differentiable=False)."""
        (a1, a2), (b1, b2) = self.slope, self.intercept
        s1, s2 = self.residual_std
        rho = self.residual_correlation
        # ln beta = ln beta(d_epsilon = 1 F) - ln(d_epsilon) / 2, and ln R = -ln G.
        log_unit = math.log(poole_frenkel_exponent_coefficient(1.0, self.temperature))
        offsets = (b1, log_unit - 0.5 * b2)
        slopes = (-a1, 0.5 * a2)
        mixing = ((s1, 0.0), (-0.5 * s2 * rho, -0.5 * s2 * math.sqrt(1.0 - rho * rho)))
        normals = draws.get("normals")
        if differentiable and torch.is_grad_enabled() and conductances.requires_grad:
            return _LogCAndBeta.apply(conductances, normals, offsets, slopes, mixing)
        with torch.no_grad():
            return _log_c_and_beta(conductances, normals, offsets, slopes, mixing)

    def device_currents(
        self, voltages: torch.Tensor, conductances: torch.Tensor, draws: Draws
    ) -> torch.Tensor:
        log_c, log_d = self.log_parameters(conductances, draws)
        return poole_frenkel_current(
            voltages.unsqueeze(-1), torch.exp(log_c), torch.exp(log_d), self.temperature
        )

    def column_currents(
        self, voltages: torch.Tensor, conductances: torch.Tensor, draws: Draws
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if voltages.shape[0] * conductances.numel() < _EXACT_BELOW:
            self.last_fallback_reason = "small array"
            return self.exact_column_currents(voltages, conductances, draws)
        result = self.expanded_column_currents(voltages, conductances, draws)
        if result is not None:
            return result
        warnings.warn(
            f"PooleFrenkel.column_currents: {self.last_fallback_reason}; "
            "using the exact elementwise path",
            RuntimeWarning,
            stacklevel=2,
        )
        return self.exact_column_currents(voltages, conductances, draws)

    def exact_column_currents(
        self, voltages: torch.Tensor, conductances: torch.Tensor, draws: Draws
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`column_currents` from the exact device currents, in chunks of examples (one fused
        autograd node per chunk; same values as summing `device_currents`)."""
        self.last_method, self.last_plan, self.last_error_bound = "exact", None, 0.0
        log_c, beta = self._log_c_and_beta(conductances, draws, differentiable=True)
        step = max(1, _ELEMENTWISE_CHUNK // max(1, conductances.numel()))
        if voltages.shape[0] <= step:
            return _ExactPooleFrenkel.apply(voltages, log_c, beta)
        parts = [
            _ExactPooleFrenkel.apply(voltages[start : start + step], log_c, beta)
            for start in range(0, voltages.shape[0], step)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def expanded_column_currents(
        self, voltages: torch.Tensor, conductances: torch.Tensor, draws: Draws
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The expansion path of `column_currents` (see the class docstring), at any size.

        Returns None (and sets `last_fallback_reason`) when no plan meets `expansion_tolerance`.
        """
        batch = voltages.shape[0]
        log_c, beta = self._log_c_and_beta(conductances, draws, differentiable=True)
        tiny = torch.finfo(voltages.dtype).tiny
        with torch.no_grad():
            low, high = beta.amin(dim=1), beta.amax(dim=1)
            centre = 0.5 * (low + high)
            half = torch.maximum(0.5 * (high - low), _TINY_HALF_WIDTH * centre).clamp_min_(tiny)
            root = voltages.detach().abs().sqrt_()
            if batch:
                root_low, root_high = root.amin(dim=0), root.amax(dim=0)
                midpoint = 0.5 * (root_low + root_high)
                x_max = 0.5 * float(((root_high - root_low) * half).max())
            else:
                midpoint, x_max = torch.zeros_like(centre), 0.0
        epsilon = torch.finfo(voltages.dtype).eps
        tolerance, max_terms = self.expansion_tolerance, self.max_terms
        plan = plan_expansion(x_max, tolerance, max_terms, self.expansion_basis, epsilon)
        if plan is None:
            if plan_expansion(x_max, tolerance, max_terms, self.expansion_basis) is None:
                self.last_fallback_reason = (
                    f"max_terms = {max_terms} {self.expansion_basis} terms cannot expand exp(z) "
                    f"for |z| <= {x_max:.3g} within expansion_tolerance = {tolerance:g}"
                )
            else:
                self.last_fallback_reason = (
                    f"{voltages.dtype} rounding, magnified by the expansion of exp(z) for "
                    f"|z| <= {x_max:.3g}, could exceed expansion_tolerance = {tolerance:g}"
                )
            return None
        self.last_method, self.last_plan = "expansion", plan
        self.last_error_bound, self.last_fallback_reason = plan.error_bound, None
        return sqrt_crossbar(voltages, log_c, beta, centre, half, midpoint, plan, root)


def _log_c_and_beta(
    conductances: torch.Tensor,
    normals: torch.Tensor | None,
    offsets: tuple[float, float],
    slopes: tuple[float, float],
    mixing: tuple[tuple[float, float], tuple[float, float]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """[ln c, ln beta] = offsets + slopes ln G + mixing @ normals; returns ln c and beta."""
    log_g = torch.log(conductances)
    both = conductances.new_empty((2, *conductances.shape))
    for index in range(2):
        torch.mul(log_g, slopes[index], out=both[index]).add_(offsets[index])
    if normals is not None:
        both.view(2, -1).addmm_(_mixing_matrix(mixing, normals.dtype), normals.reshape(2, -1))
    return both[0], both[1].exp_()


@functools.lru_cache(maxsize=64)
def _mixing_matrix(
    mixing: tuple[tuple[float, float], tuple[float, float]], dtype: torch.dtype
) -> torch.Tensor:
    return torch.tensor(mixing, dtype=dtype)


class _LogCAndBeta(torch.autograd.Function):
    """`_log_c_and_beta` as one autograd node (gradient with respect to G only)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        conductances: torch.Tensor,
        normals: torch.Tensor | None,
        offsets: tuple[float, float],
        slopes: tuple[float, float],
        mixing: tuple[tuple[float, float], tuple[float, float]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        log_c, beta = _log_c_and_beta(conductances, normals, offsets, slopes, mixing)
        ctx.set_materialize_grads(False)
        ctx.slopes = slopes
        ctx.save_for_backward(conductances, beta)
        return log_c, beta

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx, grad_log_c: torch.Tensor | None, grad_beta: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        conductances, beta = ctx.saved_tensors
        slope_c, slope_beta = ctx.slopes
        # d ln c / d ln G = slope_c;  d beta / d ln G = slope_beta * beta;  d ln G / dG = 1 / G.
        if grad_beta is not None:
            grad = torch.mul(grad_beta, beta).mul_(slope_beta)
        else:
            grad = torch.zeros_like(conductances)
        if grad_log_c is not None:
            grad.add_(grad_log_c, alpha=slope_c)
        return grad.div_(conductances), None, None, None, None


class _ExactPooleFrenkel(torch.autograd.Function):
    """I_bj = sum_i V_bi c_ij exp(beta_ij s_bi), s = sqrt|V|, and the power sum_ij V_bi^2 c_ij
    exp(beta_ij s_bi), elementwise, with a hand-written backward (few fused operations, and a
    finite derivative at V = 0 where sqrt's slope is infinite)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, voltages: torch.Tensor, log_c: torch.Tensor, beta: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        root = voltages.abs().sqrt_()
        per_volt = torch.mul(beta, root.unsqueeze(-1)).exp_().mul_(torch.exp(log_c))  # I / V
        currents = torch.bmm(voltages.unsqueeze(1), per_volt).squeeze(1)
        sums = per_volt.sum(dim=-1)
        power = torch.linalg.vecdot(voltages * voltages, sums)  # |V I| = V^2 I / V
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(voltages, root, beta, per_volt, sums)
        return currents, power

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx, grad_currents: torch.Tensor | None, grad_power: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        voltages, root, beta, per_volt, sums = ctx.saved_tensors
        # With D = I / V: dL/dD_bij = V_bi A_bij, A_bij = dL/dI_bj + dL/dP_b V_bi.
        if grad_currents is None:
            grad_currents = voltages.new_zeros((voltages.shape[0], per_volt.shape[-1]))
        weighted = per_volt * grad_currents.unsqueeze(1)  # A D
        if grad_power is not None:
            weighted.add_(per_volt * (grad_power.unsqueeze(1) * voltages).unsqueeze(-1))
        grad_v = grad_c = grad_beta = None
        if ctx.needs_input_grad[0]:
            # dD/dV = D beta sgn(V) / (2 s), and V sgn(V) / (2 s) = s / 2 (also at V = 0).
            sloped = (weighted * beta).sum(dim=-1)
            grad_v = weighted.sum(dim=-1).addcmul_(sloped, root, value=0.5)
            if grad_power is not None:
                grad_v.addcmul_(grad_power.unsqueeze(1) * voltages, sums)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            by_device = weighted.mul_(voltages.unsqueeze(-1))  # dL/dD * D = dL/dln c
            grad_c = by_device.sum(dim=0)
            grad_beta = (by_device * root.unsqueeze(-1)).sum(dim=0)  # dD/dbeta = D s
        return grad_v, grad_c, grad_beta


_TRUNCATION_LIMIT = 30.0
"""Largest distance (in standard deviations) of a truncation point above the mean we sample."""


def sample_truncated_normal(
    shape: tuple[int, ...],
    mean: float,
    std: float,
    lower: float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Samples of N(mean, std^2) conditioned on >= lower, by the inverse CDF (exact truncation).

    x = mean + std * z with z = -Phi^-1(u * Phi(-alpha)), alpha = (lower - mean) / std and u
    uniform on (0, 1]: the upper-tail form stays accurate when lower is far above the mean. Computed
    in float64; the final cast is followed by a clamp to `lower` that only undoes rounding.
    Needs std > 0 and alpha <= 30.
    """
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    alpha = (lower - mean) / std
    if alpha > _TRUNCATION_LIMIT:
        raise ValueError(f"lower is {alpha:.3g} standard deviations above the mean (limit 30)")
    tail = 0.5 * math.erfc(alpha / math.sqrt(2.0))  # Phi(-alpha) = P(Z >= alpha)
    uniform = 1.0 - torch.rand(shape, generator=generator, dtype=torch.float64)
    z = -torch.special.ndtri(uniform * tail)
    return (mean + std * z).to(dtype).clamp_min(lower)


class PowerLaw(CurrentModel):
    """Power-law I-V curve with a random nonlinearity parameter n per device (arXiv v1 model).

    I = sgn(V) G v_ref (|V| / v_ref) ** log2(n), so n = I(2V) / I(V) (n = 2 is Ohmic) and
    I(v_ref) = G v_ref (`simulation.iv.power_law_current`). n is drawn per device from N(n_mean,
    n_std^2) truncated to n >= 2 (exact inverse-CDF sampling; n <= 1 is unphysical, 1 < n < 2
    atypical). Paper values (`high_r_siox`, `low_r_siox`): high-R SiOx n = 2.99 +- 0.369, low-R
    SiOx n = 2.13 +- 0.0953, v_ref = 0.25 V.

    `column_currents` keeps the base class's chunked elementwise path: an expansion like
    PooleFrenkel's in the exponent p = log2(n) would multiply p by ln(|V| / v_ref), which is
    unbounded as V -> 0, so no fixed number of terms bounds the relative error of every device.
    """

    kind = "power_law"

    _KEYS: ClassVar[tuple[str, ...]] = ("kind", "n_mean", "n_std", "v_ref")

    def __init__(self, n_mean: float, n_std: float, v_ref: float = 0.25) -> None:
        values = self._read({"n_mean": n_mean, "n_std": n_std, "v_ref": v_ref}, self.kind)
        self.n_mean: float = values["n_mean"]
        self.n_std: float = values["n_std"]
        self.v_ref: float = values["v_ref"]

    @classmethod
    def high_r_siox(cls) -> PowerLaw:
        """The paper's (arXiv v1) high-resistance SiOx devices: n = 2.99 +- 0.369."""
        return cls(n_mean=2.99, n_std=0.369)

    @classmethod
    def low_r_siox(cls) -> PowerLaw:
        """The paper's (arXiv v1) low-resistance SiOx devices: n = 2.13 +- 0.0953."""
        return cls(n_mean=2.13, n_std=0.0953)

    @staticmethod
    def _read(config: Mapping[str, Any], where: str) -> dict[str, Any]:
        n_mean = read_float(config, "n_mean", where)
        n_std = read_float(config, "n_std", where, minimum=0.0)
        v_ref = read_float(
            config, "v_ref", where, default=0.25, minimum=0.0, exclusive_minimum=True
        )
        if n_std == 0 and n_mean < 2:
            raise ConfigError(
                f"{key_path(where, 'n_mean')}: {n_mean!r} is out of range; with n_std = 0 "
                "allowed: >= 2"
            )
        if n_std > 0 and (2.0 - n_mean) / n_std > _TRUNCATION_LIMIT:
            raise ConfigError(
                f"{key_path(where, 'n_mean')}: {n_mean!r} is more than {_TRUNCATION_LIMIT:g} "
                f"n_std = {n_std!r} below the truncation point 2"
            )
        return {"n_mean": n_mean, "n_std": n_std, "v_ref": v_ref}

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_mean": self.n_mean, "n_std": self.n_std, "v_ref": self.v_ref}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> PowerLaw:
        reject_unknown_keys(config, cls._KEYS, where)
        return cls(**cls._read(config, where))

    def draw(
        self,
        shape: tuple[int, int],
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Draws:
        """The nonlinearity "n" (rows, cols), all >= 2; none when n_std = 0 (n = n_mean)."""
        if self.n_std == 0:
            return {}
        return {"n": sample_truncated_normal(shape, self.n_mean, self.n_std, 2.0, generator, dtype)}

    def device_currents(
        self, voltages: torch.Tensor, conductances: torch.Tensor, draws: Draws
    ) -> torch.Tensor:
        nonlinearity = draws.get("n")
        if nonlinearity is None:
            if self.n_std > 0:
                raise KeyError('PowerLaw: draws lack "n"; call draw() first')
            nonlinearity = torch.tensor(self.n_mean, dtype=voltages.dtype)
        return power_law_current(voltages.unsqueeze(-1), conductances, nonlinearity, self.v_ref)


def current_model_from_config(config: Mapping[str, Any], where: str) -> CurrentModel:
    """Build any registered current model from its table; `kind` selects the class."""
    table = require_mapping(config, where)
    kind = table.get("kind")
    if kind not in CURRENT_MODELS:
        raise ConfigError(
            f"{key_path(where, 'kind')}: {kind!r} is not a known current model; "
            f"allowed: {sorted(CURRENT_MODELS)}"
        )
    return CURRENT_MODELS[kind].from_config(table, where)
