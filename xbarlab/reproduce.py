"""`xbarlab reproduce`: re-run a study of Joksas et al. 2022 and print it beside the paper.

paper-iv-nonlinearity: MNIST 784-25-10 (sigmoid) on low-R and high-R SiOx with Poole-Frenkel
I-V nonlinearity; standard training, aware training and aware training with L1 (gamma 1e-4).
Two sampling modes:

- resample: aware networks train with nonidealities drawn again every batch and are tested the
  same way (the paper's procedure); one value per network and repeat.
- frozen: aware network k trains on one fixed chip (seed k) and is tested on that chip ("own
  chip", one value per network); every network is also tested on `repeats` chips it never saw
  ("new chips"). Standard networks are tested on the same chips.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.datasets import DATASETS
from training.experiment import DataConfig, ExperimentConfig, run_experiment
from training.layers import SAMPLING_MODES
from training.power import tops_per_watt
from training.trainer import OPTIMIZERS, TrainerConfig
from xbarlab.config import load_device_model
from xbarlab.tables import print_table

PAPER_IV_NONLINEARITY = {
    # (device, training): (median error %, mean power W), paper.md section 7.
    ("low-R", "standard"): (4.57, 1.113),
    ("low-R", "aware"): (4.25, 2.833),
    ("low-R", "aware + L1"): (4.13, 1.303),
    ("high-R", "standard"): (41.6, 1.631e-3),
    ("high-R", "aware"): (9.06, 3.401e-3),
    ("high-R", "aware + L1"): (7.10, 2.087e-3),
}
DEVICES = {"low-R": "siox-low-r", "high-R": "siox-high-r"}
TRAININGS = {"standard": (False, 0.0), "aware": (True, 0.0), "aware + L1": (True, 1e-4)}


@dataclass
class Cell:
    """Test errors (0..1) and powers (W) collected for one (device, training, mode) row."""

    errors: list[float] = field(default_factory=list)
    powers: list[float] = field(default_factory=list)
    unseen_errors: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=10, help="epochs per network (paper: 1000)")
    parser.add_argument("--networks", type=int, default=3, help="networks per setup (paper: 5)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="test repeats (chips) per network (paper: 25)"
    )
    parser.add_argument("--dataset", choices=DATASETS, default="mnist")
    parser.add_argument("--data-dir", help="folder with the dataset files")
    parser.add_argument("--download", action="store_true", help="download MNIST once if missing")
    parser.add_argument("--modes", nargs="+", choices=SAMPLING_MODES, default=list(SAMPLING_MODES))
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="paper: sgd")
    parser.add_argument("--learning-rate", type=float, default=0.005, help="paper: 0.01 with sgd")
    parser.add_argument("--limit-train", type=int, help="use only this many training examples")
    parser.add_argument("--limit-test", type=int, help="use only this many test examples")
    parser.add_argument(
        "--devices", nargs="+", choices=list(DEVICES), default=list(DEVICES), help="device groups"
    )
    parser.add_argument("--output", type=Path, help="write all measured values as JSON")
    parser.add_argument("--quiet", action="store_true", help="no per-run lines")


def run_reproduction(args: argparse.Namespace) -> int:
    if args.study != "paper-iv-nonlinearity":
        raise ValueError(f"unknown study {args.study!r}")
    return reproduce_iv_nonlinearity(args)


def reproduce_iv_nonlinearity(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    data_config = DataConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=args.download,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
    )
    data = data_config.load()
    print(
        f"paper-iv-nonlinearity: {args.dataset} ({len(data.train)} train / "
        f"{len(data.validation)} validation / {len(data.test)} test), {args.epochs} epochs of "
        f"{args.optimizer} at {args.learning_rate}, {args.networks} networks x {args.repeats} "
        f"repeats, modes {', '.join(args.modes)}"
    )
    cells: dict[tuple[str, str, str], Cell] = {}
    synapses = 0
    log: Callable[[str], None] = (lambda _: None) if args.quiet else print
    for device_label in args.devices:
        device = load_device_model(DEVICES[device_label])
        for training_label, (aware, l1) in TRAININGS.items():
            # Standard training ignores the device: one network serves both modes.
            training_modes = args.modes if aware else [args.modes[-1]]
            for training_mode in training_modes:
                for network_index in range(args.networks):
                    config = ExperimentConfig(
                        name=f"{device_label} {training_label} {training_mode} #{network_index}",
                        data=data_config,
                        network={"hidden": [25], "activation": "sigmoid", "seed": network_index},
                        device=device,
                        aware=aware,
                        sampling=training_mode,
                        chip_seed=network_index,
                        trainer=TrainerConfig(
                            epochs=args.epochs,
                            optimizer=args.optimizer,
                            learning_rate=args.learning_rate,
                            l1=l1,
                            seed=network_index,
                            memristive_validation_repeats=5,
                            memristive_validation_every=max(1, args.epochs // 5),
                        ),
                        evaluation_repeats=args.repeats,
                        evaluation_modes=tuple(args.modes) if not aware else (training_mode,),
                    )
                    result, _ = run_experiment(config, data)
                    synapses = result.synapses
                    _collect(cells, device_label, training_label, result)
                    log(
                        f"  {config.name}: "
                        + ", ".join(
                            f"{mode} {1 - r.median_accuracy:.2%}" for mode, r in result.test.items()
                        )
                        + f" ({result.training.wall_time:.0f} s)"
                    )
    rows = _table_rows(cells, synapses, args.modes)
    print()
    print_table(
        [
            "device",
            "training",
            "mode",
            "median error",
            "n",
            "error, new chips",
            "mean power",
            "TOPS/W",
            "paper error",
            "paper power",
            "paper TOPS/W",
            "train s/net",
        ],
        rows,
    )
    print(
        f"\nTOPS/W is the paper's device-only figure (|V I| of the devices, t_read = 50 ns, "
        f"{synapses} synapses). Wall time {time.perf_counter() - started:.0f} s."
    )
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "arguments": {k: str(v) for k, v in vars(args).items()},
            "cells": {" | ".join(k): dataclasses.asdict(v) for k, v in cells.items()},
            "rows": rows,
        }
        args.output.write_text(json.dumps(payload, indent=2))
        print(f"measured values: {args.output}")
    return 0


def _collect(
    cells: dict[tuple[str, str, str], Cell],
    device_label: str,
    training_label: str,
    result: Any,
) -> None:
    """File one network's test results under the rows they belong to."""
    for mode, evaluation in result.test.items():
        row_mode = "resample" if mode == "resample" else "frozen"
        cell = cells.setdefault((device_label, training_label, row_mode), Cell())
        errors = [1 - a for a in evaluation.accuracies]
        if mode == "frozen":
            cell.unseen_errors += errors
            continue
        cell.errors += errors
        cell.powers += evaluation.powers
        cell.train_seconds.append(result.training.wall_time)


def _table_rows(
    cells: dict[tuple[str, str, str], Cell], synapses: int, modes: list[str]
) -> list[list[str]]:
    rows = []
    for (device_label, training_label), (paper_error, paper_power) in PAPER_IV_NONLINEARITY.items():
        for mode in modes:
            cell = cells.get((device_label, training_label, mode))
            if cell is None or not cell.errors:
                continue
            power = statistics.fmean(cell.powers)
            rows.append(
                [
                    device_label,
                    training_label,
                    "frozen (own chip)" if mode == "frozen" else mode,
                    f"{100 * statistics.median(cell.errors):.2f} %",
                    str(len(cell.errors)),
                    f"{100 * statistics.median(cell.unseen_errors):.2f} %"
                    if cell.unseen_errors
                    else "-",
                    f"{power:.4g} W",
                    f"{tops_per_watt(synapses, power):.4g}",
                    f"{paper_error} %",
                    f"{paper_power:.4g} W",
                    f"{tops_per_watt(19885, paper_power):.4g}",
                    f"{statistics.fmean(cell.train_seconds):.0f}",
                ]
            )
    return rows


REPRODUCTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "paper-iv-nonlinearity": reproduce_iv_nonlinearity
}
