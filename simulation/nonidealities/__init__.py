"""Linearity-preserving nonidealities: changes of device conductances G -> G' (S)."""

from simulation.nonidealities.base import DISTURBANCES, Disturbance, Draws, disturbance_from_config
from simulation.nonidealities.d2d import D2DLognormal
from simulation.nonidealities.levels import DiscreteLevels
from simulation.nonidealities.programming import ProgrammingNoise
from simulation.nonidealities.stuck import (
    StuckAtGOff,
    StuckAtGOn,
    StuckAtValue,
    StuckDevices,
    StuckDistribution,
    stuck_draws_from_map,
)

__all__ = [
    "DISTURBANCES",
    "D2DLognormal",
    "DiscreteLevels",
    "Disturbance",
    "Draws",
    "ProgrammingNoise",
    "StuckAtGOff",
    "StuckAtGOn",
    "StuckAtValue",
    "StuckDevices",
    "StuckDistribution",
    "disturbance_from_config",
    "stuck_draws_from_map",
]
