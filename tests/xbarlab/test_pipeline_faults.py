"""Bad inputs and failing instruments: clear errors, outputs off, no half-written stage."""

import subprocess
import sys

import pytest
from emulated_setups import emulated_setup

from instruments import open_crossbar
from instruments.drivers.transport import InstrumentError
from xbarlab.pipeline import Pipeline, PipelineConfig
from xbarlab.store import SessionStore


def test_an_instrument_that_stops_answering_mid_stage(tmp_path):
    instrument = emulated_setup(6, 6)
    instrument["smu"]["timeout"] = 1.0
    config = PipelineConfig.from_config(
        {"instrument": instrument, "characterize": {"parts": ["map"]}}, "test"
    )
    with (
        open_crossbar(instrument) as crossbar,
        SessionStore.create(tmp_path / "s.h5") as store,
    ):
        lab = crossbar.emulation
        lab.emulators["smu"].inject_fault("silence")
        with pytest.raises(InstrumentError) as caught:
            Pipeline(config, store, crossbar).run(("characterize",))
        message = str(caught.value)
        assert caught.value.instrument == "smu" and "xbl_readall" in message
        assert "no reply within" in message
        assert store.status("characterisation") is None  # nothing half-written
        assert store.events()[-1]["event"] == "stage_failed"
        assert not any(state.output_on for state in lab.bench.channels.values())


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "xbarlab", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_names_a_corrupted_session_and_a_missing_one(tmp_path):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    result = run_cli("evaluate", "--session", str(broken))
    assert result.returncode == 2
    assert "corrupted or truncated" in result.stderr and str(broken) in result.stderr
    missing = run_cli("program", "--session", str(tmp_path / "none.h5"))
    assert missing.returncode != 0
    assert "does not exist" in missing.stderr + missing.stdout


def test_cli_rejects_a_bad_pipeline_config_naming_file_and_key(tmp_path):
    config = tmp_path / "pipeline.toml"
    config.write_text('name = "x"\n[write_verify]\nrelative_tolerance = "tight"\n')
    result = run_cli("demo", "--config", str(config), "--session", str(tmp_path / "s.h5"))
    assert result.returncode == 2
    assert str(config) in result.stderr and "relative_tolerance" in result.stderr
    assert not (tmp_path / "s.h5").exists()


def test_ctrl_c_stops_programming_cleanly_and_the_run_resumes(tmp_path):
    import os
    import signal
    import time

    from xbarlab.session_cli import toml_text

    instrument = emulated_setup(6, 6)  # only for its limits and read settings
    simulated = {
        "backend": "simulated",
        "bias_scheme": "v/2",
        "read_bias_scheme": "grounded",
        "limits": instrument["limits"] | {"min_pulse_width": 1e-6, "max_read_voltage": 0.5},
        "chip": {"rows": 80, "cols": 40, "seed": 5, "device": "siox-high-r"},
    }
    source = {
        "name": "ctrl-c",
        "instrument": simulated,
        "experiment": {
            "data": {"dataset": "digits", "limit_train": 400},
            "network": {"hidden": [8]},
            "training": {"epochs": 2},
        },
        "characterize": {"parts": ["map"]},
        # slow enough to be interrupted: tight tolerance, one pulse per iteration and cell
        "write_verify": {"relative_tolerance": 0.005, "max_pulses": 200},
    }
    (tmp_path / "pipeline.toml").write_text(toml_text(source))
    config = PipelineConfig.from_config(source, "test")
    session = tmp_path / "s.h5"
    with open_crossbar(simulated) as crossbar, SessionStore.create(session) as store:
        Pipeline(config, store, crossbar).run(("characterize", "train"))
    process = subprocess.Popen(
        [sys.executable, "-m", "xbarlab", "program", "--session", str(session), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            with SessionStore.open(session) as viewer:
                if viewer.status("deployments/main/program") == "in_progress":
                    break
        except Exception:  # mid-flush: look again
            continue
    # Ctrl-Z: outputs off at the next safe point, then the process suspends itself.
    os.kill(process.pid, signal.SIGTSTP)
    assert _wait_for_state(process.pid, "T"), "the run did not suspend after SIGTSTP"
    with SessionStore.open(session) as viewer:
        assert viewer.status("deployments/main/program") == "in_progress"
    os.kill(process.pid, signal.SIGCONT)  # `fg`
    assert _wait_for_state(process.pid, "RSD"), "the run did not continue after SIGCONT"
    os.kill(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-1000:]
    assert "paused at a safe point, outputs off" in stderr and "resumed" in stderr
    assert "outputs are off" in stdout and "consistent" in stdout
    with SessionStore.open(session, writable=True) as store:
        assert store.status("deployments/main/program") == "in_progress"
        assert store.events()[-1]["event"] == "stage_stopped"


def _wait_for_state(pid: int, states: str, timeout_s: float = 60.0) -> bool:
    """Wait until /proc says process pid is in one of `states` (R, S, D, T, ...)."""
    import time
    from pathlib import Path

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in states:
            return True
        time.sleep(0.05)
    return False
