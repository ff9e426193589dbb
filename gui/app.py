"""`xbarlab gui`: open the lab bench window.

    xbarlab gui                          the window
    xbarlab gui --session FILE.h5        review a past session read-only
    xbarlab gui --screenshot FILE.png    run the demo flow (configs/pipelines/demo.toml) on the
                                         simulated chip, save a screenshot of the window when it
                                         is done, print the longest event-loop stalls, exit
    xbarlab gui --session FILE.h5 --screenshot FILE.png   screenshot of a session, exit

Without a display, --screenshot uses Qt's offscreen platform.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from xbarlab.config import config_directory

DEFAULT_PIPELINE = "demo"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xbarlab gui",
        description="The lab bench window: live conductance maps, mapping error and accuracy.",
    )
    parser.add_argument("--session", type=Path, help="open a session file read-only")
    parser.add_argument(
        "--screenshot",
        type=Path,
        metavar="FILE.png",
        help="run the demo flow on the simulated chip (or show --session), save a screenshot "
        "of the window, exit",
    )
    parser.add_argument(
        "--pipeline",
        default=DEFAULT_PIPELINE,
        help="run config for --screenshot: a name in configs/pipelines or a TOML path "
        f"(default: {DEFAULT_PIPELINE})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE.h5",
        help="session file the --screenshot run writes (default: a temporary file)",
    )
    parser.add_argument(
        "--views",
        type=Path,
        metavar="DIR",
        help="with --screenshot: also save each view (maps, mapping error, accuracy, cell, "
        "controls, log) as DIR/NAME.png",
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds the --screenshot run may take"
    )
    return parser


def _pipeline_path(text: str) -> Path:
    path = Path(text)
    if path.suffix == ".toml" or path.parent != Path("."):
        return path
    return config_directory() / "pipelines" / f"{text}.toml"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    headless = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if args.screenshot is not None and headless and sys.platform.startswith("linux"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from PyQt6.QtCore import QTimer
    from PyQt6.QtWidgets import QApplication

    from gui.main_window import MainWindow

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "xbarlab"])
    window = MainWindow()
    window.resize(1680, 1050)
    window.show()
    opened = args.session is None or window.open_session(args.session)
    if not opened and args.screenshot is not None:
        print(f"xbarlab gui: cannot open {args.session}", file=sys.stderr)
        _retire(app, window)
        return 2
    if args.screenshot is None:
        # Ctrl-C in the terminal closes the window (outputs off) instead of being ignored.
        signal.signal(signal.SIGINT, lambda *_: window.close())
        keepalive = QTimer()
        keepalive.timeout.connect(lambda: None)
        keepalive.start(200)
        return app.exec()
    try:
        if args.session is None:
            status = _run_demo(app, window, args)
            if status:
                return status
        else:
            _select_worst_cell(window)
        window.redraw()
        app.processEvents()
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        if not window.grab().save(str(args.screenshot)):
            print(f"xbarlab gui: could not write {args.screenshot}", file=sys.stderr)
            return 1
        print(f"screenshot: {args.screenshot}")
        if args.views is not None:
            for path in save_views(window, args.views):
                print(f"view: {path}")
        return 0
    finally:
        _retire(app, window)


_RETIRED: list[object] = []
"""Closed windows of in-process calls (tests, scripts) are kept until the interpreter exits:
destroying a window's C++ side while its plot items still have events queued crashes Qt."""


def _retire(app, window) -> None:
    window.close()
    app.processEvents()
    _RETIRED.append(window)


def _run_demo(app, window, args: argparse.Namespace) -> int:
    """Run the pipeline config through the window and wait for the end; 0 if it finished."""
    temporary = None
    session = args.out
    if session is None:
        temporary = tempfile.TemporaryDirectory(prefix="xbarlab-gui-")
        session = Path(temporary.name) / "gui-demo.h5"
    try:
        job = window.start_run(_pipeline_path(args.pipeline), session=session)
        if job is None:
            return 2
        deadline = time.monotonic() + args.timeout
        while window.running and time.monotonic() < deadline:
            app.processEvents()
            time.sleep(0.005)
        if window.running:
            window.abort()
            print(f"xbarlab gui: the run took longer than {args.timeout:g} s", file=sys.stderr)
            return 1
        if window.errors:
            print(f"xbarlab gui: {window.errors[-1].message}", file=sys.stderr)
            return 1
        cell = _select_worst_cell(window)
        if cell is not None and window.connection_info is not None:
            window.iv_sweep(cell[0], cell[1], 0.5, 11)
            while window.cell.iv_data is None and not window.errors:
                if time.monotonic() > deadline:
                    break
                app.processEvents()
                time.sleep(0.005)
        for stage, stall in window.stall.longest_ms.items():
            print(f"longest event-loop stall during {stage}: {stall:.1f} ms")
        return 0
    finally:
        if temporary is not None:
            window.worker.abort()
            temporary.cleanup()


def _select_worst_cell(window) -> tuple[int, int] | None:
    """Show the main deployment and select its cell that took the most pulses (a history worth
    seeing in the screenshot)."""
    import numpy as np

    deployment = window.state.deployments.get("main")
    if deployment is None or deployment.pulses is None:
        return None
    window.maps.source.setCurrentText("deployment main")
    flat = int(np.argmax(deployment.pulses))
    row, col = (int(v) for v in np.unravel_index(flat, deployment.pulses.shape))
    window.maps.select_cell(row, col)
    window.redraw()
    return row, col


def save_views(window, folder: Path) -> list[Path]:
    """Grab the window and each of its views to PNG files in `folder`; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    window.redraw()
    views = {
        "main-window": window,
        "maps": window.maps,
        "mapping-error": window.mapping,
        "accuracy": window.accuracy,
        "cell": window.cell,
        "controls": window.controls_widget,
        "log": window.log,
    }
    paths = []
    for name, widget in views.items():
        path = folder / f"{name}.png"
        if widget.grab().save(str(path)):
            paths.append(path)
    return paths


if __name__ == "__main__":
    raise SystemExit(main())
