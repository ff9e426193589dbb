"""Open a crossbar, characterise it, write-verify a target map, read it back, keep a session.

Runs against the simulated 32x32 SiOx chip; point INSTRUMENT at any config in
configs/instruments/ (an emulated twin, or a real setup) to run the same script on it.

    python examples/program_a_map.py [SESSION.h5]
"""

import sys
from pathlib import Path

import numpy as np

from instruments import open_crossbar
from instruments.characterize import CharacterizeConfig, characterize
from instruments.program import WriteVerifyConfig, program_map
from xbarlab.store import SessionStore

INSTRUMENT = "simulated-siox-high-r-32x32"


def main(session_path: Path) -> None:
    with open_crossbar(INSTRUMENT) as crossbar, SessionStore.create(session_path) as store:
        # 1. characterise: conductance map, stuck scan, pulse response (a few parts only)
        parts = CharacterizeConfig(parts=("map", "stuck_scan", "pulse_response"), pulse_cells=32)
        measured = characterize(crossbar, parts)
        fit = measured.fit(window_coverage=0.95)
        g_off, g_on = fit.g_range.g_off, fit.g_range.g_on
        print(f"window {g_off:.3g} S .. {g_on:.3g} S, {measured.stuck_scan.stuck.sum()} stuck")
        store.write_stage(
            "characterisation",
            {"map": measured.map.conductances, "stuck": measured.stuck_scan.stuck},
            attrs={"instrument": crossbar.record(), "fitted": fit.to_config()},
            units={"map": "S"},
        )

        # 2. a gradient across the columns, inside the window every device can reach
        rows, cols = crossbar.shape
        targets = np.tile(np.linspace(1.2 * g_off, 0.9 * g_on, cols), (rows, 1))
        result = program_map(crossbar, targets, WriteVerifyConfig(relative_tolerance=0.03))
        summary = result.summary()
        print(
            f"programmed {summary['cells']} cells: "
            f"mean error {summary['mean_relative_error']:.2%}, "
            f"{summary['within_tolerance']:.1%} within tolerance, "
            f"{summary['mean_pulses']:.1f} pulses per cell, {summary['stuck_cells']} stuck"
        )
        store.write_stage("deployments/gradient", result.to_arrays(), attrs=result.metadata())

        # 3. read back the whole array and store it
        readback = crossbar.read_all()
        store.write_stage("reads/after", {"conductances": readback}, units={"conductances": "S"})
        column_medians = np.median(readback, axis=0)  # the median ignores the few stuck cells
        print(f"column medians rise left to right: {bool(np.all(np.diff(column_medians) > 0))}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/program-a-map.h5"))
