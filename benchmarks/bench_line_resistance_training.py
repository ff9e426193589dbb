"""MNIST 784-25-10 trained without and with awareness of line resistance, tested with it on.

For each device group (high-R and low-R SiOx, Poole-Frenkel I-V nonlinearity, device-to-device
variability per the presets) and each network seed:

- "standard": trained aware of the devices (the paper's aware training) but with ideal lines;
- "aware": trained aware of the devices and of r_word / r_bit on 128 x 64 tiles
  (`simulation.line_resistance.LineResistance`, solved by `simulation.circuit`);

then both are tested with the line resistance on (and, for reference, off), resampling the
devices every batch, `--repeats` times. Prints median test errors over networks x repeats and
the mean training step time of each variant.

Run: python -m benchmarks.bench_line_resistance_training --data-dir ../shared/datasets
     [--devices high-R low-R] [--epochs 5] [--networks 2] [--repeats 3] [--limit-train N]
     [--seeds S ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from simulation.line_resistance import LineResistance
from training.evaluation import evaluate_on_chips
from training.experiment import DataConfig, network_spec
from training.layers import set_network_device_model
from training.networks import build_network
from training.trainer import TrainerConfig, train
from xbarlab.config import load_device_model
from xbarlab.tables import print_table

PRESETS = {"high-R": "siox-high-r", "low-R": "siox-low-r"}


def run(args: argparse.Namespace) -> None:
    data = DataConfig(
        dataset=args.dataset, data_dir=args.data_dir, limit_train=args.limit_train,
        limit_test=args.limit_test, validation_fraction=0.05,
    ).load()  # fmt: skip
    lines = LineResistance(args.r_word, args.r_bit, (128, 64))
    rows = []
    for group in args.devices:
        device = load_device_model(PRESETS[group])
        with_lines = replace(device, line_resistance=lines)
        for variant, training_model in (("standard", device), ("aware", with_lines)):
            errors_on, errors_off, step_ms = [], [], []
            for network_seed in args.seeds:
                trainer = TrainerConfig(
                    epochs=args.epochs, optimizer="adam", learning_rate=args.learning_rate,
                    seed=network_seed, selection="last", memristive_validation_repeats=1,
                )  # fmt: skip
                spec = network_spec(_config(network_seed), data)
                network = build_network({**spec, "weights": "double", "seed": network_seed})
                set_network_device_model(network, training_model, sampling="resample", seed=0)
                started = time.perf_counter()
                history = train(network, data, trainer)
                steps = args.epochs * -(-len(data.train) // trainer.batch_size)
                step_ms.append(1e3 * (time.perf_counter() - started) / steps)  # + validation
                del history
                for model, errors in ((with_lines, errors_on), (device, errors_off)):
                    result = evaluate_on_chips(
                        network, data.test, model, sampling="resample", repeats=args.repeats,
                        seed=10**6 + network_seed,
                    )  # fmt: skip
                    errors.extend(1.0 - a for a in result.accuracies)
                print(
                    f"{group} {variant} network {network_seed}: error with lines "
                    f"{100 * statistics.median(errors_on[-args.repeats :]):.2f} %, "
                    f"{step_ms[-1]:.0f} ms/step; errors with lines "
                    f"{[round(100 * e, 2) for e in errors_on[-args.repeats :]]} %, without "
                    f"{[round(100 * e, 2) for e in errors_off[-args.repeats :]]} %",
                    flush=True,
                )
            rows.append([
                group, variant, f"{100 * statistics.median(errors_on):.2f} %",
                f"{100 * statistics.median(errors_off):.2f} %",
                f"{statistics.mean(step_ms):.0f}",
            ])  # fmt: skip
    print(
        f"\n{args.dataset} 784-25-10, {len(data.train)} training examples, {args.epochs} epochs, "
        f"{len(args.seeds)} networks x {args.repeats} test repeats, r_word {args.r_word} / r_bit "
        f"{args.r_bit} Ohm, 128x64 tiles"
    )
    print_table(
        [
            "devices",
            "training",
            "median test error, lines on",
            "lines off",
            "ms/step (with validation)",
        ],
        rows,
    )


def _config(seed: int):
    from training.experiment import ExperimentConfig

    return ExperimentConfig(network={"hidden": [25], "activation": "sigmoid", "seed": seed})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--devices", nargs="+", default=["high-R", "low-R"], choices=PRESETS)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--networks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None,
        help="network seeds (default 0 .. networks - 1); e.g. one per process to run in parallel",
    )  # fmt: skip
    parser.add_argument("--learning-rate", type=float, default=0.005)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--r-word", type=float, default=0.35)
    parser.add_argument("--r-bit", type=float, default=0.32)
    args = parser.parse_args()
    if args.seeds is None:
        args.seeds = list(range(args.networks))
    run(args)


if __name__ == "__main__":
    main()
