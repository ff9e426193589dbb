"""The IR-drop solvers (`simulation.line_drops`): its operator against the nodal solution, its
rate bound, outputs and gradients against the nodal solvers, and when it applies. Every test
runs on both paths: the compiled kernels (`simulation.drop_kernels`, the default on CPU) and
the torch operations (other devices)."""

import numpy as np
import pytest
import torch

from simulation import line_drops
from simulation.circuit import (
    CrossbarLines,
    _drop_route,
    _LinearDevices,
    crossbar_currents,
    solve_crossbar,
)
from simulation.current_models import PooleFrenkel
from simulation.line_drops import DropSolver, newton, solve_jacobian
from simulation.line_resistance import LineResistance, _PooleFrenkelTiles

HIGH_R = (5.25e-7, 2.62e-6)
LOW_R = (6.9e-4, 3.45e-3)

LINE_CASES = {
    "uniform": (0.35, 0.32, 0.0, 0.0),
    "per-segment, driver and sense": ("segments", "segments", 12.0, 7.0),
    "word line one node behind its driver": (0.0, 0.5, 20.0, 0.0),
    "ideal bit lines": (0.4, 0.0, 0.0, 0.0),
    "bit lines one node behind the sense": (0.3, 0.0, 0.0, 15.0),
}


@pytest.fixture(params=[True, False], ids=["compiled", "torch"], autouse=True)
def solver_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(line_drops, "USE_COMPILED", request.param)
    return request.param


def _lines(case: str, shape: tuple[int, int], rng: np.random.Generator) -> CrossbarLines:
    r_word, r_bit, r_driver, r_sense = LINE_CASES[case]
    if r_word == "segments":
        r_word, r_bit = rng.uniform(0.2, 0.6, shape), rng.uniform(0.2, 0.6, shape)
    return CrossbarLines.build(shape, r_word, r_bit, r_driver, r_sense)


def _dense_operator(solver: DropSolver, shape: tuple[int, int]) -> np.ndarray:
    """W as a dense (rows cols, rows cols) matrix in Ohm, applied to unit currents."""
    size = shape[0] * shape[1]
    unit = torch.eye(size, dtype=torch.float64).reshape(size, *shape)
    return -solver.subtract_drops(torch.zeros(()), unit).reshape(size, size).numpy().T


@pytest.mark.parametrize("case", list(LINE_CASES))
def test_device_voltages_of_the_nodal_solution_are_a_fixed_point(case: str) -> None:
    """v = V - W I holds for the nodal solution (`solve_crossbar`, float64), W is symmetric
    with no negative entries."""
    rng = np.random.default_rng(0)
    shape = (9, 7)
    lines = _lines(case, shape, rng)
    g = rng.uniform(1e-3, 2e-2, shape)
    voltages = rng.uniform(-0.5, 0.5, (4, shape[0]))
    r_word, r_bit, r_driver, r_sense = LINE_CASES[case]
    kwargs = {"r_driver": r_driver, "r_sense": r_sense}
    if r_word == "segments":
        r_word, r_bit = 1.0 / lines.word_g, 1.0 / lines.bit_g
        r_word[:, 0] -= r_driver
        r_bit[-1] -= r_sense
    solution = solve_crossbar(voltages, g, r_word, r_bit, full=True, cache=False, **kwargs)
    volts = solution.word_voltages - solution.bit_voltages
    solver = DropSolver(lines)
    fixed = solver.subtract_drops(
        torch.from_numpy(voltages)[..., None], torch.from_numpy(solution.device_currents)
    )
    np.testing.assert_allclose(fixed.numpy(), volts, rtol=0, atol=1e-12 * np.abs(volts).max())
    w = _dense_operator(solver, shape)
    np.testing.assert_allclose(w, w.T, rtol=1e-14, atol=0)
    assert w.min() >= 0


@pytest.mark.parametrize("case", list(LINE_CASES))
def test_rate_bound_bounds_the_contraction(case: str) -> None:
    """rate_bound(D) = max row sum of W D >= spectral radius and largest-element norm of W D."""
    rng = np.random.default_rng(1)
    shape = (12, 8)
    lines = _lines(case, shape, rng)
    solver = DropSolver(lines)
    slopes = rng.uniform(1e-3, 5e-3, shape)
    bound = solver.rate_bound(torch.from_numpy(slopes))
    product = _dense_operator(solver, shape) * slopes.reshape(-1)[None, :]
    infinity_norm = np.abs(product).sum(axis=1).max()
    assert bound == pytest.approx(infinity_norm, rel=1e-12)
    assert np.abs(np.linalg.eigvals(product)).max() <= bound * (1 + 1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_weak_linear_devices_match_the_nodal_solver(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(2)
    shape = (64, 32)
    g = rng.uniform(*HIGH_R, (3, *shape))  # three tiles
    voltages = rng.uniform(0.0, 0.5, (10, 3, shape[0]))
    lines = CrossbarLines.build(shape, 0.35, 0.32)
    v, c = torch.from_numpy(voltages).to(dtype), torch.from_numpy(g).to(dtype)
    route = _drop_route(lines, v, _LinearDevices(), (c,))
    assert route is not None and route[1] < 0.02  # weak devices: the fixed point applies
    out, power = crossbar_currents(v, c, lines, tolerance=1e-13)
    assert route[0].last_iterations <= (6 if dtype == torch.float64 else 3)
    for tile in range(3):
        reference = solve_crossbar(voltages[:, tile], g[tile], 0.35, 0.32, cache=False)
        rtol = 1e-11 if dtype == torch.float64 else 2e-5
        np.testing.assert_allclose(out[:, tile].double().numpy(), reference, rtol=rtol)
    ideal = np.einsum("bti,tij->b", voltages**2, g)
    assert np.all(power.double().numpy() < ideal) and np.all(power.double().numpy() > 0.9 * ideal)


def test_very_strong_devices_take_the_nodal_solvers() -> None:
    rng = np.random.default_rng(3)
    shape = (64, 32)
    c = torch.from_numpy(rng.uniform(0.1, 0.3, (1, *shape)))
    v = torch.from_numpy(rng.uniform(0.0, 0.5, (4, 1, shape[0])))
    lines = CrossbarLines.build(shape, 0.35, 0.32)
    assert _drop_route(lines, v, _LinearDevices(), (c,)) is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_low_r_poole_frenkel_by_newton_matches_the_nodal_solver(dtype: torch.dtype) -> None:
    """Low-R SiOx on 113 x 50 tiles (rho ~ 8: Newton with conjugate gradients) against the nodal
    Newton solve of each tile, outputs and gradients."""
    import simulation.circuit as circuit

    rng = np.random.default_rng(8)
    model = PooleFrenkel.low_r_siox()
    g0 = torch.from_numpy(rng.uniform(*LOW_R, (113, 50)))
    draws = model.draw((113, 50), torch.Generator().manual_seed(9), torch.float64)
    tiling = LineResistance(0.35, 0.32, (128, 64)).tiling((113, 50))
    lines = CrossbarLines.build(tiling.tile, 0.35, 0.32)
    devices = _PooleFrenkelTiles(model, tiling, draws)
    v0 = torch.from_numpy(rng.uniform(0.0, 0.5, (3, 113)))
    weights = torch.from_numpy(rng.normal(size=(3, 50)))
    results = {}
    for name, limit in (("newton", circuit.NEWTON_LIMIT), ("nodal", 0.1)):
        g, v = g0.clone().to(dtype).requires_grad_(True), v0.clone().to(dtype).requires_grad_(True)
        tiles = tiling.gather(g)
        route = _drop_route(lines, tiling.voltages(v), devices, devices.parameters(tiles))
        assert route is not None and 2 < route[1] < 30
        original, circuit.NEWTON_LIMIT = circuit.NEWTON_LIMIT, limit
        try:
            out, _ = crossbar_currents(tiling.voltages(v), tiles, lines, devices, tolerance=1e-11)
        finally:
            circuit.NEWTON_LIMIT = original
        currents = tiling.scatter(out, 50)
        (currents * weights).sum().backward()
        results[name] = [x.detach().double() for x in (currents, g.grad, v.grad)]
    ideal = (v0 @ g0).numpy()
    assert np.all(results["newton"][0].numpy() < 0.8 * ideal)  # IR drop matters at low R
    rtol = {torch.float64: 1e-8, torch.float32: 1e-4}[dtype]
    for value, reference in zip(results["newton"], results["nodal"], strict=True):
        scale = reference.abs().max()
        np.testing.assert_allclose(value.numpy(), reference.numpy(), rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("tolerance", [1e-4, 1e-7, 1e-10])
def test_inexact_newton_stops_within_its_tolerance(tolerance: float) -> None:
    """Loose linear solves and the early stop leave at most tolerance * max|V| of error in the
    device voltages (low-R SiOx on a 113 x 50 tile, against a solve to 1e-14)."""
    rng = np.random.default_rng(12)
    model = PooleFrenkel.low_r_siox()
    tiling = LineResistance(0.35, 0.32, (128, 64)).tiling((113, 50))
    lines = CrossbarLines.build(tiling.tile, 0.35, 0.32)
    draws = model.draw((113, 50), torch.Generator().manual_seed(3), torch.float64)
    devices = _PooleFrenkelTiles(model, tiling, draws)
    tiles = tiling.gather(torch.from_numpy(rng.uniform(*LOW_R, (113, 50))))
    applied = tiling.voltages(torch.from_numpy(rng.uniform(0.0, 0.5, (4, 113))))[..., None]
    prepared = devices.prepare(devices.parameters(tiles))
    solver = DropSolver(lines)
    exact, _ = newton(solver, devices, prepared, applied, 50, 1e-14, 50)
    volts, steps = newton(solver, devices, prepared, applied, 50, tolerance, 50)
    error = float((volts - exact).abs().max())
    assert error <= tolerance * float(applied.abs().max()), (error, steps)
    assert steps >= 2  # the IR drop is far from the ideal lines' start


def test_conjugate_gradients_reach_the_asked_residual() -> None:
    """(1 + W D) z = rhs to a relative residual of 1e-6 in the symmetric form: the dense
    residual of z is small, and a loose request does fewer iterations' worth of work."""
    rng = np.random.default_rng(13)
    shape = (20, 12)
    solver = DropSolver(CrossbarLines.build(shape, 0.35, 0.32))
    stamps = torch.from_numpy(rng.uniform(2e-3, 3e-2, (2, 1, *shape)))  # rho ~ 5
    rhs = torch.from_numpy(rng.normal(size=(2, 1, *shape)))
    dense = _dense_operator(solver, shape)
    for relative in (1e-6, 1e-12):
        z = solve_jacobian(solver, stamps, rhs, relative, 200).numpy()
        for k in range(2):
            d = stamps[k, 0].numpy().ravel()
            zk, bk = z[k, 0].ravel(), rhs[k, 0].numpy().ravel()
            residual = np.sqrt(d) * (zk + dense @ (d * zk) - bk)  # symmetric form's residual
            assert np.linalg.norm(residual) <= relative * np.linalg.norm(np.sqrt(d) * bk) * 1.01
    with pytest.raises(RuntimeError, match="conjugate gradients did not reach"):
        solve_jacobian(solver, stamps, rhs, 1e-12, 2)


def test_newton_gradients_pass_gradcheck() -> None:
    rng = np.random.default_rng(10)
    shape = (4, 3)
    lines = CrossbarLines.build(shape, 40.0, 30.0)
    torch.manual_seed(1)
    voltages = (torch.rand(2, 1, shape[0], dtype=torch.float64) - 0.3).requires_grad_(True)
    g = torch.from_numpy(rng.uniform(2e-3, 4e-3, (1, *shape))).requires_grad_(True)
    route = _drop_route(lines, voltages, _LinearDevices(), (g,))
    assert route is not None and route[1] > 0.5  # Newton with conjugate gradients
    assert torch.autograd.gradcheck(
        lambda v, c: crossbar_currents(v, c, lines, tolerance=1e-13)[0], (voltages, g),
        eps=1e-7, atol=1e-10,
    )  # fmt: skip


@pytest.mark.parametrize("case", list(LINE_CASES))
def test_linear_gradients_on_the_fixed_point_pass_gradcheck(case: str) -> None:
    rng = np.random.default_rng(4)
    shape = (5, 4)
    lines = _lines(case, shape, rng)
    torch.manual_seed(0)
    voltages = (torch.rand(3, 2, shape[0], dtype=torch.float64) - 0.3).requires_grad_(True)
    g = (torch.rand(2, *shape, dtype=torch.float64) * 2e-4 + 1e-4).requires_grad_(True)
    assert _drop_route(lines, voltages, _LinearDevices(), (g,)) is not None
    assert torch.autograd.gradcheck(
        lambda v, c: crossbar_currents(v, c, lines, tolerance=1e-13)[0], (voltages, g),
        eps=1e-7, atol=1e-10,
    )  # fmt: skip


def test_poole_frenkel_on_the_fixed_point_matches_newton_and_passes_gradcheck() -> None:
    """High-R Poole-Frenkel tiles: the fixed point against the nodal Newton solve of each tile
    (`solve_crossbar` with the same closed-form current), and gradcheck of its adjoint."""
    rng = np.random.default_rng(5)
    model = PooleFrenkel.high_r_siox()
    g = torch.from_numpy(rng.uniform(*HIGH_R, (30, 12)))
    draws = model.draw((30, 12), torch.Generator().manual_seed(6), torch.float64)
    tiling = LineResistance(0.35, 0.32, (16, 8)).tiling((30, 12))
    lines = CrossbarLines.build(tiling.tile, 0.35, 0.32)
    devices = _PooleFrenkelTiles(model, tiling, draws)
    voltages = torch.from_numpy(rng.uniform(-0.5, 0.5, (4, 30)))
    v_tiles, g_tiles = tiling.voltages(voltages), tiling.gather(g)
    params = devices.parameters(g_tiles)
    assert _drop_route(lines, v_tiles, devices, params) is not None
    out, _ = crossbar_currents(v_tiles, g_tiles, lines, devices, tolerance=1e-13)
    prepared = devices.prepare([p.numpy() for p in params])
    for t in range(len(tiling.blocks)):
        tile = [p[t] for p in prepared]
        reference = solve_crossbar(
            v_tiles[:, t].numpy(), g_tiles[t].numpy(), 0.35, 0.32, cache=False,
            current=lambda volts, tile=tile: devices.currents(volts, tile, False)[0],
            slope=lambda volts, tile=tile: devices.currents(volts, tile, True)[1],
        )  # fmt: skip
        np.testing.assert_allclose(out[:, t].numpy(), reference, rtol=1e-11)

    def outputs(v, c):
        tiles = tiling.gather(c)
        return crossbar_currents(tiling.voltages(v), tiles, lines, devices, tolerance=1e-13)[0]

    small_v = voltages[:2].clone().requires_grad_(True)
    small_g = g.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(outputs, (small_v, small_g), eps=1e-9, atol=1e-12)
