"""Micro-benchmark: one SGD training step of a 784-25-10 MLP (batch 64) with Poole-Frenkel layers.

Compares plain nn.Linear layers with minimal inline memristive layers (double weights, high-R SiOx,
k_V = 0.5 V, fresh Poole-Frenkel draws every step) whose currents come from
  - the exact elementwise model (`device_currents` summed over rows), and
  - the Chebyshev-Bessel fast path (`column_currents`).
Prints the median step time, steps/s and the ratio to the ideal step.

    python benchmarks/bench_current_models.py [--repeats 15] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from simulation.current_models import PooleFrenkel
from simulation.mapping import (
    ConductanceRange,
    append_bias_input,
    currents_to_outputs,
    double_weights_to_conductances,
)

G_RANGE = ConductanceRange(5.25e-7, 2.62e-6)
K_V = 0.5
BATCH, SIZES = 64, (784, 25, 10)


def ideal_step(generator: torch.Generator) -> Callable[[torch.Tensor, torch.Tensor], None]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 25), nn.Sigmoid(), nn.Linear(25, 10), nn.LogSoftmax(-1))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimiser.zero_grad(set_to_none=True)
        nn.functional.nll_loss(model(x), y).backward()
        optimiser.step()

    return step


def memristive_step(
    generator: torch.Generator, fast: bool
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    pf = PooleFrenkel.high_r_siox()
    thetas = [
        torch.rand(m + 1, 2 * n, generator=generator).requires_grad_()
        for m, n in zip(SIZES[:-1], SIZES[1:], strict=True)
    ]
    optimiser = torch.optim.SGD(thetas, lr=0.01)

    def layer(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        conductances, k_g = double_weights_to_conductances(theta, G_RANGE)
        voltages = K_V * append_bias_input(x)
        draws = pf.draw(tuple(theta.shape), generator)
        if fast:
            currents, _ = pf.column_currents(voltages, conductances, draws)
        else:
            currents = pf.device_currents(voltages, conductances, draws).sum(dim=-2)
        return currents_to_outputs(currents, K_V, k_g)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimiser.zero_grad(set_to_none=True)
        hidden = torch.sigmoid(layer(x, thetas[0]))
        logits = layer(hidden, thetas[1])
        nn.functional.nll_loss(torch.log_softmax(logits, dim=-1), y).backward()
        optimiser.step()
        with torch.no_grad():
            for theta in thetas:
                theta.clamp_(min=0.0)

    return step


def time_step(step: Callable[[torch.Tensor, torch.Tensor], None], repeats: int, steps: int) -> float:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(BATCH, 784, generator=generator)
    y = torch.randint(0, 10, (BATCH,), generator=generator)
    for _ in range(3):
        step(x, y)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step(x, y)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    cases = {
        "nn.Linear (ideal)": ideal_step(generator),
        "PF exact elementwise": memristive_step(generator, fast=False),
        "PF fast column_currents": memristive_step(generator, fast=True),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}")
    print(f"{'implementation':<26} {'ms/step':>9} {'steps/s':>9} {'ratio':>7}")
    ideal = None
    for name, step in cases.items():
        repeats = args.repeats if "exact" not in name else max(3, args.repeats // 5)
        steps = args.steps if "exact" not in name else max(2, args.steps // 10)
        seconds = time_step(step, repeats, steps)
        ideal = ideal or seconds
        print(f"{name:<26} {1e3 * seconds:9.3f} {1 / seconds:9.1f} {seconds / ideal:6.1f}x")


if __name__ == "__main__":
    main()
