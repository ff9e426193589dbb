"""Device-to-device variability: a mean-preserving lognormal spread of resistances R = 1/G."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from simulation.config import read_float, reject_unknown_keys
from simulation.mapping import ConductanceRange
from simulation.nonidealities.base import Disturbance, Draws


class D2DLognormal(Disturbance):
    """R' = exp(ln R - sigma^2 / 2 + sigma z), z ~ N(0, 1) per device, so E[R'] = R; G' = 1/R'.

    The shape parameter sigma(R) (dimensionless, >= 0) is linear in R (not ln R) from `sigma_on`
    at R_on = 1/g_on to `sigma_off` at R_off = 1/g_off and constant outside [R_on, R_off].
    Draws: "z" (rows, cols). Differentiable in G > 0.
    """

    kind = "d2d_lognormal"

    def __init__(self, sigma_on: float, sigma_off: float) -> None:
        config = {"sigma_on": sigma_on, "sigma_off": sigma_off}
        name = type(self).__name__
        self.sigma_on = read_float(config, "sigma_on", name, minimum=0.0)
        self.sigma_off = read_float(config, "sigma_off", name, minimum=0.0)

    def shape_parameter(
        self, conductances: torch.Tensor, g_range: ConductanceRange
    ) -> torch.Tensor:
        """sigma of every device (dimensionless) from its nominal conductance in S."""
        # Clamping G (not R) keeps 1/G finite at G = 0 and gives sigma zero slope outside.
        resistances = 1.0 / conductances.clamp(g_range.g_off, g_range.g_on)
        r_on, r_off = 1.0 / g_range.g_on, 1.0 / g_range.g_off
        fraction = (resistances - r_on) / (r_off - r_on)
        return self.sigma_on + (self.sigma_off - self.sigma_on) * fraction

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
        sigma = self.shape_parameter(conductances, g_range)
        z = draws["z"].to(conductances)
        # G' = 1/R' = G exp(sigma^2 / 2 - sigma z), without forming 1/G.
        return conductances * torch.exp(sigma * (0.5 * sigma - z))

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "sigma_on": self.sigma_on, "sigma_off": self.sigma_off}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> D2DLognormal:
        reject_unknown_keys(config, ["sigma_on", "sigma_off", "kind"], where)
        sigma_on = read_float(config, "sigma_on", where, minimum=0.0)
        sigma_off = read_float(config, "sigma_off", where, minimum=0.0)
        return cls(sigma_on, sigma_off)
