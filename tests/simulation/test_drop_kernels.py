"""Compiled inexact Newton (`simulation.drop_kernels`) against the torch path of
`simulation.line_drops` (the same method in torch operations) and the nodal solver: outputs,
power and adjoint gradients, batches split into lanes, padded cells, the series exp, the
library exp beyond it, errors, and a forked child."""

import multiprocessing

import numpy as np
import pytest
import torch

from simulation import drop_kernels
from simulation.circuit import CrossbarLines, solve_crossbar
from simulation.line_drops import DTYPE_ACCURACY, DropSolver, newton, solve_jacobian

LOW_R = (6.9e-4, 3.45e-3)

LINES = {
    "uniform": ((0.35, 0.32), {}),
    "driver and sense": ((0.35, 0.32), {"r_driver": 9.0, "r_sense": 4.0}),
    "word lines one node": ((0.0, 0.5), {"r_driver": 20.0}),
}


class _TorchPooleFrenkel:
    """I = c V e^(beta sqrt|V|) in torch operations (the reference's devices)."""

    def currents(self, volts, prepared, slope, out=None):
        c, beta = prepared
        x = beta * volts.abs().sqrt()
        e = c * torch.exp(x)
        return e * volts, (e * (1 + x / 2) if slope else None)


def _problem(dtype, batch, tiles, shape, lines_case, beta_range, seed):
    rng = np.random.default_rng(seed)
    (r_word, r_bit), terminals = LINES[lines_case]
    lines = CrossbarLines.build(shape, r_word, r_bit, **terminals)
    c = rng.uniform(*LOW_R, (tiles, *shape))
    c[:, :2, -1] = 0.0  # padded cells carry no current
    beta = rng.uniform(*beta_range, (tiles, *shape))
    voltages = rng.uniform(-0.5, 0.5, (batch, tiles, shape[0]))
    grad = rng.normal(size=(batch, tiles, shape[1]))
    as_tensor = lambda a: torch.from_numpy(a).to(dtype)  # noqa: E731
    return lines, as_tensor(c), as_tensor(beta), as_tensor(voltages), as_tensor(grad)


def _reference(solver, c, beta, voltages, grad, relative):
    """Outputs, power and the adjoint's gradients by the torch path, to `relative`."""
    applied = voltages[..., None]
    devices = _TorchPooleFrenkel()
    volts, _ = newton(solver, devices, (c, beta), applied, c.shape[-1], relative, 100)
    flow, slopes = devices.currents(volts, (c, beta), True)
    mu = solve_jacobian(solver, slopes, grad[:, :, None, :].expand(volts.shape), relative, 5000)
    return (
        flow.sum(dim=-2), (volts * flow).sum(dim=(1, 2, 3)), (slopes * mu).sum(dim=-1),
        (mu * flow).sum(dim=0), (mu * flow * volts.abs().sqrt()).sum(dim=0),
    )  # fmt: skip


def _compiled(solver, c, beta, voltages, grad, relative, linear=False):
    floor = DTYPE_ACCURACY[voltages.dtype]
    limit = max(relative, floor) * float(voltages.abs().max())
    out, power, _, solve = drop_kernels.forward(
        voltages.numpy(), c.numpy(), None if linear else beta.numpy(), solver.to_driver,
        solver.to_sense, limit, 100,
    )  # fmt: skip
    grad_v, grad_c, grad_beta = solve.backward(grad.numpy(), max(relative, 4 * floor))
    return out, power, grad_v, grad_c, grad_beta


def _assert_close(values, references, rtol):
    for value, reference in zip(values, references, strict=True):
        reference = reference.double().numpy()
        scale = np.abs(reference).max()
        np.testing.assert_allclose(np.asarray(value, np.float64), reference, rtol=0,
                                   atol=rtol * scale)  # fmt: skip


@pytest.mark.parametrize("lines_case", list(LINES))
@pytest.mark.parametrize("batch", [1, 33, 70])
def test_float64_solve_and_adjoint_match_the_torch_path(lines_case: str, batch: int) -> None:
    """Batches of 1, 33 and 70 (one lane group, two of 17 lanes, three of 24) on two 23 x 11
    low-R tiles (rate bound ~ 2-4): outputs, power and the gradients of voltages, ln c and beta
    to 1e-9 of their largest value."""
    lines, c, beta, voltages, grad = _problem(
        torch.float64, batch, 2, (23, 11), lines_case, (0.2, 0.6), batch
    )
    solver = DropSolver(lines)
    reference = _reference(solver, c, beta, voltages, grad, 1e-13)
    _assert_close(_compiled(solver, c, beta, voltages, grad, 1e-13), reference, 1e-9)


@pytest.mark.parametrize("shape", [(1, 9), (9, 1), (1, 1)])
def test_single_line_arrays_match_the_torch_path(shape: tuple[int, int]) -> None:
    lines, c, beta, voltages, grad = _problem(
        torch.float64, 5, 2, shape, "driver and sense", (0.2, 0.6), 1
    )
    solver = DropSolver(lines)
    reference = _reference(solver, c, beta, voltages, grad, 1e-13)
    _assert_close(_compiled(solver, c, beta, voltages, grad, 1e-13), reference, 1e-9)


def test_float32_solve_and_adjoint_reach_float32_accuracy() -> None:
    """A 113 x 50 low-R tile (rate bound ~ 8) in float32 against the torch path in float64:
    outputs and power to 2e-5, gradients to 1e-4 of their largest values."""
    problem = _problem(torch.float64, 40, 1, (113, 50), "uniform", (0.2, 0.6), 3)
    lines, c, beta, voltages, grad = problem
    solver = DropSolver(lines)
    reference = _reference(solver, c, beta, voltages, grad, 1e-13)
    single = [x.float() for x in (c, beta, voltages, grad)]
    values = _compiled(solver, *single, relative=1e-10)
    assert all(v.dtype == np.float32 for v in values)
    _assert_close(values[:2], reference[:2], 2e-5)  # outputs and power
    _assert_close(values[2:], reference[2:], 1e-4)  # adjoint to 4 units of 2^-19: ~1e-5 x rho


def test_linear_devices_match_the_nodal_solver() -> None:
    """beta None: linear devices of conductance c, against `solve_crossbar` per tile; the
    conductance gradient is the adjoint-weighted device voltage."""
    lines, c, _, voltages, grad = _problem(
        torch.float64, 5, 3, (17, 9), "driver and sense", (0.0, 0.0), 7
    )
    solver = DropSolver(lines)
    out, _, _, grad_c, grad_beta = _compiled(solver, c, None, voltages, grad, 1e-13, True)
    assert grad_beta is None
    for tile in range(3):
        reference = solve_crossbar(
            voltages[:, tile].numpy(), c[tile].numpy(), 0.35, 0.32, r_driver=9.0, r_sense=4.0,
            cache=False,
        )  # fmt: skip
        np.testing.assert_allclose(out[:, tile], reference, rtol=1e-10, atol=1e-16)
    zero_beta = torch.zeros_like(c)
    reference = _reference(solver, c, zero_beta, voltages, grad, 1e-13)
    delta = 1e-7  # d out / d c by central differences, one cell
    shifted = []
    for sign in (1, -1):
        moved = c.clone()
        moved[1, 4, 3] += sign * delta
        shifted.append(_compiled(solver, moved, None, voltages, grad, 1e-13, True)[0])
    numeric = float(((shifted[0] - shifted[1]) * grad.numpy()).sum() / (2 * delta))
    assert grad_c[1, 4, 3] == pytest.approx(numeric, rel=1e-6)
    scale = float(reference[3].abs().max())  # d/d ln c = c d/dc
    np.testing.assert_allclose(grad_c * c.numpy(), reference[3].numpy(), rtol=0, atol=1e-9 * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_series_exp_matches_the_library_exp(dtype: type) -> None:
    limit = drop_kernels.SERIES_LIMIT[np.dtype(dtype)]
    x = np.linspace(0.0, limit, 20001).astype(dtype)
    k = drop_kernels.constants(np.dtype(dtype))
    series = np.array([drop_kernels._exp_series(value, k) for value in x[::97]])
    exact = np.exp(x[::97].astype(np.float64))
    relative = np.abs(series / exact - 1).max()
    assert relative < {np.float32: 1e-6, np.float64: 5e-15}[dtype], relative


def test_exponents_beyond_the_series_use_the_library_exp() -> None:
    """beta sqrt|V| up to ~3.5 > SERIES_LIMIT (2, float64): the library exp, still exact."""
    lines, c, beta, voltages, grad = _problem(
        torch.float64, 6, 1, (12, 8), "uniform", (4.0, 5.0), 11
    )
    assert float(beta.max()) * 0.5**0.5 > drop_kernels.SERIES_LIMIT[np.dtype(np.float64)]
    solver = DropSolver(lines)
    reference = _reference(solver, c, beta, voltages, grad, 1e-13)
    _assert_close(_compiled(solver, c, beta, voltages, grad, 1e-13), reference, 1e-9)


def test_running_out_of_newton_iterations_is_an_error() -> None:
    lines, c, beta, voltages, _ = _problem(torch.float64, 4, 1, (40, 20), "uniform", (0.2, 0.6), 2)
    solver = DropSolver(lines)
    with pytest.raises(RuntimeError, match="Newton's method did not converge in 1 iterations"):
        drop_kernels.forward(voltages.numpy(), c.numpy(), beta.numpy(), solver.to_driver,
                             solver.to_sense, 1e-12, 1)  # fmt: skip


def _child_outputs(arguments, queue) -> None:
    queue.put(drop_kernels.forward(*arguments)[0])


def test_a_forked_child_solves_on_one_thread() -> None:
    """A process that has run the parallel kernels forks a child (OpenMP is not fork-safe):
    the child runs them on one thread and gets the same outputs."""
    lines, c, beta, voltages, _ = _problem(torch.float64, 9, 2, (15, 7), "uniform", (0.2, 0.6), 5)
    solver = DropSolver(lines)
    arguments = (voltages.numpy(), c.numpy(), beta.numpy(), solver.to_driver, solver.to_sense,
                 1e-12, 50)  # fmt: skip
    parent = drop_kernels.forward(*arguments)[0]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_outputs, args=(arguments, queue))
    child.start()
    result = queue.get(timeout=300)
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_allclose(result, parent, rtol=1e-12)


def test_coarse_weights_are_the_rayleigh_quotients_of_the_bit_line_modes() -> None:
    """The preconditioner's coarse correction: for each bit line's mode u = root qb, u.u and
    gamma = (1 / E - 1) / u.u with E = 1 + u.S u / u.u, S = root W root, against dense W."""
    rng = np.random.default_rng(4)
    shape, lanes = (9, 5), 3
    lines = CrossbarLines.build(shape, rng.uniform(0.2, 0.6, shape), rng.uniform(0.2, 0.6, shape))
    solver = DropSolver(lines)
    size = shape[0] * shape[1]
    unit = torch.eye(size, dtype=torch.float64).reshape(size, *shape)
    dense = -solver.subtract_drops(torch.zeros(()), unit).reshape(size, size).numpy().T
    root = rng.uniform(0.01, 0.06, (*shape, lanes))
    gamma, norm, work = (np.empty((shape[1], lanes)) for _ in range(3))
    drop_kernels._coarse_weights(root, solver.to_driver, solver.to_sense, gamma, norm, work,
                                 np.empty_like(work))  # fmt: skip
    for b in range(lanes):
        s = root[..., b].ravel()[:, None] * dense * root[..., b].ravel()[None, :]
        for j in range(shape[1]):
            u = np.zeros(shape)
            u[:, j] = root[:, j, b] * solver.to_sense[:, j]
            u = u.ravel()
            assert norm[j, b] == pytest.approx(u @ u, rel=1e-12)
            rayleigh = 1 + u @ s @ u / (u @ u)
            assert gamma[j, b] == pytest.approx((1 / rayleigh - 1) / (u @ u), rel=1e-10)
