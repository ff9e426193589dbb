"""Helpers of the GUI tests: a small simulated chip and pipeline, an event-loop wait, a crossbar
factory that keeps what it opened."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instruments import open_crossbar
from instruments.factory import CONFIG_DIR
from xbarlab.config import read_toml
from xbarlab.pipeline import PipelineConfig


def small_instrument() -> dict[str, Any]:
    """The 128x128 simulated SiOx config cut down to 72x32 (the test network's size)."""
    config = read_toml(CONFIG_DIR / "simulated-siox-high-r-128x128.toml")
    config["name"] = "Simulated SiOx high-R 72x32 (GUI tests)"
    config["chip"]["rows"], config["chip"]["cols"] = 72, 32
    return config


def small_pipeline(epochs: int = 3, fine_tune_epochs: int = 2) -> PipelineConfig:
    return PipelineConfig.from_config(
        {
            "name": "gui-test",
            "instrument": small_instrument(),
            "experiment": {
                "data": {"dataset": "digits", "limit_train": 300, "limit_test": 200},
                "network": {"kind": "mlp", "hidden": [6], "activation": "sigmoid", "seed": 0},
                "training": {
                    "epochs": epochs,
                    "batch_size": 64,
                    "learning_rate": 0.01,
                    "seed": 0,
                    "memristive_validation_repeats": 1,
                    "memristive_validation_every": 1,
                },
            },
            "characterize": {"pulse_cells": 8, "iv_cells": 6},
            "deploy": {"tile_rows": 72, "tile_cols": 32},
            "fine_tune": {"epochs": fine_tune_epochs},
            "evaluate": {"repeats": 1, "on_chip_limit": 100},
        },
        "gui test pipeline",
    )


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Run the Qt event loop until predicate() is true; fail after timeout_s."""
    from PyQt6.QtTest import QTest

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        QTest.qWait(10)


@dataclass
class Recorder:
    """A crossbar factory that keeps every crossbar it opened (to check outputs afterwards)."""

    crossbars: list[Any] = field(default_factory=list)

    def __call__(self, config: Any) -> Any:
        crossbar = open_crossbar(config)
        self.crossbars.append(crossbar)
        return crossbar


@dataclass
class FinishedRun:
    window: Any
    session: Path
    recorder: Recorder
    seconds: float
    redraws: int
