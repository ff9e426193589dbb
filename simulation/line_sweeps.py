"""Compiled tridiagonal sweeps over one family of crossbar lines (numba, parallel over lines).

`SweepSystem` (simulation.circuit) solves word and bit lines alternately (block Gauss-Seidel).
One half-sweep solves every line of a family exactly, given the other family's node voltages:
Thomas' algorithm along each line, with the right-hand side built from the other family's
voltages on the fly. Done here line by line, a line's nodes (n x B numbers) stay in the core's
cache between the forward and the backward pass, the other family's voltages are read once, and
lines run in parallel on all cores. With torch ops node by node over all lines at once (one op
per node, the whole array streamed through memory per pass) the same work took about as long
as this kernel on one thread and 2x as long as it on two: splitting the lines over a second
thread (Python threads, TorchScript fork) gained nothing there.

The kernel is compiled on first use on a machine (a few seconds; cached in __pycache__ after;
numba is imported and the cache loaded on the first solve of a process, ~0.4 s). Numba's OpenMP
threading layer is thread-safe (the GUI and a script may solve at once) but not fork-safe: a
process that has solved must not solve again in a child it forks without exec, so forked
children (multiprocessing's default "fork" start method) sweep on one thread.

Layouts (see `SweepSystem`): a family's nodes are (n, t, lines, B), chain axis first and the B
vectors innermost; the other family's nodes, read as this family's source, are
(lines, t, n, B) from its point of view. Factors (forward, backward) and scaled stamps have a last
axis of 1 (shared by all vectors) or B (per-vector stamps, Newton's method).
"""

from __future__ import annotations

import os

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True, boundscheck=False)
def _solve_line(x: np.ndarray, parts: tuple, t: int, j: int) -> None:  # pragma: no cover - compiled
    """Line j of array t: x[:, t, j] (n, B) overwritten with the solution of its scaled
    tridiagonal system whose scaled right-hand side at node k is source[j, t, k] * scale[k, t, j]
    (if use_source) + extra[k, t, j] (if use_extra) + first[t, j] at node 0 (if use_first);
    forward / backward are the line factors of `_factor_chains` (x_k += forward_k x_{k-1}, then
    x_k += backward_k x_{k+1}), with a last axis of 1 (shared) or B (per vector); parts is
    (forward, backward, source, scale, extra, first, use_source, use_extra, use_first)."""
    forward, backward, source, scale, extra, first, use_source, use_extra, use_first = parts
    n, batch = x.shape[0], x.shape[3]
    per_vector_factors = forward.shape[3] > 1
    per_vector_scale = scale.shape[3] > 1
    for k in range(n):
        node = x[k, t, j]
        if use_source:
            src = source[j, t, k]
            sc = scale[k, t, j]
            if per_vector_scale:
                for q in range(batch):
                    node[q] = src[q] * sc[q]
            else:
                s0 = sc[0]
                for q in range(batch):
                    node[q] = src[q] * s0
        else:
            for q in range(batch):
                node[q] = 0.0
        if use_extra:
            add = extra[k, t, j]
            for q in range(batch):
                node[q] += add[q]
        if use_first and k == 0:
            add = first[t, j]
            for q in range(batch):
                node[q] += add[q]
        if k > 0:
            previous = x[k - 1, t, j]
            factor = forward[k, t, j]
            if per_vector_factors:
                for q in range(batch):
                    node[q] += factor[q] * previous[q]
            else:
                f0 = factor[0]
                for q in range(batch):
                    node[q] += f0 * previous[q]
    for k in range(n - 2, -1, -1):
        node = x[k, t, j]
        following = x[k + 1, t, j]
        factor = backward[k, t, j]
        if per_vector_factors:
            for q in range(batch):
                node[q] += factor[q] * following[q]
        else:
            b0 = factor[0]
            for q in range(batch):
                node[q] += b0 * following[q]


@njit(parallel=True, cache=True, nogil=True)
def _sweep_parallel(x: np.ndarray, parts: tuple) -> None:  # pragma: no cover - compiled
    """Every line of x (n, t, lines, B) by `_solve_line`, lines in parallel."""
    for line in prange(x.shape[1] * x.shape[2]):
        _solve_line(x, parts, line // x.shape[2], line % x.shape[2])


@njit(cache=True, nogil=True)
def _sweep_serial(x: np.ndarray, parts: tuple) -> None:  # pragma: no cover - compiled
    """`_sweep_parallel` on one thread (in forked children, where OpenMP is unsafe)."""
    for line in range(x.shape[1] * x.shape[2]):
        _solve_line(x, parts, line // x.shape[2], line % x.shape[2])


_forked = False


def _mark_forked() -> None:
    global _forked
    _forked = True


def in_forked_child() -> bool:
    """Whether this process was forked (without exec) from one that may have run compiled
    parallel code: OpenMP regions must then run on one thread."""
    return _forked


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_mark_forked)


_UNUSED = np.zeros((1, 1, 1, 1))


def solve_family(
    x: np.ndarray,
    forward: np.ndarray,
    backward: np.ndarray,
    source: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    extra: np.ndarray | None = None,
    first: np.ndarray | None = None,
) -> None:
    """Solve every line of one family (see `_solve_line`); None leaves that part of the
    right-hand side out. All arrays float64 and C-contiguous (one compiled variant):
    x (n, t, lines, B) written in place, forward / backward / scale (n, t, lines, 1 or B),
    source (lines, t, n, B), extra like x, first (t, lines, B)."""
    sweep = _sweep_serial if in_forked_child() else _sweep_parallel
    parts = (
        forward, backward,
        _UNUSED if source is None else source, _UNUSED if scale is None else scale,
        _UNUSED if extra is None else extra, _UNUSED[0] if first is None else first,
        source is not None, extra is not None, first is not None,
    )  # fmt: skip
    sweep(x, parts)
