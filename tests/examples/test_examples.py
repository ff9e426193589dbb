"""The scripts in examples/ run as a user would run them, against the simulated chip."""

import subprocess
import sys
from pathlib import Path

import pytest

from xbarlab.store import SessionStore

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.slow


def run(script: str, session: Path) -> str:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / script), str(session)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


def test_program_a_map(tmp_path):
    output = run("program_a_map.py", tmp_path / "s.h5")
    assert "column medians rise left to right: True" in output
    within = float(output.split("% within tolerance")[0].rsplit(", ", 1)[1])
    assert within >= 97.0
    with SessionStore.open(tmp_path / "s.h5") as store:
        assert store.stages() == ["characterisation", "deployments/gradient", "reads/after"]


def test_network_on_chip(tmp_path):
    output = run("network_on_chip.py", tmp_path / "s.h5")
    accuracies = {
        line.split(":")[0].strip(): float(line.split(":")[1].strip(" %\n"))
        for line in output.splitlines()
        if line.strip().startswith(("ideal", "fitted", "read-back", "on chip"))
    }
    assert set(accuracies) == {"ideal", "fitted model", "read-back", "on chip"}
    assert accuracies["on chip"] > 60.0
    assert abs(accuracies["on chip"] - accuracies["read-back"]) < 6.0
