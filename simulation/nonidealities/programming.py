"""Programming noise: additive Gaussian error whose standard deviation is a polynomial in G."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from simulation.config import ConfigError, key_path, read_float_list, reject_unknown_keys
from simulation.mapping import ConductanceRange
from simulation.nonidealities.base import Disturbance, Draws


class ProgrammingNoise(Disturbance):
    """G' = max(G + sigma(G) z, 0), z ~ N(0, 1) per device; G, G', sigma in S.

    With `relative=False`, sigma(G) = |c0 + c1 G + c2 G^2 + ...| with G in S, so c_k has units
    S^(1-k). With `relative=True`, sigma(G) = g_on |c0 + c1 u + c2 u^2 + ...| with u = G / g_on,
    so every c_k is dimensionless (e.g. [0.02] is 2 % of g_on). Draws: "z" (rows, cols).
    Differentiable except where the clamp at 0 S (and |.| at sigma = 0) has a kink.
    """

    kind = "programming_noise"

    def __init__(self, coefficients: Sequence[float], relative: bool = False) -> None:
        config = {"coefficients": coefficients, "relative": relative}
        self.coefficients, self.relative = _read(config, type(self).__name__)

    def standard_deviation(
        self, conductances: torch.Tensor, g_range: ConductanceRange
    ) -> torch.Tensor:
        """sigma(G) in S for conductances in S."""
        scale = g_range.g_on if self.relative else 1.0
        x = conductances / scale
        result = torch.zeros_like(x)
        for coefficient in reversed(self.coefficients):
            result = result * x + coefficient
        return scale * result.abs()

    def draw(
        self,
        shape: tuple[int, int],
        g_range: ConductanceRange,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Draws:
        return {"z": torch.randn(shape, generator=generator, dtype=dtype)}

    def apply(
        self, conductances: torch.Tensor, draws: Draws, g_range: ConductanceRange
    ) -> torch.Tensor:
        z = draws["z"].to(conductances)
        noisy = conductances + self.standard_deviation(conductances, g_range) * z
        return noisy.clamp_min(0.0)

    def to_config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "coefficients": list(self.coefficients),
            "relative": self.relative,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> ProgrammingNoise:
        reject_unknown_keys(config, ["coefficients", "relative", "kind"], where)
        coefficients, relative = _read(config, where)
        return cls(coefficients, relative)


def _read(config: Mapping[str, Any], where: str) -> tuple[tuple[float, ...], bool]:
    """Validated coefficients (at least one finite number) and the `relative` flag."""
    coefficients = read_float_list(config, "coefficients", where)
    if not coefficients:
        raise ConfigError(
            f"{key_path(where, 'coefficients')}: {coefficients!r} is empty; "
            "allowed: at least 1 number"
        )
    relative = config.get("relative", False)
    if not isinstance(relative, bool):
        raise ConfigError(
            f"{key_path(where, 'relative')}: {relative!r} is not allowed; allowed: true or false"
        )
    return tuple(coefficients), relative
