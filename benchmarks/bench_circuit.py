"""Crossbar circuit solver: time per batch of 100 vectors against badcrossbar, a training step
with line resistance against the same step without, and peak memory of a 512 x 512 solve.

Same inputs for both solvers: conductances uniform in the high-R SiOx window (5.25e-7 ..
2.62e-6 S) or the low-R one (6.9e-4 .. 3.45e-3 S), voltages uniform in [0, 0.5] V, r_word = 0.35
Ohm, r_bit = 0.32 Ohm. "cold" includes building the solver (Gauss-Seidel line factors, or the
direct factorisation where devices are too strong for Gauss-Seidel), "warm" reuses it from
`FACTOR_CACHE` (same conductances, new vectors); each timing is the median of --repeats runs
(the machine is shared and noisy). badcrossbar (MIT, test/benchmark-only
dependency) is skipped if not installed or when its estimated time exceeds --badcrossbar-limit.
Issue 7's targets: >= 20x badcrossbar from 128 x 128 (high-R), a training step with line
resistance within 20x of the step without, peak RSS of the 512 x 512 solve under 2 GiB.

Run: python -m benchmarks.bench_circuit [--sizes 64 128 256 512] [--windows high-R low-R]
[--steps 10] [--rounds 5] [--repeats 3] [--skip solver training memory]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from simulation.circuit import FACTOR_CACHE, solve_crossbar
from simulation.line_resistance import LineResistance
from training.layers import set_network_device_model
from training.networks import build_network
from xbarlab.config import load_device_model
from xbarlab.tables import print_table

SETTLE_SECONDS = 0.3
"""Pause before each timed call (see `_median_seconds`)."""

WINDOWS = {"high-R": (5.25e-7, 2.62e-6), "low-R": (6.9e-4, 3.45e-3)}


def badcrossbar_module():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import badcrossbar
    except ImportError:
        return None
    logging.disable(logging.INFO)
    return badcrossbar


def _median_seconds(call: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time (s) of `repeats` calls, and the last call's result. Each call starts
    after a pause: BLAS worker threads left spinning by the previous call (badcrossbar's) hold a
    core for about 0.1 s and would slow whatever runs next."""
    times = []
    for _ in range(repeats):
        time.sleep(SETTLE_SECONDS)
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def _cold_solve(v: np.ndarray, g: np.ndarray) -> np.ndarray:
    FACTOR_CACHE.clear()
    return solve_crossbar(v, g, 0.35, 0.32)


def _badcrossbar_outputs(module: Any, v: np.ndarray, g: np.ndarray) -> np.ndarray:
    solution = module.compute(
        v.T, 1.0 / g, r_i_word_line=0.35, r_i_bit_line=0.32,
        node_voltages=False, all_currents=False,
    )  # fmt: skip
    return np.asarray(solution.currents.output).reshape(v.shape)


def solver_table(sizes: list[int], window: str, limit: float, repeats: int) -> None:
    module = badcrossbar_module()
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        g = rng.uniform(*WINDOWS[window], (n, n))
        v = rng.uniform(0.0, 0.5, (100, n))
        cold, ours = _median_seconds(functools.partial(_cold_solve, v, g), repeats)
        warm_v = rng.uniform(0.0, 0.5, (100, n))
        warm, _ = _median_seconds(functools.partial(solve_crossbar, warm_v, g, 0.35, 0.32), repeats)
        FACTOR_CACHE.clear()
        reference, error, ratio = None, "-", "-"
        if module is not None and (n <= 256 or limit > 60):
            call = functools.partial(_badcrossbar_outputs, module, v, g)
            reference, out = _median_seconds(call, repeats)
            error = f"{np.max(np.abs(ours - out) / np.abs(out)):.1e}"
            ratio = f"{reference / cold:.1f}x"
        rows.append([
            f"{n}x{n}", f"{cold * 1e3:.0f}", f"{warm * 1e3:.0f}",
            "-" if reference is None else f"{reference * 1e3:.0f}", ratio, error,
        ])  # fmt: skip
    print(
        f"\nSolve 100 vectors, {window} conductances, r = 0.35 / 0.32 Ohm "
        f"(median of {repeats} runs each)"
    )
    print_table(
        ["array", "ours cold ms", "ours warm ms", "badcrossbar ms", "speed-up (cold)",
         "max rel diff"], rows,
    )  # fmt: skip


def _training_step(device: str, lines: LineResistance | None, steps: int) -> Callable[[int], None]:
    """One SGD step (forward, backward, update) of the 784-25-10 network on batch `index` of 64
    random images, with the device's nonidealities (resampled each step) and `lines`."""
    spec = {"input_shape": [1, 28, 28], "classes": 10, "hidden": [25], "activation": "sigmoid"}
    torch.manual_seed(0)
    network = build_network({**spec, "weights": "double"})
    model = load_device_model(device)
    if lines is not None:
        model = dataclasses.replace(model, line_resistance=lines)
    set_network_device_model(network, model, sampling="resample", seed=0)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)
    x = torch.rand(steps, 64, 1, 28, 28)
    y = torch.randint(0, 10, (steps, 64))

    def step(index: int) -> None:
        loss = torch.nn.functional.cross_entropy(network(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def training_step_table(steps: int, rounds: int) -> None:
    """Median step times with line resistance off and on, the two steps taking turns (the
    shared machine's speed drifts; both medians then see the same drift), in `rounds` rounds
    of `steps`; the table gives the median over rounds of each round's medians and ratio."""
    rows = []
    for device in ("siox-high-r", "siox-low-r"):
        runs = [_training_step(device, lines, rounds * steps + 1)
                for lines in (None, LineResistance(0.35, 0.32, (128, 64)))]  # fmt: skip
        for run in runs:
            run(0)  # warm-up (and the kernels' first-use compile)
        medians: list[tuple[float, float]] = []
        for first in range(1, rounds * steps + 1, steps):
            times: list[list[float]] = [[], []]
            for index in range(first, first + steps):
                for run, record in zip(runs, times, strict=True):
                    start = time.perf_counter()
                    run(index)
                    record.append(time.perf_counter() - start)
            medians.append((float(np.median(times[0])), float(np.median(times[1]))))
        ratios = [on / off for off, on in medians]
        off, on = (float(np.median(column)) for column in zip(*medians, strict=True))
        rows.append([device, "off", f"{off * 1e3:.1f}", "1.0x", ""])
        rows.append([
            device, "0.35/0.32 Ohm, 128x64 tiles", f"{on * 1e3:.1f}",
            f"{float(np.median(ratios)):.1f}x", " ".join(f"{r:.1f}" for r in ratios),
        ])  # fmt: skip
    print(f"\nTraining step, 784-25-10, batch 64, PF devices, resample ({rounds} rounds of "
          f"{steps} steps, off and on alternating; medians over rounds)")  # fmt: skip
    print_table(["device", "line resistance", "ms/step", "vs off", "each round"], rows)


def _peak_rss_kib() -> int:
    """This process's peak resident set in KiB: VmHWM, which, unlike ru_maxrss, does not carry
    the parent's peak across fork and exec."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_memory_child() -> None:
    rng = np.random.default_rng(0)
    g = rng.uniform(*WINDOWS["high-R"], (512, 512))
    v = rng.uniform(0.0, 0.5, (100, 512))
    before = _peak_rss_kib()
    start = time.perf_counter()
    solve_crossbar(v, g, 0.35, 0.32, cache=False)
    took = time.perf_counter() - start
    peak = _peak_rss_kib()
    print(f"{before / 1024:.0f} {peak / 1024:.0f} {took:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--windows", nargs="+", default=["high-R"], choices=list(WINDOWS))
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="training: median over rounds")
    parser.add_argument("--badcrossbar-limit", type=float, default=600.0)
    parser.add_argument("--repeats", type=int, default=3, help="solver timings: median of")
    parser.add_argument("--skip", nargs="*", default=[], choices=["solver", "training", "memory"])
    parser.add_argument("--peak-memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory_child:
        peak_memory_child()
        return
    if "training" not in args.skip:  # first: badcrossbar's solves leave the process slower
        training_step_table(args.steps, args.rounds)
    if "solver" not in args.skip:
        for window in args.windows:
            solver_table(args.sizes, window, args.badcrossbar_limit, args.repeats)
    if "memory" not in args.skip:
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_circuit", "--peak-memory-child"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        before, peak, took = result.stdout.split()
        print(
            f"\n512x512, 100 vectors, no cache: peak RSS {peak} MiB "
            f"(process before the solve {before} MiB), {took} s"
        )


if __name__ == "__main__":
    main()
