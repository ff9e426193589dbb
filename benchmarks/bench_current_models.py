"""Micro-benchmark: one SGD training step of a 784-25-10 MLP (batch 64) with Poole-Frenkel layers.

Compares plain nn.Linear layers with minimal inline memristive layers (double weights, high-R SiOx,
k_V = 0.5 V, fresh Poole-Frenkel draws every step) whose currents come from
  - V @ G (Ohmic, no draws: the cost of the mapping alone),
  - V @ G after drawing the Poole-Frenkel residuals (mapping + draws, the floor for any PF path),
  - the exact elementwise model (`device_currents` summed over rows), and
  - the fast path (`PooleFrenkel.column_currents`).
Prints the median step time, steps/s and the median ratio to the ideal step of the same repeat
(the implementations are interleaved, so a slow phase of a shared machine hits all alike).

    python -m benchmarks.bench_current_models [--repeats 15] [--steps 20]
"""

from __future__ import annotations

import argparse
import itertools
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
    generator: torch.Generator, mode: str
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """mode: "exact" (device_currents summed), "fast" (column_currents), "ohmic" (V @ G, no
    draws: what the mapping alone costs) or "draws" (V @ G after drawing the PF residuals)."""
    pf = PooleFrenkel.high_r_siox()
    thetas = [
        torch.rand(m + 1, 2 * n, generator=generator).requires_grad_()
        for m, n in itertools.pairwise(SIZES)
    ]
    optimiser = torch.optim.SGD(thetas, lr=0.01)

    def layer(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        conductances, k_g = double_weights_to_conductances(theta, G_RANGE)
        voltages = K_V * append_bias_input(x)
        if mode == "ohmic":
            return currents_to_outputs(voltages @ conductances, K_V, k_g)
        draws = pf.draw(tuple(theta.shape), generator)
        if mode == "draws":
            return currents_to_outputs(voltages @ conductances, K_V, k_g)
        if mode == "fast":
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


def time_steps(
    steps: dict[str, Callable[[torch.Tensor, torch.Tensor], None]],
    repeats: int,
    counts: dict[str, int],
) -> dict[str, list[float]]:
    """Seconds per step of each implementation, `repeats` times, interleaved so that a slow
    phase of a shared machine hits all of them alike."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(BATCH, 784, generator=generator)
    y = torch.randint(0, 10, (BATCH,), generator=generator)
    for step in steps.values():
        for _ in range(3):
            step(x, y)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(counts[name]):
                step(x, y)
            times[name].append((time.perf_counter() - start) / counts[name])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="steps per timing (exact: 1/10)")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    steps = {
        "nn.Linear (ideal)": ideal_step(generator),
        "Ohmic crossbar (mapping)": memristive_step(generator, "ohmic"),
        "Ohmic + PF draws": memristive_step(generator, "draws"),
        "PF exact elementwise": memristive_step(generator, "exact"),
        "PF fast column_currents": memristive_step(generator, "fast"),
    }
    counts = {
        name: args.steps if "exact" not in name else max(1, args.steps // 10) for name in steps
    }
    times = time_steps(steps, args.repeats, counts)
    ideal = times["nn.Linear (ideal)"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}")
    print(f"{'implementation':<26} {'ms/step':>9} {'steps/s':>9} {'ratio':>7}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        ratio = statistics.median(s / i for s, i in zip(seconds, ideal, strict=True))
        print(f"{name:<26} {1e3 * median:9.3f} {1 / median:9.1f} {ratio:6.1f}x")
    print("ratio: median over repeats of (step time / ideal step time of the same repeat)")


if __name__ == "__main__":
    main()
