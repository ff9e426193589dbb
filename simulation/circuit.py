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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg

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


def solve_crossbar(
    voltages: np.ndarray, conductances: np.ndarray, r_word: float, r_bit: float
) -> np.ndarray:
    """Output currents (batch, cols) in A flowing from the bit lines' grounded bottom ends.

    voltages (batch, rows) in V at the word lines' left ends (a (rows,) vector is batch 1),
    conductances (rows, cols) in S (>= 0), r_word and r_bit the resistance of one line segment in
    Ohm (>= 0). With r_word = r_bit = 0 this is exactly voltages @ conductances; otherwise the
    nodal system is factorised once (scipy.sparse splu) and reused for the whole batch.
    """
    conductances = np.asarray(conductances, dtype=float)
    squeeze = np.ndim(voltages) == 1
    volts = np.atleast_2d(np.asarray(voltages, dtype=float))
    if conductances.ndim != 2:
        raise ValueError(f"conductances: expected (rows, cols), got shape {conductances.shape}")
    if volts.ndim != 2 or volts.shape[1] != conductances.shape[0]:
        raise ValueError(
            f"voltages: expected shape (batch, {conductances.shape[0]}), got {np.shape(voltages)}"
        )
    _check_resistances(r_word, r_bit)
    if r_word == 0 and r_bit == 0:
        out = volts @ conductances
    else:
        bits = np.zeros((volts.shape[0], conductances.shape[1]))
        solution = solve_lines(
            volts, bits, conductances, r_word, r_bit, return_device_voltages=False
        )
        out = -solution.bit_currents
    return out[0] if squeeze else out


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
        network = _Network(rows, cols, float(r_word), float(r_bit))
        solution = network.solve(
            words, bits, conductances, current, slope, return_device_voltages, tolerance,
            max_iterations,
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
    floating = np.concatenate([np.isnan(words), np.isnan(bits)], axis=1)
    patterns, inverse = np.unique(floating, axis=0, return_inverse=True)
    iterations = 0
    for index, pattern in enumerate(patterns):
        members = np.flatnonzero(inverse.ravel() == index)
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


_ORDERING = "MMD_AT_PLUS_A"
"""SuperLU column ordering: minimum degree on A + A^T suits these symmetric nodal matrices (about
25 % less fill than COLAMD on a 128x64 array with line resistance)."""


class _Network:
    """Node numbering and constant stamps of a crossbar with line resistance (sparse path)."""

    def __init__(self, rows: int, cols: int, r_word: float, r_bit: float) -> None:
        self.rows, self.cols = rows, cols
        self.r_word, self.r_bit = r_word, r_bit
        cell_i, cell_j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        if r_word > 0:
            self.word_node = (cell_i * cols + cell_j).ravel()
            self.n_word = rows * cols
            self.word_terminal = np.arange(rows) * cols  # node of cell (i, 0)
        else:
            self.word_node = cell_i.ravel().copy()
            self.n_word = rows
            self.word_terminal = np.arange(rows)
        if r_bit > 0:
            self.bit_node = self.n_word + (cell_i * cols + cell_j).ravel()
            self.bit_terminal = self.n_word + (rows - 1) * cols + np.arange(cols)
            self.size = self.n_word + rows * cols
        else:
            self.bit_node = self.n_word + cell_j.ravel()
            self.bit_terminal = self.n_word + np.arange(cols)
            self.size = self.n_word + cols
        seg_a, seg_b, seg_g = [], [], []
        if r_word > 0:
            grid = self.word_node.reshape(rows, cols)
            seg_a.append(grid[:, :-1].ravel())
            seg_b.append(grid[:, 1:].ravel())
            seg_g.append(np.full(rows * (cols - 1), 1.0 / r_word))
        if r_bit > 0:
            grid = self.bit_node.reshape(rows, cols)
            seg_a.append(grid[:-1, :].ravel())
            seg_b.append(grid[1:, :].ravel())
            seg_g.append(np.full((rows - 1) * cols, 1.0 / r_bit))
        a = np.concatenate(seg_a) if seg_a else np.zeros(0, dtype=int)
        b = np.concatenate(seg_b) if seg_b else np.zeros(0, dtype=int)
        g = np.concatenate(seg_g) if seg_g else np.zeros(0)
        self.segments = scipy.sparse.coo_matrix(
            (np.concatenate([g, g, -g, -g]), (np.concatenate([a, b, a, b]),
             np.concatenate([a, b, b, a]))), shape=(self.size, self.size),
        ).tocsr()  # fmt: skip
        self._pattern_rows = np.concatenate(
            [self.word_node, self.bit_node, self.word_node, self.bit_node]
        )
        self._pattern_cols = np.concatenate(
            [self.word_node, self.bit_node, self.bit_node, self.word_node]
        )

    def _terminals(
        self, words: np.ndarray, bits: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For one configuration: terminal conductance stamps (size,), injected currents (size,),
        fixed-node mask (size,) and fixed-node voltages (size,)."""
        stamp, inject = np.zeros(self.size), np.zeros(self.size)
        fixed, values = np.zeros(self.size, dtype=bool), np.zeros(self.size)
        for volts, terminal, r in (
            (words, self.word_terminal, self.r_word),
            (bits, self.bit_terminal, self.r_bit),
        ):
            driven = ~np.isnan(volts)
            if r > 0:
                stamp[terminal[driven]] += 1.0 / r
                inject[terminal[driven]] += volts[driven] / r
            else:
                fixed[terminal[driven]] = True
                values[terminal[driven]] = volts[driven]
        return stamp, inject, fixed, values

    def _matrix(self, g: np.ndarray, stamp: np.ndarray) -> scipy.sparse.csr_matrix:
        devices = scipy.sparse.coo_matrix(
            (np.concatenate([g, g, -g, -g]), (self._pattern_rows, self._pattern_cols)),
            shape=(self.size, self.size),
        )
        return (self.segments + devices + scipy.sparse.diags(stamp)).tocsr()

    def _terminal_currents(
        self,
        words: np.ndarray,
        bits: np.ndarray,
        x: np.ndarray,
        flow: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Terminal currents of one configuration from node voltages x (size,) and device
        currents flow (rows, cols)."""
        if self.r_word > 0:
            word_out = (words - x[self.word_terminal]) / self.r_word
        else:
            word_out = flow.sum(axis=1)
        if self.r_bit > 0:
            bit_out = (bits - x[self.bit_terminal]) / self.r_bit
        else:
            bit_out = -flow.sum(axis=0)
        return np.nan_to_num(word_out * ~np.isnan(words)), np.nan_to_num(bit_out * ~np.isnan(bits))

    def solve(
        self,
        words: np.ndarray,
        bits: np.ndarray,
        conductances: np.ndarray | None,
        current: DeviceFunction | None,
        slope: DeviceFunction | None,
        with_voltages: bool,
        tolerance: float,
        max_iterations: int,
    ) -> LineSolution:
        n = words.shape[0]
        rows, cols = self.rows, self.cols
        word_out, bit_out = np.zeros((n, rows)), np.zeros((n, cols))
        device = np.empty((n, rows, cols)) if with_voltages else None
        floating = np.concatenate([np.isnan(words), np.isnan(bits)], axis=1)
        patterns, inverse = np.unique(floating, axis=0, return_inverse=True)
        iterations = 0
        for index in range(len(patterns)):
            members = np.flatnonzero(inverse.ravel() == index)
            if conductances is not None:
                nodes = self._linear(words[members], bits[members], conductances)
            else:
                # One factorisation gives every member a linear first guess (chord conductances
                # at half the group's widest span); Newton then refines each configuration.
                half = 0.5 * float(np.max(_span(words[members], bits[members])[2]))
                chord = _chord(current, np.array([half]), (rows, cols))[0]
                nodes = self._linear(words[members], bits[members], chord)
                for k, member in enumerate(members):
                    used = self._newton(
                        nodes[k], words[member], bits[member], current, slope, tolerance,
                        max_iterations,
                    )  # fmt: skip
                    iterations = max(iterations, used)
            for k, member in enumerate(members):
                x = nodes[k]
                volts = (x[self.word_node] - x[self.bit_node]).reshape(rows, cols)
                flow = volts * conductances if conductances is not None else current(volts[None])[0]
                word_out[member], bit_out[member] = self._terminal_currents(
                    words[member], bits[member], x, flow
                )
                if device is not None:
                    device[member] = volts
        return LineSolution(device, word_out, bit_out, iterations)

    def _linear(self, words: np.ndarray, bits: np.ndarray, conductances: np.ndarray) -> np.ndarray:
        """Node voltages (m, size) of m configurations sharing one floating pattern: one splu."""
        m = words.shape[0]
        stamp, _, fixed, _ = self._terminals(words[0], bits[0])
        matrix = self._matrix(conductances.ravel(), stamp)
        unknown = np.flatnonzero(~fixed)
        known = np.flatnonzero(fixed)
        nodes = np.zeros((m, self.size))
        rhs = np.empty((unknown.size, m))
        for k in range(m):
            _, inject, _, values = self._terminals(words[k], bits[k])
            nodes[k, known] = values[known]
            rhs[:, k] = inject[unknown]
        if known.size:
            rhs -= matrix[unknown][:, known] @ nodes[:, known].T
        if unknown.size:
            factor = scipy.sparse.linalg.splu(
                matrix[unknown][:, unknown].tocsc(), permc_spec=_ORDERING
            )
            nodes[:, unknown] = factor.solve(rhs).T
        return nodes

    def _newton(
        self,
        x: np.ndarray,
        words: np.ndarray,
        bits: np.ndarray,
        current: DeviceFunction,
        slope: DeviceFunction,
        tolerance: float,
        max_iterations: int,
    ) -> int:
        """Refine node voltages x (size,) of one configuration in place; iterations used.

        Newton with a reused factorisation: the Jacobian is factorised again only when the last
        step shrank by less than 4x (near-linear reads converge on one factorisation)."""
        rows, cols = self.rows, self.cols
        stamp, inject, fixed, _ = self._terminals(words, bits)
        low, high, span = (float(v[0]) for v in _span(words[None], bits[None]))
        unknown = np.flatnonzero(~fixed)
        if unknown.size == 0:
            return 0
        factor, previous = None, np.inf
        for iteration in range(1, max_iterations + 1):
            volts = (x[self.word_node] - x[self.bit_node]).reshape(1, rows, cols)
            flow = current(volts).ravel()
            residual = (self.segments @ x) + stamp * x - inject
            residual += np.bincount(self.word_node, flow, self.size)
            residual -= np.bincount(self.bit_node, flow, self.size)
            if factor is None:
                jacobian = self._matrix(slope(volts).ravel(), stamp)[unknown][:, unknown]
                factor = scipy.sparse.linalg.splu(jacobian.tocsc(), permc_spec=_ORDERING)
            delta = factor.solve(-residual[unknown])
            delta = np.clip(delta, -0.5 * span, 0.5 * span)
            updated = np.clip(x[unknown] + delta, low, high)
            moved = float(np.max(np.abs(updated - x[unknown])))
            x[unknown] = updated
            if moved <= tolerance * span:
                return iteration
            if moved > 0.25 * previous:
                factor = None
            previous = moved
        raise RuntimeError(
            f"solve_lines: Newton's method did not converge in {max_iterations} iterations"
        )
