"""The `xbarlab` command."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from simulation.config import ConfigError
from training.checkpoint import save_checkpoint
from training.datasets import DATASETS
from training.experiment import ExperimentConfig, run_experiment
from training.layers import SAMPLING_MODES
from training.trainer import OPTIMIZERS
from xbarlab.config import config_directory, device_preset_names, load_device_model, load_experiment
from xbarlab.reproduce import REPRODUCTIONS, add_reproduce_arguments, run_reproduction
from xbarlab.session_cli import add_session_commands, add_train_session_arguments, dispatch
from xbarlab.tables import print_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xbarlab",
        description="Hardware-in-the-loop lab application for memristive neural networks.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(commands)
    reproduce = commands.add_parser(
        "reproduce",
        help="reproduce a result of Joksas et al. 2022 and print it beside the paper's values",
        description="Reproduce a published result; prints one table beside the paper's values.",
    )
    reproduce.add_argument("study", choices=sorted(REPRODUCTIONS), help="which result")
    add_reproduce_arguments(reproduce)
    add_session_commands(commands)
    return parser


def _add_train(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train a network (nonideality-aware or standard) and evaluate it",
        description=(
            "Train one configured experiment and print train / validation / memristive-"
            "validation / test accuracy and device power. Flags override the config file."
        ),
    )
    default = config_directory() / "experiments" / "default.toml"
    train.add_argument(
        "--config", type=Path, default=default, help=f"experiment TOML (default: {default})"
    )
    train.add_argument("--dataset", choices=DATASETS, help="dataset (default: the config's)")
    train.add_argument("--data-dir", help="folder holding the dataset files")
    train.add_argument(
        "--download",
        action="store_true",
        help="download a missing dataset once into the user cache (checksum-verified)",
    )
    train.add_argument(
        "--device", help=f"device preset or TOML file; presets: {', '.join(device_preset_names())}"
    )
    aware = train.add_mutually_exclusive_group()
    aware.add_argument("--aware", action="store_true", default=None, help="nonideality-aware")
    aware.add_argument(
        "--standard", dest="aware", action="store_false", help="standard (ideal) training"
    )
    train.add_argument("--sampling", choices=SAMPLING_MODES, help="training sampling mode")
    train.add_argument("--epochs", type=int, help="number of epochs")
    train.add_argument("--batch-size", type=int, help="examples per optimiser step")
    train.add_argument("--optimizer", choices=OPTIMIZERS)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--l1", type=float, help="L1 regularisation gamma on device parameters")
    train.add_argument("--seed", type=int, help="seed of initialisation and shuffling")
    train.add_argument("--repeats", type=int, help="evaluation repeats (chips) per mode")
    train.add_argument(
        "--checkpoint", type=Path, help="where to write the checkpoint (default: runs/NAME.pt)"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    add_train_session_arguments(train)


def apply_train_overrides(config: ExperimentConfig, args: argparse.Namespace) -> ExperimentConfig:
    """Flags given on the command line replace the config file's values."""
    data = dataclasses.replace(
        config.data,
        **{
            k: v
            for k, v in {
                "dataset": args.dataset,
                "data_dir": args.data_dir,
                "download": args.download or None,
            }.items()
            if v is not None
        },
    )
    trainer_changes = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "learning_rate": args.learning_rate,
        "l1": args.l1,
        "seed": args.seed,
    }
    trainer = dataclasses.replace(
        config.trainer, **{k: v for k, v in trainer_changes.items() if v is not None}
    )
    changes: dict[str, object] = {"data": data, "trainer": trainer}
    if args.device is not None:
        changes["device"] = load_device_model(args.device, "--device")
    if args.aware is not None:
        changes["aware"] = args.aware
    if args.sampling is not None:
        changes["sampling"] = args.sampling
    if args.repeats is not None:
        changes["evaluation_repeats"] = args.repeats
    return dataclasses.replace(config, **changes)


def command_train(args: argparse.Namespace) -> int:
    config = apply_train_overrides(load_experiment(args.config), args)
    kind = "aware" if config.aware else "standard"
    device = config.device.name if config.device is not None else "ideal"
    print(f"xbarlab train: {config.name}")
    print(f"  dataset {config.data.dataset}, device {device}, {kind} training")
    print(
        f"  sampling {config.sampling}, {config.trainer.epochs} epochs, seed {config.trainer.seed}"
    )
    result, network = run_experiment(config, progress=not args.quiet)
    print_table(["measure", "value"], result.summary_rows())
    path = args.checkpoint or Path("runs") / f"{_slug(config.name)}.pt"
    save_checkpoint(
        path,
        network,
        result.spec,
        {
            "experiment": config.name,
            "trainer": config.trainer.to_config(),
            "aware": config.aware,
            "sampling": config.sampling,
            "chip_seed": config.chip_seed,
            "result": result.to_dict(),
        },
    )
    print(f"checkpoint: {path}")
    return 0


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "run"


def main(argv: Sequence[str] | None = None) -> int:
    from instruments.drivers.transport import InstrumentError
    from instruments.limits import LimitError
    from xbarlab.pipeline import PipelineError
    from xbarlab.store import SessionError

    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["gui"]:
        # argparse's REMAINDER drops leading options in subcommands: hand gui its own argv
        from gui.app import main as gui_main

        return gui_main(words[1:])
    parser = build_parser()
    args = parser.parse_args(words)
    try:
        handled = dispatch(args)
        if handled is not None:
            return handled
        if args.command == "train":
            return command_train(args)
        return run_reproduction(args)
    except ConfigError as error:
        print(f"xbarlab: configuration error: {error}", file=sys.stderr)
        return 2
    except (SessionError, PipelineError, LimitError) as error:
        print(f"xbarlab: {error}", file=sys.stderr)
        return 2
    except InstrumentError as error:
        print(f"xbarlab: instrument error: {error} (outputs were turned off)", file=sys.stderr)
        return 3
    except FileNotFoundError as error:
        print(f"xbarlab: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xbarlab: interrupted (outputs were turned off)", file=sys.stderr)
        return 130
