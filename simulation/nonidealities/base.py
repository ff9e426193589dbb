"""The interface of a conductance disturbance and the registry that builds one from config.

A disturbance separates its randomness from the conductances it acts on (reparameterisation):
`draw` samples every random variable it needs for an array of a given shape (masks, standard
normals, sampled stuck values), independent of G; `apply` turns nominal conductances and those
draws into disturbed conductances, differentiably where the physics is. One set of draws is one
chip: keep it fixed for a frozen chip, draw again for every batch to resample.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from simulation.config import ConfigError, ConfigIdentity, key_path, require_mapping
from simulation.mapping import ConductanceRange

Draws = dict[str, torch.Tensor]
"""Named random tensors of one realisation of one nonideality on one array."""

DISTURBANCES: dict[str, type[Disturbance]] = {}
"""Config name ("kind") -> class, filled by subclasses as they are defined."""


class Disturbance(ConfigIdentity, ABC):
    """A linearity-preserving nonideality, G (rows, cols) in S -> G' (rows, cols) in S."""

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is not None:
            if kind in DISTURBANCES:
                raise TypeError(f"disturbance kind {kind!r} is defined twice")
            DISTURBANCES[kind] = cls

    @abstractmethod
    def draw(
        self,
        shape: tuple[int, int],
        g_range: ConductanceRange,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Draws:
        """Sample this nonideality's random variables for an array of `shape` (rows, cols)."""

    @abstractmethod
    def apply(
        self, conductances: torch.Tensor, draws: Draws, g_range: ConductanceRange
    ) -> torch.Tensor:
        """Disturb nominal conductances (rows, cols) in S with the given draws."""

    @abstractmethod
    def to_config(self) -> dict[str, Any]:
        """A TOML-ready table that `disturbance_from_config` turns back into an equal object."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> Disturbance:
        """Build from a config table (without checking "kind"); errors name `where` and the key."""


def disturbance_from_config(config: Mapping[str, Any], where: str) -> Disturbance:
    """Build any registered disturbance from its table; `kind` selects the class."""
    table = require_mapping(config, where)
    kind = table.get("kind")
    if kind not in DISTURBANCES:
        raise ConfigError(
            f"{key_path(where, 'kind')}: {kind!r} is not a known nonideality; "
            f"allowed: {sorted(DISTURBANCES)}"
        )
    return DISTURBANCES[kind].from_config(table, where)
