"""Training-step speed of the 784-25-10 network at batch 64: ideal vs Poole-Frenkel aware.

Measures, in one run and interleaved (this machine is shared and noisy, so ratios are what
count): plain nn.Linear layers, xbarlab layers without a device model, and xbarlab layers aware of
high-R SiOx Poole-Frenkel I-V nonlinearity (double weights, fresh nonidealities every step), with
the fast bounded-error expansion and with the exact elementwise currents. Peak resident memory of
the aware run is measured in a separate process.

Run: python -m benchmarks.bench_training_speed [--repeats 15 --steps 50]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
import types

import torch
import torch.nn.functional as functional
from torch import nn

from simulation.current_models import CurrentModel
from training.layers import memristive_cores, set_network_device_model
from training.networks import build_network
from xbarlab.config import load_device_model
from xbarlab.tables import print_table

SPEC = {"input_shape": [1, 28, 28], "classes": 10, "hidden": [25], "activation": "sigmoid"}


def plain_network() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 25), nn.Sigmoid(), nn.Linear(25, 10))


def xbarlab_network(mode: str) -> nn.Module:
    network = build_network({**SPEC, "weights": "standard" if mode == "ideal" else "double"})
    if mode != "ideal":
        device = load_device_model("siox-high-r")
        if mode == "exact":
            # The naive reference: every device current elementwise, then summed.
            device = load_device_model("siox-high-r")
            model = device.current_model
            model.column_currents = types.MethodType(CurrentModel.column_currents, model)
        set_network_device_model(network, device, sampling="resample", seed=0)
    return network


def step_timer(network: nn.Module, steps: int) -> float:
    """Seconds per SGD step (forward, backward, update, projection), median-free mean."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(steps, 64, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (steps, 64), generator=generator)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)
    cores = memristive_cores(network)
    started = time.perf_counter()
    for index in range(steps):
        loss = functional.cross_entropy(network(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for core in cores:
            core.project_parameters()
    return (time.perf_counter() - started) / steps


def peak_memory_child(steps: int) -> None:
    network = xbarlab_network("fast")
    step_timer(network, steps)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--exact-steps", type=int, default=5)
    parser.add_argument("--peak-memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory_child:
        peak_memory_child(args.steps)
        return
    builders = {
        "nn.Linear (ideal)": (plain_network, args.steps),
        "xbarlab layers, ideal": (lambda: xbarlab_network("ideal"), args.steps),
        "xbarlab, high-R PF aware, fast": (lambda: xbarlab_network("fast"), args.steps),
        "xbarlab, high-R PF aware, exact": (lambda: xbarlab_network("exact"), args.exact_steps),
    }
    networks = {name: build() for name, (build, _) in builders.items()}
    for network in networks.values():  # warm-up
        step_timer(network, 3)
    times: dict[str, list[float]] = {name: [] for name in builders}
    for _ in range(args.repeats):
        for name, network in networks.items():
            times[name].append(step_timer(network, builders[name][1]))
    baseline = statistics.median(times["nn.Linear (ideal)"])
    ratios = {
        name: statistics.median(
            t / b for t, b in zip(times[name], times["nn.Linear (ideal)"], strict=True)
        )
        for name in times
    }
    rows = []
    for name in builders:
        seconds = statistics.median(times[name])
        rows.append([name, f"{seconds * 1e3:.2f}", f"{1 / seconds:.0f}", f"{ratios[name]:.1f}x"])
    print(
        f"784-25-10, batch 64, SGD, {torch.get_num_threads()} threads; "
        f"medians of {args.repeats} interleaved repeats (ratio: median of per-repeat ratios)"
    )
    print_table(["layers", "ms/step", "steps/s", "vs nn.Linear"], rows)
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_training_speed",
            "--peak-memory-child",
            "--steps",
            "200",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    peak = int(child.stdout.strip().splitlines()[-1])
    print(
        f"peak resident memory of a process running 200 aware steps: {peak / 2**20:.0f} MiB "
        f"(target < 1024 MiB); baseline ideal step {baseline * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
