"""Reflected Gaussian KDE: Scott's rule, sampling moments, non-negativity and normalisation."""

import math

import numpy as np
import pytest
import torch

from simulation.kde import reflected_kde_density, reflected_kde_sample, scott_bandwidth


def test_scott_bandwidth_matches_closed_form() -> None:
    # std(ddof=1) of 1..5 is sqrt(2.5).
    assert scott_bandwidth([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(
        math.sqrt(2.5) * 5 ** (-0.2), rel=1e-12
    )


def test_scott_bandwidth_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        scott_bandwidth([1.0])


def test_reflected_samples_are_non_negative_near_zero() -> None:
    generator = torch.Generator().manual_seed(0)
    draws = reflected_kde_sample([0.0, 1e-6, 2e-6], 5e-6, 20_000, generator, torch.float64)
    assert draws.dtype == torch.float64
    assert bool((draws >= 0).all())


def test_sample_moments_far_from_zero() -> None:
    samples = np.array([10.0, 11.0, 13.0, 14.0, 17.0])
    h = 0.8
    n = 100_000
    generator = torch.Generator().manual_seed(1)
    draws = reflected_kde_sample(samples, h, n, generator, torch.float64).numpy()
    mean_expected = samples.mean()
    var_expected = samples.var(ddof=1) * (samples.size - 1) / samples.size + h**2
    assert abs(draws.mean() - mean_expected) < 5 * math.sqrt(var_expected / n)
    squared = (draws - draws.mean()) ** 2
    var_standard_error = squared.std() / math.sqrt(n)
    assert abs(draws.var() - var_expected) < 5 * var_standard_error


def test_reflected_density_integrates_to_one_near_zero() -> None:
    samples = [0.1, 0.3, 0.5, 2.0]
    h = scott_bandwidth(samples)
    x = np.linspace(0.0, max(samples) + 12 * h, 400_001)
    density = reflected_kde_density(x, samples, h)
    assert np.trapezoid(density, x) == pytest.approx(1.0, abs=1e-6)
    # Without reflection a noticeable mass would sit below 0, so the check is not vacuous.
    plain_mass_above_zero = np.mean([0.5 * (1 + math.erf(s / (h * math.sqrt(2)))) for s in samples])
    assert plain_mass_above_zero < 0.95
    assert reflected_kde_density(np.array([-0.1, -1.0]), samples, h).tolist() == [0.0, 0.0]


def test_sampler_follows_reflected_density() -> None:
    samples = [0.1, 0.3, 0.5, 2.0]
    h = scott_bandwidth(samples)
    n = 100_000
    draws = reflected_kde_sample(samples, h, n, torch.Generator().manual_seed(2), torch.float64)
    for q in (0.1, 0.4, 1.0, 2.0):
        x = np.linspace(0.0, q, 100_001)
        cdf = np.trapezoid(reflected_kde_density(x, samples, h), x)
        fraction = float((draws <= q).double().mean())
        assert abs(fraction - cdf) < 5 * math.sqrt(cdf * (1 - cdf) / n)


def test_same_seed_same_samples_and_dtype() -> None:
    first = reflected_kde_sample([1.0, 2.0], 0.1, (3, 4), torch.Generator().manual_seed(5))
    second = reflected_kde_sample([1.0, 2.0], 0.1, (3, 4), torch.Generator().manual_seed(5))
    other = reflected_kde_sample([1.0, 2.0], 0.1, (3, 4), torch.Generator().manual_seed(6))
    assert first.shape == (3, 4) and first.dtype == torch.float32
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
