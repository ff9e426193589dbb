"""Crossbar circuit solver: nodal analysis of word lines, bit lines and devices (numpy, scipy).

Geometry (rows = word lines, cols = bit lines, cell (i, j) joins word line i and bit line j):

- Word line i is driven at its left end. Its source reaches the node of cell (i, 0) through one
  segment of resistance r_word, and each further segment r_word joins cell (i, j) to (i, j + 1):
  `cols` segments per word line.
- Bit line j is driven (or grounded) at its bottom end: the node of cell (rows - 1, j) reaches the
  terminal through one segment r_bit, and segments r_bit join (i, j) to (i + 1, j): `rows` segments
  per bit line.
- A device joins the word-line node and the bit-line node of its cell; its voltage is
  V_word - V_bit and its current flows from the word line to the bit line.

A line whose resistance is 0 is one node. A line whose applied voltage is NaN floats: its terminal
is disconnected and its voltages follow from Kirchhoff's current law. Terminal currents are the
currents flowing from each line's terminal into the array (0 for floating lines), so a read's
output current at a grounded bit line is minus its bit-line terminal current.

`solve_crossbar` is the fixed public entry point for the common case (every word line driven, bit
lines grounded, linear devices); `solve_lines` is the general solver: floating lines, line
resistance, linear devices (one factorisation per pattern of floating lines, reused for every
configuration with that pattern) or nonlinear devices (Newton's method, the device current and its
derivative supplied as callables).

Methods: with resistance on both line types (the usual case) `SweepSystem` solves by block
Gauss-Seidel, exact tridiagonal solves of all word lines given the bit lines and vice versa
(compiled, `simulation.line_sweeps`), which converges in a few sweeps for devices weak relative
to the lines (high-R arrays); otherwise, or when it would need many sweeps, the direct block
factorisation `CrossbarSystem` (rows * cols^3).
`solve_lines` runs the same solvers per pattern of floating lines (a floating line's terminal is
disconnected); `simulation.line_drops` adds a fixed-point path for differentiable solves of weak
devices.
"""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.linalg.lapack
import scipy.sparse
import scipy.sparse.linalg
import torch

from simulation import buffers
from simulation.line_drops import DTYPE_ACCURACY, NEWTON_LIMIT, DropCrossbar, DropSolver

DeviceFunction = Callable[[np.ndarray], np.ndarray]
"""Per-device function of device voltages (..., rows, cols) in V -> (..., rows, cols): the device
current I (A) or its slope dI/dV (S). Must broadcast its per-device parameters over leading axes."""

_DENSE_CHUNK = 2**22
"""Most numbers (configurations x system size) a dense batched step holds at once."""


@dataclass
class LineSolution:
    """What `solve_lines` returns; currents in A, voltages in V.

    device_voltages: V_word - V_bit of every device (n, rows, cols), or None if not requested.
    word_currents: currents from each word line's terminal into the array (n, rows).
    bit_currents: currents from each bit line's terminal into the array (n, cols).
    iterations: the most Newton iterations any configuration needed (0 for linear devices).
    """

    device_voltages: np.ndarray | None
    word_currents: np.ndarray
    bit_currents: np.ndarray
    iterations: int = 0


# -- fast solver for driven word lines and grounded bit lines ------------------------------------
#
# Unknowns per array: word-line nodes u and bit-line nodes b. A word line is "segment" (a node per
# cell, a chain of segments from its driver), "node" (r_word = 0 behind a driver resistance: one
# node) or "fixed" (r_word = 0 and no driver: the cells sit at the applied voltage); bit lines the
# same, with the sense resistance towards ground. Row i of the nodal system is
#
#     T_i u_i + W_i b_i = r_u_i,     W_i^T u_i + (E_{i-1} + E_i + D_i) b_i - E_{i-1} b_{i-1}
#                                                                     - E_i b_{i+1} = r_b_i,
#
# with T_i the word line's tridiagonal Laplacian plus its device stamps D_i = diag(G_i), W_i = -D_i
# and E_i = diag(1 / r_bit[i, :]) the bit-line segments below row i. Eliminating u_i (a tridiagonal
# solve per row, P_i = T_i^-1) leaves a block-tridiagonal system in the bit lines with dense n x n
# blocks K_i + E_{i-1} + E_i, K_i = D_i - D_i P_i D_i, which block Cholesky-like elimination
# (Z_i = K_i + E_{i-1} + E_i - E_{i-1} Z_{i-1}^-1 E_{i-1}) factorises in rows * cols^3 operations,
# all BLAS-3 and stacked over independent arrays (tiles). The factorisation (the Z_i^-1) serves any
# number of right-hand sides: a batch of inputs, the adjoint solve of the backward pass (the system
# is symmetric) and Newton steps. Arrays are transposed internally so that the blocks have the
# shorter side.

_SOLVE_CHUNK = 2**23
"""Most numbers (vectors x arrays x rows x cols) one chunk of a batched solve holds at once."""

_FACTOR_CACHE_BYTES = 2**30
"""Most bytes of factorisations `solve_crossbar` keeps for reuse across calls."""

_MODES = ("segment", "node", "fixed")


@dataclass
class CrossbarSolution:
    """What `solve_crossbar(..., full=True)` returns, for voltages (batch, rows) in V.

    output_currents: currents (batch, cols) in A from the bit lines into ground.
    word_voltages, bit_voltages: node voltages (batch, rows, cols) in V at every cell's word-line
        and bit-line node (the applied voltage, or 0 V, where a line has no resistance).
    device_currents: currents (batch, rows, cols) in A from word line to bit line.
    iterations: Newton iterations used (0 for linear devices).
    """

    output_currents: np.ndarray
    word_voltages: np.ndarray
    bit_voltages: np.ndarray
    device_currents: np.ndarray
    iterations: int = 0


def _as_line_resistances(value: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    """A scalar or per-segment array of resistances in Ohm -> float64 (rows, cols), checked."""
    array = np.asarray(value, dtype=float)
    if array.ndim not in (0, 2) or (array.ndim == 2 and array.shape != shape):
        raise ValueError(
            f"{name}: expected a scalar or one resistance per segment {shape}, got shape "
            f"{array.shape}"
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name}: {value!r} must be a finite resistance >= 0 Ohm")
    array = np.broadcast_to(array, shape)
    if np.any(array == 0) and np.any(array > 0):
        raise ValueError(
            f"{name}: segments must be all > 0 Ohm or all 0 Ohm (an ideal line), got a mix"
        )
    return array


def _as_terminal_resistances(value: Any, size: int, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=float)
    if array.ndim not in (0, 1) or (array.ndim == 1 and array.shape != (size,)):
        raise ValueError(f"{name}: expected a scalar or shape ({size},), got {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name}: {value!r} must be a finite resistance >= 0 Ohm")
    array = np.broadcast_to(array, (size,))
    if np.any(array == 0) and np.any(array > 0):
        raise ValueError(f"{name}: must be all > 0 Ohm or all 0 Ohm, got a mix")
    return array


@dataclass(frozen=True)
class CrossbarLines:
    """Line and terminal resistances of a rows x cols crossbar, as conductances in S.

    r_word[i, j] is the word-line segment left of cell (i, j) (j = 0: from the driver); r_bit[i, j]
    the bit-line segment below cell (i, j) (i = rows - 1: to the sense node). r_driver (rows,) sits
    in series with each word line's first segment, r_sense (cols,) with each bit line's last.
    Scalars broadcast. A line type whose segments are all 0 Ohm is one node per line ("node") or,
    with no driver / sense resistance either, held at its terminal voltage ("fixed").
    """

    rows: int
    cols: int
    word_mode: str
    bit_mode: str
    word_g: np.ndarray  # segment: (rows, cols) with the terminal in column 0; node: (rows,)
    bit_g: np.ndarray  # segment: (rows, cols) with the terminal in row rows - 1; node: (cols,)

    @classmethod
    def build(
        cls,
        shape: tuple[int, int],
        r_word: Any,
        r_bit: Any,
        r_driver: Any = 0.0,
        r_sense: Any = 0.0,
    ) -> CrossbarLines:
        rows, cols = shape
        rw = _as_line_resistances(r_word, shape, "r_word")
        rb = _as_line_resistances(r_bit, shape, "r_bit")
        rd = _as_terminal_resistances(r_driver, rows, "r_driver")
        rs = _as_terminal_resistances(r_sense, cols, "r_sense")
        if rw.size and rw.flat[0] > 0:
            series = rw.copy()
            series[:, 0] += rd
            word_mode, word_g = "segment", 1.0 / series
        elif rd.size and rd[0] > 0:
            word_mode, word_g = "node", 1.0 / rd
        else:
            word_mode, word_g = "fixed", np.zeros(0)
        if rb.size and rb.flat[0] > 0:
            series = rb.copy()
            series[-1, :] += rs
            bit_mode, bit_g = "segment", 1.0 / series
        elif rs.size and rs[0] > 0:
            bit_mode, bit_g = "node", 1.0 / rs
        else:
            bit_mode, bit_g = "fixed", np.zeros(0)
        return cls(rows, cols, word_mode, bit_mode, word_g, bit_g)

    @property
    def ideal(self) -> bool:
        """No resistance anywhere: the crossbar computes V @ G exactly."""
        return self.word_mode == "fixed" and self.bit_mode == "fixed"

    def key(self) -> tuple[Any, ...]:
        return (
            self.rows, self.cols, self.word_mode, self.bit_mode,
            self.word_g.tobytes(), self.bit_g.tobytes(),
        )  # fmt: skip


class CrossbarSystem:
    """The factorised nodal system of t arrays of the same geometry, conductances g (t, rows, cols)
    in S (the device stamps: conductances, or Newton slopes), for any number of right-hand sides.

    `solve` takes currents injected into the unknown word nodes and bit nodes and returns their
    voltages; `apply` is the matrix-vector product (for Newton residuals and checks).
    """

    def __init__(self, lines: CrossbarLines, g: np.ndarray) -> None:
        g = np.asarray(g, dtype=float)
        if g.ndim == 2:
            g = g[None]
        self.lines = lines
        self.g = g
        self.t = g.shape[0]
        rows, cols = lines.rows, lines.cols
        self._word_banded: np.ndarray | None = None
        self._word_scale: np.ndarray | None = None
        self._y: np.ndarray | None = None
        if lines.word_mode == "segment":
            seg = lines.word_g
            diag = seg + g
            diag[..., :-1] += seg[:, 1:]
            banded = np.zeros((2, self.t * rows * cols))
            upper = np.zeros((self.t, rows, cols))
            upper[..., 1:] = -seg[:, 1:]
            banded[0] = upper.ravel()
            banded[1] = diag.ravel()
            self._word_banded = banded
        elif lines.word_mode == "node":
            self._word_scale = 1.0 / (lines.word_g + g.sum(axis=2))  # (t, rows)
        if lines.bit_mode == "segment":
            self._factor_segments()
        elif lines.bit_mode == "node":
            z = self._schur_blocks(0, rows).sum(axis=1)
            z[:, np.arange(cols), np.arange(cols)] += lines.bit_g
            self._y = _spd_inverse(z)

    @property
    def nbytes(self) -> int:
        parts = (self._y, self._word_banded, self._word_scale)
        return sum(a.nbytes for a in parts if a is not None)

    # -- factorisation -------------------------------------------------------------------------
    def _schur_blocks(self, start: int, stop: int) -> np.ndarray:
        """K_i = D_i - W_i^T P_i W_i for rows [start, stop): (t, stop - start, cols, cols)."""
        cols = self.lines.cols
        d = self.g[:, start:stop]  # (t, k, cols)
        k = np.zeros((*d.shape, cols))
        if self.lines.word_mode == "segment":
            inverse = self._word_inverses(start, stop)  # (t, k, cols, cols)
            k -= d[..., :, None] * inverse * d[..., None, :]
        elif self.lines.word_mode == "node":
            scale = self._word_scale[:, start:stop]  # type: ignore[index]
            k -= scale[..., None, None] * d[..., :, None] * d[..., None, :]
        k[..., np.arange(cols), np.arange(cols)] += d
        return k

    def _word_inverses(self, start: int, stop: int) -> np.ndarray:
        """P_i (t, stop - start, cols, cols): inverses of the word lines' tridiagonal blocks."""
        rows, cols = self.lines.rows, self.lines.cols
        banded = self._word_banded.reshape(2, self.t, rows, cols)[:, :, start:stop]  # type: ignore[union-attr]
        count = self.t * (stop - start)
        banded = banded.reshape(2, count * cols).copy()
        rhs = np.tile(np.eye(cols), (count, 1))
        solution = _banded_solve(banded, rhs)
        return solution.reshape(self.t, stop - start, cols, cols)

    def _factor_segments(self) -> None:
        rows, cols = self.lines.rows, self.lines.cols
        e = self.lines.bit_g  # (rows, cols): e[i] joins row i to row i + 1 (last: to ground)
        y = np.empty((self.t, rows, cols, cols))
        chunk = max(1, _SOLVE_CHUNK // max(1, self.t * cols * cols))
        previous = None
        index = np.arange(cols)
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            blocks = self._schur_blocks(start, stop)
            for offset in range(stop - start):
                i = start + offset
                z = blocks[:, offset]
                z[:, index, index] += e[i] + (e[i - 1] if i > 0 else 0.0)
                if previous is not None:
                    z -= previous * (e[i - 1][:, None] * e[i - 1][None, :])
                previous = _spd_inverse(z)
                y[:, i] = previous
        self._y = y

    # -- solves --------------------------------------------------------------------------------
    def _word_solve(self, rhs: np.ndarray) -> np.ndarray:
        """P r for word-node vectors rhs (B, t, rows, n_u)."""
        mode = self.lines.word_mode
        if mode == "segment":
            batch = rhs.shape[0]
            flat = np.moveaxis(rhs, 0, -1).reshape(-1, batch)
            out = _banded_solve(self._word_banded, flat)
            return np.moveaxis(out.reshape(*rhs.shape[1:], batch), -1, 0)
        return rhs * self._word_scale[..., None]  # type: ignore[index]

    def solve(
        self, r_u: np.ndarray | None, r_b: np.ndarray | None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Node voltages (u, b) for injected currents r_u (B, t, rows, n_u) into the word nodes
        (n_u = cols, 1 or none) and r_b (B, t, rows, cols) or (B, t, cols) into the bit nodes.
        Either may be None (no injection); unknown nodes only."""
        lines = self.lines
        batch = (r_u if r_u is not None else r_b).shape[0]  # type: ignore[union-attr]
        rows, cols = lines.rows, lines.cols
        d = self.g
        w = None
        if lines.word_mode != "fixed" and r_u is not None:
            w = self._word_solve(r_u)
        # Right-hand side of the bit-line system: r_b - W^T P r_u.
        b = None
        if lines.bit_mode != "fixed":
            shape = (batch, self.t, rows, cols) if lines.bit_mode == "segment" else (
                batch, self.t, cols
            )  # fmt: skip
            f = np.zeros(shape) if r_b is None else np.array(r_b, dtype=float)
            if w is not None:
                pushed = d * w  # (B, t, rows, cols); a "node" word line's w broadcasts
                f = f + (pushed if lines.bit_mode == "segment" else pushed.sum(axis=2))
            b = self._bit_solve(f)
        u = None
        if lines.word_mode != "fixed":
            r = np.zeros((batch, self.t, rows, cols if lines.word_mode == "segment" else 1))
            if r_u is not None:
                r = r + r_u
            if b is not None:
                cells = b if lines.bit_mode == "segment" else b[:, :, None, :]
                pulled = d * cells
                r = r + (pulled if lines.word_mode == "segment" else pulled.sum(-1, keepdims=True))
            u = self._word_solve(r)
        return u, b

    def _bit_solve(self, f: np.ndarray) -> np.ndarray:
        """Bit-node voltages for bit-node injections f (B, t, rows, cols) or (B, t, cols)."""
        y = self._y
        if self.lines.bit_mode == "node":
            return np.moveaxis(y @ np.moveaxis(f, 0, -1), -1, 0)
        rows = self.lines.rows
        e = self.lines.bit_g[..., None]  # (rows, cols, 1)
        work = np.ascontiguousarray(np.moveaxis(f, 0, -1))  # (t, rows, cols, B)
        carry = None
        for i in range(rows):
            rhs = work[:, i] if carry is None else work[:, i] + e[i - 1] * carry
            carry = y[:, i] @ rhs
            work[:, i] = carry
        for i in range(rows - 2, -1, -1):
            work[:, i] += y[:, i] @ (e[i] * work[:, i + 1])
        return np.moveaxis(work, -1, 0)

    def apply(
        self, u: np.ndarray | None, b: np.ndarray | None, stamps: np.ndarray | None = None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Matrix-vector product of the system with node voltages (u, b) (shapes as `solve`
        returns); `stamps` (B, t, rows, cols) replaces the device stamps g per vector."""
        lines = self.lines
        g = self.g if stamps is None else stamps
        wc = 0.0 if u is None else u  # word voltage of each cell (fixed nodes: 0)
        bc = 0.0 if b is None else (b if lines.bit_mode == "segment" else b[:, :, None, :])
        flow = g * (wc - bc)
        out_u = out_b = None
        if lines.word_mode == "segment":
            seg = lines.word_g
            out_u = seg * u
            out_u[..., 1:] -= seg[:, 1:] * u[..., :-1]
            out_u[..., :-1] += seg[:, 1:] * (u[..., :-1] - u[..., 1:])
            out_u = out_u + flow
        elif lines.word_mode == "node":
            out_u = lines.word_g[:, None] * u + flow.sum(axis=-1, keepdims=True)
        if lines.bit_mode == "segment":
            e = lines.bit_g
            out_b = e * b
            out_b[:, :, :-1] -= e[:-1] * b[:, :, 1:]
            out_b[:, :, 1:] += e[:-1] * (b[:, :, 1:] - b[:, :, :-1])
            out_b = out_b - flow
        elif lines.bit_mode == "node":
            out_b = lines.bit_g * b - flow.sum(axis=2)
        return out_u, out_b


def _banded_solve(banded: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve a symmetric positive definite tridiagonal system (upper banded form (2, n))."""
    if banded.shape[1] == 1:
        return rhs / banded[1, 0]
    return scipy.linalg.solveh_banded(banded, rhs, check_finite=False)


@functools.cache
def _upper_triangle(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the strict upper triangle of an n x n matrix."""
    return np.triu_indices(n, 1)


def _spd_inverse(z: np.ndarray) -> np.ndarray:
    """Inverses of symmetric positive definite matrices z (t, n, n) by Cholesky (LAPACK potrf and
    potri: half the work of an LU inverse); LU where Cholesky fails (rounding at extreme scales)."""
    out = np.empty_like(z)
    upper = _upper_triangle(z.shape[-1])
    for k in range(z.shape[0]):
        factor, info = scipy.linalg.lapack.dpotrf(z[k], lower=0, clean=0)
        if info == 0:
            inverse, info = scipy.linalg.lapack.dpotri(factor, lower=0)
        if info != 0:
            out[k] = np.linalg.inv(z[k])
            continue
        inverse[upper[1], upper[0]] = inverse[upper]
        out[k] = inverse
    return out


# -- iterative solver for segmented word and bit lines -------------------------------------------
#
# With resistance on both line types (the usual case) the nodal system is [A_u, -D; -D, A_b]: A_u
# the word lines' Laplacian plus the device stamps D (tridiagonal along each word line), A_b the
# same along each bit line. Block Gauss-Seidel alternates exact solves of one line family given
# the other's voltages: u = A_u^-1 (r_u + D b), b = A_b^-1 (r_b + D u). Each sweep costs O(n) per
# node (Thomas' algorithm, vectorised across lines and vectors) and shrinks the error by about
# (d / (d + lam_u)) (d / (d + lam_b)), lam the smallest eigenvalue of a line's Laplacian, about
# g_segment (pi / 2n)^2: ~1e-5 for high-R SiOx devices at 128 x 128, 3e-3 at 512 x 512, so a few
# sweeps reach rounding level. Devices too strong for that (low-R arrays of hundreds of lines) are
# detected after two sweeps and handed to the direct `CrossbarSystem`.
#
# Layouts: word nodes are kept as (cols, t, rows, B) and bit nodes as (rows, t, cols, B), the
# chain axis first and the vectors innermost: every node is a B-long run, and the other family's
# voltages along a line are contiguous. The half-sweeps are compiled (`simulation.line_sweeps`:
# line by line in cache, lines in parallel).

_SWEEP_RATE_LIMIT = 0.2
"""Largest observed error reduction per sweep for which Gauss-Seidel is used (else direct)."""

_MAX_SWEEPS = 40
"""Most Gauss-Seidel sweeps before the solve gives up (`_SlowConvergence`)."""


class _SlowConvergence(RuntimeError):
    """Block Gauss-Seidel converges too slowly for these devices; use the direct solver."""


def _factor_chains(diagonal: np.ndarray, coupling: np.ndarray) -> tuple[np.ndarray, ...]:
    """Factorise SPD tridiagonal chains along axis 0: diagonal (n, ...) in S and coupling[k] in S
    (the conductance joining nodes k - 1 and k; coupling[0] unused).

    Returns (forward, inverse, backward) with d_k the LDL^T pivots: the scaled forward sweep is
    y_k = inverse_k f_k + forward_k y_{k-1} (forward_k = coupling_k / d_k) and back substitution
    x_k = y_k + backward_k x_{k+1} (backward_k = coupling_{k+1} / d_k)."""
    shape = np.broadcast_shapes(diagonal.shape, coupling.shape)
    diagonal = np.broadcast_to(diagonal, shape)
    squared = coupling * coupling
    inverse = np.empty(shape)  # 1 / d_k, computed in place: three passes per chain node
    np.divide(1.0, diagonal[0], out=inverse[0])
    pivot = np.empty(shape[1:])
    for k in range(1, shape[0]):
        np.multiply(squared[k], inverse[k - 1], out=pivot)
        np.subtract(diagonal[k], pivot, out=pivot)
        np.divide(1.0, pivot, out=inverse[k])
    forward = np.empty_like(inverse)
    backward = np.empty_like(inverse)
    forward[0] = 0.0
    backward[-1] = 0.0
    np.multiply(coupling[1:], inverse[1:], out=forward[1:])
    np.multiply(coupling[1:], inverse[:-1], out=backward[:-1])
    return forward, inverse, backward


class SweepSystem:
    """Block Gauss-Seidel solver for word and bit lines that both have segment resistance.

    g: device stamps (conductances or Newton slopes) in S: (t, rows, cols) shared by every vector
    ((rows, cols): one array) or (B, t, rows, cols) per vector. `solve` has the interface of
    `CrossbarSystem.solve`; `solve_nodes` works in the internal layouts (see above). Raises
    `_SlowConvergence` when the devices are too strong for Gauss-Seidel.
    """

    def __init__(
        self,
        lines: CrossbarLines,
        g: np.ndarray | None,
        tolerance: float = 1e-13,
        *,
        node_stamps: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        if lines.word_mode != "segment" or lines.bit_mode != "segment":
            raise ValueError("SweepSystem: both line types need segment resistance")
        self.lines, self.tolerance = lines, tolerance
        self.rate: float | None = None
        """Largest error reduction per sweep observed by a converged solve (None before one)."""
        if node_stamps is None:
            g = np.asarray(g, dtype=float)
            g = g.reshape((1,) * (4 - g.ndim) + g.shape)  # (rows, cols) is one array
            self.g_shared = g[0] if g.shape[0] == 1 else None
            stamps_w = np.transpose(g, (3, 1, 2, 0))  # (cols, t, rows, B or 1)
            stamps_b = np.transpose(g, (2, 1, 3, 0))  # (rows, t, cols, B or 1)
        else:
            # Stamps already in the node layouts (any strides), e.g. slopes of Newton's method.
            stamps_w, stamps_b = node_stamps
            self.g_shared = None
        self.t = stamps_w.shape[1]
        seg_w = lines.word_g.T[:, None, :, None]  # (cols, 1, rows, 1): left of each cell
        diag_w = seg_w.copy()
        diag_w[:-1] += seg_w[1:]
        self.word = _factor_chains(diag_w + stamps_w, seg_w)
        seg_b = lines.bit_g[:, None, :, None]  # (rows, 1, cols, 1): below each cell
        diag_b = seg_b.copy()
        diag_b[1:] += seg_b[:-1]
        above = np.zeros_like(seg_b)
        above[1:] = seg_b[:-1]  # joins row k - 1 to row k
        self.bit = _factor_chains(diag_b + stamps_b, above)
        self.scaled_w = np.ascontiguousarray(stamps_w * self.word[1])
        self.scaled_b = np.ascontiguousarray(stamps_b * self.bit[1])
        self._drive_response: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        parts = (*self.word, *self.bit, self.scaled_w, self.scaled_b)
        return sum(a.nbytes for a in parts)

    def solve_nodes(
        self,
        f_u: np.ndarray | None,
        f_b: np.ndarray | None,
        f_u0: np.ndarray | None = None,
        atol: tuple[float, float] = (0.0, 0.0),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Word nodes (cols, t, rows, B) and bit nodes (rows, t, cols, B) in V for injected
        currents in A: f_u (cols, t, rows, B) into word nodes, f_b (rows, t, cols, B) into bit
        nodes, f_u0 (t, rows, B) into the first word node only (the drivers); None = no current.
        Stops when the error estimated from the last sweep's change at the far ends of the lines
        and the observed rate is at most `tolerance` times their largest voltage, or at most
        atol = (word, bit) V on each family's ends (an inexact solve: a Newton correction needs
        only the accuracy of the answer); a system whose rate is known (`rate`) may stop after
        two sweeps."""
        from simulation.line_sweeps import solve_family  # numba: 0.15 s, not at start-up

        rows, cols = self.lines.rows, self.lines.cols
        batch = next(f.shape[-1] for f in (f_u, f_b, f_u0) if f is not None)
        inv_w, inv_b = self.word[1], self.bit[1]
        f_u = None if f_u is None else np.ascontiguousarray(f_u * inv_w)
        f_b = None if f_b is None else np.ascontiguousarray(f_b * inv_b)
        f_u0 = None if f_u0 is None else np.ascontiguousarray(f_u0 * inv_w[0])
        u = buffers.empty((cols, self.t, rows, batch))
        b = buffers.empty((rows, self.t, cols, batch))
        (forward_w, _, backward_w), (forward_b, _, backward_b) = self.word, self.bit
        last, change, rate = None, np.inf, 1.0
        known = None if self.rate is None else max(self.rate, 0.1)
        for sweep in range(1, _MAX_SWEEPS + 1):
            if sweep > 1:
                solve_family(u, forward_w, backward_w, b, self.scaled_w, f_u, f_u0)
            elif f_u is not None:  # b = 0
                solve_family(u, forward_w, backward_w, extra=f_u, first=f_u0)
            elif f_u0 is not None:  # b = 0, only the drivers: their precomputed response
                np.multiply(self._drive_responses(), f_u0, out=u)
            else:
                u.fill(0.0)
            solve_family(b, forward_b, backward_b, u, self.scaled_b, f_b)
            ends = (u[-1].copy(), b[-1].copy())
            if last is not None:
                changes = [_largest(new - old) for new, old in zip(ends, last, strict=True)]
                moved = max(changes)
                relative = self.tolerance * max(_largest(new) for new in ends)
                rate = moved / change
                if moved == 0 or (
                    sweep >= 3 and rate < 0.5 and _within(changes, rate, relative, atol)
                ):
                    if sweep >= 3:
                        self.rate = max(rate, self.rate or 0.0)
                    return u, b
                if sweep == 2 and known is not None and _within(changes, known, relative, atol):
                    return u, b
                if sweep >= 3 and rate > _SWEEP_RATE_LIMIT:
                    raise _SlowConvergence(f"Gauss-Seidel rate {rate:.2g} per sweep")
                change = moved
            last = ends
        raise _SlowConvergence(f"no convergence in {_MAX_SWEEPS} sweeps (rate {rate:.2g})")

    def _drive_responses(self) -> np.ndarray:
        """Scaled word-node voltages (cols, t, rows, 1 or B) of a unit scaled current into each
        word line's first node alone (once per system): the first sweep's word solve when only
        the drivers inject (b = 0) is then one multiply."""
        if self._drive_response is None:
            from simulation.line_sweeps import solve_family

            forward, _, backward = self.word
            response = np.empty(forward.shape)
            solve_family(response, forward, backward, first=np.ones(forward.shape[1:]))
            self._drive_response = response
        return self._drive_response

    def solve(
        self, r_u: np.ndarray | None, r_b: np.ndarray | None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """`CrossbarSystem.solve` for segment lines: r_u, r_b (B, t, rows, cols) in A (either may
        be None) -> word and bit node voltages (B, t, rows, cols) in V."""
        f_u = None if r_u is None else np.transpose(r_u, (3, 1, 2, 0))
        f_b = None if r_b is None else np.transpose(r_b, (2, 1, 3, 0))
        if f_u is None and f_b is None:
            return None, None
        u, b = self.solve_nodes(f_u, f_b)
        return (
            np.ascontiguousarray(np.transpose(u, (3, 1, 2, 0))),
            np.ascontiguousarray(np.transpose(b, (3, 1, 0, 2))),
        )


def _within(changes: list[float], rate: float, relative: float, atol: tuple[float, float]) -> bool:
    """Gauss-Seidel's error estimate change * rate / (1 - rate) per family within tolerance."""
    return all(
        c * rate / (1 - rate) <= max(relative, a) for c, a in zip(changes, atol, strict=True)
    )


def _largest(array: np.ndarray) -> float:
    """Largest magnitude in an array (0 when empty)."""
    return float(max(array.max(), -array.min())) if array.size else 0.0


# -- forward model: sources, outputs, device voltages --------------------------------------------


def _sources(lines: CrossbarLines, g: np.ndarray, v: np.ndarray, vb: np.ndarray | None = None):
    """Injected currents (r_u, r_b) of applied voltages v (B, t, rows) for stamps g, and of bit
    terminal voltages vb (B, t, cols) (None: grounded; only with segment or node bit lines)."""
    if vb is not None:
        r_u, _ = _sources(lines, g, v)
        if lines.bit_mode == "segment":
            r_b = np.zeros((*v.shape[:-1], lines.rows, lines.cols))
            r_b[..., -1, :] = lines.bit_g[-1] * vb
        else:
            r_b = lines.bit_g * vb
        return r_u, r_b
    if lines.word_mode == "segment":
        r_u = np.zeros((*v.shape, lines.cols))
        r_u[..., 0] = lines.word_g[:, 0] * v
        return r_u, None
    if lines.word_mode == "node":
        return (lines.word_g * v)[..., None], None
    # Fixed word lines: the devices inject G V into the bit nodes.
    if lines.bit_mode == "segment":
        return None, g * v[..., None]
    if lines.bit_mode == "node":
        return None, np.einsum("tij,bti->btj", g, v)
    return None, None


def _cells(lines: CrossbarLines, v: np.ndarray, u, b) -> tuple[np.ndarray, np.ndarray]:
    """Word-side and bit-side voltages of every cell (B, t, rows, cols)."""
    shape = (*v.shape, lines.cols)
    if lines.word_mode == "segment":
        wc = u
    elif lines.word_mode == "node":
        wc = np.broadcast_to(u, shape)
    else:
        wc = np.broadcast_to(v[..., None], shape)
    if lines.bit_mode == "segment":
        bc = b
    elif lines.bit_mode == "node":
        bc = np.broadcast_to(b[:, :, None, :], shape)
    else:
        bc = np.zeros(shape)
    return wc, bc


def _outputs(lines: CrossbarLines, b, flows: np.ndarray) -> np.ndarray:
    """Currents (B, t, cols) into ground from node voltages b or device currents flows."""
    if lines.bit_mode == "segment":
        return lines.bit_g[-1] * b[:, :, -1]
    if lines.bit_mode == "node":
        return lines.bit_g * b
    return flows.sum(axis=2)


def _output_adjoint(lines: CrossbarLines, stamps: np.ndarray, gy: np.ndarray):
    """dL/d(u, b) of L = sum gy * outputs, stamps (B or 1, t, rows, cols) = dI/dV of devices."""
    h_u = h_b = None
    if lines.bit_mode == "segment":
        h_b = np.zeros((*gy.shape[:2], lines.rows, lines.cols))
        h_b[:, :, -1] = lines.bit_g[-1] * gy
    elif lines.bit_mode == "node":
        h_b = lines.bit_g * gy
    elif lines.word_mode == "segment":
        h_u = stamps * gy[:, :, None, :]
    elif lines.word_mode == "node":
        h_u = (stamps * gy[:, :, None, :]).sum(axis=-1, keepdims=True)
    return h_u, h_b


def _adjoint_cells(lines: CrossbarLines, lam_u, lam_b, gy: np.ndarray, shape) -> np.ndarray:
    """lambda~_word - lambda~_bit per cell (B, t, rows, cols): the node adjoints, with fixed word
    nodes at 0 and fixed bit nodes at the output's gradient."""
    lw = 0.0 if lines.word_mode == "fixed" else lam_u  # (..., cols) or (..., 1)
    if lines.bit_mode == "segment":
        lb = lam_b
    elif lines.bit_mode == "node":
        lb = lam_b[:, :, None, :]
    else:
        lb = gy[:, :, None, :]
    return np.broadcast_to(lw - lb, shape)


def _voltage_adjoint(lines: CrossbarLines, lam_u, diff: np.ndarray, stamps: np.ndarray):
    """dL/dV (B, t, rows) from the node adjoints (diff = lambda~_w - lambda~_b per cell)."""
    if lines.word_mode == "segment":
        return lines.word_g[:, 0] * lam_u[..., 0]
    if lines.word_mode == "node":
        return lines.word_g * lam_u[..., 0]
    # Fixed word lines: V_i drives every device of its row; lambda~_w = 0 there.
    return -(stamps * diff).sum(axis=-1)


class _FactorCache:
    """Least recently used factorisations, keyed by conductances and line resistances."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def get(self, lines: CrossbarLines, g: np.ndarray, kind: type | None = None) -> Any:
        """The system of `kind` (`CrossbarSystem` by default, or `SweepSystem`) for lines and
        device conductances g (t, rows, cols), built once and then reused."""
        kind = CrossbarSystem if kind is None else kind
        digest = hashlib.blake2b(g.tobytes(), digest_size=16).digest()
        key = (kind.__name__, lines.key(), g.shape, digest)
        system = self._entries.get(key)
        if system is not None:
            self._entries.move_to_end(key)
            return system
        system = kind(lines, g)
        self._entries[key] = system
        while (
            sum(s.nbytes for s in self._entries.values()) > self.max_bytes
            and len(self._entries) > 1
        ):
            self._entries.popitem(last=False)
        if system.nbytes > self.max_bytes:
            self._entries.pop(key)
        return system

    def clear(self) -> None:
        self._entries.clear()


FACTOR_CACHE = _FactorCache(_FACTOR_CACHE_BYTES)
"""Factorisations reused by `solve_crossbar` across calls with the same conductances (LRU, at
most 1 GiB); `FACTOR_CACHE.clear()` frees them."""


def _check_crossbar_inputs(voltages: Any, conductances: Any) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(conductances, dtype=float)
    if g.ndim != 2:
        raise ValueError(f"conductances: expected (rows, cols), got shape {g.shape}")
    if not np.all(np.isfinite(g)) or np.any(g < 0):
        raise ValueError("conductances: every device needs a finite conductance >= 0 S")
    v = np.atleast_2d(np.asarray(voltages, dtype=float))
    if v.ndim != 2 or v.shape[1] != g.shape[0]:
        raise ValueError(
            f"voltages: expected shape (batch, {g.shape[0]}), got {np.shape(voltages)}"
        )
    if not np.all(np.isfinite(v)):
        raise ValueError("voltages: every applied voltage must be finite")
    return v, g


def solve_crossbar(
    voltages: np.ndarray,
    conductances: np.ndarray,
    r_word: float | np.ndarray,
    r_bit: float | np.ndarray,
    *,
    r_driver: float | np.ndarray = 0.0,
    r_sense: float | np.ndarray = 0.0,
    current: DeviceFunction | None = None,
    slope: DeviceFunction | None = None,
    full: bool = False,
    cache: bool = True,
    tolerance: float = 1e-12,
    max_iterations: int = 100,
) -> np.ndarray | CrossbarSolution:
    """Output currents (batch, cols) in A flowing from the bit lines' bottom ends into ground.

    voltages (batch, rows) in V at the word lines' left ends (a (rows,) vector is batch 1),
    conductances (rows, cols) in S (>= 0), r_word and r_bit the resistance of one line segment in
    Ohm (>= 0; scalars or per segment (rows, cols), see `CrossbarLines`), r_driver (rows,) and
    r_sense (cols,) optional series resistances at the drivers and at the (virtual-ground) sense
    inputs. With no resistance anywhere this is exactly voltages @ conductances. With resistance
    on both line types the nodal system is solved in float64 by block Gauss-Seidel over word and
    bit lines (`SweepSystem`, O(rows cols) per sweep and vector) to about 1e-13 relative; devices
    too strong for it (it would need many sweeps) and the other line types go to the direct
    block factorisation (`CrossbarSystem`). Either is built once for the whole batch and, through
    `FACTOR_CACHE` (cache=True), reused by later calls with the same conductances.

    Nonlinear devices: give `current` and `slope` (`DeviceFunction`s of device voltages
    (batch, rows, cols); conductances then only seed Newton's method, e.g. the devices' chord
    conductances). Newton's method uses each vector's own Jacobian on the Gauss-Seidel path (on
    the direct path one factorisation for the whole batch, at the batch's mean device voltages,
    refactorised when convergence slows) and stops when no node moves more than `tolerance` times
    the largest |applied voltage|.

    full=True returns a `CrossbarSolution` with node voltages and device currents as well.
    """
    squeeze = np.ndim(voltages) == 1
    v, g = _check_crossbar_inputs(voltages, conductances)
    lines = CrossbarLines.build(g.shape, r_word, r_bit, r_driver, r_sense)
    if (current is None) != (slope is None):
        raise ValueError("solve_crossbar: nonlinear devices need both current and slope")
    v3 = v[:, None, :]
    if current is None:
        if lines.ideal:
            out = v @ g
            if not full:
                return out[0] if squeeze else out
        solution = _linear_solution(lines, g[None], v3, cache, outputs_only=not full)
    else:
        wrapped_current = _tile_function(current)
        wrapped_slope = _tile_function(slope)
        solution = _solve_newton(
            lines, g[None], v3, wrapped_current, wrapped_slope, tolerance, max_iterations
        )
    pick = (lambda a: np.asarray(a)[0, 0]) if squeeze else (lambda a: np.asarray(a)[:, 0])
    if not full:
        return pick(solution.output_currents)
    return CrossbarSolution(
        pick(solution.output_currents), pick(solution.word_voltages),
        pick(solution.bit_voltages), pick(solution.device_currents), solution.iterations,
    )  # fmt: skip


def _tile_function(function: DeviceFunction) -> DeviceFunction:
    """A (..., rows, cols) device function applied to (B, 1, rows, cols) stacks of one array."""
    return lambda volts: function(volts[:, 0])[:, None]


def _sweepable(lines: CrossbarLines) -> bool:
    """Both line types have segment resistance: `SweepSystem` applies."""
    return lines.word_mode == "segment" and lines.bit_mode == "segment"


def _linear_solution(
    lines: CrossbarLines, g: np.ndarray, v: np.ndarray, cache: bool, outputs_only: bool = False
) -> CrossbarSolution:
    """Linear devices g (t, rows, cols) in S, voltages v (B, t, rows) in V: Gauss-Seidel where it
    converges fast, else the direct `CrossbarSystem`; through `FACTOR_CACHE` if cache."""
    if _sweepable(lines):
        sweeper = FACTOR_CACHE.get(lines, g, SweepSystem) if cache else SweepSystem(lines, g)
        try:
            return _solve_linear_sweep(sweeper, v, outputs_only)
        except _SlowConvergence:
            pass
    system = FACTOR_CACHE.get(lines, g) if cache else CrossbarSystem(lines, g)
    return _solve_linear(system, v)


def _solve_linear_sweep(system: SweepSystem, v: np.ndarray, outputs_only: bool) -> CrossbarSolution:
    """`_solve_linear` by Gauss-Seidel; outputs_only leaves the node arrays as None (the cheap
    path: the drivers inject into the first word node, outputs come from the last bit node)."""
    lines = system.lines
    drive = lines.word_g[:, 0][None, :, None] * np.transpose(v, (1, 2, 0))  # (t, rows, B)
    u, b = system.solve_nodes(None, None, drive)
    out = np.transpose(lines.bit_g[-1][None, :, None] * b[-1], (2, 0, 1))  # (B, t, cols)
    if outputs_only:
        return CrossbarSolution(out, None, None, None)  # type: ignore[arg-type]
    wc = np.ascontiguousarray(np.transpose(u, (3, 1, 2, 0)))
    del u
    bc = np.ascontiguousarray(np.transpose(b, (3, 1, 0, 2)))
    del b
    g = system.g_shared
    return CrossbarSolution(out, wc, bc, g * (wc - bc))


def _solve_linear(system: CrossbarSystem, v: np.ndarray) -> CrossbarSolution:
    """Linear devices: v (B, t, rows) -> solution with (B, t, ...) arrays squeezed to t = 1 for
    one array (the caller's (batch, ...) shapes)."""
    lines, g = system.lines, system.g
    step = max(1, _SOLVE_CHUNK // max(1, system.t * lines.rows * lines.cols))
    outs, words, bits, flows = [], [], [], []
    for start in range(0, v.shape[0], step):
        part = v[start : start + step]
        r_u, r_b = _sources(lines, g, part)
        if lines.ideal or (r_u is None and r_b is None):
            u = b = None
        else:
            u, b = system.solve(r_u, r_b)
        wc, bc = _cells(lines, part, u, b)
        flow = g * (wc - bc)
        outs.append(_outputs(lines, b, flow))
        words.append(wc)
        bits.append(bc)
        flows.append(flow)
    return CrossbarSolution(
        np.concatenate(outs), np.concatenate(words), np.concatenate(bits), np.concatenate(flows)
    )


def _solve_newton(
    lines: CrossbarLines,
    g0: np.ndarray,
    v: np.ndarray,
    current: DeviceFunction,
    slope: DeviceFunction,
    tolerance: float,
    max_iterations: int,
) -> CrossbarSolution:
    """Nonlinear devices on t arrays (conductances g0 (t, rows, cols) seed the first guess)."""
    u, b, iterations, _, _ = _newton_nodes(lines, g0, v, current, slope, tolerance, max_iterations)
    wc, bc = _cells(lines, v, u, b)
    flow = current(wc - bc)
    out = _outputs(lines, b, flow)
    return CrossbarSolution(out, wc, bc, flow, iterations)


def _newton_nodes(
    lines: CrossbarLines,
    g0: np.ndarray,
    v: np.ndarray,
    current: DeviceFunction,
    slope: DeviceFunction,
    tolerance: float,
    max_iterations: int,
    both: Callable[[np.ndarray], tuple[Any, ...]] | None = None,
    sweep: bool = True,
    vb: np.ndarray | None = None,
    probe: np.ndarray | None = None,
):
    """Node voltages (u, b) of nonlinear devices by Newton's method with a Jacobian shared by the
    batch (a chord method; refactorised at the batch's mean device voltages when a step shrinks
    by less than 4x). Returns u, b, iterations, the last factorised system and, from the
    Gauss-Seidel path, what `both` returned at the last iterate (else None). sweep=False skips
    the Gauss-Seidel attempt (known to be too slow). vb (B, t, cols): bit terminal voltages
    (None: grounded); then every node is kept within the applied voltages' range (a passive
    network's bounds: damps overshoot of strongly nonlinear devices). probe (t, rows, cols):
    device voltages of the first linearisation (default: each row's batch RMS voltage)."""
    if lines.ideal:
        return None, None, 0, None, None
    if sweep and _sweepable(lines):
        try:
            if both is None:
                both = lambda volts: (current(volts), slope(volts))  # noqa: E731
            return _newton_sweep(lines, v, both, tolerance, max_iterations, vb)
        except _SlowConvergence:
            pass
    scale = max(_largest(v), 0.0 if vb is None else _largest(vb), 1e-300)
    if probe is None:  # slopes at the applied voltages' batch RMS per row
        rms = np.sqrt(np.mean(v * v, axis=0))  # (t, rows)
        probe = np.broadcast_to(rms[:, :, None], g0.shape)
    system = CrossbarSystem(lines, np.maximum(slope(probe[None].copy())[0], 0.0))
    r_u0, r_b0 = _sources(lines, system.g, v, vb)
    u, b = system.solve(r_u0, r_b0) if (r_u0 is not None or r_b0 is not None) else (None, None)
    clip = _node_clip(v, vb) if vb is not None else None
    previous = np.inf
    for iteration in range(1, max_iterations + 1):
        wc, bc = _cells(lines, v, u, b)
        volts = wc - bc
        flow = current(volts)
        res_u, res_b = _residual(lines, v, u, b, flow, vb)
        du, db = system.solve(None if res_u is None else -res_u, None if res_b is None else -res_b)
        if clip is not None:
            du, db = clip(u, du), clip(b, db)
        if u is not None:
            u = u + du
        if b is not None:
            b = b + db
        moved = max(
            float(np.max(np.abs(du))) if du is not None else 0.0,
            float(np.max(np.abs(db))) if db is not None else 0.0,
        )
        if moved <= tolerance * scale:
            return u, b, iteration, system, None
        if moved > 0.25 * previous:
            wc, bc = _cells(lines, v, u, b)
            system = CrossbarSystem(lines, np.mean(slope(wc - bc), axis=0))
        previous = moved
    raise RuntimeError(
        f"solve_crossbar: Newton's method did not converge in {max_iterations} iterations"
    )


def _node_clip(v: np.ndarray, vb: np.ndarray) -> Callable[[Any, Any], Any]:
    """step(x, dx) -> dx limited so that x + dx stays within each configuration's range of
    applied voltages (0 V included) and moves at most half that span."""
    low = np.minimum(np.minimum(v.min(axis=-1), vb.min(axis=-1)), 0.0)  # (B, t)
    high = np.maximum(np.maximum(v.max(axis=-1), vb.max(axis=-1)), 0.0)
    half = 0.5 * (high - low)

    def clip(x, dx):
        if x is None:
            return dx
        pad = (slice(None), slice(None)) + (None,) * (x.ndim - 2)
        dx = np.clip(dx, -half[pad], half[pad])
        return np.clip(x + dx, low[pad], high[pad]) - x

    return clip


def _newton_sweep(
    lines: CrossbarLines,
    v: np.ndarray,
    both: Callable[[np.ndarray], tuple[Any, ...]],
    tolerance: float,
    max_iterations: int,
    vb: np.ndarray | None = None,
):
    """Newton's method with each vector's own Jacobian, solved by Gauss-Seidel (`SweepSystem`),
    from the ideal-line voltages; `both` gives device currents (A) and slopes (S) of device
    voltages (and may return more). Returns u, b (B, t, rows, cols) in V, iterations, the last
    system and the last evaluation of `both` (one step, at most `tolerance`, before the solution).
    Raises `_SlowConvergence` when the devices are too strong for Gauss-Seidel."""
    scale = max(_largest(v), 0.0 if vb is None else _largest(vb), 1e-300)
    u = np.repeat(v[..., None], lines.cols, axis=-1)
    b = np.zeros_like(u)
    clip = None
    if vb is not None:
        b += vb[:, :, None, :]
        clip = _node_clip(v, vb)
    for iteration in range(1, max_iterations + 1):
        volts = u - b
        evaluation = both(volts)
        flow, stamps = evaluation[:2]
        res_u, res_b = _residual(lines, v, u, b, flow, vb)
        system = SweepSystem(lines, np.maximum(stamps, 0.0))
        du, db = system.solve(-res_u, -res_b)
        if clip is not None:
            du, db = clip(u, du), clip(b, db)
        u += du
        b += db
        moved = max(float(np.max(np.abs(du))), float(np.max(np.abs(db))))
        if moved <= tolerance * scale:
            return u, b, iteration, system, evaluation
    raise RuntimeError(
        f"solve_crossbar: Newton's method did not converge in {max_iterations} iterations"
    )


def _residual(lines: CrossbarLines, v: np.ndarray, u, b, flow: np.ndarray, vb=None):
    """Kirchhoff residuals (current leaving each unknown node) for device currents flow; vb
    (B, t, cols): bit terminal voltages (None: grounded)."""
    res_u = res_b = None
    if lines.word_mode == "segment":
        seg = lines.word_g
        left = np.concatenate([v[..., None], u[..., :-1]], axis=-1)
        res_u = seg * (u - left) + flow
        res_u[..., :-1] += seg[:, 1:] * (u[..., :-1] - u[..., 1:])
    elif lines.word_mode == "node":
        res_u = (lines.word_g * (u[..., 0] - v))[..., None] + flow.sum(axis=-1, keepdims=True)
    if lines.bit_mode == "segment":
        e = lines.bit_g
        ground = np.zeros_like(b[:, :, :1]) if vb is None else vb[:, :, None, :]
        below = np.concatenate([b[:, :, 1:], np.broadcast_to(ground, b[:, :, :1].shape)], axis=2)
        res_b = e * (b - below) - flow
        res_b[:, :, 1:] += e[:-1] * (b[:, :, 1:] - b[:, :, :-1])
    elif lines.bit_mode == "node":
        res_b = lines.bit_g * (b if vb is None else b - vb) - flow.sum(axis=2)
    return res_u, res_b


# -- differentiable solves (torch) ---------------------------------------------------------------

TorchDeviceFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Elementwise device current I(V, G) in A for device voltages V (B, t, rows, cols) in V and the
conductances G (t, rows, cols) in S (float64); differentiable in both."""


def crossbar_currents(
    voltages: torch.Tensor,
    conductances: torch.Tensor,
    lines: CrossbarLines,
    current: TorchDeviceFunction | None = None,
    *,
    tolerance: float = 1e-10,
    max_iterations: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output currents (B, t, cols) in A and device power (B,) in W (no gradient) of t arrays
    with voltages (B, t, rows) in V and conductances (t, rows, cols) in S, all of `lines`'s
    geometry; (B, rows) and (rows, cols) are one array and give (B, cols).

    Linear and `ElementwiseDevices` arrays whose devices are not too strong for it go to
    `simulation.line_drops` (in the inputs' dtype, float32 to float32 accuracy); the rest are
    solved in float64 (results in the inputs' dtype). Gradients reach voltages and conductances
    by the adjoint method: one more solve with the same factorisation (linear devices) or the
    transposed Newton system at the solution (nonlinear `current`), never by unrolling.
    `current` is a `TorchDeviceFunction` (slopes and the conductance gradient by autograd) or,
    faster, `ElementwiseDevices` (closed-form currents and slopes without autograd inside
    Newton's method; Newton stops when the error estimated from the last step and the observed
    rate is at most `tolerance` times the largest |voltage|).
    """
    single = conductances.dim() == 2
    if single:
        voltages, conductances = voltages[:, None, :], conductances[None]
    if voltages.dim() != 3 or conductances.dim() != 3 or voltages.shape[1:] != (
        conductances.shape[0], lines.rows
    ) or conductances.shape[1:] != (lines.rows, lines.cols):  # fmt: skip
        raise ValueError(
            f"crossbar_currents: voltages {tuple(voltages.shape)} and conductances "
            f"{tuple(conductances.shape)} do not match arrays of {lines.rows}x{lines.cols}"
        )
    if current is None and lines.ideal:
        out = torch.einsum("bti,tij->btj", voltages, conductances)
        power = torch.einsum("bti,tij->b", voltages * voltages, conductances).detach()
    elif current is None or isinstance(current, ElementwiseDevices):
        devices = _LINEAR_DEVICES if current is None else current
        params = devices.parameters(conductances)
        route = _drop_route(lines, voltages, devices, params)
        if route is not None:
            out, power = DropCrossbar.apply(
                voltages, route[0], devices, route[1], tolerance, max_iterations, *params
            )
        elif current is None:
            out, power = _LinearCrossbar.apply(voltages, conductances, lines)
        else:
            out, power = _ElementwiseCrossbar.apply(
                voltages, lines, devices, tolerance, max_iterations, *params
            )
    else:
        out, power = _NonlinearCrossbar.apply(
            voltages, conductances, lines, current, tolerance, max_iterations
        )
    return (out[:, 0], power) if single else (out, power)


_DROP_SOLVERS: OrderedDict[tuple[Any, ...], DropSolver] = OrderedDict()


def _drop_route(
    lines: CrossbarLines,
    voltages: torch.Tensor,
    devices: ElementwiseDevices,
    params: Sequence[torch.Tensor],
) -> tuple[DropSolver, float] | None:
    """The IR-drop solver (`simulation.line_drops`) and its rate bound when the devices are weak
    enough for it (rate bound <= NEWTON_LIMIT at the largest |voltage|), else None."""
    key = lines.key()
    solver = _DROP_SOLVERS.get(key)
    if solver is None:
        solver = _DROP_SOLVERS[key] = DropSolver(lines)
        if len(_DROP_SOLVERS) > 16:
            _DROP_SOLVERS.popitem(last=False)
    dtype = voltages.dtype if voltages.dtype in (torch.float32, torch.float64) else torch.float64
    with torch.no_grad():
        prepared = devices.prepare([p.detach().to(dtype) for p in params])
        peak = float(voltages.detach().abs().max()) if voltages.numel() else 0.0
        rate = solver.rate_bound(devices.peak_slopes(prepared, peak))
    return (solver, rate) if rate <= NEWTON_LIMIT else None


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float64).numpy()


def _forward_outputs(
    ctx: Any, out: np.ndarray, power: np.ndarray, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """An autograd forward's results as tensors like `like`: output currents (A) and device
    power (W), which carries no gradient."""
    power_t = torch.as_tensor(power).to(like)
    ctx.mark_non_differentiable(power_t)
    return torch.as_tensor(out).to(like), power_t


class _LinearCrossbar(torch.autograd.Function):
    @staticmethod
    def forward(ctx, voltages, conductances, lines):  # type: ignore[override]
        v, g = _numpy(voltages), _numpy(conductances)
        solution = _linear_solution(lines, g, v, cache=False)
        ctx.lines, ctx.g = lines, g
        ctx.cells = solution.word_voltages - solution.bit_voltages
        power = np.abs(ctx.cells * solution.device_currents).sum(axis=(1, 2, 3))
        return _forward_outputs(ctx, solution.output_currents, power, voltages)

    @staticmethod
    def backward(ctx, grad_out, _grad_power):  # type: ignore[override]
        lines, g = ctx.lines, ctx.g
        gy = _numpy(grad_out)
        h_u, h_b = _output_adjoint(lines, g[None], gy)
        lam_u, lam_b = _solve_any(lines, g, h_u, h_b)
        diff = _adjoint_cells(lines, lam_u, lam_b, gy, ctx.cells.shape)
        grad_v = grad_g = None
        if ctx.needs_input_grad[1]:
            grad_g = torch.as_tensor(-(ctx.cells * diff).sum(axis=0)).to(grad_out)
        if ctx.needs_input_grad[0]:
            grad_v = torch.as_tensor(_voltage_adjoint(lines, lam_u, diff, g[None])).to(grad_out)
        return grad_v, grad_g, None


def _value_and_slope(
    current: TorchDeviceFunction, volts: np.ndarray, g: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Device currents I (A) and slopes dI/dV (S) at device voltages volts (numpy, V) from one
    forward and one backward pass, and the current tensor (its graph reaches g when g requires
    a gradient, for the conductance gradient of the backward pass)."""
    x = torch.from_numpy(np.array(volts, dtype=float)).requires_grad_(True)
    with torch.enable_grad():
        flow = current(x, g)
        (grad,) = torch.autograd.grad(flow.sum(), x, retain_graph=g.requires_grad)
    return flow.detach().numpy(), grad.numpy(), flow


def _numpy_device_functions(
    current: TorchDeviceFunction, g: torch.Tensor
) -> tuple[DeviceFunction, DeviceFunction]:
    """numpy I(V) and dI/dV (elementwise, by autograd) at fixed conductances g (float64)."""

    def value(volts: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return current(torch.from_numpy(np.ascontiguousarray(volts)), g).numpy()

    def slope(volts: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.array(volts, dtype=float)).requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(current(x, g).sum(), x)
        return grad.numpy()

    return value, slope


class _NonlinearCrossbar(torch.autograd.Function):
    @staticmethod
    def forward(ctx, voltages, conductances, lines, current, tolerance, max_iterations):  # type: ignore[override]
        v = _numpy(voltages)
        g = conductances.detach().to(dtype=torch.float64)
        value, slope = _numpy_device_functions(current, g)
        # Newton keeps each evaluation's graph to the conductances: the last one (one step of at
        # most the tolerance before the solution) serves the backward pass.
        g_leaf = g.clone().requires_grad_(ctx.needs_input_grad[1])
        u, b, _, system, last = _newton_nodes(
            lines, g.numpy(), v, value, slope, tolerance, max_iterations,
            lambda volts: _value_and_slope(current, volts, g_leaf),
        )  # fmt: skip
        wc, bc = _cells(lines, v, u, b)
        cells = wc - bc
        if last is None:  # ideal lines or the direct path: evaluate at the solution
            last = _value_and_slope(current, cells, g_leaf)
        flow, stamps, graph = last
        out = _outputs(lines, b, flow)
        ctx.lines, ctx.system, ctx.cells, ctx.g = lines, system, cells, g
        ctx.stamps, ctx.graph, ctx.g_leaf = stamps, graph, g_leaf
        ctx.max_iterations = max_iterations
        power = np.abs(cells * flow).sum(axis=(1, 2, 3))
        return _forward_outputs(ctx, out, power, voltages)

    @staticmethod
    def backward(ctx, grad_out, _grad_power):  # type: ignore[override]
        lines: CrossbarLines = ctx.lines
        gy = _numpy(grad_out)
        stamps = ctx.stamps
        h_u, h_b = _output_adjoint(lines, stamps, gy)
        if ctx.system is None:  # ideal lines
            lam_u = lam_b = None
        elif isinstance(ctx.system, SweepSystem):
            lam_u, lam_b = _solve_any(lines, stamps, h_u, h_b)
        else:
            lam_u, lam_b = _adjoint_solve(ctx.system, stamps, h_u, h_b, ctx.max_iterations)
        diff = _adjoint_cells(lines, lam_u, lam_b, gy, ctx.cells.shape)
        grad_v = grad_g = None
        if ctx.needs_input_grad[1]:
            weights = torch.from_numpy(-np.ascontiguousarray(diff))
            (grad,) = torch.autograd.grad(ctx.graph, ctx.g_leaf, weights, retain_graph=True)
            grad_g = grad.to(grad_out)
        if ctx.needs_input_grad[0]:
            grad_v = torch.as_tensor(_voltage_adjoint(lines, lam_u, diff, stamps)).to(grad_out)
        return grad_v, grad_g, None, None, None, None


def exp_(x: Any) -> Any:
    """exp of a numpy array or a torch tensor, in place (what `ElementwiseDevices` computes
    with); returns x."""
    return x.exp_() if isinstance(x, torch.Tensor) else np.exp(x, out=x)


def abs_(x: Any, out: Any = None) -> Any:
    """|x| of a numpy array or a torch tensor, into out when given (else a new array)."""
    return torch.abs(x, out=out) if isinstance(x, torch.Tensor) else np.abs(x, out=out)


def sqrt_(x: Any) -> Any:
    """sqrt of a numpy array or a torch tensor, in place; returns x."""
    return x.sqrt_() if isinstance(x, torch.Tensor) else np.sqrt(x, out=x)


class ElementwiseDevices(ABC):
    """Nonlinear devices in closed form for `crossbar_currents`: the current I(V; p) and its slope
    dI/dV of device voltages V from per-device parameters p, computed once per solve from the
    conductances (differentiable: gradients reach the conductances through them). Newton's
    method then evaluates them without autograd, and the backward pass needs only dI/dp at
    the solution.
    `prepare`, `currents` and `partials` receive numpy arrays (the nodal solvers) or torch
    tensors of one dtype (the fixed-point solver `simulation.line_drops`): write them with
    operators and `exp_` / `sqrt_`. Slopes must be >= 0 and largest at the largest
    |V| (`peak_slopes`), as for Poole-Frenkel and linear devices.
    """

    def peak_slopes(self, prepared: Sequence[Any], peak: float) -> Any:
        """Each device's largest dI/dV in S at |V| <= peak volts, shaped like the parameters
        (default: the larger slope at +-peak, for slopes that grow with |V|)."""
        like = prepared[0]
        full = torch.full_like if isinstance(like, torch.Tensor) else np.full_like
        up = self.currents(full(like, peak), prepared, True)[1]
        down = self.currents(full(like, -peak), prepared, True)[1]
        up = up + 0 * like  # slopes may broadcast (linear devices)
        return torch.maximum(up, down) if isinstance(up, torch.Tensor) else np.maximum(up, down)

    @abstractmethod
    def parameters(self, conductances: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-device parameters, each like conductances (t, rows, cols), float64."""

    def prepare(self, params: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        """What `currents` and `partials` receive (same shapes), once per solve; default as is."""
        return tuple(params)

    @abstractmethod
    def currents(
        self, volts: np.ndarray, prepared: Sequence[np.ndarray], slope: bool, out: Any = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """I in A and, if slope, dI/dV in S at device voltages volts in V; the prepared
        parameters broadcast against volts (any layout, the same for all). out: arrays shaped
        like volts to hold I and, if slope, dI/dV (saves allocations), or None."""

    @abstractmethod
    def partials(
        self, volts: np.ndarray, prepared: Sequence[np.ndarray], flow: np.ndarray, out: Any = None
    ) -> tuple[np.ndarray, ...]:
        """dI/dp per parameter (shaped like volts) at volts, where the current is flow; out: a
        spare array like volts that one of them may be written into, or None."""

    def closed_form(self, prepared: Sequence[Any]) -> tuple[Any, Any] | None:
        """(c, beta) in A/V and 1/sqrt(V) if these devices are I = c V e^(beta sqrt|V|) with
        parameters (c,) (beta None: linear devices) or (ln c, beta), which the compiled
        Newton path (`simulation.drop_kernels`) solves; None (the default) otherwise."""
        return None


class _LinearDevices(ElementwiseDevices):
    """Linear devices: the parameter is the conductance G in S; I = G V, dI/dV = G, dI/dG = V."""

    def parameters(self, conductances: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (conductances,)

    def currents(self, volts, prepared, slope, out=None):
        (g,) = prepared
        if out is None:
            return volts * g, (g if slope else None)
        flow = out[0]
        flow[...] = volts
        flow *= g
        return flow, (g if slope else None)

    def partials(self, volts, prepared, flow, out=None):
        return (volts,)

    def closed_form(self, prepared):
        return prepared[0], None


_LINEAR_DEVICES = _LinearDevices()


def _node_layout(array: np.ndarray) -> np.ndarray:
    """(t, rows, cols) -> word-node layout (cols, t, rows, 1), contiguous."""
    return np.ascontiguousarray(np.transpose(array, (2, 0, 1)))[..., None]


def _node_residuals(
    lines: CrossbarLines, drive: np.ndarray, u: np.ndarray, b: np.ndarray, flow: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Minus the Kirchhoff residuals (current into each node) in the node layouts: word nodes u
    and device currents flow (cols, t, rows, B), bit nodes b (rows, t, cols, B), applied voltages
    drive (t, rows, B)."""
    seg = lines.word_g.T[:, None, :, None]  # (cols, 1, rows, 1)
    rhs_u = -flow
    rhs_u[0] -= seg[0] * (u[0] - drive)
    along = seg[1:] * (u[1:] - u[:-1])  # from node k into node k - 1
    rhs_u[:-1] += along
    rhs_u[1:] -= along
    e = lines.bit_g[:, None, :, None]  # (rows, 1, cols, 1)
    rhs_b = flow.transpose(2, 1, 0, 3).copy()
    rhs_b[-1] -= e[-1] * b[-1]
    along = e[:-1] * (b[1:] - b[:-1])  # from row k + 1 into row k
    rhs_b[:-1] += along
    rhs_b[1:] -= along
    return rhs_u, rhs_b


def _elementwise_sweep(
    lines: CrossbarLines,
    v: np.ndarray,
    devices: ElementwiseDevices,
    prepared: Sequence[np.ndarray],
    tolerance: float,
    max_iterations: int,
):
    """Newton's method for `ElementwiseDevices` on the Gauss-Seidel path, entirely in the node
    layouts (prepared parameters in the word-node layout (cols, t, rows, 1)).

    The first step starts from the ideal-line voltages with the slopes there (its residual is the
    device currents), the second refreshes the slopes (Newton), later ones reuse them (a chord
    method: weak devices barely change their slopes) until a step shrinks by less than 4x.
    Inner solves stop at a twentieth of the tolerance. Stops when the error left, estimated from
    the last step and its ratio to the step before (with a 4x margin), is at most tolerance
    times the largest |applied voltage| on every node and times the largest output node voltage
    on the output nodes. Returns u, b, iterations and the last system. Raises
    `_SlowConvergence`."""
    batch = v.shape[0]
    scale = max(_largest(v), 1e-300)
    drive = np.ascontiguousarray(np.transpose(v, (1, 2, 0)))  # (t, rows, B)
    u = np.empty((lines.cols, *drive.shape))
    u[:] = drive
    b = np.zeros((lines.rows, v.shape[1], lines.cols, batch))
    flow, stamps = devices.currents(drive[None], prepared, True)  # at the ideal-line voltages
    rhs_u, rhs_b = -flow, flow.transpose(2, 1, 0, 3)
    system = SweepSystem(lines, None, node_stamps=(stamps, stamps.transpose(2, 1, 0, 3)))
    # Output nodes' voltages, first from the ideal-line currents into the bit lines.
    out_scale = _largest(flow.sum(axis=2) / lines.bit_g[-1][:, None, None])
    previous, newton = np.inf, True
    for iteration in range(1, max_iterations + 1):
        du, db = system.solve_nodes(
            rhs_u, rhs_b, atol=(0.05 * tolerance * scale, 0.05 * tolerance * out_scale)
        )
        u += du
        b += db
        moved, moved_out = max(_largest(du), _largest(db)), _largest(db[-1])
        out_scale = max(_largest(b[-1]), 1e-300)
        rate = moved / previous
        # Error left after this step: ~ rate * moved (chord) or rate^2 * moved (Newton).
        factor = 4 * (rate * rate if newton else rate)
        if (moved <= 0.05 * tolerance * scale and moved_out <= 0.05 * tolerance * out_scale) or (
            iteration >= 2
            and rate < 0.25
            and factor * moved <= tolerance * scale
            and factor * moved_out <= tolerance * out_scale
        ):
            return u, b, iteration, system
        volts = u - b.transpose(2, 1, 0, 3)
        newton = iteration == 1 or rate >= 0.25
        flow, stamps = devices.currents(volts, prepared, newton)
        if newton:
            known = system.rate
            system = SweepSystem(lines, None, node_stamps=(stamps, stamps.transpose(2, 1, 0, 3)))
            system.rate = known
        rhs_u, rhs_b = _node_residuals(lines, drive, u, b, flow)
        previous = moved
    raise RuntimeError(
        f"crossbar_currents: Newton's method did not converge in {max_iterations} iterations"
    )


class _ElementwiseCrossbar(torch.autograd.Function):
    """`crossbar_currents` for `ElementwiseDevices`: inputs voltages and the device parameters;
    the gradient of each parameter is the adjoint-weighted dI/dp at the solution, summed over
    the vectors."""

    @staticmethod
    def forward(ctx, voltages, lines, devices, tolerance, max_iterations, *params):  # type: ignore[override]
        v = _numpy(voltages)
        tolerance = max(tolerance, DTYPE_ACCURACY.get(voltages.dtype, 0.0))
        ctx.tolerance = tolerance
        prepared = devices.prepare([_numpy(p) for p in params])
        ctx.lines, ctx.devices = lines, devices
        ctx.sweep = None
        if _sweepable(lines):
            node = [_node_layout(p) for p in prepared]
            try:
                u, b, _, system = _elementwise_sweep(
                    lines, v, devices, node, tolerance, max_iterations
                )
            except _SlowConvergence:
                pass
            else:
                volts = u - b.transpose(2, 1, 0, 3)  # (cols, t, rows, B)
                flow, stamps = devices.currents(volts, node, True)
                out = np.transpose(lines.bit_g[-1][None, :, None] * b[-1], (2, 0, 1))
                power = np.abs(volts * flow).sum(axis=(0, 1, 2))
                ctx.sweep = (volts, flow, stamps, node, system.rate)
        if ctx.sweep is None:
            current = lambda volts: devices.currents(volts, prepared, False)[0]  # noqa: E731
            slope = lambda volts: devices.currents(volts, prepared, True)[1]  # noqa: E731
            u, b, _, system, _ = _newton_nodes(
                lines, prepared[0], v, current, slope, tolerance, max_iterations, sweep=False
            )
            wc, bc = _cells(lines, v, u, b)
            cells = wc - bc
            flow, stamps = devices.currents(cells, prepared, True)
            out = _outputs(lines, b, flow)
            power = np.abs(cells * flow).sum(axis=(1, 2, 3))
            ctx.direct = (system, cells, flow, stamps, prepared)
        ctx.max_iterations = max_iterations
        return _forward_outputs(ctx, out, power, voltages)

    @staticmethod
    def backward(ctx, grad_out, _grad_power):  # type: ignore[override]
        lines: CrossbarLines = ctx.lines
        gy = _numpy(grad_out)  # (B, t, cols)
        need_v, need_p = ctx.needs_input_grad[0], any(ctx.needs_input_grad[5:])
        if ctx.sweep is not None:
            volts, flow, stamps, node, known = ctx.sweep
            f_b = np.zeros((lines.rows, *volts.shape[1:2], lines.cols, volts.shape[3]))
            f_b[-1] = lines.bit_g[-1][None, :, None] * np.transpose(gy, (1, 2, 0))
            # The exact adjoint: the Newton system at the solution (symmetric).
            system = SweepSystem(lines, None, node_stamps=(stamps, stamps.transpose(2, 1, 0, 3)))
            system.rate = known
            lam_u, lam_b = system.solve_nodes(None, f_b)
            weights = lam_b.transpose(2, 1, 0, 3) - lam_u  # -(lambda~_w - lambda~_b)
            sum_axis, to_params = -1, (1, 2, 0)
            if need_v:
                grad_v = np.transpose(lines.word_g[:, 0][None, :, None] * lam_u[0], (2, 0, 1))
        else:
            system, volts, flow, stamps, node = ctx.direct
            h_u, h_b = _output_adjoint(lines, stamps, gy)
            if system is None:  # ideal lines
                lam_u = lam_b = None
            else:
                lam_u, lam_b = _adjoint_solve(
                    system, stamps, h_u, h_b, ctx.max_iterations, ctx.tolerance
                )
            diff = _adjoint_cells(lines, lam_u, lam_b, gy, volts.shape)
            weights = -diff
            sum_axis, to_params = 0, (0, 1, 2)
            if need_v:
                grad_v = _voltage_adjoint(lines, lam_u, diff, stamps)
        grads = [None] * (len(ctx.needs_input_grad) - 5)
        if need_p:
            partials = ctx.devices.partials(volts, node, flow)
            for k, partial in enumerate(partials):
                if ctx.needs_input_grad[5 + k]:
                    summed = (weights * partial).sum(axis=sum_axis)
                    grads[k] = torch.as_tensor(np.transpose(summed, to_params)).to(grad_out)
        grad_v_t = torch.as_tensor(np.ascontiguousarray(grad_v)).to(grad_out) if need_v else None
        return (grad_v_t, None, None, None, None, *grads)


def _solve_any(
    lines: CrossbarLines, g: np.ndarray, r_u, r_b
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Node voltages for injections (r_u, r_b) with device stamps g in S, (t, rows, cols) or per
    vector (B, t, rows, cols): Gauss-Seidel where it converges fast, else direct (per-vector
    stamps: the direct solve of their mean, refined by `_adjoint_solve`)."""
    if _sweepable(lines):
        try:
            return SweepSystem(lines, g).solve(r_u, r_b)
        except _SlowConvergence:
            pass
    if g.ndim == 3:
        return CrossbarSystem(lines, g).solve(r_u, r_b)
    return _adjoint_solve(CrossbarSystem(lines, g.mean(axis=0)), g, r_u, r_b, 100)


def _adjoint_solve(
    system: CrossbarSystem,
    stamps: np.ndarray,
    h_u,
    h_b,
    max_iterations: int,
    tolerance: float = 1e-13,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Solve J lambda = h for the per-vector Jacobians J (device slopes `stamps`), preconditioned
    by the shared factorisation: lambda += J0^-1 (h - J lambda) until the correction is at most
    tolerance (at least 1e-13) times the largest |lambda|."""
    lam_u, lam_b = system.solve(h_u, h_b)
    scale = max(
        float(np.max(np.abs(lam_u))) if lam_u is not None else 0.0,
        float(np.max(np.abs(lam_b))) if lam_b is not None else 0.0,
        1e-300,
    )
    for _ in range(max_iterations):
        a_u, a_b = system.apply(lam_u, lam_b, stamps)
        r_u = None if h_u is None and a_u is None else (0.0 if h_u is None else h_u) - a_u
        r_b = None if h_b is None and a_b is None else (0.0 if h_b is None else h_b) - a_b
        d_u, d_b = system.solve(r_u, r_b)
        lam_u = lam_u + d_u if lam_u is not None else None
        lam_b = lam_b + d_b if lam_b is not None else None
        moved = max(
            float(np.max(np.abs(d_u))) if d_u is not None else 0.0,
            float(np.max(np.abs(d_b))) if d_b is not None else 0.0,
        )
        if moved <= max(tolerance, 1e-13) * scale:
            break
    return lam_u, lam_b


def solve_lines(
    word_voltages: np.ndarray,
    bit_voltages: np.ndarray,
    conductances: np.ndarray | None = None,
    r_word: float = 0.0,
    r_bit: float = 0.0,
    *,
    current: DeviceFunction | None = None,
    slope: DeviceFunction | None = None,
    return_device_voltages: bool = True,
    tolerance: float = 1e-13,
    max_iterations: int = 60,
) -> LineSolution:
    """Solve n configurations of applied line voltages on one crossbar.

    word_voltages (n, rows) and bit_voltages (n, cols) in V, NaN = floating line. Devices are either
    linear, `conductances` (rows, cols) in S (>= 0), or nonlinear, `current` and `slope`
    (`DeviceFunction`s; the slope must be positive and the current increasing, as for any passive
    memristor), solved by Newton's method from the linear solution with the chord conductance at
    half the applied voltage span. Newton stops when no node moves more than `tolerance` times that
    span. r_word, r_bit: line segment resistances in Ohm (>= 0). Lines that float and reach no
    driven line through a non-zero device carry no current and are reported at 0 V.
    """
    words = np.atleast_2d(np.asarray(word_voltages, dtype=float))
    bits = np.atleast_2d(np.asarray(bit_voltages, dtype=float))
    linear = conductances is not None
    if linear == (current is not None or slope is not None):
        raise ValueError("solve_lines: give either conductances or both current and slope")
    if not linear and (current is None or slope is None):
        raise ValueError("solve_lines: nonlinear devices need both current and slope")
    if linear:
        conductances = np.asarray(conductances, dtype=float)
        if conductances.ndim != 2:
            raise ValueError(f"conductances: expected (rows, cols), got {conductances.shape}")
        if np.any(conductances < 0) or not np.all(np.isfinite(conductances)):
            raise ValueError("conductances: every device needs a finite conductance >= 0 S")
        rows, cols = conductances.shape
    else:
        rows, cols = words.shape[1], bits.shape[1]
    if words.shape[1] != rows or bits.shape[1] != cols or words.shape[0] != bits.shape[0]:
        raise ValueError(
            f"word_voltages {words.shape} and bit_voltages {bits.shape} do not match a "
            f"{rows}x{cols} crossbar with one row of each per configuration"
        )
    if np.any(np.isinf(words)) or np.any(np.isinf(bits)):
        raise ValueError("solve_lines: applied voltages must be finite or NaN (floating)")
    _check_resistances(r_word, r_bit)

    words, bits, isolated_w, isolated_b = _pin_isolated(words, bits, conductances)
    if r_word == 0 and r_bit == 0:
        solution = _solve_collapsed(
            words, bits, conductances, current, slope, return_device_voltages, tolerance,
            max_iterations,
        )  # fmt: skip
    else:
        solution = _solve_with_lines(
            words, bits, conductances, current, slope, float(r_word), float(r_bit),
            return_device_voltages, tolerance, max_iterations,
        )  # fmt: skip
    solution.word_currents[isolated_w] = 0.0
    solution.bit_currents[isolated_b] = 0.0
    return solution


# -- helpers --------------------------------------------------------------------------------------


def _check_resistances(r_word: float, r_bit: float) -> None:
    for name, value in (("r_word", r_word), ("r_bit", r_bit)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name}: {value!r} must be a finite resistance >= 0 Ohm")


def _pin_isolated(
    words: np.ndarray, bits: np.ndarray, conductances: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Floating lines that no non-zero device links to a driven line: pin them to 0 V (they carry
    no current) so every system stays non-singular. Returns the new voltages and pinned masks."""
    float_w, float_b = np.isnan(words), np.isnan(bits)
    none_w, none_b = np.zeros_like(float_w), np.zeros_like(float_b)
    if not (float_w.any() or float_b.any()):
        return words, bits, none_w, none_b
    adjacency = np.ones((words.shape[1], bits.shape[1])) if conductances is None else (
        (conductances > 0).astype(float)
    )  # fmt: skip
    reach_w, reach_b = ~float_w, ~float_b
    while True:
        new_w = reach_w | ((reach_b.astype(float) @ adjacency.T) > 0)
        new_b = reach_b | ((new_w.astype(float) @ adjacency) > 0)
        if np.array_equal(new_w, reach_w) and np.array_equal(new_b, reach_b):
            break
        reach_w, reach_b = new_w, new_b
    pinned_w, pinned_b = ~reach_w, ~reach_b
    if pinned_w.any() or pinned_b.any():
        words, bits = words.copy(), bits.copy()
        words[pinned_w] = 0.0
        bits[pinned_b] = 0.0
    return words, bits, pinned_w, pinned_b


def _floating_patterns(words: np.ndarray, bits: np.ndarray):
    """(pattern, members) per distinct pattern of floating lines: pattern (rows + cols,) bool,
    True where a word line (first rows) or bit line floats; members: the configurations."""
    floating = np.concatenate([np.isnan(words), np.isnan(bits)], axis=1)
    patterns, inverse = np.unique(floating, axis=0, return_inverse=True)
    for index, pattern in enumerate(patterns):
        yield pattern, np.flatnonzero(inverse.ravel() == index)


def _span(words: np.ndarray, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lowest and highest applied voltage (n,) per configuration and the span (n,) (>= tiny)."""
    both = np.concatenate([words, bits], axis=1)
    low = np.nanmin(np.where(np.isnan(both), np.inf, both), axis=1)
    high = np.nanmax(np.where(np.isnan(both), -np.inf, both), axis=1)
    low, high = np.minimum(low, 0.0), np.maximum(high, 0.0)
    return low, high, np.maximum(high - low, 1e-300)


def _chord(current: DeviceFunction, half_span: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Chord conductances I(v)/v (m, rows, cols) at v = half the span (a linear first guess)."""
    volts = np.maximum(half_span, 1e-3)[:, None, None] * np.ones((1, *shape))
    return current(volts) / volts


def _solve_collapsed(
    words: np.ndarray,
    bits: np.ndarray,
    conductances: np.ndarray | None,
    current: DeviceFunction | None,
    slope: DeviceFunction | None,
    with_voltages: bool,
    tolerance: float,
    max_iterations: int,
) -> LineSolution:
    """r_word = r_bit = 0: one node per line, dense systems over the floating lines only."""
    n, rows = words.shape
    cols = bits.shape[1]
    word_out, bit_out = np.zeros((n, rows)), np.zeros((n, cols))
    device = np.empty((n, rows, cols)) if with_voltages else None
    iterations = 0
    for pattern, members in _floating_patterns(words, bits):
        unknown = np.flatnonzero(pattern)
        size = max(1, rows * cols + unknown.size**2)
        step = max(1, _DENSE_CHUNK // size)
        for start in range(0, members.size, step):
            chunk = members[start : start + step]
            nodes = np.concatenate([words[chunk], bits[chunk]], axis=1)
            if unknown.size:
                if conductances is not None:
                    _collapsed_linear(nodes, conductances, unknown, rows)
                else:
                    used = _collapsed_newton(
                        nodes, current, slope, unknown, rows, tolerance, max_iterations
                    )
                    iterations = max(iterations, used)
            volts = nodes[:, :rows, None] - nodes[:, None, rows:]
            flow = volts * conductances if conductances is not None else current(volts)
            word_out[chunk] = flow.sum(axis=2)
            bit_out[chunk] = -flow.sum(axis=1)
            if device is not None:
                device[chunk] = volts
    word_out[np.isnan(words)] = 0.0
    bit_out[np.isnan(bits)] = 0.0
    return LineSolution(device, word_out, bit_out, iterations)


def _laplacian(g: np.ndarray, rows: int) -> np.ndarray:
    """Nodal matrices (m, rows + cols, rows + cols) of devices g (m, rows, cols) between word
    nodes (first rows) and bit nodes; KCL rows give the current leaving each node."""
    m, _, cols = g.shape
    size = rows + cols
    matrix = np.zeros((m, size, size))
    matrix[:, :rows, rows:] = -g
    matrix[:, rows:, :rows] = -np.swapaxes(g, 1, 2)
    diagonal = np.concatenate([g.sum(axis=2), g.sum(axis=1)], axis=1)
    matrix[:, np.arange(size), np.arange(size)] = diagonal
    return matrix


def _collapsed_linear(
    nodes: np.ndarray, conductances: np.ndarray, unknown: np.ndarray, rows: int
) -> None:
    """Fill the floating nodes of nodes (m, rows + cols) in place: one LU for the whole chunk."""
    matrix = _laplacian(conductances[None], rows)[0]
    known = np.setdiff1d(np.arange(matrix.shape[0]), unknown)
    fixed = nodes[:, known]
    rhs = -(matrix[np.ix_(unknown, known)] @ fixed.T)
    factor = scipy.linalg.lu_factor(matrix[np.ix_(unknown, unknown)])
    nodes[:, unknown] = scipy.linalg.lu_solve(factor, rhs).T


def _collapsed_newton(
    nodes: np.ndarray,
    current: DeviceFunction,
    slope: DeviceFunction,
    unknown: np.ndarray,
    rows: int,
    tolerance: float,
    max_iterations: int,
) -> int:
    """Newton's method on the floating nodes of nodes (m, rows + cols), in place; iterations."""
    fixed_nodes = nodes.copy()
    fixed_nodes[:, unknown] = 0.0
    low, high, span = _span(fixed_nodes[:, :rows], fixed_nodes[:, rows:])
    grid = np.ix_(np.arange(nodes.shape[0]), unknown, unknown)
    cols = nodes.shape[1] - rows
    # First guess: the linear network of chord conductances.
    chord = _chord(current, 0.5 * span, (rows, cols))
    matrix = _laplacian(chord, rows)
    known = np.setdiff1d(np.arange(nodes.shape[1]), unknown)
    rhs = -np.einsum("muk,mk->mu", matrix[:, unknown][:, :, known], nodes[:, known])
    nodes[:, unknown] = np.clip(np.linalg.solve(matrix[grid], rhs[..., None])[..., 0],
                                low[:, None], high[:, None])  # fmt: skip
    active = np.arange(nodes.shape[0])
    for iteration in range(1, max_iterations + 1):
        sub = nodes[active]
        volts = sub[:, :rows, None] - sub[:, None, rows:]
        flow = current(volts)
        residual = np.concatenate([flow.sum(axis=2), -flow.sum(axis=1)], axis=1)[:, unknown]
        jacobian = _laplacian(slope(volts), rows)[np.ix_(np.arange(active.size), unknown, unknown)]
        delta = np.linalg.solve(jacobian, -residual[..., None])[..., 0]
        limit = span[active][:, None]
        delta = np.clip(delta, -0.5 * limit, 0.5 * limit)
        updated = np.clip(sub[:, unknown] + delta, low[active, None], high[active, None])
        moved = np.max(np.abs(updated - sub[:, unknown]), axis=1)
        nodes[active[:, None], unknown[None, :]] = updated
        active = active[moved > tolerance * span[active]]
        if active.size == 0:
            return iteration
    raise RuntimeError(
        f"solve_lines: Newton's method did not converge in {max_iterations} iterations"
    )


# -- solve_lines with line resistance: the nodal solvers above, per pattern of floating lines ----

_TERMINAL_G = 1e30
"""Terminal conductance in S that stands for a driven line of zero resistance ("node" mode): its
node sits at the applied voltage to within about 1e-30 relative."""


def _pattern_lines(
    shape: tuple[int, int], r_word: float, r_bit: float, float_w: np.ndarray, float_b: np.ndarray
) -> CrossbarLines:
    """The lines of one pattern of floating lines: a floating line's terminal is disconnected
    (conductance 0); a line type without resistance is one node per line."""
    rows, cols = shape
    if r_word > 0:
        word_mode, word_g = "segment", np.full(shape, 1.0 / r_word)
        word_g[float_w, 0] = 0.0
    else:
        word_mode, word_g = "node", np.where(float_w, 0.0, _TERMINAL_G)
    if r_bit > 0:
        bit_mode, bit_g = "segment", np.full(shape, 1.0 / r_bit)
        bit_g[-1, float_b] = 0.0
    else:
        bit_mode, bit_g = "node", np.where(float_b, 0.0, _TERMINAL_G)
    return CrossbarLines(rows, cols, word_mode, bit_mode, word_g, bit_g)


def _solve_with_lines(
    words: np.ndarray,
    bits: np.ndarray,
    conductances: np.ndarray | None,
    current: DeviceFunction | None,
    slope: DeviceFunction | None,
    r_word: float,
    r_bit: float,
    with_voltages: bool,
    tolerance: float,
    max_iterations: int,
) -> LineSolution:
    """`solve_lines` with line resistance: per pattern of floating lines, the Gauss-Seidel or
    direct nodal solvers of `solve_crossbar` (bit lines driven at their terminal voltages)."""
    n, rows = words.shape
    cols = bits.shape[1]
    word_out, bit_out = np.zeros((n, rows)), np.zeros((n, cols))
    device = np.empty((n, rows, cols)) if with_voltages else None
    iterations, sweep = 0, True  # once Gauss-Seidel is too slow, the devices are too strong
    for pattern, members in _floating_patterns(words, bits):
        lines = _pattern_lines((rows, cols), r_word, r_bit, pattern[:rows], pattern[rows:])
        v = np.nan_to_num(words[members])[:, None, :]  # (m, 1, rows)
        vb = np.nan_to_num(bits[members])[:, None, :]  # (m, 1, cols)
        if conductances is not None:
            g = conductances[None]
            r_u, r_b = _sources(lines, g, v, vb)
            u = b = None
            if sweep and _sweepable(lines):
                try:
                    u, b = SweepSystem(lines, g).solve(r_u, r_b)
                except _SlowConvergence:
                    sweep = False
            if u is None:
                u, b = CrossbarSystem(lines, g).solve(r_u, r_b)
        else:
            # First linearisation at half the group's widest span of applied voltages.
            half = 0.5 * float(np.max(_span(words[members], bits[members])[2]))
            u, b, used, system, _ = _newton_nodes(
                lines, np.zeros((1, rows, cols)), v, _tile_function(current),
                _tile_function(slope), tolerance, max_iterations, sweep=sweep, vb=vb,
                probe=np.full((1, rows, cols), max(half, 1e-3)),
            )  # fmt: skip
            sweep = sweep and isinstance(system, SweepSystem)
            iterations = max(iterations, used)
        wc, bc = _cells(lines, v, u, b)
        volts = (wc - bc)[:, 0]
        flow = volts * conductances if conductances is not None else current(volts)
        if lines.word_mode == "segment":
            word_out[members] = lines.word_g[:, 0] * (v[:, 0] - u[:, 0, :, 0])
        else:
            word_out[members] = flow.sum(axis=2)
        if lines.bit_mode == "segment":
            bit_out[members] = lines.bit_g[-1] * (vb[:, 0] - b[:, 0, -1])
        else:
            bit_out[members] = -flow.sum(axis=1)
        if device is not None:
            device[members] = volts
    word_out[np.isnan(words)] = 0.0
    bit_out[np.isnan(bits)] = 0.0
    return LineSolution(device, word_out, bit_out, iterations)
