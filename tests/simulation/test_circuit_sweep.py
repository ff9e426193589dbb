"""Gauss-Seidel line solver (`SweepSystem`) against the direct `CrossbarSystem`, and the fallback
to the direct solver for devices too strong for it."""

import numpy as np
import pytest
import torch

from simulation.circuit import (
    CrossbarLines,
    CrossbarSystem,
    SweepSystem,
    _SlowConvergence,
    crossbar_currents,
    solve_crossbar,
)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("per_vector", [False, True])
def test_sweeps_match_the_direct_solve_with_per_segment_lines(per_vector: bool) -> None:
    rng = np.random.default_rng(4)
    shape = (24, 19)
    lines = CrossbarLines.build(
        shape, rng.uniform(0.2, 0.5, shape), rng.uniform(0.2, 0.5, shape),
        rng.uniform(0.0, 30.0, shape[0]), rng.uniform(0.0, 10.0, shape[1]),
    )  # fmt: skip
    g = rng.uniform(5e-7, 3e-6, (2, *shape))  # two arrays (tiles)
    r_u = rng.uniform(0.0, 1e-3, (5, 2, *shape))
    r_b = rng.uniform(0.0, 1e-6, (5, 2, *shape))
    stamps = np.broadcast_to(g, (5, *g.shape)).copy() if per_vector else g
    u, b = SweepSystem(lines, stamps).solve(r_u, r_b)
    u_ref, b_ref = CrossbarSystem(lines, g).solve(r_u, r_b)
    assert _relative(u, u_ref) < 1e-11
    assert _relative(b, b_ref) < 1e-11


def test_high_r_outputs_match_the_direct_solve_at_64x64() -> None:
    rng = np.random.default_rng(5)
    g = rng.uniform(5.25e-7, 2.62e-6, (64, 64))
    voltages = rng.uniform(0.0, 0.5, (8, 64))
    lines = CrossbarLines.build(g.shape, 0.35, 0.32)
    direct = CrossbarSystem(lines, g[None])
    r_u = np.zeros((8, 1, 64, 64))
    r_u[..., 0] = voltages[:, None, :] / 0.35
    _, b = direct.solve(r_u, None)
    reference = b[:, 0, -1] / 0.32
    out = solve_crossbar(voltages, g, 0.35, 0.32, cache=False)
    assert _relative(out, reference) < 1e-11


def test_strong_devices_fall_back_to_the_direct_solver() -> None:
    rng = np.random.default_rng(6)
    g = rng.uniform(0.02, 0.05, (48, 40))  # strong devices: Gauss-Seidel would crawl
    voltages = rng.uniform(0.0, 0.5, (3, 48))
    lines = CrossbarLines.build(g.shape, 0.35, 0.32)
    with pytest.raises(_SlowConvergence):
        SweepSystem(lines, g).solve_nodes(None, None, np.ones((1, 48, 3)))
    out = solve_crossbar(voltages, g, 0.35, 0.32, cache=False)
    r_u = np.zeros((3, 1, 48, 40))
    r_u[..., 0] = voltages[:, None, :] / 0.35
    _, b = CrossbarSystem(lines, g[None]).solve(r_u, None)
    np.testing.assert_allclose(out, b[:, 0, -1] / 0.32, rtol=1e-11)


def test_full_solution_from_sweeps_satisfies_kirchhoff() -> None:
    rng = np.random.default_rng(7)
    g = rng.uniform(1e-6, 5e-6, (12, 9))
    voltages = rng.uniform(0.0, 0.5, (4, 12))
    solution = solve_crossbar(voltages, g, 0.5, 0.4, full=True, cache=False)
    flow = solution.device_currents
    np.testing.assert_allclose(flow, g * (solution.word_voltages - solution.bit_voltages))
    # Every bit line carries its devices' current into ground.
    np.testing.assert_allclose(solution.output_currents, flow.sum(axis=1), rtol=1e-10)
    np.testing.assert_allclose(solution.output_currents, solution.bit_voltages[:, -1] / 0.4)


def test_gradients_of_strong_devices_pass_gradcheck_on_the_direct_fallback() -> None:
    torch.manual_seed(2)
    lines = CrossbarLines.build((5, 4), 0.7, 0.5)
    voltages = torch.rand(2, 5, dtype=torch.float64, requires_grad=True)
    g = (torch.rand(5, 4, dtype=torch.float64) * 5.0 + 5.0).requires_grad_(True)
    with pytest.raises(_SlowConvergence):
        SweepSystem(lines, g.detach().numpy()).solve_nodes(None, None, np.ones((1, 5, 1)))
    assert torch.autograd.gradcheck(
        lambda v, c: crossbar_currents(v, c, lines)[0], (voltages, g), eps=1e-7, atol=1e-8
    )
