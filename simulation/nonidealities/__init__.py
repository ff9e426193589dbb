"""Linearity-preserving nonidealities: changes of device conductances G -> G' (S)."""

from simulation.nonidealities.base import DISTURBANCES, Disturbance, Draws, disturbance_from_config

__all__ = ["DISTURBANCES", "Disturbance", "Draws", "disturbance_from_config"]
