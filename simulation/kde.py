"""Gaussian kernel density estimates of non-negative quantities (conductances in S), reflected at 0.

A sample of the reflected estimate is |x_i + h z| with i a uniform index into the measured
samples and z standard normal; its density on x >= 0 is f(x) + f(-x), f the plain estimate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch


def scott_bandwidth(samples: Sequence[float] | npt.ArrayLike) -> float:
    """Scott's rule h = std(samples, ddof=1) * n^(-1/5), in the units of the samples."""
    values = np.asarray(samples, dtype=np.float64).ravel()
    if values.size < 2:
        raise ValueError(f"Scott's rule needs at least 2 samples, got {values.size}")
    return float(np.std(values, ddof=1) * values.size ** (-0.2))


def reflected_kde_sample(
    samples: Sequence[float] | npt.ArrayLike,
    bandwidth: float,
    shape: int | tuple[int, ...],
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw i.i.d. values |x_i + h z| of `shape` (CPU) from the reflected estimate.

    Both the index i and the normal z come from `generator` (in this order); the arithmetic is
    float64 and the result is cast to `dtype`.
    """
    centres = torch.as_tensor(np.asarray(samples, dtype=np.float64).ravel())
    if centres.numel() == 0:
        raise ValueError("reflected_kde_sample needs at least one sample")
    size = (shape,) if isinstance(shape, int) else tuple(shape)
    index = torch.randint(centres.numel(), size, generator=generator)
    noise = torch.randn(size, generator=generator, dtype=torch.float64)
    return (centres[index] + bandwidth * noise).abs().to(dtype)


def reflected_kde_density(
    x: npt.ArrayLike, samples: Sequence[float] | npt.ArrayLike, bandwidth: float
) -> np.ndarray:
    """Density f(x) + f(-x) for x >= 0 and 0 for x < 0 (per unit of x, e.g. 1/S)."""
    points = np.asarray(x, dtype=np.float64)
    centres = np.asarray(samples, dtype=np.float64).ravel()
    scale = 1.0 / (centres.size * bandwidth * math.sqrt(2.0 * math.pi))
    grid = points[..., None]
    plain = np.exp(-0.5 * ((grid - centres) / bandwidth) ** 2)
    mirror = np.exp(-0.5 * ((grid + centres) / bandwidth) ** 2)
    density = scale * (plain + mirror).sum(axis=-1)
    return np.where(points >= 0.0, density, 0.0)
