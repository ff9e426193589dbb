"""Compiled inexact Newton for the IR-drop form v = V - W I(v) (numba), forward and adjoint.

The method of `simulation.line_drops.newton` / `solve_jacobian` (Newton from v = V, each step
by conjugate gradients on (1 + D^1/2 W D^1/2), the same forcing terms and tolerances) for the
two device kinds training uses, I = c V e^(beta sqrt|V|) (Poole-Frenkel; beta = 0: linear
devices of conductance c). With torch operations each CG iteration streams a dozen whole
arrays through memory and the product with W is a dense matrix product per line type; here one
item (a tile and up to `LANES` vectors) is finished before the next, with

- the vectors innermost ("lanes"): every loop runs over up to 32 independent vectors at once
  (vectorised), and the devices' parameters, one per cell, are scalars in it;
- W applied in O(rows cols) by running sums: on a word line the drop at cell j is
  sum_l R(min(j, l)) f_l = A_j + R(j) (total - prefix_j), R the resistance from the driver, A
  the running sum of R f; on a bit line the rise at cell i is Q(i) prefix_i + (T - running sum
  of Q f), Q the resistance to the sense node, T the line's sum of Q f;
- CG in two passes per iteration, preconditioned by a coarse correction on each bit line's
  smooth mode (`_cg`: low-R tiles' condition number ~6 -> ~2.6);
- exp evaluated by its series (exp(x) = (exp(x / 4))^4, x >= 0), which vectorises (numba has
  no vector exp without Intel's SVML); items whose x exceed `SERIES_LIMIT` use the library's.

Arrays: fields (items, rows, cols, lanes), device parameters (tiles, rows, cols) indexed by the
item's tile, applied voltages (items, rows, lanes). Items run in parallel, handed out one by
one (numba's OpenMP layer: not fork-safe, so forked children run on one thread; see
`simulation.line_sweeps`). Compiled on first use (40-60 s per dtype), cached in __pycache__;
numba's cache does not see changes in other modules, so everything compiled here is defined
here.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from numba import get_num_threads, get_thread_id, njit, prange, set_parallel_chunksize

from simulation.buffers import empty
from simulation.line_sweeps import in_forked_child

SERIES_LIMIT = {np.dtype(np.float32): 8.0, np.dtype(np.float64): 2.0}
"""Largest beta sqrt|V| per dtype for the series exp (x / 4 <= 2, resp. 0.5: the series' first
term left out is below the dtype's rounding; squaring twice multiplies rounding by 4); larger x
use the library exp (not vectorised)."""

_FLAGS = {"cache": True, "nogil": True, "boundscheck": False, "fastmath": {"contract"}}


FORCING = 0.01
"""Largest relative residual a Newton step's conjugate gradients are asked for (inexact Newton:
far from the solution a step need not be solved accurately; see `forcing_term`)."""


@njit(cache=True)
def forcing_term(size: float, scale: float, limit: float) -> float:
    """The relative residual asked of a Newton step's linear solve when the residual's largest
    element is `size` volts, the applied voltages' `scale` and the stopping `limit`: FORCING,
    falling as (size / scale)^1.5 near the solution (superlinear convergence), never below
    what the limit needs (0.1 limit / size). Low-R SiOx on 113 x 50 tiles, float32, with the
    kernels' preconditioner: three Newton steps and ~14 CG iterations per tile (cap 0.03, or a
    linear fall: four steps, ~16 iterations; cap 0.003: three steps, ~16)."""
    tiny = 1e-300
    return min(FORCING, max((size / max(scale, tiny)) ** 1.5, 0.1 * limit / max(size, tiny)))


def constants(dtype: np.dtype) -> np.ndarray:
    """The kernels' constants in the fields' dtype (Python floats would make float32 arithmetic
    float64): 1/4, the series' coefficients 1/1!, ..., 1/13!, then 0, 1/2, 1 and the largest x
    for the series (`SERIES_LIMIT`)."""
    series = [1 / 4] + [1 / math.factorial(k) for k in range(1, 14)]
    return np.array([*series, 0.0, 0.5, 1.0, SERIES_LIMIT[np.dtype(dtype)]], dtype)


_ZERO, _HALF, _ONE, _SERIES_LIMIT = 14, 15, 16, 17


@njit(inline="always", **_FLAGS)
def _exp_series(x, k):  # pragma: no cover - compiled
    """exp(x) for 0 <= x <= k[_SERIES_LIMIT] without a library call (vectorises): (sum of
    (x/4)^n / n!, n <= 13)^4; k: `constants`."""
    y = x * k[0]
    s = k[_ONE] + y * (k[1] + y * (k[2] + y * (k[3] + y * (k[4] + y * (k[5] + y * (k[6] + y * (
        k[7] + y * (k[8] + y * (k[9] + y * (k[10] + y * (k[11] + y * (k[12] + y * k[13])))))))
    )))))  # fmt: skip
    s = s * s
    return s * s


@njit(**_FLAGS)
def _devices(v, step, applied, peak, c, beta, linear, flow, root, k):  # pragma: no cover
    """Device currents flow = c v e^x and the square roots of their slopes c e^x (1 + x / 2),
    x = beta sqrt|v|, of one item (fields (rows, cols, lanes); c, beta (rows, cols)), where
    first, if applied (rows, lanes) is not empty, v += step and then step = applied - v. peak:
    a bound on the largest |v| in V; k: `constants`."""
    rows, cols, lanes = v.shape
    advance = applied.size > 0
    series = linear or np.max(beta) * np.sqrt(peak) <= k[_SERIES_LIMIT]
    for i in range(rows):
        for j in range(cols):
            g, a = c[i, j], beta[i, j]
            if advance:
                for b in range(lanes):
                    value = v[i, j, b] + step[i, j, b]
                    v[i, j, b] = value
                    step[i, j, b] = applied[i, b] - value
            if linear:
                a = np.sqrt(g)
                for b in range(lanes):
                    flow[i, j, b] = g * v[i, j, b]
                    root[i, j, b] = a
            elif series:
                for b in range(lanes):
                    x = a * np.sqrt(abs(v[i, j, b]))
                    e = g * _exp_series(x, k)
                    flow[i, j, b] = e * v[i, j, b]
                    root[i, j, b] = np.sqrt(e * (k[_ONE] + k[_HALF] * x))
            else:
                for b in range(lanes):
                    x = a * np.sqrt(abs(v[i, j, b]))
                    e = g * np.exp(x)
                    flow[i, j, b] = e * v[i, j, b]
                    root[i, j, b] = np.sqrt(e * (k[_ONE] + k[_HALF] * x))


@njit(**_FLAGS)
def _subtract_drops(f, weight, out, rw, qb, scratch, root, r, rr):  # pragma: no cover
    """out -= W (weight f) for one item (fields (rows, cols, lanes); weight empty: 1); rw (rows,
    cols): each cell's resistance to its word line's driver, qb: to its bit line's sense node,
    in Ohm. If root is not empty, also r = root out, rr (lanes,) = r . r and scratch[3 + 3
    cols:] the bit lines' sums of qb root r (the start of `_cg`). Returns the largest |out|.
    scratch: (3 + 4 cols, lanes)."""
    rows, cols, lanes = f.shape
    weighted = weight.size > 0
    start = root.size > 0
    total, row, peak = scratch[0], scratch[1], scratch[2]
    column = scratch[3 : 3 + cols]
    prefix = scratch[3 + cols : 3 + 2 * cols]
    running = scratch[3 + 2 * cols : 3 + 3 * cols]
    sums = scratch[3 + 3 * cols : 3 + 4 * cols]
    column[:] = 0
    for i in range(rows):
        total[:] = 0
        for j in range(cols):
            q = qb[i, j]
            for b in range(lanes):
                value = weight[i, j, b] * f[i, j, b] if weighted else f[i, j, b]
                total[b] += value
                column[j, b] += q * value
        row[:] = 0
        for j in range(cols):
            q = rw[i, j]
            for b in range(lanes):
                value = weight[i, j, b] * f[i, j, b] if weighted else f[i, j, b]
                total[b] -= value  # now the sum beyond cell j
                row[b] += q * value
                out[i, j, b] -= row[b] + q * total[b]
    prefix[:] = 0
    running[:] = 0
    peak[:] = 0
    rr[:] = 0
    if start:
        sums[:] = 0
    for i in range(rows):
        for j in range(cols):
            q = qb[i, j]
            for b in range(lanes):
                value = weight[i, j, b] * f[i, j, b] if weighted else f[i, j, b]
                prefix[j, b] += value
                running[j, b] += q * value
                value = out[i, j, b] - (q * prefix[j, b] + column[j, b] - running[j, b])
                out[i, j, b] = value
                peak[b] = max(peak[b], abs(value))
                if start:
                    value = root[i, j, b] * value
                    r[i, j, b] = value
                    rr[b] += value * value
                    sums[j, b] += q * root[i, j, b] * value
    return peak.max()


@njit(**_FLAGS)
def _coarse_weights(root, rw, qb, gamma, norm, prefix, quadratic):  # pragma: no cover
    """The coarse correction of `_cg`'s preconditioner for one item: per bit line j and lane,
    u_j = root qb on the line (its smooth mode: each cell's resistance to the sense node),
    norm = u_j . u_j and gamma = (1 / E - 1) / norm, E = 1 + u_j . S u_j / norm (S = root W
    root: the bit line's part sum_k s_k (sum_{i <= k} root u)^2 with s_k its segments, plus the
    word lines' diagonal). prefix, quadratic: scratch (cols, lanes)."""
    rows, cols, lanes = root.shape
    prefix[:] = 0
    quadratic[:] = 0
    norm[:] = 0
    for i in range(rows):
        for j in range(cols):
            q = qb[i, j]
            segment = q - qb[i + 1, j] if i + 1 < rows else q
            r = rw[i, j]
            for b in range(lanes):
                d = root[i, j, b] * root[i, j, b]
                f = d * q  # root u
                prefix[j, b] += f
                norm[j, b] += d * q * q
                quadratic[j, b] += segment * prefix[j, b] * prefix[j, b] + r * f * f
    for j in range(cols):
        for b in range(lanes):
            n, quad = norm[j, b], quadratic[j, b]
            gamma[j, b] = -quad / (n * (n + quad)) if n > 0 else 0


@njit(**_FLAGS)
def _cg(root, rhs, rw, qb, relative, limit, fields, scratch, lanes_scratch):  # pragma: no cover
    """z with (1 + W D) z = rhs for one item, D = root^2 (slopes, >= 0): preconditioned
    conjugate gradients on (1 + S) y = root rhs, S = root W root, until each lane's residual
    shrank by `relative`; then rhs - W (root y) is written into rhs. fields: y, r, p, q like
    rhs (rows, cols, lanes), with r = root rhs already, lanes_scratch[0] = r . r and
    scratch[3 + 3 cols: 3 + 4 cols] the bit lines' sums of qb root r (see `_subtract_drops`);
    lanes_scratch (7, lanes); scratch (3 + 6 cols, lanes). Returns the largest |z| and the
    iterations (-1: `limit` reached).

    Two passes per iteration: the product with S needs each bit line's sum of qb root p before
    its running sums; that sum follows p's recurrence p = M r + beta p from the sums of qb root
    r taken in the previous iteration's update pass. The preconditioner M = 1 + sum_j u_j
    gamma_j u_j^T (two-level: identity, and on each bit line's smooth mode u_j = root qb the
    inverse of S's Rayleigh quotient there, see `_coarse_weights`) needs only those sums too:
    it takes the largest eigenvalues of S (the bit lines' smooth modes, ~ 1 + rho) to ~ 1 and
    the condition number of low-R tiles from ~ 6 to ~ 2.6 (dense check on 113 x 50)."""
    rows, cols, lanes = rhs.shape
    y, r, p, q = fields[0], fields[1], fields[2], fields[3]
    prefix, running = scratch[3 + cols : 3 + 2 * cols], scratch[3 + 2 * cols : 3 + 3 * cols]
    sums_p, sums_r = scratch[3 : 3 + cols], scratch[3 + 3 * cols : 3 + 4 * cols]
    gamma, norm = scratch[3 + 4 * cols : 3 + 5 * cols], scratch[3 + 5 * cols : 3 + 6 * cols]
    rr, target, beta = lanes_scratch[0], lanes_scratch[1], lanes_scratch[2]
    pq, total, word, rz = lanes_scratch[3], lanes_scratch[4], lanes_scratch[5], lanes_scratch[6]
    _coarse_weights(root, rw, qb, gamma, norm, prefix, running)
    for b in range(lanes):
        target[b] = relative * relative * rr[b]
    beta[:] = 0
    iterations = 0
    while True:
        done = True
        for b in range(lanes):
            if rr[b] > target[b]:
                done = False
        if done:
            break
        if iterations == limit:
            return 0.0, -1
        first = iterations == 0
        iterations += 1
        rz[:] = rr  # r . M r
        for j in range(cols):
            for b in range(lanes):
                rz[b] += gamma[j, b] * sums_r[j, b] * sums_r[j, b]
        for b in range(lanes):  # beta held the last iteration's r . M r
            beta[b] = 0 if first or beta[b] <= 0 else rz[b] / beta[b]
        # the coarse coefficients c = gamma u.r (M r = r + u c), and the bit lines' sums of
        # qb root p for p = M r + beta p: u.r + c u.u + beta (the last p's)
        for j in range(cols):
            for b in range(lanes):
                coarse = gamma[j, b] * sums_r[j, b]
                value = sums_r[j, b] + coarse * norm[j, b]
                sums_p[j, b] = value if first else value + beta[b] * sums_p[j, b]
                sums_r[j, b] = coarse
        # p = M r + beta p; q = p + root W root p; pq = p . q
        prefix[:] = 0
        running[:] = 0
        pq[:] = 0
        for i in range(rows):
            total[:] = 0
            for j in range(cols):
                t = qb[i, j]
                if first:
                    for b in range(lanes):
                        value = r[i, j, b] + root[i, j, b] * t * sums_r[j, b]
                        p[i, j, b] = value
                        total[b] += root[i, j, b] * value
                else:
                    for b in range(lanes):
                        value = r[i, j, b] + root[i, j, b] * t * sums_r[j, b] + beta[b] * p[
                            i, j, b]  # fmt: skip
                        p[i, j, b] = value
                        total[b] += root[i, j, b] * value
            word[:] = 0
            for j in range(cols):
                s, t = rw[i, j], qb[i, j]
                for b in range(lanes):
                    value = p[i, j, b]
                    f = root[i, j, b] * value
                    total[b] -= f  # now the word line's sum beyond cell j
                    word[b] += s * f
                    prefix[j, b] += f
                    running[j, b] += t * f
                    drop = word[b] + s * total[b] + t * prefix[j, b] + sums_p[j, b] - running[
                        j, b]  # fmt: skip
                    value2 = value + root[i, j, b] * drop
                    q[i, j, b] = value2
                    pq[b] += value * value2
        for b in range(lanes):
            pq[b] = rz[b] / pq[b] if pq[b] > 0 else 0  # alpha
            beta[b] = rz[b]  # kept for the next beta
            rr[b] = 0
        sums_r[:] = 0
        for i in range(rows):
            for j in range(cols):
                t = qb[i, j]
                if first:
                    for b in range(lanes):
                        y[i, j, b] = pq[b] * p[i, j, b]
                else:
                    for b in range(lanes):
                        y[i, j, b] += pq[b] * p[i, j, b]
                for b in range(lanes):
                    value = r[i, j, b] - pq[b] * q[i, j, b]
                    r[i, j, b] = value
                    rr[b] += value * value
                    sums_r[j, b] += t * root[i, j, b] * value
    if iterations == 0:
        return _largest(rhs), 0
    return _subtract_drops(y, root, rhs, rw, qb, scratch, y[:0], y, rr), iterations


@njit(**_FLAGS)
def _largest(a):  # pragma: no cover - compiled
    """Largest |element| of a field (rows, cols, lanes)."""
    peak = 0.0
    rows, cols, lanes = a.shape
    for i in range(rows):
        for j in range(cols):
            for b in range(lanes):
                peak = max(peak, abs(a[i, j, b]))
    return peak


@njit(**_FLAGS)
def _newton_item(applied, c, beta, linear, rw, qb, limit, scale, max_iterations, cg_limit, v,
                 work, scratch, lanes_scratch, k):  # pragma: no cover - compiled  # fmt: skip
    """Device voltages v (rows, cols, lanes) of one item by inexact Newton from v = applied
    (rows, lanes), as `simulation.line_drops.newton` (stopping at `limit` volts); leaves the
    currents at the solution in work[0]. Returns the Newton iterations, -1 if they ran out, -2
    if conjugate gradients did."""
    rows, cols, lanes = v.shape
    flow, root, step = work[0], work[1], work[2]
    for i in range(rows):
        for j in range(cols):
            for b in range(lanes):
                v[i, j, b] = applied[i, b]
                step[i, j, b] = 0  # applied - v
    peak = scale  # bounds the largest |v| (|v + step| <= |v| + |step|)
    previous = 1e300
    no_volts = applied[:0]
    for iteration in range(1, max_iterations + 1):
        _devices(v, step, applied if iteration > 1 else no_volts, peak, c, beta, linear, flow,
                 root, k)  # fmt: skip
        # step = applied - v - W I; the start of CG
        size = _subtract_drops(
            flow, flow[:0], step, rw, qb, scratch, root, work[4], lanes_scratch[0]
        )
        forcing = forcing_term(size, scale, limit)
        moved, iterations = _cg(root, step, rw, qb, forcing, cg_limit, work[3:], scratch,
                                lanes_scratch)  # fmt: skip
        if iterations < 0:
            return -2
        peak += moved
        remaining = 4.0 * moved**3 / previous**2 + forcing * moved
        if moved <= limit or (iteration > 1 and moved < previous and remaining <= limit):
            _devices(v, step, applied, peak, c, beta, linear, flow, root, k)
            return iteration
        previous = moved
    return -1


@njit(**_FLAGS)
def _forward_item(item, parts):  # pragma: no cover - compiled
    """`_newton_item` for one item, then its output currents out (items, cols, lanes) in A and
    power (items, lanes) in W (V I summed over its cells), and iterations (items,)."""
    (applied, c, beta, linear, rw, qb, limit, scale, max_iterations, cg_limit, v, work, scratch,
     out, power, iterations, k) = parts  # fmt: skip
    thread = get_thread_id()
    tile = item % c.shape[0]
    rows, cols, lanes = v.shape[1:]
    fields = work[thread]
    lanes_scratch = np.empty((7, lanes), v.dtype)
    iterations[item] = _newton_item(
        applied[item], c[tile], beta[tile], linear, rw, qb, limit, scale, max_iterations,
        cg_limit, v[item], fields, scratch[thread], lanes_scratch, k,
    )  # fmt: skip
    flow = fields[0]
    out[item] = 0.0
    power[item] = 0.0
    for i in range(rows):
        for j in range(cols):
            for b in range(lanes):
                out[item, j, b] += flow[i, j, b]
                power[item, b] += v[item, i, j, b] * flow[i, j, b]


@njit(**_FLAGS)
def _backward_item(item, parts):  # pragma: no cover - compiled
    """Adjoint of one item: mu = (1 + W D)^-1 h (h (items, cols, lanes) broadcast over the
    rows), D the slopes at v; grad_v (items, rows, lanes) = sum over cols of D mu; per cell the
    sums over the item's lanes grad_c of mu dI/dc' (c' = c for linear devices: mu v; ln c
    otherwise: mu I) and grad_beta of mu I sqrt|v|; iterations (items,) of CG (-1: ran out)."""
    (h, c, beta, linear, rw, qb, relative, cg_limit, v, work, scratch, grad_v, grad_c,
     grad_beta, iterations, k) = parts  # fmt: skip
    thread = get_thread_id()
    tile = item % c.shape[0]
    rows, cols, lanes = v.shape[1:]
    fields = work[thread]
    flow, root, mu = fields[0], fields[1], fields[2]
    r = fields[4]
    lanes_scratch = np.empty((7, lanes), v.dtype)
    volts = v[item]
    _devices(volts, mu, h[item, :0], _largest(volts), c[tile], beta[tile], linear, flow, root, k)
    rr = lanes_scratch[0]
    rr[:] = 0
    sums = scratch[thread, 3 + 3 * cols :]
    sums[:] = 0
    for i in range(rows):
        for j in range(cols):
            t = qb[i, j]
            for b in range(lanes):
                value = h[item, j, b]
                mu[i, j, b] = value
                value *= root[i, j, b]
                r[i, j, b] = value
                rr[b] += value * value
                sums[j, b] += t * root[i, j, b] * value
    iterations[item] = _cg(root, mu, rw, qb, relative, cg_limit, fields[3:], scratch[thread],
                           lanes_scratch)[1]  # fmt: skip
    for i in range(rows):
        grad_v[item, i] = 0.0
        for j in range(cols):
            gc = k[_ZERO]
            gb = k[_ZERO]
            for b in range(lanes):
                m = mu[i, j, b]
                grad_v[item, i, b] += root[i, j, b] * root[i, j, b] * m
                if linear:
                    gc += m * volts[i, j, b]
                else:
                    gc += m * flow[i, j, b]
                    gb += m * flow[i, j, b] * np.sqrt(abs(volts[i, j, b]))
            grad_c[item, i, j] = gc
            grad_beta[item, i, j] = gb


@njit(parallel=True, **_FLAGS)
def _forward_parallel(items, parts):  # pragma: no cover - compiled
    for item in prange(items):
        _forward_item(item, parts)


@njit(**_FLAGS)
def _forward_serial(items, parts):  # pragma: no cover - compiled
    for item in range(items):
        _forward_item(item, parts)


@njit(parallel=True, **_FLAGS)
def _backward_parallel(items, parts):  # pragma: no cover - compiled
    for item in prange(items):
        _backward_item(item, parts)


@njit(**_FLAGS)
def _backward_serial(items, parts):  # pragma: no cover - compiled
    for item in range(items):
        _backward_item(item, parts)


LANES = 32
"""Most vectors per item (the innermost, vectorised loop runs over them)."""

WORKSPACE_BYTES = 256 * 2**20
"""Most bytes of scratch fields kept per Python thread between calls."""

_workspaces = threading.local()


def _workspace(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Scratch fields (threads, 7, rows, cols, lanes) kept per Python thread and shape for later
    calls (a network's layers take turns; fresh multi-megabyte arrays cost their page faults
    each time), the least recently used dropped beyond WORKSPACE_BYTES."""
    cache = getattr(_workspaces, "arrays", None)
    if cache is None:
        cache = _workspaces.arrays = OrderedDict()
    key = (shape, np.dtype(dtype))
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    array = cache[key] = empty(shape, dtype)
    while sum(a.nbytes for a in cache.values()) > WORKSPACE_BYTES:
        cache.popitem(last=False)
    return array


def _lanes(batch: int) -> tuple[int, int]:
    """(chunks, lanes): vectors split into chunks of at most LANES, lanes a multiple of 8."""
    chunks = max(1, -(-batch // LANES))
    return chunks, -(-max(1, -(-batch // chunks)) // 8) * 8


def _to_lanes(array: np.ndarray, chunks: int, lanes: int) -> np.ndarray:
    """(B, t, ...) -> (chunks * t, ..., lanes), zero-padded vectors."""
    batch, tiles = array.shape[:2]
    padded = np.zeros((chunks * lanes, *array.shape[1:]), array.dtype)
    padded[:batch] = array
    padded = padded.reshape(chunks, lanes, tiles, -1)
    return np.ascontiguousarray(padded.transpose(0, 2, 3, 1)).reshape(
        chunks * tiles, *array.shape[2:], lanes
    )


def _from_lanes(array: np.ndarray, batch: int, tiles: int) -> np.ndarray:
    """(chunks * t, n, lanes) -> (B, t, n)."""
    items, n, lanes = array.shape
    chunks = items // tiles
    out = array.reshape(chunks, tiles, n, lanes).transpose(0, 3, 1, 2)
    return out.reshape(chunks * lanes, tiles, n)[:batch]


def _scratch(rows: int, cols: int, lanes: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per thread: seven fields (kept, `_workspace`) and the lines' running sums."""
    work = _workspace((_threads(), 7, rows, cols, lanes), dtype)
    return work, np.empty((work.shape[0], 3 + 6 * cols, lanes), dtype)


class LaneSolve:
    """A forward solve (`forward`) kept for its adjoint (`backward`): the device voltages in the
    lane layout and the kernels' arrays they came from (beta is c for linear devices)."""

    def __init__(self, c, beta, linear, rw, qb, volts, batch, max_iterations):
        self.c, self.beta, self.linear, self.rw, self.qb = c, beta, linear, rw, qb
        self.volts, self.batch, self.max_iterations = volts, batch, max_iterations

    def backward(self, grad_out: np.ndarray, relative: float):
        """grad_out (B, t, cols) of the outputs -> gradients of the applied voltages (B, t, rows)
        and, per cell (t, rows, cols), of c (linear devices) or ln c, and of beta (None for
        linear devices); adjoint by CG to the relative residual `relative`."""
        tiles, rows, cols = self.c.shape
        items, lanes = self.volts.shape[0], self.volts.shape[-1]
        chunks = items // tiles
        dtype = self.volts.dtype
        h = _to_lanes(grad_out.astype(dtype, copy=False), chunks, lanes)
        work, scratch = _scratch(rows, cols, lanes, dtype)
        grad_v = np.empty((items, rows, lanes), dtype)
        grad_c = np.empty((items, rows, cols), dtype)
        grad_beta = np.empty((items, rows, cols), dtype)
        iterations = np.zeros(items, np.int64)
        parts = (h, self.c, self.beta, self.linear, self.rw, self.qb, float(relative),
                 50 * self.max_iterations, self.volts, work, scratch, grad_v, grad_c, grad_beta,
                 iterations, constants(dtype))  # fmt: skip
        _run(_backward_serial, _backward_parallel, items, parts)
        if (iterations < 0).any():
            raise RuntimeError(
                f"crossbar_currents: conjugate gradients did not reach {relative:.1e} in "
                f"{50 * self.max_iterations} iterations"
            )
        grad_c = grad_c.reshape(chunks, tiles, rows, cols).sum(axis=0)
        if self.linear:
            grad_beta = None
        else:
            grad_beta = grad_beta.reshape(chunks, tiles, rows, cols).sum(axis=0)
        return _from_lanes(grad_v, self.batch, tiles), grad_c, grad_beta


def _run(serial: Any, parallel: Any, items: int, parts: tuple) -> None:
    """Every item, on all threads (handed out one by one: items differ in cost) or, in a
    forked child, on one."""
    if in_forked_child():
        serial(items, parts)
        return
    previous = set_parallel_chunksize(1)
    try:
        parallel(items, parts)
    finally:
        set_parallel_chunksize(previous)


def _threads() -> int:
    return 1 if in_forked_child() else get_num_threads()


def forward(
    applied: np.ndarray,
    c: np.ndarray,
    beta: np.ndarray | None,
    rw: np.ndarray,
    qb: np.ndarray,
    limit: float,
    max_iterations: int,
) -> tuple[np.ndarray, np.ndarray, int, LaneSolve]:
    """Output currents (B, t, cols) in A, device power (B,) in W, the most Newton iterations of
    any item and the solve (for `LaneSolve.backward`) of t tiles with applied voltages (B, t,
    rows) in V and devices I = c V e^(beta sqrt|V|) (c, beta (t, rows, cols); beta None:
    linear); rw, qb (rows, cols): each cell's resistance to its driver and to its sense node in
    Ohm; Newton stops at `limit` volts. All arrays of one float dtype."""
    batch, tiles, rows = applied.shape
    cols = c.shape[-1]
    dtype = applied.dtype
    chunks, lanes = _lanes(batch)
    items = chunks * tiles
    lane_applied = _to_lanes(applied, chunks, lanes)
    volts = empty((items, rows, cols, lanes), dtype)
    work, scratch = _scratch(rows, cols, lanes, dtype)
    out = np.empty((items, cols, lanes), dtype)
    power = np.empty((items, lanes), dtype)
    iterations = np.zeros(items, np.int64)
    linear = beta is None
    c = np.ascontiguousarray(c, dtype)
    beta = c if linear else np.ascontiguousarray(beta, dtype)
    rw, qb = np.ascontiguousarray(rw, dtype), np.ascontiguousarray(qb, dtype)
    scale = float(np.abs(applied).max()) if applied.size else 0.0
    parts = (lane_applied, c, beta, linear, rw, qb, float(limit), scale, int(max_iterations),
             50 * int(max_iterations), volts, work, scratch, out, power, iterations,
             constants(dtype))  # fmt: skip
    _run(_forward_serial, _forward_parallel, items, parts)
    if (iterations == -2).any():
        raise RuntimeError(
            f"crossbar_currents: conjugate gradients did not converge in "
            f"{50 * max_iterations} iterations"
        )
    if (iterations < 0).any():
        raise RuntimeError(
            f"crossbar_currents: Newton's method did not converge in {max_iterations} iterations"
        )
    total_power = power.reshape(chunks, tiles, lanes).sum(axis=1).reshape(-1)[:batch]
    solve = LaneSolve(c, beta, linear, rw, qb, volts, batch, max_iterations)
    return _from_lanes(out, batch, tiles), total_power, int(iterations.max()), solve
