"""Stuck devices: binomial fractions, exact overrides, gradients, measured maps, reproducibility."""

import math

import numpy as np
import pytest
import torch

from simulation.kde import scott_bandwidth
from simulation.mapping import ConductanceRange
from simulation.nonidealities import (
    StuckAtGOff,
    StuckAtGOn,
    StuckAtValue,
    StuckDevices,
    StuckDistribution,
    stuck_draws_from_map,
)

G_RANGE = ConductanceRange(g_off=5.25e-7, g_on=1.5e-5)
SAMPLES = [1.0e-5, 2.0e-5, 4.0e-5, 5.0e-5]


def make(kind: type[StuckDevices], probability: float) -> StuckDevices:
    if kind is StuckAtValue:
        return StuckAtValue(probability, 3.0e-6)
    if kind is StuckDistribution:
        return StuckDistribution(probability, SAMPLES)
    return kind(probability)


KINDS = [StuckAtGOff, StuckAtGOn, StuckAtValue, StuckDistribution]


def nominal(shape: tuple[int, int], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(99)
    u = torch.rand(shape, generator=generator, dtype=dtype)
    return G_RANGE.g_off + u * G_RANGE.window


def expected_values(disturbance: StuckDevices, draws: dict, like: torch.Tensor) -> torch.Tensor:
    if "values" in draws:
        return draws["values"].to(like)
    return torch.full_like(like, disturbance.stuck_value(G_RANGE))


@pytest.mark.parametrize("kind", KINDS)
def test_stuck_fraction_within_binomial_tolerance(kind: type[StuckDevices]) -> None:
    p, shape = 0.05, (200, 200)
    draws = make(kind, p).draw(shape, G_RANGE, torch.Generator().manual_seed(1234))
    n = shape[0] * shape[1]
    fraction = draws["stuck"].double().mean().item()
    assert abs(fraction - p) <= 4 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stuck_cells_hold_value_and_others_are_untouched(
    kind: type[StuckDevices], dtype: torch.dtype
) -> None:
    disturbance = make(kind, 0.3)
    g = nominal((40, 30), dtype).requires_grad_(True)
    draws = disturbance.draw((40, 30), G_RANGE, torch.Generator().manual_seed(7), dtype)
    out = disturbance.apply(g, draws, G_RANGE)
    assert out.dtype == dtype and out.shape == g.shape
    mask = draws["stuck"]
    assert 0 < int(mask.sum()) < mask.numel()
    assert torch.equal(out[~mask], g.detach()[~mask])
    assert torch.equal(out[mask], expected_values(disturbance, draws, g)[mask])
    out.sum().backward()
    assert g.grad is not None
    assert torch.equal(g.grad, (~mask).to(dtype))


@pytest.mark.parametrize("kind", KINDS)
def test_probability_zero_changes_nothing_and_one_sticks_everything(
    kind: type[StuckDevices],
) -> None:
    g = nominal((20, 10))
    generator = torch.Generator().manual_seed(3)
    none = make(kind, 0.0)
    assert torch.equal(none.apply(g, none.draw((20, 10), G_RANGE, generator), G_RANGE), g)
    every = make(kind, 1.0)
    draws = every.draw((20, 10), G_RANGE, generator, torch.float64)
    out = every.apply(g, draws, G_RANGE)
    assert bool(draws["stuck"].all())
    assert torch.equal(out, expected_values(every, draws, g))


def test_fixed_stuck_values() -> None:
    g = nominal((5, 5))
    draws = {"stuck": torch.ones(5, 5, dtype=torch.bool)}
    assert bool((StuckAtGOff(0.5).apply(g, draws, G_RANGE) == G_RANGE.g_off).all())
    assert bool((StuckAtGOn(0.5).apply(g, draws, G_RANGE) == G_RANGE.g_on).all())
    assert bool((StuckAtValue(0.5, 0.0).apply(g, draws, G_RANGE) == 0.0).all())


def test_float_mask_is_accepted() -> None:
    g = nominal((2, 2))
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = StuckAtGOn(0.5).apply(g, {"stuck": mask}, G_RANGE)
    assert out[0, 0] == G_RANGE.g_on and out[1, 1] == G_RANGE.g_on
    assert out[0, 1] == g[0, 1] and out[1, 0] == g[1, 0]


def test_stuck_distribution_values_come_from_reflected_kde() -> None:
    disturbance = StuckDistribution(0.1, SAMPLES)
    assert disturbance.bandwidth == pytest.approx(scott_bandwidth(SAMPLES), rel=1e-15)
    assert StuckDistribution(0.1, SAMPLES, bandwidth=2e-6).bandwidth == 2e-6
    draws = disturbance.draw((300, 300), G_RANGE, torch.Generator().manual_seed(8), torch.float64)
    values = draws["values"]
    assert values.shape == (300, 300) and values.dtype == torch.float64
    assert bool((values >= 0).all())
    # Mean of the reflected KDE is >= the sample mean (reflection only moves mass up); the
    # uncertainty of the mean of 9e4 draws is about 6e-8 S here.
    h = disturbance.bandwidth
    std = math.sqrt(np.var(SAMPLES) + h**2)
    assert values.mean().item() >= np.mean(SAMPLES) - 5 * std / 300


def test_stuck_draws_from_map_freeze_a_measured_chip() -> None:
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, 1] = mask[2, 3] = True
    values = np.full((3, 4), 7.0e-6)
    values[2, 3] = 0.0
    draws = stuck_draws_from_map(mask, values)
    assert draws["stuck"].dtype == torch.bool and draws["values"].shape == (3, 4)
    g = nominal((3, 4), torch.float32)
    for disturbance in (StuckAtGOff(0.1), StuckDistribution(0.1, SAMPLES)):
        out = disturbance.apply(g, draws, G_RANGE)
        assert out.dtype == torch.float32
        assert out[0, 1].item() == pytest.approx(7.0e-6, rel=1e-6)
        assert out[2, 3].item() == 0.0
        keep = ~torch.as_tensor(mask)
        assert torch.equal(out[keep], g[keep])
    scalar = stuck_draws_from_map(torch.as_tensor(mask), 2.0e-6)
    assert torch.equal(scalar["values"], torch.full((3, 4), 2.0e-6, dtype=torch.float64))


def test_stuck_draws_from_map_rejects_bad_maps() -> None:
    with pytest.raises(ValueError, match="rows, cols"):
        stuck_draws_from_map(np.zeros(4, dtype=bool), 1e-6)
    with pytest.raises(ValueError, match=">= 0"):
        stuck_draws_from_map(np.ones((2, 2), dtype=bool), -1e-6)
    # A negative value outside the mask is ignored.
    stuck_draws_from_map(np.zeros((2, 2), dtype=bool), -1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_draws(kind: type[StuckDevices]) -> None:
    disturbance = make(kind, 0.2)
    first = disturbance.draw((30, 20), G_RANGE, torch.Generator().manual_seed(11))
    second = disturbance.draw((30, 20), G_RANGE, torch.Generator().manual_seed(11))
    other = disturbance.draw((30, 20), G_RANGE, torch.Generator().manual_seed(12))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["stuck"], other["stuck"])


def test_mask_does_not_depend_on_dtype() -> None:
    disturbance = StuckAtGOff(0.3)
    single = disturbance.draw((50, 50), G_RANGE, torch.Generator().manual_seed(4), torch.float32)
    double = disturbance.draw((50, 50), G_RANGE, torch.Generator().manual_seed(4), torch.float64)
    assert torch.equal(single["stuck"], double["stuck"])


def test_measured_map_in_a_device_model_realisation() -> None:
    from simulation.device_model import DeviceModel, disturbance_key

    stuck = StuckAtGOff(0.05)
    model = DeviceModel(G_RANGE, disturbances=(stuck,))
    realisation = model.draw((2, 2), torch.Generator().manual_seed(0), torch.float64)
    mask = np.array([[True, False], [False, False]])
    realisation[disturbance_key(0, stuck)] = stuck_draws_from_map(mask, 4.0e-6)
    g = nominal((2, 2))
    out = model.disturb(g, realisation)
    assert out[0, 0].item() == 4.0e-6
    assert torch.equal(out.flatten()[1:], g.flatten()[1:])
