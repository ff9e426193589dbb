"""Discrete levels: nearest-level snapping, evenly spaced levels, straight-through gradient."""

import pytest
import torch

from simulation.mapping import ConductanceRange
from simulation.nonidealities import DiscreteLevels

G_RANGE = ConductanceRange(g_off=1.0e-6, g_on=1.0e-4)


def nearest(g: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Brute-force nearest level (ties to the lower one, as argmin takes the first)."""
    return levels[(g.unsqueeze(-1) - levels).abs().argmin(dim=-1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_equal_nearest_given_level(dtype: torch.dtype) -> None:
    levels = [0.0, 2.0e-6, 1.0e-5, 3.0e-5, 9.0e-5]
    snap = DiscreteLevels(levels=levels)
    g = torch.rand((50, 40), generator=torch.Generator().manual_seed(30), dtype=dtype) * 1.2e-4
    out = snap.apply(g, snap.draw((50, 40), G_RANGE), G_RANGE)
    assert out.dtype == dtype
    assert torch.equal(out, nearest(g, torch.tensor(levels, dtype=dtype)))


def test_count_gives_evenly_spaced_levels_including_ends() -> None:
    snap = DiscreteLevels(count=5)
    expected_levels = torch.linspace(G_RANGE.g_off, G_RANGE.g_on, 5, dtype=torch.float64)
    g = torch.linspace(0.0, 1.5e-4, 1001, dtype=torch.float64).reshape(7, 143)
    out = snap.apply(g, {}, G_RANGE)
    assert torch.equal(out, nearest(g, expected_levels))
    assert set(out.unique().tolist()) == set(expected_levels.tolist())
    ends = torch.tensor([[G_RANGE.g_off, G_RANGE.g_on]], dtype=torch.float64)
    assert torch.equal(snap.apply(ends, {}, G_RANGE), ends)


def test_tie_goes_to_lower_level() -> None:
    snap = DiscreteLevels(levels=[1.0, 3.0])
    assert snap.apply(torch.tensor([[2.0]]), {}, G_RANGE).item() == 1.0


def test_single_level() -> None:
    snap = DiscreteLevels(levels=[5.0e-6])
    out = snap.apply(torch.tensor([[0.0, 1.0e-4]], dtype=torch.float64), {}, G_RANGE)
    assert out.tolist() == [[5.0e-6, 5.0e-6]]


def test_straight_through_gradient_is_one() -> None:
    snap = DiscreteLevels(count=8)
    g = torch.rand((10, 10), generator=torch.Generator().manual_seed(31), dtype=torch.float64)
    g = (g * 1.0e-4).requires_grad_(True)
    out = snap.apply(g, {}, G_RANGE)
    (out * torch.arange(100, dtype=torch.float64).reshape(10, 10)).sum().backward()
    assert g.grad is not None
    assert torch.equal(g.grad, torch.arange(100, dtype=torch.float64).reshape(10, 10))


def test_no_random_draws() -> None:
    assert DiscreteLevels(count=3).draw((4, 4), G_RANGE, torch.Generator().manual_seed(0)) == {}
