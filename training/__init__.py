"""Memristive layers, trainer, memristive validation, power and energy, datasets."""
