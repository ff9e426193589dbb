"""Weight <-> conductance mapping of a layer onto a crossbar (Joksas et al. 2022, section 2).

A dense layer y = x @ W + b with W (m, n) becomes a crossbar with m + 1 word lines (the last
one carries the bias with input 1) and 2 n bit lines: column 2j holds the positive device G+ of
output j, column 2j + 1 the negative device G-. Inputs become voltages V = k_V * x (V); outputs are
y = (I+ - I-) / (k_V * k_G), with k_G (S per unit weight) the conductance scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from simulation.config import ConfigError, key_path, read_float

MAPPING_RULES = ("min", "avg")


@dataclass(frozen=True)
class ConductanceRange:
    """The programmable window of a device, g_off < g_on, in S."""

    g_off: float
    g_on: float

    def __post_init__(self) -> None:
        if not (self.g_off > 0 and self.g_on > self.g_off):
            raise ConfigError(
                f"conductance range: need 0 < g_off < g_on, got g_off={self.g_off!r} S, "
                f"g_on={self.g_on!r} S"
            )

    @property
    def window(self) -> float:
        """g_on - g_off in S."""
        return self.g_on - self.g_off

    def to_config(self) -> dict[str, float]:
        return {"g_off": self.g_off, "g_on": self.g_on}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> ConductanceRange:
        g_off = read_float(config, "g_off", where, minimum=0.0, exclusive_minimum=True)
        g_on = read_float(config, "g_on", where, minimum=0.0, exclusive_minimum=True)
        if g_on <= g_off:
            raise ConfigError(
                f"{key_path(where, 'g_on')}: {g_on!r} S must be larger than g_off = {g_off!r} S"
            )
        return cls(g_off, g_on)


def append_bias_input(x: torch.Tensor) -> torch.Tensor:
    """(batch, m) inputs -> (batch, m + 1) with a constant 1 for the bias word line."""
    return torch.cat([x, x.new_ones((*x.shape[:-1], 1))], dim=-1)


def append_bias_row(weights: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """W (m, n) and b (n,) -> (m + 1, n) with b as the last row."""
    return torch.cat([weights, bias.unsqueeze(0)], dim=0)


def interleave(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """(rows, n) and (rows, n) -> (rows, 2n) with columns +, -, +, -, ..."""
    return torch.stack([positive, negative], dim=-1).flatten(-2)


def deinterleave(paired: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 2n) -> the even (positive) and odd (negative) columns, each (..., n)."""
    return paired[..., 0::2], paired[..., 1::2]


def standard_weights_to_conductances(
    weights: torch.Tensor, g_range: ConductanceRange, rule: str = "min"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map signed weights (rows, n) to a differential pair per weight.

    Returns conductances (rows, 2n) in S and k_G (S per unit weight, a 0-d tensor). w_max is the
    largest |w| in the layer and maps to the full window. Rule "min": one device of each pair sits
    at g_off; rule "avg": both devices sit symmetrically around (g_off + g_on) / 2.
    """
    if rule not in MAPPING_RULES:
        raise ConfigError(f"mapping rule: {rule!r} is not allowed; allowed: {list(MAPPING_RULES)}")
    w_max = weights.abs().max().clamp_min(torch.finfo(weights.dtype).tiny)
    k_g = g_range.window / w_max
    effective = k_g * weights
    if rule == "min":
        positive = effective.clamp_min(0.0) + g_range.g_off
        negative = (-effective).clamp_min(0.0) + g_range.g_off
    else:
        middle = 0.5 * (g_range.g_off + g_range.g_on)
        positive = middle + 0.5 * effective
        negative = middle - 0.5 * effective
    return interleave(positive, negative), k_g


def double_weights_to_conductances(
    parameters: torch.Tensor, g_range: ConductanceRange
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map non-negative per-device parameters (rows, 2n) to G = k_G * theta + g_off.

    k_G = (g_on - g_off) / max(theta), so the largest parameter maps to g_on and 0 to g_off.
    Returns conductances (rows, 2n) in S and k_G (0-d tensor, S per unit parameter).
    """
    theta_max = parameters.max().clamp_min(torch.finfo(parameters.dtype).tiny)
    k_g = g_range.window / theta_max
    return k_g * parameters + g_range.g_off, k_g


def inputs_to_voltages(x: torch.Tensor, k_v: float) -> torch.Tensor:
    """Inputs (..., rows) -> word-line voltages in V."""
    return k_v * x


def currents_to_outputs(currents: torch.Tensor, k_v: float, k_g: torch.Tensor) -> torch.Tensor:
    """Bit-line currents (..., 2n) in A -> layer outputs (..., n): (I+ - I-) / (k_V k_G)."""
    positive, negative = deinterleave(currents)
    return (positive - negative) / (k_v * k_g)


def balanced_spans(total: int, most: int) -> list[tuple[int, int]]:
    """Cut [0, total) into ceil(total / most) spans (start, stop) whose lengths differ by at
    most 1: how a layer's rows (or column pairs) are split into tiles of at most `most`."""
    count = math.ceil(total / most)
    base, extra = divmod(total, count)
    spans, start = [], 0
    for index in range(count):
        stop = start + base + (1 if index < extra else 0)
        spans.append((start, stop))
        start = stop
    return spans
