"""Compiled line sweeps (`solve_family`) against dense tridiagonal solves of every line."""

import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from simulation.circuit import _factor_chains
from simulation.line_sweeps import solve_family

N, T, LINES, B = 9, 2, 5, 4


def _chains(rng: np.random.Generator, vectors: int) -> tuple[np.ndarray, np.ndarray]:
    """Diagonals (N, T, LINES, vectors) and couplings of SPD chains (diagonally dominant)."""
    coupling = rng.uniform(0.5, 2.0, (N, T, LINES, vectors))
    diagonal = rng.uniform(0.1, 1.0, (N, T, LINES, vectors)) + coupling
    diagonal[:-1] += coupling[1:]
    return diagonal, coupling


def _dense_solve(diagonal: np.ndarray, coupling: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Each line's tridiagonal system (off-diagonals -coupling[k] between nodes k-1 and k)
    solved densely: rhs (N, T, LINES, B)."""
    out = np.empty_like(rhs)
    for t in range(T):
        for line in range(LINES):
            for q in range(B):
                d = diagonal[:, t, line, min(q, diagonal.shape[3] - 1)]
                c = coupling[1:, t, line, min(q, coupling.shape[3] - 1)]
                matrix = np.diag(d) - np.diag(c, 1) - np.diag(c, -1)
                out[:, t, line, q] = np.linalg.solve(matrix, rhs[:, t, line, q])
    return out


@pytest.mark.parametrize("vectors", [1, B])  # factors shared by all vectors, or per vector
def test_sweep_solves_every_line_for_the_assembled_right_hand_side(vectors: int) -> None:
    rng = np.random.default_rng(7)
    diagonal, coupling = _chains(rng, vectors)
    forward, inverse, backward = _factor_chains(diagonal, coupling)
    source = rng.normal(size=(LINES, T, N, B))  # the other family's layout
    stamps = rng.uniform(0.0, 0.3, (N, T, LINES, vectors))
    extra = rng.normal(size=(N, T, LINES, B))
    first = rng.normal(size=(T, LINES, B))
    rhs = np.transpose(source, (2, 1, 0, 3)) * stamps + extra
    rhs[0] += first
    x = np.full((N, T, LINES, B), np.nan)
    solve_family(
        x, forward, backward, source, np.ascontiguousarray(stamps * inverse),
        np.ascontiguousarray(extra * inverse), np.ascontiguousarray(first * inverse[0]),
    )  # fmt: skip
    np.testing.assert_allclose(x, _dense_solve(diagonal, coupling, rhs), rtol=1e-12, atol=1e-12)


def test_absent_parts_of_the_right_hand_side_count_as_zero() -> None:
    rng = np.random.default_rng(8)
    diagonal, coupling = _chains(rng, 1)
    forward, inverse, backward = _factor_chains(diagonal, coupling)
    first = rng.normal(size=(T, LINES, B))
    x = np.full((N, T, LINES, B), np.nan)
    solve_family(x, forward, backward, first=np.ascontiguousarray(first * inverse[0]))
    rhs = np.zeros_like(x)
    rhs[0] = first
    np.testing.assert_allclose(x, _dense_solve(diagonal, coupling, rhs), rtol=1e-12, atol=1e-12)
    solve_family(x, forward, backward)
    assert np.all(x == 0.0)


def test_concurrent_sweeps_from_two_threads_do_not_interfere() -> None:
    """The GUI and a scripted run may solve at once: the parallel kernel must be re-entrant."""
    rng = np.random.default_rng(9)
    diagonal, coupling = _chains(rng, 1)
    forward, inverse, backward = _factor_chains(diagonal, coupling)
    extras = [rng.normal(size=(N, T, LINES, B)) for _ in range(8)]
    expected = [_dense_solve(diagonal, coupling, e) for e in extras]

    def solve(extra: np.ndarray) -> np.ndarray:
        x = np.empty_like(extra)
        for _ in range(50):
            solve_family(x, forward, backward, extra=np.ascontiguousarray(extra * inverse))
        return x

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(solve, extras))
    for result, reference in zip(results, expected, strict=True):
        np.testing.assert_allclose(result, reference, rtol=1e-12, atol=1e-12)


def _solve_in_child(queue: "multiprocessing.Queue[float]", extra: np.ndarray) -> None:
    diagonal, coupling = _chains(np.random.default_rng(10), 1)
    forward, inverse, backward = _factor_chains(diagonal, coupling)
    x = np.empty_like(extra)
    solve_family(x, forward, backward, extra=np.ascontiguousarray(extra * inverse))
    queue.put(float(np.abs(x - _dense_solve(diagonal, coupling, extra)).max()))


def test_a_forked_child_still_solves() -> None:
    """GNU OpenMP aborts a forked child that enters a parallel region its parent used; forked
    children sweep on one thread instead (multiprocessing's default start method on Linux)."""
    extra = np.random.default_rng(11).normal(size=(N, T, LINES, B))
    _solve_in_child(multiprocessing.Queue(), extra)  # the parent's parallel region first
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_solve_in_child, args=(queue, extra))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) < 1e-12
