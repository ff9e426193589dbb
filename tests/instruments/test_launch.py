"""The emulator launcher: chip + bench + servers from an instrument config, crossbars on them."""

import socket
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest

from instruments import open_crossbar
from instruments.composite import SmuMatrixCrossbar
from instruments.crossbar import BiasScheme
from instruments.drivers.transport import VisaTransport
from instruments.emulators.launch import emulated_config, open_emulated, start_emulators
from simulation.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs/instruments"


def load(name):
    with (CONFIGS / name).open("rb") as handle:
        return tomllib.load(handle)


def small_twin(rows=2, cols=3, link="tsp-link"):
    config = load("keithley2600-707b-emulated.toml")
    config["channel_map"] = {
        "word_lines": [f"1/{i + 1:02d}" for i in range(rows)],
        "bit_lines": [f"3/{j + 1:02d}" for j in range(cols)],
    }
    config["emulator"]["chip"].update(rows=rows, cols=cols)
    config["matrix"]["link"] = link
    if link == "bus":
        config["matrix"]["resource"] = "TCPIP::127.0.0.1::0::SOCKET"
    return config


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def reachable(resource):
    port = int(resource.split("::")[2])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_tsp_link_lab_serves_only_the_smu():
    config = small_twin()
    with start_emulators(config, "twin:") as lab:
        assert set(lab.resources) == {"smu"} and lab.chip.shape == (2, 3)
        assert lab.emulators["smu"].nodes[2] is lab.emulators["matrix"]
        assert lab.emulators["matrix"].rows == {"A": "smu.a", "B": "smu.b", "C": "gnd"}
        assert lab.emulators["matrix"].columns[(3, 2)] == ("bit", 1)
        transport = VisaTransport("smu", lab.resources["smu"], timeout=2.0)
        assert "2636B" in transport.query("*IDN?")
        assert transport.query("print(node[2].model)") == "707B"
        transport.close()
        rewritten = emulated_config(config, lab)
        assert rewritten["smu"]["resource"] == lab.resources["smu"]
        assert config["smu"]["resource"] != lab.resources["smu"]  # the input is not modified
    assert not reachable(lab.resources["smu"])


def test_bus_lab_serves_both_on_configured_ports():
    config = small_twin(link="bus")
    port = free_port()
    config["emulator"]["ports"] = {"smu": port}
    with start_emulators(config, "twin:") as lab:
        assert lab.resources["smu"] == f"TCPIP::127.0.0.1::{port}::SOCKET"
        assert reachable(lab.resources["matrix"])
        transport = VisaTransport("matrix", lab.resources["matrix"], timeout=2.0)
        assert "Model 707B" in transport.query("*IDN?")
        transport.close()


def test_open_crossbar_on_the_twin_and_close_stops_the_emulators():
    crossbar = open_crossbar(small_twin())
    resource = crossbar.emulation.resources["smu"]
    with crossbar:
        assert isinstance(crossbar, SmuMatrixCrossbar) and crossbar.shape == (2, 3)
        assert crossbar.bias_scheme == BiasScheme.HALF
        truth = crossbar.emulation.chip.conductances(0.1)
        np.testing.assert_allclose(crossbar.read_all(), truth, rtol=0.1)
        assert reachable(resource)
    assert crossbar.emulation.stopped and not reachable(resource)


def test_full_size_twin_file_opens():
    with open_crossbar(CONFIGS / "keithley2600-707b-emulated.toml") as crossbar:
        assert crossbar.shape == (32, 32)
        assert crossbar.record()["channel_map"]["bit_lines"][-1] == "6/08"
        row = crossbar.read_row(31)
        np.testing.assert_allclose(row, crossbar.emulation.chip.conductances(0.1)[31], rtol=0.1)


class UniformChip:
    """Every device G (S), ohmic; floating lines solved by Kirchhoff's current law."""

    def __init__(self, rows, cols, g):
        self.g = np.full((rows, cols), g)
        self.shape = (rows, cols)
        self.lock = threading.RLock()

    def drive(self, word, bit, duration):
        rows, cols = self.shape
        v = np.concatenate([np.asarray(word, float), np.asarray(bit, float)])
        free = np.isnan(v)
        lap = np.zeros((rows + cols, rows + cols))
        lap[:rows, rows:], lap[rows:, :rows] = -self.g, -self.g.T
        lap[np.diag_indices_from(lap)] = -lap.sum(axis=1)
        if free.any():
            a = lap[np.ix_(free, free)] + 1e-15 * np.eye(free.sum())
            v[free] = np.linalg.solve(a, -lap[np.ix_(free, ~free)] @ v[~free])
        cell = self.g * (v[:rows, None] - v[None, rows:])
        return np.where(free[:rows], 0, cell.sum(1)), np.where(free[rows:], 0, -cell.sum(0))


def test_one_channel_smu_on_its_own_bus_reads_with_sneak_paths():
    """A 2450 (one channel) + 707B on separate buses: the drive channel measures, the other
    lines float; on a uniform 2x2 chip the sneak path (three devices in series) adds G/3."""
    config = small_twin(rows=2, cols=2, link="bus")
    config["smu"] = {
        "driver": "keithley2450",
        "resource": "TCPIP::127.0.0.1::0::SOCKET",
        "timeout": 2.0,
        "drive_channel": "1",
    }
    config["matrix"]["rows"] = {"A": "drive", "C": "gnd"}
    del config["bias_scheme"]
    g = 2e-6
    with open_emulated(config, "2450:", chip=UniformChip(2, 2, g)) as crossbar:
        assert crossbar.bias_scheme == BiasScheme.FLOATING
        assert BiasScheme.HALF not in crossbar.capabilities.bias_schemes
        assert crossbar.read_cell(1, 0, v_read=0.2) == pytest.approx(4 / 3 * g, rel=1e-3)
        assert "MODEL 2450" in crossbar.identity["smu"]


def test_smu_mux_backend_is_launched_too():
    config = load("mux-board-2450-emulated.toml")
    config["chip"].update(rows=4, cols=4)
    config["channel_map"] = {"word_lines": {"first": 0, "count": 4}}
    config["channel_map"]["bit_lines"] = {"first": 0, "count": 4}
    with start_emulators(config, "mux:") as lab:
        assert lab.resources["mux"].startswith("socket://127.0.0.1:")
        assert emulated_config(config, lab)["board"]["port"] == lab.resources["mux"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("emulator"), r"needs an \[emulator.chip\]"),
        (lambda c: c["emulator"].update(speed=2), "unknown key"),
        (lambda c: c["emulator"].update(ports={"smu": -1}), "ports.smu"),
        (lambda c: c.update(backend="simulated"), "backend"),
    ],
)
def test_bad_emulator_tables_name_the_key(change, message):
    config = small_twin()
    change(config)
    with pytest.raises(ConfigError, match=message):
        start_emulators(config, "twin:")
