"""The pipeline commands of `xbarlab`: demo, characterize, train --session, program, read,
evaluate, emulate, gui. Each stage command reads its inputs from the session file; the pipeline
config is the one stored in the session (or --config). Ctrl-C asks the pipeline to stop at the
next safe point (outputs off, session consistent); a second Ctrl-C interrupts at once. Ctrl-Z
pauses at the next safe point with the outputs off and suspends the process; `fg` resumes."""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from xbarlab.config import config_directory, read_toml
from xbarlab.run_control import PauseGate
from xbarlab.tables import print_table

DEMO_CONFIG = config_directory() / "pipelines" / "demo.toml"
EMULATED_DEMO_INSTRUMENT = "keithley2600-707b-emulated-80x40"
STAGE_COMMANDS = {
    "characterize": ("characterize",),
    "program": ("program",),
    "evaluate": ("evaluate",),
}


# -- argument parsing ---------------------------------------------------------------------------


def add_session_commands(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="the whole loop on a simulated chip: characterise, train, program, evaluate",
        description=(
            "Run the hardware-in-the-loop pipeline end to end on the simulated chip (offline): "
            "characterise and fit, train aware of the fitted model, write-verify, read back, "
            "evaluate four ways, fine-tune the last layer. Prints a summary table and writes a "
            "session file and PNG figures."
        ),
    )
    _pipeline_arguments(demo, session_required=False)
    demo.add_argument(
        "--backend",
        choices=("simulated", "emulated"),
        default="simulated",
        help="simulated chip directly, or the real drivers against wire-level emulators",
    )
    demo.add_argument("--dataset", choices=("digits", "mnist", "fashion-mnist"))
    demo.add_argument("--epochs", type=int, help="training epochs (default: the config's)")
    demo.add_argument("--figures", type=Path, help="folder for the PNG figures")

    for name, help_text in (
        ("characterize", "characterise the chip and fit nonideality models into a session"),
        ("program", "write-verify the trained network onto the chip (resumes an interrupted run)"),
        ("evaluate", "evaluate the deployed network four ways (and fine-tune with --fine-tune)"),
    ):
        parser = commands.add_parser(name, help=help_text, description=help_text + ".")
        _pipeline_arguments(parser, session_required=True)
        if name == "evaluate":
            parser.add_argument(
                "--fine-tune",
                action="store_true",
                help="then retrain the last layer against the chip, reprogram it, evaluate again",
            )

    read = commands.add_parser(
        "read",
        help="read a crossbar's conductance map",
        description="Read every cell's conductance at v_read and print statistics.",
    )
    read.add_argument("--instrument", required=True, help="instrument config name or path")
    read.add_argument("--v-read", type=float, help="read voltage in V (default: the config's)")
    read.add_argument("--output", type=Path, help="write the map (S) to this .npy file")
    read.add_argument("--session", type=Path, help="also store the map in this session file")
    read.add_argument(
        "--iv",
        metavar="ROW,COL",
        help="also sweep the I-V curve of this cell (0 -> +V -> 0 -> -V -> 0, grounded lines)",
    )
    read.add_argument("--iv-v-max", type=float, default=0.5, help="sweep amplitude in V")
    read.add_argument("--iv-points", type=int, default=11, help="points per quarter branch")

    emulate = commands.add_parser(
        "emulate",
        help="start wire-level instrument emulators and print their VISA resources",
        description=(
            "Serve the emulators of an instrument config on localhost until Ctrl-C, backed by "
            "one simulated chip; connect real drivers to the printed resources."
        ),
    )
    emulate.add_argument("--config", required=True, help="instrument config name or path")
    emulate.add_argument(
        "--client-config",
        type=Path,
        help="also write an instrument config (TOML) whose addresses point at these emulators",
    )

    # listed for --help; `xbarlab.cli.main` hands `xbarlab gui ...` to gui.app.main directly
    commands.add_parser("gui", help="the lab bench window (xbarlab gui --help)", add_help=False)


def _pipeline_arguments(parser: argparse.ArgumentParser, session_required: bool) -> None:
    parser.add_argument(
        "--session",
        type=Path,
        required=session_required,
        help="session file (HDF5)" + ("" if session_required else "; default runs/demo-TIME.h5"),
    )
    parser.add_argument(
        "--config",
        dest="pipeline_config",
        type=Path,
        help=f"pipeline TOML (default: the session's, else {DEMO_CONFIG.name})",
    )
    parser.add_argument("--instrument", help="instrument config name or path (overrides)")
    parser.add_argument("--data-dir", help="folder holding the dataset files")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_train_session_arguments(train: argparse.ArgumentParser) -> None:
    """`xbarlab train --session FILE`: the pipeline's train stage (fitted model of the session)."""
    train.add_argument(
        "--session",
        type=Path,
        help="train the pipeline's network for the chip characterised in this session file",
    )
    train.add_argument(
        "--pipeline",
        dest="pipeline_config",
        type=Path,
        help="with --session: pipeline TOML (default: the session's)",
    )
    train.add_argument("--instrument", help="with --session: instrument config (overrides)")


# -- configuration ------------------------------------------------------------------------------


def pipeline_config(args: argparse.Namespace, store: Any | None = None) -> Any:
    """The pipeline config: --config, else the one stored in the session, else the demo's;
    command-line overrides applied."""
    from xbarlab.pipeline import PipelineConfig

    chosen = getattr(args, "pipeline_config", None)
    if chosen is not None:
        source, where = read_toml(chosen), f"{chosen}:"
    elif store is not None and isinstance(store.metadata.get("pipeline"), dict):
        source, where = store.metadata["pipeline"], f"{store.path}: pipeline"
    else:
        source, where = read_toml(DEMO_CONFIG), f"{DEMO_CONFIG}:"
    source = dict(source)
    experiment = dict(source.get("experiment", {}))
    data = dict(experiment.get("data", {}))
    training = dict(experiment.get("training", {}))
    if getattr(args, "dataset", None):
        data["dataset"] = args.dataset
        if args.dataset != "digits":
            # the paper's network on a chip large enough for 785 x 50 + 26 x 20 in 128-row tiles
            source.setdefault("deploy", {})
    if args.data_dir:
        data["data_dir"] = args.data_dir
    if getattr(args, "epochs", None):
        training["epochs"] = args.epochs
    experiment["data"], experiment["training"] = data, training
    source["experiment"] = experiment
    if args.instrument:
        source["instrument"] = args.instrument
    elif getattr(args, "backend", "simulated") == "emulated":
        # every reading crosses the emulated bus and matrix: a smaller chip and network keep
        # the loop to minutes (the same stages, drivers and wire protocol as on a real bench)
        source["instrument"] = EMULATED_DEMO_INSTRUMENT
        experiment["network"] = {**experiment.get("network", {}), "hidden": [8]}
        source["write_verify"] = {**source.get("write_verify", {}), "pulse_width": 1e-4}
        source["evaluate"] = {**source.get("evaluate", {}), "on_chip_limit": 200}
    if getattr(args, "dataset", None) in ("mnist", "fashion-mnist") and not args.instrument:
        source["instrument"] = _mnist_instrument(getattr(args, "backend", "simulated"))
        source["deploy"] = {"tile_rows": 128, "tile_cols": 64}
        # on-chip multiplies of the whole 10k test set on an 832x384 simulated array are slow
        source["evaluate"] = {**source.get("evaluate", {}), "on_chip_limit": 1000}
        # 60k images per epoch: fewer epochs than the digits demo keep it to minutes
        if not getattr(args, "epochs", None):
            training["epochs"] = MNIST_DEMO_EPOCHS
        source["fine_tune"] = {**source.get("fine_tune", {}), "epochs": MNIST_FINE_TUNE_EPOCHS}
    return PipelineConfig.from_config(source, where)


MNIST_DEMO_EPOCHS = 10
"""`xbarlab demo --dataset mnist|fashion-mnist` trains this many epochs unless --epochs says."""
MNIST_FINE_TUNE_EPOCHS = 2


def _mnist_instrument(backend: str) -> dict[str, Any]:
    """A simulated chip large enough for 784-25-10 in 128 x 64 tiles (block-diagonal)."""
    if backend == "emulated":
        raise SystemExit("xbarlab demo: --dataset mnist runs on the simulated backend only")
    config = read_toml(config_directory() / "instruments" / "simulated-siox-high-r-128x128.toml")
    config["chip"] = {**config["chip"], "rows": 832, "cols": 384}
    config["name"] = "Simulated SiOx high-R 832x384 (MNIST demo)"
    return config


# -- running ------------------------------------------------------------------------------------


class StopFlag:
    """The CLI's run control. Ctrl-C: stop at the next safe point (again: interrupt now). Ctrl-Z:
    pause at the next safe point with the outputs off, then suspend the process (`fg` resumes)."""

    def __init__(self) -> None:
        self.requested = False
        self.gate = PauseGate()
        self.crossbar: Any = None
        """Set once the instrument is open: a pause turns its outputs off."""

    def __call__(self) -> bool:
        self.gate.hold(self._outputs_off, self._report, lambda: self.requested, self._suspend)
        return self.requested

    def _outputs_off(self) -> None:
        if self.crossbar is not None and not self.crossbar.closed:
            self.crossbar.outputs_off()

    @staticmethod
    def _report(paused: bool) -> None:
        message = (
            "paused at a safe point, outputs off (suspended: `fg` resumes)" if paused else "resumed"
        )
        print(f"\nxbarlab: {message}", file=sys.stderr, flush=True)

    @staticmethod
    def _suspend() -> None:
        os.kill(os.getpid(), signal.SIGSTOP)  # returns when the shell sends SIGCONT

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
        def interrupt(signum: int, frame: Any) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print(
                "\nxbarlab: stopping at the next safe point (Ctrl-C again to interrupt now)",
                file=sys.stderr,
            )

        def pause(signum: int, frame: Any) -> None:
            self.gate.pause()
            print("\nxbarlab: pausing at the next safe point (outputs off)", file=sys.stderr)

        previous = signal.signal(signal.SIGINT, interrupt)
        has_pause = hasattr(signal, "SIGTSTP")  # not on Windows
        previous_pause = signal.signal(signal.SIGTSTP, pause) if has_pause else None
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
            if has_pause:
                signal.signal(signal.SIGTSTP, previous_pause)


class ProgressPrinter:
    """Pipeline events as tqdm bars (one per stage) and log lines."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bars = sys.stderr.isatty()  # redrawn bars only on a terminal, not in logs
        self.bar: tqdm | None = None

    def __call__(self, event: Any) -> None:
        if self.quiet:
            return
        data = event.data
        if event.kind == "start":
            self._close()
            print(f"== {event.stage}", flush=True)
        elif event.kind == "progress" and "total" in data:
            self._bar(event.stage, int(data["total"]), int(data.get("done", 0)), data)
        elif event.kind == "epoch":
            self._bar(event.stage, int(data["epochs"]), int(data["epoch"]), data)
            if self.bar is not None:
                self.bar.set_postfix(
                    loss=f"{data['train_loss']:.3f}", val=f"{data['validation_accuracy']:.3f}"
                )
        elif event.kind == "log":
            self._close()
            print(f"   {data.get('message', '')}")
        elif event.kind == "end":
            self._close()
            print(f"   done in {data.get('seconds', 0.0):.1f} s", flush=True)

    def _bar(self, stage: str, total: int, done: int, data: dict[str, Any]) -> None:
        if not self.bars:
            return
        if self.bar is None or self.bar.total != total:
            self._close()
            unit = "cells" if stage in ("program", "fine_tune") and "iteration" in data else "step"
            self.bar = tqdm(total=total, desc=f"   {stage}", unit=unit, leave=False)
        self.bar.n = done
        self.bar.refresh()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_pipeline_command(args: argparse.Namespace) -> int:
    from instruments import open_crossbar
    from xbarlab.pipeline import Cancelled, Pipeline, open_session

    command = args.command
    session = args.session
    if session is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        session = Path("runs") / f"demo-{stamp}.h5"
    existing = Path(session).exists()
    from xbarlab.store import SessionStore

    if command != "demo" and not existing:
        raise SystemExit(
            f"xbarlab {command}: session {session} does not exist; run `xbarlab characterize "
            f"--session {session}` (or `xbarlab demo --session {session}`) first"
        )
    store = SessionStore.open(session, writable=True) if existing else None
    config = pipeline_config(args, store)
    if store is None:
        store = open_session(session, config)
    stages = _stages_for(command, args)
    started = time.perf_counter()
    printer = ProgressPrinter(args.quiet)
    print(f"xbarlab {command}: session {session}, instrument {_instrument_name(config)}")
    stop = StopFlag()
    try:
        with stop.installed(), store, open_crossbar(config.instrument) as crossbar:
            stop.crossbar = crossbar
            pipeline = Pipeline(config, store, crossbar, on_event=printer, should_stop=stop)
            summary = pipeline.run(stages)
            printer._close()
            if command == "demo":
                figures = args.figures or Path(session).with_suffix("")
                written = write_figures(store, figures)
                print_summary(summary, pipeline.stage_times, time.perf_counter() - started)
                print(f"session file: {session}")
                print("figures: " + ", ".join(str(p) for p in written))
            else:
                print_summary(summary, pipeline.stage_times, time.perf_counter() - started)
    except Cancelled as error:
        printer._close()
        print(f"xbarlab: stopped ({error}); outputs are off, session {session} is consistent")
        return 130
    return 0


def _stages_for(command: str, args: argparse.Namespace) -> tuple[str, ...]:
    from xbarlab.pipeline import STAGES

    if command == "demo":
        return STAGES
    if command == "train":
        return ("train",)
    if command == "evaluate" and args.fine_tune:
        return ("evaluate", "fine_tune")
    return STAGE_COMMANDS[command]


def _instrument_name(config: Any) -> str:
    instrument = config.instrument
    if isinstance(instrument, dict):
        return str(instrument.get("name", "inline config"))
    return str(instrument)


# -- output -------------------------------------------------------------------------------------


def print_summary(summary: dict[str, Any], stage_times: dict[str, float], wall: float) -> None:
    """The accuracy, mapping-error, power and timing tables of a run."""
    from xbarlab.pipeline import ACCURACY_STAGES

    runs = [name for name in ("main", "fine_tuned") if name in summary]
    if runs:
        rows = []
        for stage in ACCURACY_STAGES:
            values = [summary[run]["accuracy"].get(stage) for run in runs]
            rows.append([stage, *("n/a" if v is None else f"{100 * v:.2f} %" for v in values)])
        for label, key in (("power (device-only)", "power_w"), ("TOPS/W", "tops_per_watt")):
            for source in ("fitted model", "read-back"):
                values = [summary[run][key].get(source) for run in runs]
                unit = " W" if key == "power_w" else ""
                rows.append(
                    [f"{label}, {source}", *(f"{v:.4g}{unit}" if v else "n/a" for v in values)]
                )
        headers = [
            "test accuracy",
            *("deployed" if r == "main" else "after fine-tune" for r in runs),
        ]
        print_table(headers, rows)
        mapping = [summary[run]["mapping"] for run in runs]
        mapping_rows = [
            ["cells programmed", *(str(m["cells"]) for m in mapping)],
            ["mean relative error", *(f"{100 * m['mean_relative_error']:.2f} %" for m in mapping)],
            [
                "95th pct relative error",
                *(f"{100 * m['p95_relative_error']:.2f} %" for m in mapping),
            ],
            [
                "mean |error| / window",
                *(f"{100 * m['mean_error_over_window']:.2f} %" for m in mapping),
            ],
            [
                "within tolerance",
                *(
                    f"{100 * m['within_tolerance']:.1f} % (±{100 * m['tolerance']:.0f} %)"
                    for m in mapping
                ),
            ],
            [
                "pulses per cell (mean / max)",
                *(f"{m['mean_pulses']:.1f} / {m['max_pulses']}" for m in mapping),
            ],
            [
                "stuck cells",
                *(f"{m['stuck_cells']} ({100 * m['stuck_fraction']:.1f} %)" for m in mapping),
            ],
            ["bus round trips", *(str(m["bus_round_trips"]) for m in mapping)],
            [
                "accuracy drop, fitted model -> chip",
                *(f"{100 * m['accuracy_drop_software_to_chip']:.2f} points" for m in mapping),
            ],
        ]
        title = "mapping (read-back vs target; errors: non-stuck cells)"
        print_table([title, *headers[1:]], mapping_rows)
    if stage_times:
        rows = [[stage, f"{seconds:.1f}"] for stage, seconds in stage_times.items()]
        rows.append(["total (with setup)", f"{wall:.1f}"])
        print_table(["stage", "wall time (s)"], rows)


def write_figures(store: Any, folder: Path) -> list[Path]:
    """Target / achieved / error maps, error histogram and accuracy per stage, as PNG."""
    from xbarlab import figures

    folder.mkdir(parents=True, exist_ok=True)
    program = store.read_stage("deployments/main/program")
    readback = store.read_stage("deployments/main/readback").arrays["conductances"]
    fitted = store.read_stage("models/fitted").attrs["training_device_model"]
    targets = program.arrays["targets"]
    window = (float(fitted["g_off"]), float(fitted["g_on"]))
    tolerance = float(program.attrs["write_verify"].get("relative_tolerance", 0.02))
    written = [
        figures.conductance_maps(targets, readback, window, folder / "maps.png"),
        figures.error_histogram(targets, readback, tolerance, folder / "error_histogram.png"),
    ]
    accuracies: dict[str, float] = {}
    for run, label in (("main", ""), ("fine_tuned", " (fine-tuned)")):
        if store.status(f"evaluations/{run}") == "complete":
            for stage, value in store.read_stage(f"evaluations/{run}").attrs["accuracy"].items():
                if run == "main" or stage in ("read-back", "on chip"):
                    accuracies[stage + label] = value
    written.append(figures.accuracy_per_stage(accuracies, folder / "accuracy.png"))
    return written


# -- read, emulate, gui -------------------------------------------------------------------------


def command_read(args: argparse.Namespace) -> int:
    from instruments import open_crossbar
    from xbarlab.store import SessionStore

    sweep = None
    with open_crossbar(args.instrument) as crossbar:
        v_read = args.v_read if args.v_read is not None else crossbar.v_read
        conductances = crossbar.read_all(v_read)
        record = crossbar.record()
        if args.iv:
            from instruments.characterize import iv_sweeps

            try:
                row, col = (int(v) for v in args.iv.split(","))
            except ValueError:
                raise SystemExit(f"xbarlab read: --iv {args.iv!r}: expected ROW,COL") from None
            sweep = iv_sweeps(crossbar, [(row, col)], v_max=args.iv_v_max, points=args.iv_points)
    rows = [
        ["shape", f"{conductances.shape[0]} x {conductances.shape[1]}"],
        ["v_read", f"{v_read:g} V"],
        [
            "min / median / max",
            " / ".join(f"{v:.4g} S" for v in np.percentile(conductances, [0, 50, 100])),
        ],
    ]
    print_table(["read", "value"], rows)
    if sweep is not None:
        print_table(
            ["V", "I (A)"],
            [
                [f"{v:+.3f}", f"{i:+.4e}"]
                for v, i in zip(sweep.voltages, sweep.currents[0], strict=True)
            ],
        )
    if args.output is not None:
        np.save(args.output, conductances)
        print(f"map written to {args.output}")
    if args.session is not None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
        with SessionStore.open_or_create(args.session) as store:
            store.write_stage(
                f"reads/{stamp}",
                {"conductances": conductances},
                attrs={"v_read": v_read, "instrument": record},
                units={"conductances": "S"},
            )
        print(f"stored as reads/{stamp} in {args.session}")
    return 0


def command_emulate(args: argparse.Namespace) -> int:
    from instruments.emulators.launch import emulated_config, start_emulators
    from instruments.factory import load_instrument_config

    mapping, where = load_instrument_config(args.config)
    lab = start_emulators(mapping, where)
    try:
        print(f"emulators for {args.config} (Ctrl-C to stop):")
        for name, resource in lab.resources.items():
            print(f"  {name}: {resource}")
        if args.client_config is not None:
            client = emulated_config(mapping, lab)
            client["emulate"] = False
            client.pop("emulator", None)
            args.client_config.write_text(toml_text(client))
            print(f"  client config: {args.client_config}")
        print("ready")
        sys.stdout.flush()
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping emulators")
    finally:
        lab.stop()
    return 0


def toml_text(table: dict[str, Any], prefix: str = "") -> str:
    """A minimal TOML writer for instrument configs: scalars, lists of scalars, nested tables."""
    scalars, tables = [], []
    for key, value in table.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            scalars.append(f"{key} = {_toml_value(value)}")
    text = "\n".join(scalars) + ("\n" if scalars else "")
    for key, value in tables:
        name = f"{prefix}.{key}" if prefix else key
        text += f"\n[{name}]\n" + toml_text(value, name)
    return text


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def dispatch(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int | None:
    """Run a session command; None if args.command is not one of them."""
    if args.command in ("demo", "characterize", "program", "evaluate"):
        return run_pipeline_command(args)
    if args.command == "train" and getattr(args, "session", None) is not None:
        return run_pipeline_command(args)
    if args.command == "read":
        return command_read(args)
    if args.command == "emulate":
        return command_emulate(args)
    return None
