"""Kill a programming run (a separate process, SIGKILL) and resume it from the session file.

The chip lives in a third process (`xbarlab emulate`), as a real chip outlives the program that
drives it: the killed client's progress is in the session file, the chip keeps its state, and
the resumed run must not reprogram finished cells nor lose anything measured before the kill.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from emulated_setups import emulated_setup

from instruments import open_crossbar
from instruments.program import FINISHED_CODES
from xbarlab.config import read_toml
from xbarlab.pipeline import Pipeline, PipelineConfig
from xbarlab.session_cli import toml_text
from xbarlab.store import SessionStore

pytestmark = pytest.mark.slow


def pipeline_source(instrument_path):
    return {
        "name": "crash test",
        "instrument": str(instrument_path),
        "experiment": {
            "data": {"dataset": "digits", "limit_train": 600},
            "network": {"hidden": [4], "seed": 0},  # crossbars 65 x 8 and 5 x 20: 70 x 28
            "training": {"epochs": 3, "optimizer": "adam", "learning_rate": 0.02},
        },
        "characterize": {"parts": ["map"], "map_averages": 1},
        "write_verify": {"pulse_width": 1e-4},
    }


def start_emulator(config_path, client_path):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xbarlab",
            "emulate",
            "--config",
            str(config_path),
            "--client-config",
            str(client_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if line.strip() == "ready":
            return process
    process.kill()
    raise RuntimeError("the emulator process did not start")


def test_sigkill_mid_programming_then_resume(tmp_path):
    emulator_config = tmp_path / "emulated.toml"
    emulator_config.write_text(toml_text(emulated_setup()))
    client = tmp_path / "client.toml"
    emulator = start_emulator(emulator_config, client)
    session = tmp_path / "session.h5"
    pipeline_toml = tmp_path / "pipeline.toml"
    pipeline_toml.write_text(toml_text(pipeline_source(client)))
    try:
        config = PipelineConfig.from_config(read_toml(pipeline_toml), "pipeline.toml")
        with (
            open_crossbar(client) as crossbar,
            SessionStore.create(session, {"session_name": "crash"}) as store,
        ):
            Pipeline(config, store, crossbar).run(("characterize", "train"))
        programmer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xbarlab",
                "program",
                "--session",
                str(session),
                "--config",
                str(pipeline_toml),
                "--quiet",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        finished = 0
        while time.monotonic() < deadline and programmer.poll() is None:
            time.sleep(0.2)
            try:
                with SessionStore.open(session) as viewer:
                    if viewer.status("deployments/main/program") != "in_progress":
                        continue
                    status = viewer.read_stage("deployments/main/program").arrays["status"]
            except Exception:  # the writer may be mid-flush: look again
                continue
            finished = int(np.isin(status, FINISHED_CODES).sum())
            if finished >= 100:
                break
        assert programmer.poll() is None, "programming ended before it could be killed"
        os.kill(programmer.pid, signal.SIGKILL)
        programmer.wait(timeout=10)

        with SessionStore.open(session, writable=True) as store:
            assert store.status("deployments/main/program") == "in_progress"
            assert store.status("training/main") == "complete"
            before = store.read_stage("deployments/main/program").arrays
            done = np.isin(before["status"], FINISHED_CODES)
            targets = np.isfinite(before["targets"])
            assert 100 <= done.sum() < targets.sum()
            with open_crossbar(client) as crossbar:
                Pipeline(config, store, crossbar).run(("program",))
                # the resumed client pulsed no finished cell: its ledger counts only the others
                assert crossbar.ledger.counts[done].sum() == 0
            after = store.read_stage("deployments/main/program")
            assert after.attrs["status"] == "complete"
            # nothing measured before the kill was lost or redone
            np.testing.assert_array_equal(after.arrays["pulses"][done], before["pulses"][done])
            np.testing.assert_array_equal(after.arrays["achieved"][done], before["achieved"][done])
            np.testing.assert_array_equal(after.arrays["status"][done], before["status"][done])
            assert np.isin(after.arrays["status"][targets], FINISHED_CODES).all()
            assert store.status("deployments/main/readback") == "complete"
    finally:
        emulator.send_signal(signal.SIGINT)
        try:
            emulator.wait(timeout=10)
        except subprocess.TimeoutExpired:
            emulator.kill()
