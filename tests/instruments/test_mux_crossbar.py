"""SmuMuxCrossbar through the real drivers and emulators: a Keithley 2450 emulator and the mux
board emulator over localhost TCP, both on one SimulatedChip, with a scrambled channel map on a
non-square chip (3 x 5 on board word lines 5, 0, 3 and bit lines 1, 7, 2, 4, 6)."""

from __future__ import annotations

import contextlib
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instruments.chip import SimulatedChip
from instruments.crossbar import BiasScheme
from instruments.drivers.transport import (
    ConnectionLost,
    IdentityMismatch,
    InstrumentError,
    InstrumentTimeout,
)
from instruments.emulators.bench import Bench
from instruments.emulators.keithley2450 import Keithley2450Emulator
from instruments.emulators.mux_board import MuxBoardServer, serve_mux_board
from instruments.emulators.server import EmulatorServer
from instruments.limits import LimitError
from instruments.mux_crossbar import MuxCrossbarSettings, SmuMuxCrossbar
from simulation.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "instruments"
WORD_LINES = [5, 0, 3]
BIT_LINES = [1, 7, 2, 4, 6]
QUIET_CHIP = {
    "rows": 3,
    "cols": 5,
    "seed": 3,
    "d2d_sigma": 0.0,
    "stuck_off_fraction": 0.0,
    "stuck_on_fraction": 0.0,
    "stuck_random_fraction": 0.0,
    "read_noise": 0.0,
    "read_noise_floor": 0.0,
    "threshold_sigma": 0.0,
    "c2c_sigma": 0.0,
    "relaxation_rate": 0.0,
}
WIDTH = 2e-3  # s: the 2450's list-sweep pulses need >= 1 ms


def base_config(**tables: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "backend": "smu-mux",
        "bias_scheme": "v/2",
        "smu": {"driver": "keithley2450", "resource": "TCPIP::127.0.0.1::1::SOCKET"},
        "board": {"port": "socket://127.0.0.1:1", "timeout": 0.5, "watchdog": 5.0},
        "channel_map": {"word_lines": WORD_LINES, "bit_lines": BIT_LINES},
        "limits": {"max_pulse_voltage": 2.0, "compliance_current": 1e-3},
        "read": {"v_read": 0.1, "nplc": 0.01},
    }
    for name, table in tables.items():
        config[name] = {**config.get(name, {}), **table}
    return config


@dataclass
class Rig:
    chip: SimulatedChip
    bench: Bench
    smu_server: EmulatorServer
    board_server: MuxBoardServer
    config: dict[str, Any]

    @property
    def smu(self) -> Keithley2450Emulator:
        return self.smu_server.emulator  # type: ignore[return-value]

    @property
    def board(self):
        return self.board_server.emulator

    def open(self) -> SmuMuxCrossbar:
        return SmuMuxCrossbar.from_config(self.config, "test config:")

    def stop(self) -> None:
        self.smu_server.stop()
        self.board_server.stop()

    def assert_off(self, wait: float = 0.0) -> None:
        """SMU output off and the board SAFE (waiting up to `wait` s for its watchdog)."""
        # The off commands are writes: give the emulator threads a moment to act on them.
        deadline = time.monotonic() + max(wait, 0.5)
        while time.monotonic() < deadline and (
            not self.board.is_safe() or self.bench.channels["smu.1"].output_on
        ):
            time.sleep(0.02)
        assert self.board.is_safe()
        assert not any(self.bench.links.values())
        assert self.bench.fixed["mux.bias1"] == self.bench.fixed["mux.bias2"] == 0.0
        assert not self.bench.channels["smu.1"].output_on


def make_rig(chip: dict[str, Any] | None = None, **tables: dict[str, Any]) -> Rig:
    simulated = SimulatedChip.from_config({**QUIET_CHIP, **(chip or {})})
    bench = Bench(simulated)
    smu_server = EmulatorServer(Keithley2450Emulator(bench))
    # stop() waits out serve_forever's poll interval (0.5 s by default): poll faster here
    smu_server._thread = threading.Thread(
        target=smu_server._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    smu_server.start()
    config = base_config(**tables)
    board_server = serve_mux_board(bench, config)
    config["smu"]["resource"] = smu_server.resource
    config["board"]["port"] = board_server.url
    return Rig(simulated, bench, smu_server, board_server, config)


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = make_rig()
    yield made
    made.stop()


@pytest.fixture
def xbar(rig: Rig) -> Iterator[SmuMuxCrossbar]:
    crossbar = rig.open()
    yield crossbar
    crossbar.close()


def row_currents(chip: SimulatedChip, row: int, col: int, v: float, v_unselected: float):
    """Closed form of the SMU current with word line `row` at v, bit line `col` at 0 and the
    other bit lines at v_unselected (every line driven, no line resistance)."""
    bits = np.full(chip.shape[1], v_unselected)
    bits[col] = 0.0
    return float(chip.device_currents(v - bits)[row].sum())


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"smu": {"resource": None}}, r"smu\.resource: required text is missing"),
        ({"smu": {"driver": "hp4145"}}, r"smu\.driver: 'hp4145' is not a known SMU driver"),
        ({"smu": {"compliance": 5e-3}}, r"smu\.compliance: 0\.005 A exceeds limits"),
        ({"smu": {"colour": 1}}, r"smu: unknown key\(s\) 'colour'"),
        ({"board": {"watchdog": 0.0}}, r"board\.watchdog: 0\.0 is out of range"),
        ({"board": {"port": None}}, r"board\.port: required text is missing"),
        ({"channel_map": {"word_lines": [1, 1]}}, r"word_lines: board lines must be distinct"),
        ({"channel_map": {"bit_lines": [0, -2]}}, r"bit_lines\[1\]: -2 must be an integer >= 0"),
        ({"channel_map": {"bit_lines": None}}, r"channel_map\.bit_lines: required"),
        ({"read": {"v_read": 0.8}}, r"read\.v_read: \|V\| = 0\.8 V exceeds"),
        ({"read": {"routing": "sideways"}}, r"read\.routing: 'sideways' is not allowed"),
        ({"pulse": {"parallel_row": "yes"}}, r"pulse\.parallel_row: expected true or false"),
        ({"limits": {"max_pulse_voltage": -1}}, r"limits\.max_pulse_voltage"),
        ({"bias_scheme": "v/4"}, r"bias_scheme: 'v/4' is not allowed"),
        ({"colour": "red"}, r"unknown key\(s\) 'colour'"),
    ],
)
def test_settings_errors_name_the_key(change: dict[str, Any], message: str) -> None:
    config = base_config()
    for key, value in change.items():
        if isinstance(value, dict):
            for inner, item in value.items():
                if item is None:
                    config[key].pop(inner, None)
                else:
                    config.setdefault(key, {})[inner] = item
        else:
            config[key] = value
    with pytest.raises(ConfigError, match=message) as caught:
        MuxCrossbarSettings.from_config(config, "bench.toml:")
    assert str(caught.value).startswith("bench.toml:")


def test_shipped_configs_parse() -> None:
    for name in ("mux-board-2450", "mux-board-2450-emulated"):
        with (CONFIGS / f"{name}.toml").open("rb") as handle:
            config = tomllib.load(handle)
        settings = MuxCrossbarSettings.from_config(config, name)
        assert config["backend"] == "smu-mux"
        assert settings.word_lines == list(range(32)) and settings.bit_lines == list(range(32))
        assert settings.driver == "keithley2450" and settings.channel == "1"
        assert settings.baudrate == 115200 and settings.bias_scheme is BiasScheme.HALF
        assert settings.smu_options == {"line_frequency": 50.0}


def test_channel_map_beyond_the_board_is_refused(rig: Rig) -> None:
    rig.config["channel_map"]["bit_lines"] = [1, 7, 2, 4, 64]
    with pytest.raises(ConfigError, match=r"channel_map\.bit_lines: board line 64 does not exist"):
        rig.open()
    rig.assert_off()


def test_wrong_board_identity_closes_everything(rig: Rig) -> None:
    rig.board.identity = "acme,relay-box,1,2"
    with pytest.raises(IdentityMismatch, match="acme,relay-box"):
        rig.open()
    rig.assert_off()


# -- description and reads ----------------------------------------------------------------------


def test_identity_capabilities_record(xbar: SmuMuxCrossbar) -> None:
    assert xbar.identity == {
        "smu": Keithley2450Emulator.identity,
        "board": "xbarlab,mux-board,EMU00001,1.0.0",
    }
    caps = xbar.capabilities
    assert (caps.rows, caps.cols) == (3, 5)
    assert caps.parallel_read_rows is False and caps.vmm is False
    assert caps.parallel_pulse_cells == 5
    assert caps.pulse_width_range == (1e-3, 1e-2)  # the 2450's 1 ms floor
    assert caps.voltage_range == (-2.0, 2.0)
    assert set(caps.bias_schemes) == set(BiasScheme)
    assert xbar.bias_scheme is BiasScheme.HALF
    assert xbar.record()["backend"] == "SmuMuxCrossbar"


def test_equipotential_reads_are_each_cell_alone(rig: Rig, xbar: SmuMuxCrossbar) -> None:
    rig.chip.set_state(np.linspace(5e-7, 2.6e-6, 15).reshape(3, 5))  # distinct cells
    truth = rig.chip.conductances(0.1)
    np.testing.assert_allclose(xbar.read_all(), truth, rtol=1e-3)
    np.testing.assert_allclose(xbar.read_row(2), truth[2], rtol=1e-3)
    cells = [(2, 4), (0, 1), (1, 3)]
    conductances, currents = xbar.read_cells(cells, v_read=-0.2, averages=2)
    np.testing.assert_allclose(conductances, [rig.chip.conductances(-0.2)[c] for c in cells], 1e-3)
    np.testing.assert_allclose(currents, conductances * -0.2)
    rig.assert_off()


def test_bias_scheme_reads_add_the_half_selected_row(rig: Rig) -> None:
    rig.config["read"]["routing"] = "bias-scheme"
    with rig.open() as xbar:
        _, currents = xbar.read_cells([(1, 2)], v_read=0.2)
        assert currents[0] == pytest.approx(row_currents(rig.chip, 1, 2, 0.2, 0.1), rel=2e-3)
        xbar.set_bias_scheme("grounded")
        _, currents = xbar.read_cells([(1, 2)], v_read=0.2)
        assert currents[0] == pytest.approx(row_currents(rig.chip, 1, 2, 0.2, 0.0), rel=2e-3)
    assert "ROUTE W0 B2 LO LO" in rig.board.received


# -- pulses -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["checkerboard", "gradient"])
def test_pattern_round_trip_non_square(rig: Rig, xbar: SmuMuxCrossbar, pattern: str) -> None:
    rows, cols = xbar.shape
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    if pattern == "checkerboard":
        counts, amplitude = 2 * ((r + c) % 2 == 0), 1.2  # half-selected 0.6 V < 0.7 V threshold
    else:
        counts, amplitude = r * cols + c, 0.8  # 0 .. 14 partial SET steps
    routes_before = sum(line.startswith("ROUTE") for line in rig.board.received)
    groups = 0
    for step in range(int(counts.max())):
        cells = np.argwhere(counts > step)
        xbar.pulse(cells, amplitude, WIDTH)
        groups += len(np.unique(cells[:, 0]))
    routes = sum(line.startswith("ROUTE") for line in rig.board.received) - routes_before
    assert routes == groups  # one ROUTE + one SMU pulse per row per step
    assert xbar.stats.pulses == int(counts.sum())
    measured = xbar.read_all()
    np.testing.assert_allclose(measured, rig.chip.conductances(0.1), rtol=1e-3)
    state = rig.chip.state()  # the devices' state variable G (S)
    if pattern == "checkerboard":
        assert measured[counts > 0].min() > 3 * measured[counts == 0].max()
        np.testing.assert_allclose(state[counts > 0], rig.chip.g_on[counts > 0], rtol=1e-9)
        # no half-select disturb: the unpulsed cells are still at G_off
        np.testing.assert_allclose(state[counts == 0], rig.chip.g_off[counts == 0], rtol=1e-9)
    else:
        order = np.argsort(state.ravel(), kind="stable")
        np.testing.assert_array_equal(order, np.arange(rows * cols))
        assert np.all(np.diff(state.ravel()) > 0)
    np.testing.assert_array_equal(xbar.ledger.counts, counts)
    rig.assert_off()


def test_pulse_groups_keep_each_cells_order(xbar: SmuMuxCrossbar) -> None:
    cells = np.array([(0, 0), (0, 2), (1, 1), (0, 4), (0, 0), (0, 2)])
    amplitudes = np.array([1.0, 1.0, 1.0, -1.0, 1.0, 1.0])
    assert xbar.pulse_groups(cells, amplitudes) == [
        (0, [0, 2], 1.0),
        (1, [1], 1.0),
        (0, [4], -1.0),
        (0, [0, 2], 1.0),
    ]


def test_row_pulse_wire_commands_and_schemes(rig: Rig, xbar: SmuMuxCrossbar) -> None:
    xbar.pulse([(1, c) for c in range(5)], 1.2, WIDTH)
    assert rig.board.received[-4:] == [
        "DAC 1 0.600000",
        "ROUTE W0 B1,7,2,4,6 BIAS1 BIAS1",  # crossbar row 1 = board word line 0, one pulse
        "SAFE",
        "ERR?",
    ]
    xbar.set_bias_scheme("v/3")
    xbar.pulse([(2, 0)], -1.5, WIDTH)
    assert [line for line in rig.board.received if line.startswith(("DAC", "ROUTE"))][-3:] == [
        "DAC 1 -0.500000",
        "DAC 2 -1.000000",
        "ROUTE W3 B1 BIAS1 BIAS2",
    ]
    xbar.set_bias_scheme("floating")
    xbar.pulse([(0, 3)], 1.0, WIDTH)
    assert "ROUTE W5 B4 FLOAT FLOAT" in rig.board.received
    levels = [e.value for e in rig.smu.source_log if e.quantity == "voltage"]
    assert {1.2, -1.5, 1.0} <= set(levels)
    rig.assert_off()


def test_one_cell_per_pulse_when_not_parallel(rig: Rig) -> None:
    rig.config["pulse"] = {"parallel_row": False}
    with rig.open() as xbar:
        assert xbar.capabilities.parallel_pulse_cells == 1
        xbar.pulse([(1, 0), (1, 1)], 0.8, WIDTH)
    routes = [line for line in rig.board.received if line.startswith("ROUTE")]
    assert routes == ["ROUTE W0 B1 BIAS1 BIAS1", "ROUTE W0 B7 BIAS1 BIAS1"]


def test_round_trips_per_cell_read_and_pulse(xbar: SmuMuxCrossbar) -> None:
    smu, board = xbar.smu.transport, xbar.board.transport
    xbar.read_cells([(0, 0)])  # warm: DAC 1 now at v_read... until SAFE zeroes it
    s0, b0 = smu.round_trips, board.round_trips
    xbar.read_cells([(0, 0), (1, 1), (2, 2), (0, 4)])
    # per cell: ROUTE + :READ?; per operation: DAC 1, SAFE, ERR? (board) and :SYST:ERR? (SMU)
    assert (smu.round_trips - s0, board.round_trips - b0) == (4 + 1, 4 + 3)
    s0, b0 = smu.round_trips, board.round_trips
    xbar.pulse([(0, 0), (2, 1), (2, 3)], 0.8, WIDTH)
    # per row group: ROUTE + :TRAC:ACT?; per operation: DAC 1, SAFE, ERR?, :SYST:ERR?
    assert (smu.round_trips - s0, board.round_trips - b0) == (2 + 1, 2 + 3)
    assert xbar.stats.bus_round_trips == smu.round_trips + board.round_trips


# -- I-V ----------------------------------------------------------------------------------------


def test_iv_sweeps(rig: Rig, xbar: SmuMuxCrossbar) -> None:
    voltages = np.array([-0.6, -0.3, 0.0, 0.3, 0.6])
    half = xbar.iv_sweep(1, 2, voltages)
    expected = [row_currents(rig.chip, 1, 2, v, v / 2) for v in voltages]
    np.testing.assert_allclose(half, expected, rtol=2e-3, atol=1e-15)
    xbar.set_bias_scheme("grounded")  # one list sweep in the SMU; the whole row conducts
    logged = len(rig.smu.source_log)
    grounded = xbar.iv_sweep(1, 2, voltages)
    expected = [row_currents(rig.chip, 1, 2, v, 0.0) for v in voltages]
    np.testing.assert_allclose(grounded, expected, rtol=2e-3, atol=1e-15)
    assert [e.command for e in rig.smu.source_log[logged:]].count(":SOUR:LIST:VOLT") == 5
    with pytest.raises(LimitError, match="max_sweep_voltage"):
        xbar.iv_sweep(0, 0, [0.5, 1.6])
    rig.assert_off()


# -- faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "fault", "error"),
    [
        ("board", "garble", InstrumentError),
        ("board", "silence", InstrumentTimeout),
        ("board", "drop", ConnectionLost),
        ("smu", "garble", InstrumentError),
        ("smu", "silence", InstrumentTimeout),
    ],
)
def test_faults_leave_everything_off(target: str, fault: str, error: type) -> None:
    rig = make_rig(board={"timeout": 0.3, "watchdog": 0.5}, smu={"timeout": 0.3})
    try:
        xbar = rig.open()
        xbar.read_cells([(0, 0)])
        (rig.board if target == "board" else rig.smu).inject_fault(fault)
        warns = pytest.warns(RuntimeWarning) if fault == "drop" else contextlib.nullcontext()
        with warns, pytest.raises(error) as caught:
            xbar.read_all()
        expected_name = "mux board" if target == "board" else "smu"
        assert caught.value.instrument == expected_name and caught.value.command
        rig.assert_off(wait=2.0 if fault == "drop" else 0.0)
        if fault != "drop":  # the links survive: the crossbar works again
            np.testing.assert_allclose(xbar.read_row(0), rig.chip.conductances(0.1)[0], 1e-3)
        with pytest.warns(RuntimeWarning) if fault == "drop" else contextlib.nullcontext():
            xbar.close()
        rig.assert_off()
    finally:
        rig.stop()


def test_dropped_smu_leaves_the_board_safe(rig: Rig, xbar: SmuMuxCrossbar) -> None:
    rig.smu.inject_fault("drop")
    warns = pytest.warns(RuntimeWarning, match="smu link lost.*its output may still be on")
    with warns, pytest.raises(InstrumentError) as caught:
        xbar.read_all()
    assert caught.value.instrument == "smu"
    assert rig.board.is_safe() and not any(rig.bench.links.values())
    with pytest.warns(RuntimeWarning, match="smu link lost"):
        xbar.close()


def test_limits_refused_before_anything_is_sent(rig: Rig, xbar: SmuMuxCrossbar) -> None:
    sent = len(rig.board.received), len(rig.smu.received)
    with pytest.raises(LimitError, match="max_pulse_voltage"):
        xbar.pulse([(0, 0)], 2.5, WIDTH)
    with pytest.raises(LimitError, match="max_read_voltage"):
        xbar.read_cells([(0, 0)], v_read=0.6)
    with pytest.raises(LimitError, match="pulse width"):
        xbar.pulse([(0, 0)], 1.0, 0.5)
    assert (len(rig.board.received), len(rig.smu.received)) == sent


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["read", "pulse", "sweep", "scheme"]),
            st.floats(-4.0, 4.0, allow_nan=False),
            st.integers(0, 2),
            st.integers(0, 4),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_random_calls_never_source_beyond_limits(rig: Rig, xbar: SmuMuxCrossbar, calls) -> None:
    limits = xbar.limits
    schemes = list(BiasScheme)
    for kind, level, row, col in calls:
        try:
            if kind == "read":
                xbar.read_cells([(row, col)], v_read=level / 4 if abs(level) > 0.04 else 0.1)
            elif kind == "pulse":
                xbar.pulse([(row, col), (row, (col + 1) % 5)], level, WIDTH)
            elif kind == "sweep":
                xbar.iv_sweep(row, col, [level / 2, level / 4])
            else:
                xbar.set_bias_scheme(schemes[col % 4])
        except LimitError:
            pass
    smu_levels = [abs(e.value) for e in rig.smu.source_log if e.quantity == "voltage"]
    assert max(smu_levels, default=0.0) <= limits.max_pulse_voltage
    limit_events = [e.value for e in rig.smu.source_log if e.quantity == "current_limit"]
    assert max(limit_events) <= limits.compliance_current
    dac_levels = [abs(e.value) for e in rig.board.source_log]
    assert max(dac_levels, default=0.0) <= 2 / 3 * limits.max_pulse_voltage + 1e-3
    rig.assert_off()


def test_open_crossbar_emulated_twin() -> None:
    from instruments import open_crossbar

    with open_crossbar("mux-board-2450-emulated") as xbar:
        assert isinstance(xbar, SmuMuxCrossbar) and xbar.shape == (32, 32)
        lab = xbar.emulation  # type: ignore[attr-defined]
        truth = lab.chip.conductances(0.1)
        conductances, _ = xbar.read_cells([(0, 31), (31, 0), (17, 5)])
        expected = [truth[0, 31], truth[31, 0], truth[17, 5]]
        np.testing.assert_allclose(conductances, expected, rtol=0.05)  # the preset's read noise
        board = lab.emulators["mux"]
    assert board.is_safe() and not lab.bench.channels["smu.1"].output_on


def test_pulse_and_read_is_one_operation(rig: Rig, xbar: SmuMuxCrossbar) -> None:
    board = xbar.board.transport
    b0 = board.round_trips
    conductances = xbar.pulse_and_read([(0, 0), (0, 1), (2, 4)], [1.2, 0.0, 1.2], WIDTH)
    # DAC 0.6 V + 2 ROUTE (rows 0 and 2), DAC 0.1 V + 3 ROUTE, SAFE, ERR?
    assert board.round_trips - b0 == 1 + 2 + 1 + 3 + 2
    truth = rig.chip.conductances(0.1)
    np.testing.assert_allclose(conductances, [truth[0, 0], truth[0, 1], truth[2, 4]], rtol=1e-3)
    assert conductances[0] > 3 * conductances[1]
    np.testing.assert_array_equal(xbar.ledger.counts[[0, 0, 2], [0, 1, 4]], [1, 0, 1])
    rig.assert_off()


def test_bad_driver_and_options_are_config_errors(rig: Rig) -> None:
    rig.config["smu"]["options"] = {"colour": "red"}
    with pytest.raises(ConfigError, match=r"test config: smu\.options: keithley2450 does not"):
        rig.open()
    rig.config["smu"] = {"driver": "nowhere.module:Smu", "resource": rig.smu_server.resource}
    with pytest.raises(ConfigError, match=r"smu\.driver: cannot load 'nowhere\.module:Smu'"):
        rig.open()
    rig.assert_off()
