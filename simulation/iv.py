"""Closed-form device I-V curves (pure torch, SI units: V in V, conductances in S, currents in A).

Poole-Frenkel conduction (Joksas et al. 2022, published version):

    I(V) = sgn(V) * c * |V| * exp((q / (k_B T)) * sqrt(q |V| / (pi * d_epsilon)))
         = sgn(V) * c * |V| * exp(beta * sqrt(|V|)),   beta = (q / (k_B T)) * sqrt(q / (pi d_eps))

Power law with nonlinearity parameter n = I(2V) / I(V) (arXiv v1 of the same paper):

    I(V) = sgn(V) * G * v_ref * (|V| / v_ref) ** log2(n)

Both curves are odd in V and vanish at V = 0. Their square roots / fractional powers of |V| have
unbounded derivatives at 0 while the currents themselves are smooth enough there (dI/dV -> c and
dI/dV -> G or 0), so we write them as V * g(|V|) and evaluate g at max(|V|, tiny), where tiny is the
smallest normal number of the dtype. For |V| >= tiny this is exact (unlike the paper's "+ 1e-18"
inside the square root, which shifts every current by a relative ~beta * 1e-9 / sqrt(|V|)); below it
the current is ~0 anyway, and autograd gives the correct finite slope at V = 0 instead of NaN
(the clamp passes a zero gradient, and every factor stays finite).
"""

from __future__ import annotations

import math

import torch
from scipy import constants

ELEMENTARY_CHARGE = constants.e
"""q in C (CODATA, exact since 2019)."""

BOLTZMANN = constants.k
"""k_B in J/K (CODATA, exact since 2019)."""

ROOM_TEMPERATURE = 293.15
"""20 degrees C in K, the temperature of the paper's Poole-Frenkel fits."""

Number = float | torch.Tensor


def _tiny(voltage: torch.Tensor) -> float:
    dtype = voltage.dtype if voltage.is_floating_point() else torch.get_default_dtype()
    return torch.finfo(dtype).tiny


def poole_frenkel_exponent_coefficient(
    d_epsilon: Number, temperature: Number = ROOM_TEMPERATURE
) -> Number:
    """beta in V^-1/2 such that the Poole-Frenkel current is sgn(V) c |V| exp(beta sqrt|V|).

    beta = (q / (k_B T)) * sqrt(q / (pi * d_epsilon)); d_epsilon in F/m * m = F (oxide thickness
    times permittivity, fitted as one parameter), temperature in K. Works on floats and tensors.
    """
    q = ELEMENTARY_CHARGE
    return (q / (BOLTZMANN * temperature)) * (q / (math.pi * d_epsilon)) ** 0.5


def poole_frenkel_current(
    voltage: torch.Tensor,
    c: Number,
    d_epsilon: Number,
    temperature: Number = ROOM_TEMPERATURE,
) -> torch.Tensor:
    """Poole-Frenkel current in A: sgn(V) c |V| exp((q/(k_B T)) sqrt(q|V| / (pi d_epsilon))).

    voltage in V, c in S, d_epsilon in F, temperature in K; all broadcast. Differentiable
    everywhere, with dI/dV = c at V = 0 (see the module docstring for how sqrt is kept finite).
    """
    beta = poole_frenkel_exponent_coefficient(d_epsilon, temperature)
    root = voltage.abs().clamp_min(_tiny(voltage)).sqrt()
    return voltage * c * torch.exp(beta * root)


def power_law_current(
    voltage: torch.Tensor,
    conductance: Number,
    nonlinearity: Number,
    v_ref: Number,
) -> torch.Tensor:
    """Power-law current in A: sgn(V) G v_ref (|V| / v_ref) ** log2(n).

    n = I(2V) / I(V) >= 1 is the nonlinearity parameter (n = 2 is Ohmic) and I(v_ref) = G v_ref.
    Written as G V (|V| / v_ref) ** (log2(n) - 1) so that the Ohmic case is exact and the slope at
    V = 0 is finite (G for n = 2, 0 for n > 2).
    """
    exponent = torch.log2(torch.as_tensor(nonlinearity, dtype=voltage.dtype)) - 1.0
    ratio = (voltage.abs() / v_ref).clamp_min(_tiny(voltage))
    return voltage * conductance * ratio**exponent
