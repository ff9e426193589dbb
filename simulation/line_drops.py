"""Crossbars solved in the IR-drop form v = V - W I(v): fixed point or Newton (torch).

With every word line driven and every bit line sensed at a virtual ground (the geometry of
`simulation.circuit`), the device voltages v (rows, cols) of one array and input obey

    v = V - W I(v),

V the applied word-line voltages (broadcast along each row) and W I the IR drop: the word-line
drop from the driver to each cell plus the bit-line rise from each cell's node to the sense node,
both linear in the device currents I. W is the sum of one symmetric matrix per word line
(entry (j, l): the resistance that cells j and l share on the way to the driver, the running sum
of the segment resistances up to min(j, l)) and one per bit line (the shared way to the sense
node); a line of zero segment resistance behind a driver or sense resistance shares all of it.
W is symmetric positive semi-definite, so for devices with slopes 0 <= dI/dV <= s the iteration

    v <- V - W I(v),     from v = V (ideal lines),

contracts in the largest-element norm with rate at most rho = max(W s) (W has no negative
entries; s per device at the largest applied |V|, where passive devices' slopes peak) and stops
with an error of at most moved * rho / (1 - rho). High-R SiOx on 128 x 64 tiles with 0.35 /
0.32 Ohm segments has rho ~ 0.01-0.05: two or three iterations, each one evaluation of the
devices and one batched matrix product per line type, in the inputs' dtype (float32 training is
solved in float32). Gradients by the adjoint method: mu = (1 + W D)^-1 h for the outputs'
gradient h and the slopes D at the solution, by the same iteration. Stronger devices (rho up
to `NEWTON_LIMIT`, e.g. low-R SiOx on 128 x 64 tiles, rho ~ 8) go to inexact Newton with
conjugate gradients (`newton`, `solve_jacobian`: four Newton steps and ~20 CG iterations in all
for low-R; the cost is the products with W, 0.8 GFLOP each for a 784-input layer and 64
vectors). `DropSolver.rate_bound` tells which applies;
`simulation.circuit.crossbar_currents` uses this module when rho <= `NEWTON_LIMIT` and its
nodal solvers otherwise.

On CPU tensors, devices with a closed form (`ElementwiseDevices.closed_form`: linear and
Poole-Frenkel) are solved by the compiled kernels of `simulation.drop_kernels` in both regimes:
Newton with the same forcing terms and stopping rules, its conjugate gradients preconditioned
(the bit lines' smooth modes), one tile and up to 32 vectors at a time, W applied by running
sums (O(rows cols) per vector instead of two dense products): low-R tiles take three Newton
steps and ~14 CG iterations. The torch operations here serve other devices (and
`USE_COMPILED = False`) and are the kernels' reference in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from simulation.circuit import CrossbarLines, ElementwiseDevices

RATE_LIMIT = 0.1
"""Largest contraction bound rho for which the fixed point is used (about ten iterations to
1e-10 in float64); beyond it Newton's method with conjugate gradients (`newton`)."""

NEWTON_LIMIT = 64.0
"""Largest rho for which `newton` is used (conjugate gradients need about sqrt(1 + rho) log(1 /
accuracy) products with W); beyond it the nodal solvers of `simulation.circuit`."""

USE_COMPILED = True
"""Solve devices with a closed form (`ElementwiseDevices.closed_form`) on CPU tensors by the
compiled kernels of `simulation.drop_kernels`; False: by the torch operations here (which is
what runs on other devices, and the reference the kernels are tested against)."""

DTYPE_ACCURACY = {torch.float32: 2.0**-19, torch.float64: 2.0**-46}
"""Relative accuracy a differentiable solve is asked for at most, per dtype of its inputs (16
and 128 units in the last place: float32 solves are float32-accurate, about 2e-6 of the largest
value; a smaller `tolerance` is raised to it)."""


class DropSolver:
    """The IR-drop operator W of `lines` (see the module docstring) as dense per-line matrices
    in Ohm, shared by every tile, vector and call."""

    def __init__(self, lines: CrossbarLines) -> None:
        self.lines = lines
        rows, cols = lines.rows, lines.cols
        self.word: np.ndarray | None = None  # (1 or rows, cols, cols), or (rows,) in node mode
        self.bit: np.ndarray | None = None  # (1 or cols, rows, rows), or (cols,) in node mode
        self.to_driver = np.zeros((rows, cols))
        """Each cell's resistance to its word line's driver in Ohm (rows, cols)."""
        self.to_sense = np.zeros((rows, cols))
        """Each cell's resistance to its bit line's sense node in Ohm (rows, cols)."""
        if lines.word_mode == "segment":
            self.to_driver = np.cumsum(1.0 / lines.word_g, axis=1)
            index = np.minimum.outer(np.arange(cols), np.arange(cols))
            self.word = _distinct(self.to_driver[:, index])  # (rows, cols, cols)
        elif lines.word_mode == "node":
            self.word = 1.0 / lines.word_g
            self.to_driver[:] = self.word[:, None]
        if lines.bit_mode == "segment":
            self.to_sense = np.cumsum((1.0 / lines.bit_g)[::-1], axis=0)[::-1].copy()
            index = np.maximum.outer(np.arange(rows), np.arange(rows))
            self.bit = _distinct(np.moveaxis(self.to_sense[index], -1, 0))  # (cols, rows, rows)
        elif lines.bit_mode == "node":
            self.bit = 1.0 / lines.bit_g
            self.to_sense[:] = self.bit[None, :]
        self._tensors: dict[torch.dtype, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        self.last_iterations = 0
        """Iterations of the last forward solve."""

    def rate_bound(self, slopes: torch.Tensor) -> float:
        """Bound on the contraction rate, in the largest-element norm, of the iteration for
        devices whose slopes dI/dV (t, rows, cols) in S never exceed `slopes`: the largest row
        sum of W D, max(W slopes) (W has no negative entries)."""
        return float(self.subtract_drops(None, slopes).max()) if slopes.numel() else 0.0

    def subtract_drops(
        self, base: torch.Tensor | None, flow: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """base - W I in V: base broadcast to the device currents flow (..., rows, cols) in A,
        into out (contiguous, like flow) or a new tensor; base None gives +W I (no copy). The
        usual case, one word-line and one bit-line matrix for all lines, is two matrix products
        accumulated in place."""
        word, bit = self._matrices(flow.dtype)
        rows, cols = flow.shape[-2:]
        if out is None:
            result = torch.empty_like(flow, memory_format=torch.contiguous_format)
        else:
            result = out
        sign = 1.0 if base is None else -1.0
        flat = flow.reshape(-1, rows, cols)
        shared_word = self.lines.word_mode == "segment" and word is not None and len(word) == 1
        if base is not None:
            result.copy_(base.expand(flow.shape))
        elif not shared_word:  # the shared word-line product below overwrites result
            result.zero_()
        if word is None:
            pass
        elif self.lines.word_mode == "node":
            result.add_(word[:, None] * flow.sum(dim=-1, keepdim=True), alpha=sign)
        elif shared_word:
            keep = 0.0 if base is None else 1.0  # beta 0: result not read
            result.view(-1, cols).addmm_(flat.view(-1, cols), word[0], beta=keep, alpha=sign)
        else:
            result.add_(torch.einsum("...il,ijl->...ij", flow, word), alpha=sign)
        if bit is None:
            pass
        elif self.lines.bit_mode == "node":
            result.add_(bit * flow.sum(dim=-2, keepdim=True), alpha=sign)
        elif bit.shape[0] == 1:
            shared = bit[0].expand(flat.shape[0], rows, rows)
            result.view(-1, rows, cols).baddbmm_(shared, flat, alpha=sign)
        else:
            result.add_(torch.einsum("...lj,jil->...ij", flow, bit), alpha=sign)
        return result

    def _matrices(self, dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if dtype not in self._tensors:
            self._tensors[dtype] = tuple(  # type: ignore[assignment]
                None if m is None else torch.from_numpy(np.ascontiguousarray(m)).to(dtype)
                for m in (self.word, self.bit)
            )
        return self._tensors[dtype]


def _dot(a: torch.Tensor, b: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """Per-array inner products of a, b (B, t, rows, cols) as (B, t, 1, 1), using the spare
    array work."""
    return torch.mul(a, b, out=work).sum(dim=(-2, -1), keepdim=True)


def _squared_norm(a: torch.Tensor) -> torch.Tensor:
    """Per-array squared 2-norms of a (B, t, rows, cols) as (B, t, 1, 1)."""
    return torch.linalg.vector_norm(a, dim=(-2, -1), keepdim=True).square_()


def _largest(x: torch.Tensor) -> float:
    """Largest |element| (0 when empty), without a temporary array."""
    if not x.numel():
        return 0.0
    low, high = torch.aminmax(x)
    return max(float(high), -float(low))


def _distinct(matrices: np.ndarray) -> np.ndarray:
    """A stack of per-line matrices, collapsed to one when all lines share it."""
    return matrices[:1] if np.all(matrices == matrices[:1]) else matrices


def iterate(
    step: Any,
    start: torch.Tensor,
    rate: float,
    tolerance: float,
    scale: float,
    max_iterations: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """x <- step(x, out) from start until the error bound moved * rate / (1 - rate) is at most
    tolerance times scale (or the dtype's rounding level). step writes the new x into out (a
    spare array like x, not aliasing it); the two arrays take turns. Returns x and the spare
    array (free for other use)."""
    floor = DTYPE_ACCURACY.get(start.dtype, 2.0**-46)
    limit = max(tolerance, floor) * scale
    x, spare = start, torch.empty_like(start)
    for iteration in range(1, max_iterations + 1):
        new = step(x, spare)
        moved = _largest(x.sub_(new))
        x, spare = new, x
        if moved * rate / (1 - rate) <= limit or moved <= floor * scale:
            return x, spare, iteration
    raise RuntimeError(
        f"crossbar_currents: the IR-drop iteration did not converge in {max_iterations} "
        f"iterations (rate bound {rate:.3g})"
    )


def solve_jacobian(
    solver: DropSolver, stamps: torch.Tensor, rhs: torch.Tensor, relative: float, limit: int
) -> torch.Tensor:
    """z with (1 + W D) z = rhs for slopes D = stamps (>= 0) in S and rhs (B, t, rows, cols), by
    conjugate gradients on the symmetric (1 + S) y = D^1/2 rhs, S = D^1/2 W D^1/2 (eigenvalues in
    [1, 1 + rho]), z = rhs - W D^1/2 y; each array's residual shrinks by `relative` (at most
    `limit` iterations, else RuntimeError). Works in preallocated arrays: one product with W and
    about eight passes over the arrays per iteration."""
    root = stamps.clamp_min(0).sqrt().expand_as(rhs)
    r = root * rhs  # the residual of y = 0
    y, p, q, work = torch.zeros_like(r), r.clone(), torch.empty_like(r), torch.empty_like(r)
    rr = _squared_norm(r)
    target = (relative * relative) * rr
    tiny = torch.finfo(r.dtype).tiny
    for _ in range(limit):
        if bool((rr <= target).all()):
            return solver.subtract_drops(rhs, y.mul_(root))
        # q = (1 + S) p
        torch.addcmul(p, root, solver.subtract_drops(None, torch.mul(root, p, out=q), out=work),
                      out=q)  # fmt: skip
        alpha = rr / _dot(p, q, work).clamp_min(tiny)
        y.addcmul_(alpha, p)
        r.addcmul_(alpha, q, value=-1)
        fresh = _squared_norm(r)
        p.mul_(fresh / rr.clamp_min(tiny)).add_(r)
        rr = fresh
    raise RuntimeError(
        f"crossbar_currents: conjugate gradients did not reach {relative:.1e} in {limit} iterations"
    )


def newton(
    solver: DropSolver,
    devices: ElementwiseDevices,
    prepared: Sequence[torch.Tensor],
    applied: torch.Tensor,
    cols: int,
    tolerance: float,
    max_iterations: int,
) -> tuple[torch.Tensor, int]:
    """Device voltages of F(v) = v - V + W I(v) = 0 by inexact Newton from v = V, each step
    solved by `solve_jacobian` to the relative residual `simulation.drop_kernels.forcing_term`
    (largest elements); stops when the error left is at most the limit = tolerance (at
    least the dtype's accuracy) times the largest |V|: a step moved no voltage by more, or the
    estimate from the last two steps (quadratic convergence, times 4) plus the last linear
    solve's residual is below it."""
    from simulation.drop_kernels import forcing_term  # numba: imported on first use

    floor = DTYPE_ACCURACY.get(applied.dtype, 2.0**-46)
    scale = _largest(applied)
    limit = max(tolerance, floor) * scale
    volts = applied.expand(*applied.shape[:-1], cols).clone(memory_format=torch.contiguous_format)
    previous = math.inf
    for iteration in range(1, max_iterations + 1):
        flow, stamps = devices.currents(volts, prepared, True)
        residual = solver.subtract_drops(applied, flow).sub_(volts)  # -F
        size = _largest(residual)
        # inexact Newton: loose linear solves far from the solution, none tighter than needed
        forcing = forcing_term(size, scale, limit)
        step = solve_jacobian(solver, stamps, residual, forcing, 50 * max_iterations)
        moved = _largest(step)
        volts += step
        # error left: quadratic convergence from the last two steps, plus the linear solve's
        remaining = 4 * moved**3 / previous**2 + forcing * moved
        if moved <= limit or (iteration > 1 and moved < previous and remaining <= limit):
            return volts, iteration
        previous = moved
    raise RuntimeError(
        f"crossbar_currents: Newton's method did not converge in {max_iterations} iterations"
    )


class DropCrossbar(torch.autograd.Function):
    """Output currents (B, t, cols) in A and device power (B,) in W of t arrays with applied
    voltages (B, t, rows) in V and `ElementwiseDevices` parameters (t, rows, cols), by the
    compiled kernels (closed-form devices on CPU, see `USE_COMPILED`), else the fixed point
    (rate <= RATE_LIMIT) or `newton`; inputs: voltages, solver, devices, rate,
    tolerance, max_iterations, *params. Stops at tolerance times the largest |applied
    voltage| (forward) or |output gradient| (backward). The parameters' gradient is the
    adjoint-weighted dI/dp, summed over the vectors."""

    @staticmethod
    def forward(ctx, voltages, solver, devices, rate, tolerance, max_iterations, *params):  # type: ignore[override]
        dtype = voltages.dtype if voltages.dtype in DTYPE_ACCURACY else torch.float64
        prepared = devices.prepare([p.detach().to(dtype) for p in params])
        applied = voltages.detach().to(dtype)[..., None]  # (B, t, rows, 1)
        shape = (*applied.shape[:-1], solver.lines.cols)
        closed = devices.closed_form(prepared) if USE_COMPILED else None
        ctx.lane_solve = None
        if closed is not None and applied.device.type == "cpu":
            ctx.lane_solve, out, power = _compiled_forward(
                solver, closed, applied[..., 0], tolerance, max_iterations
            )
            ctx.dtype, ctx.tolerance = dtype, tolerance
            ctx.mark_non_differentiable(power)
            return out.to(voltages.dtype), power.to(voltages.dtype)
        if rate > RATE_LIMIT:
            volts, solver.last_iterations = newton(
                solver, devices, prepared, applied, shape[-1], tolerance, max_iterations
            )
            flow, stamps = devices.currents(volts, prepared, True)
        else:
            start = applied.expand(shape).clone(memory_format=torch.contiguous_format)
            work = torch.empty_like(start)

            def step(volts: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
                flow, _ = devices.currents(volts, prepared, False, out=(work,))
                return solver.subtract_drops(applied, flow, out=out)

            volts, spare, solver.last_iterations = iterate(
                step, start, rate, tolerance, _largest(applied), max_iterations
            )
            flow, stamps = devices.currents(volts, prepared, True, out=(work, spare))
        out = flow.sum(dim=-2)
        power = torch.linalg.vecdot(volts.flatten(1), flow.flatten(1))  # V I >= 0: passive
        ctx.save_for_backward(volts, flow, stamps)
        ctx.solver, ctx.devices, ctx.prepared = solver, devices, prepared
        ctx.rate, ctx.tolerance, ctx.max_iterations = rate, tolerance, max_iterations
        ctx.mark_non_differentiable(power)
        return out.to(voltages.dtype), power.to(voltages.dtype)

    @staticmethod
    def backward(ctx, grad_out, _grad_power):  # type: ignore[override]
        if ctx.lane_solve is not None:
            return _compiled_backward(ctx, grad_out)
        volts, flow, stamps = ctx.saved_tensors
        h = grad_out.to(volts.dtype)[:, :, None, :]
        # mu = h - W D mu: the transposed Newton system at the solution (W is symmetric).
        if ctx.rate > RATE_LIMIT:
            floor = DTYPE_ACCURACY.get(volts.dtype, 2.0**-46)
            mu = solve_jacobian(
                ctx.solver, stamps, h.expand(volts.shape), max(ctx.tolerance, 4 * floor),
                50 * ctx.max_iterations,
            )  # fmt: skip
            work, spare = torch.empty_like(mu), None
        else:
            start = h.expand(volts.shape).clone(memory_format=torch.contiguous_format)
            work = torch.empty_like(start)

            def step(m: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
                return ctx.solver.subtract_drops(h, torch.mul(m, stamps, out=work), out=out)

            mu, spare, _ = iterate(
                step, start, ctx.rate, ctx.tolerance, _largest(h), ctx.max_iterations
            )
        need_v, grads = ctx.needs_input_grad[0], [None] * (len(ctx.needs_input_grad) - 6)
        grad_v = torch.linalg.vecdot(stamps, mu).to(grad_out) if need_v else None
        if any(ctx.needs_input_grad[6:]):
            partials: Sequence[torch.Tensor] = ctx.devices.partials(
                volts, ctx.prepared, flow, out=spare
            )
            for k, partial in enumerate(partials):
                if ctx.needs_input_grad[6 + k]:
                    grads[k] = torch.mul(mu, partial, out=work).sum(dim=0).to(grad_out)
        return (grad_v, None, None, None, None, None, *grads)


def _compiled_forward(
    solver: DropSolver,
    closed: tuple[torch.Tensor, torch.Tensor | None],
    applied: torch.Tensor,
    tolerance: float,
    max_iterations: int,
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """`newton` by the compiled kernel (`simulation.drop_kernels`) for devices with a closed
    form (c, beta): the solve kept for the adjoint, output currents (B, t, cols) and power
    (B,), of applied voltages (B, t, rows) in V."""
    from simulation import drop_kernels  # numba: imported on first use

    c, beta = (None if p is None else p.expand(applied.shape[1], *solver.to_driver.shape)
               for p in closed)  # fmt: skip
    floor = DTYPE_ACCURACY.get(applied.dtype, 2.0**-46)
    limit = max(tolerance, floor) * _largest(applied)
    out, power, solver.last_iterations, solve = drop_kernels.forward(
        applied.numpy(), c.numpy(), None if beta is None else beta.numpy(), solver.to_driver,
        solver.to_sense, limit, max_iterations,
    )  # fmt: skip
    return solve, torch.from_numpy(out), torch.from_numpy(power)


def _compiled_backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """`DropCrossbar.backward` for a compiled forward solve: the adjoint to the same accuracy
    as the torch path's."""
    floor = DTYPE_ACCURACY[ctx.dtype]
    grad_v, grad_c, grad_beta = ctx.lane_solve.backward(
        grad_out.detach().numpy(), max(ctx.tolerance, 4 * floor)
    )
    grads = [None] * (len(ctx.needs_input_grad) - 6)
    for k, grad in enumerate((grad_c, grad_beta)[: len(grads)]):
        if ctx.needs_input_grad[6 + k]:
            grads[k] = torch.from_numpy(grad).to(grad_out)
    grad_v = torch.from_numpy(grad_v).to(grad_out) if ctx.needs_input_grad[0] else None
    return (grad_v, None, None, None, None, None, *grads)
