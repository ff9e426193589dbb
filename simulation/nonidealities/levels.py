"""Discrete conductance levels: every device snaps to the nearest programmable level (S)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import torch

from simulation.config import (
    ConfigError,
    key_path,
    read_float_list,
    read_int,
    reject_unknown_keys,
)
from simulation.mapping import ConductanceRange
from simulation.nonidealities.base import Disturbance, Draws


class DiscreteLevels(Disturbance):
    """Snap G to the nearest level: either `levels` (S, >= 0, strictly increasing) or `count`
    N >= 2 levels evenly spaced from g_off to g_on inclusive; give exactly one.

    A G exactly halfway between two levels goes to the lower one. Not random (no draws).
    Gradient: straight-through estimator, i.e. the forward value is the snapped level and the
    backward pass is the identity (dG'/dG = 1).
    """

    kind = "discrete_levels"

    def __init__(self, levels: Sequence[float] | None = None, count: int | None = None) -> None:
        config: dict[str, Any] = {}
        if levels is not None:
            config["levels"] = levels
        if count is not None:
            config["count"] = count
        self.levels, self.count = _read(config, type(self).__name__)

    def level_values(self, g_range: ConductanceRange, like: torch.Tensor) -> torch.Tensor:
        """The levels in S as a 1-d tensor with the dtype and device of `like`."""
        if self.levels is not None:
            return like.new_tensor(self.levels)
        assert self.count is not None
        return torch.linspace(
            g_range.g_off, g_range.g_on, self.count, dtype=like.dtype, device=like.device
        )

    def draw(
        self,
        shape: tuple[int, int],
        g_range: ConductanceRange,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Draws:
        return {}

    def apply(
        self, conductances: torch.Tensor, draws: Draws, g_range: ConductanceRange
    ) -> torch.Tensor:
        levels = self.level_values(g_range, conductances)
        midpoints = 0.5 * (levels[1:] + levels[:-1])
        snapped = levels[torch.bucketize(conductances.detach(), midpoints)]
        # The added term is exactly 0 forward, so the value is exactly a level; backward identity.
        return snapped + (conductances - conductances.detach())

    def to_config(self) -> dict[str, Any]:
        if self.levels is not None:
            return {"kind": self.kind, "levels": list(self.levels)}
        return {"kind": self.kind, "count": self.count}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> DiscreteLevels:
        reject_unknown_keys(config, ["levels", "count", "kind"], where)
        levels, count = _read(config, where)
        return cls(levels, count)


def _read(config: Mapping[str, Any], where: str) -> tuple[tuple[float, ...] | None, int | None]:
    """Exactly one of levels (S, >= 0, strictly increasing, at least 1) and count (>= 2)."""
    if ("levels" in config) == ("count" in config):
        raise ConfigError(
            f"{where.removesuffix(':')}: give exactly one of 'levels' and 'count', got "
            f"levels={config.get('levels')!r}, count={config.get('count')!r}"
        )
    if "count" in config:
        return None, read_int(config, "count", where, minimum=2)
    levels = read_float_list(config, "levels", where, minimum=0.0)
    if not levels or any(b <= a for a, b in pairwise(levels)):
        raise ConfigError(
            f"{key_path(where, 'levels')}: {levels!r} is not allowed; "
            "allowed: at least 1 level, strictly increasing"
        )
    return tuple(levels), None
