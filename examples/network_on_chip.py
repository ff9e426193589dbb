"""Train a small network for a chip, put it on the chip, and evaluate it there.

Uses the pipeline API stage by stage on the simulated chip (offline): characterise and fit,
train aware of the fitted model, write-verify, evaluate four ways. The session file holds
every stage; `xbarlab evaluate --session FILE` could continue from it.

    python examples/network_on_chip.py [SESSION.h5]
"""

import sys
from pathlib import Path

from instruments import open_crossbar
from xbarlab.config import config_directory, read_toml
from xbarlab.pipeline import Pipeline, PipelineConfig
from xbarlab.store import SessionStore


def small_pipeline() -> dict:
    """digits 64-8-10 on an 80 x 40 simulated SiOx chip, a few epochs."""
    instrument = read_toml(config_directory() / "instruments" / "simulated-siox-high-r-32x32.toml")
    instrument["chip"] = {**instrument["chip"], "rows": 80, "cols": 40}
    return {
        "name": "network on chip example",
        "instrument": instrument,
        "experiment": {
            "data": {"dataset": "digits"},
            "network": {"hidden": [8], "seed": 0},
            "training": {"epochs": 10, "optimizer": "adam", "learning_rate": 0.02},
        },
        "characterize": {"pulse_cells": 32, "iv_cells": 8, "noise_reads": 4},
        "evaluate": {"repeats": 2},
    }


def main(session_path: Path) -> None:
    config = PipelineConfig.from_config(small_pipeline(), "example")
    with (
        open_crossbar(config.instrument) as crossbar,
        SessionStore.create(session_path) as store,
    ):
        pipeline = Pipeline(config, store, crossbar)
        pipeline.run(("characterize", "train", "program", "evaluate"))
        result = store.read_stage("evaluations/main").attrs
    for stage, accuracy in result["accuracy"].items():
        print(f"{stage:>14}: {accuracy:.1%}")
    print(f"mean mapping error {result['mapping']['mean_relative_error']:.2%}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/network-on-chip.h5"))
