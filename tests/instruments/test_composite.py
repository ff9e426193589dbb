"""SmuMatrixCrossbar: 2600B + 707B through the emulators, fast (TSP script) and per-command."""

import copy
import socket
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instruments import open_crossbar
from instruments.composite import SmuMatrixCrossbar, parse_wiring
from instruments.crossbar import BiasScheme
from instruments.drivers.transport import ConnectionLost, InstrumentError, InstrumentTimeout
from instruments.emulators.launch import open_emulated
from instruments.limits import LimitError
from simulation.config import ConfigError

TWIN = Path(__file__).resolve().parents[2] / "configs/instruments/keithley2600-707b-emulated.toml"
ROWS, COLS = 3, 5
G_MIN, G_MAX = 1e-6, 1e-4


class ThresholdChip:
    """Ohmic devices; floating lines solved by Kirchhoff's current law; a device whose |V| exceeds
    v_th moves by rate * (|V| - v_th) of the way to G_MAX (SET) or G_MIN (RESET)."""

    def __init__(self, g, v_th=1.0, rate=0.5):
        self.g = np.array(g, dtype=float)
        self.shape = self.g.shape
        self.lock = threading.RLock()
        self.time = 0.0
        self.v_th, self.rate = v_th, rate
        self.max_half_select = 0.0  # largest |V| an unpulsed... any device saw below v_th

    def drive(self, word, bit, duration):
        rows, cols = self.shape
        v = np.concatenate([np.asarray(word, float), np.asarray(bit, float)])
        free = np.isnan(v)
        if free.any():
            lap = np.zeros((rows + cols, rows + cols))
            lap[:rows, rows:], lap[rows:, :rows] = -self.g, -self.g.T
            lap[np.diag_indices_from(lap)] = -lap.sum(axis=1)
            a = lap[np.ix_(free, free)] + 1e-15 * np.eye(free.sum())
            v[free] = np.linalg.solve(a, -lap[np.ix_(free, ~free)] @ v[~free])
        dv = v[:rows, None] - v[None, rows:]
        cell = self.g * dv
        over = np.abs(dv) - self.v_th
        step = np.clip(self.rate * over, 0.0, 1.0)
        self.g = np.where(
            dv > 0, self.g + step * (G_MAX - self.g), self.g - step * (self.g - G_MIN)
        )
        self.time += duration
        return np.where(free[:rows], 0, cell.sum(1)), np.where(free[rows:], 0, -cell.sum(0))


def small_config(link="tsp-link", **read):
    """The emulated twin config, shrunk to a ROWS x COLS chip."""
    with TWIN.open("rb") as handle:
        config = tomllib.load(handle)
    config["channel_map"] = {
        "word_lines": [f"1/{i + 1:02d}" for i in range(ROWS)],
        "bit_lines": [f"2/{j + 3:02d}" for j in range(COLS)],
    }
    config["emulator"]["chip"].update(rows=ROWS, cols=COLS)
    config["smu"]["timeout"] = 2.0
    config["read"].update(nplc=0.01, **read)
    config["limits"].update(max_pulse_voltage=1.6, min_pulse_width=1e-4)
    config["matrix"]["link"] = link
    if link == "bus":
        config["matrix"]["resource"] = "TCPIP::127.0.0.1::0::SOCKET"
        config["matrix"]["timeout"] = 2.0
        config["smu"]["use_script"] = False
    return config


def no_delay(crossbar):
    """TCP_NODELAY on the crossbar's raw sockets, as VISA specifies by default (pyvisa-py leaves it
    off, so a write followed by a query waits ~40 ms for a delayed ACK on localhost)."""
    for transport in crossbar._transports():
        resource = transport._resource
        session = resource.visalib.sessions[resource.session]
        session.interface.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return crossbar


def emulated(link, chip=None, **changes):
    config = small_config(link)
    for table, values in changes.items():
        config[table].update(values)
    chip = chip or ThresholdChip(initial_g())
    return no_delay(open_emulated(config, "test:", chip=chip)), chip


def initial_g():
    return np.full((ROWS, COLS), 1e-5) * (1 + 0.1 * np.arange(ROWS * COLS).reshape(ROWS, COLS))


@pytest.fixture(params=["tsp-link", "bus"])
def rig(request):
    crossbar, chip = emulated(request.param)
    yield crossbar, chip, crossbar.emulation
    crossbar.close()


def assert_safe(lab):
    """Every SMU output off at 0 V and every relay open, on the bench."""
    assert all(not c.output_on and c.level == 0 for c in lab.bench.channels.values())
    assert all(not terminals for terminals in lab.bench.links.values())
    assert lab.emulators["matrix"].closed == set()


# -- the pattern round trip ----------------------------------------------------------------------


def program(crossbar, target, tolerance=0.05, iterations=150):
    """Plain pulses until every cell is within tolerance: amplitude by the relative error."""
    cells = np.argwhere(np.ones(target.shape, bool))
    g = crossbar.read_all()
    for _ in range(iterations):
        error = (target - g) / target
        todo = np.abs(error) > tolerance
        if not todo.any():
            return g
        overdrive = np.clip(np.abs(error), 0.02, 0.6) * 0.4 + 0.01
        amplitude = np.sign(error) * (1.0 + overdrive) * todo
        g = g.copy()
        g[todo] = crossbar.pulse_and_read(cells[todo.ravel()], amplitude[todo], 1e-3)
    raise AssertionError(f"did not converge: {np.abs((target - g) / target).max()}")


@pytest.mark.parametrize("pattern", ["checkerboard", "gradient"])
def test_pattern_round_trip_on_non_square_chip(rig, pattern):
    crossbar, chip, lab = rig
    rows, cols = np.indices((ROWS, COLS))
    if pattern == "checkerboard":
        target = np.where((rows + cols) % 2 == 0, 5e-5, 4e-6)
    else:
        target = np.geomspace(3e-6, 6e-5, ROWS * COLS).reshape(ROWS, COLS)
    program(crossbar, target)
    measured = crossbar.read_all()
    np.testing.assert_allclose(measured, target, rtol=0.05)  # a row/column swap fails here
    np.testing.assert_allclose(measured, chip.g, rtol=1e-4)  # reads are the devices' G
    assert crossbar.bias_scheme == BiasScheme.HALF
    # between operations the outputs stay on, at 0 V, with every relay open
    assert all(c.level == 0 for c in lab.bench.channels.values())
    assert all(not terminals for terminals in lab.bench.links.values())
    crossbar.outputs_off()
    assert_safe(lab)


def test_v_half_scheme_spares_unselected_cells(rig):
    crossbar, chip, _ = rig
    before = chip.g.copy()
    crossbar.pulse([(1, 2), (1, 4)], 1.5, 1e-3)  # one event: same row, same amplitude
    changed = ~np.isclose(chip.g, before)
    assert changed[1, 2] and changed[1, 4] and changed.sum() == 2


def test_reads_are_exact_and_sneak_free(rig):
    crossbar, chip, _ = rig
    g, currents = crossbar.read_cells([(0, 0), (2, 4), (1, 3)], v_read=0.2)
    np.testing.assert_allclose(g, chip.g[[0, 2, 1], [0, 4, 3]], rtol=1e-5)
    np.testing.assert_allclose(currents, 0.2 * g)
    np.testing.assert_allclose(crossbar.read_row(2), chip.g[2], rtol=1e-5)
    np.testing.assert_allclose(
        crossbar.iv_sweep(1, 1, [0.1, -0.3]), np.array([0.1, -0.3]) * chip.g[1, 1]
    )


# -- round trips ---------------------------------------------------------------------------------


def test_round_trips_per_operation_fast_path():
    crossbar, _ = emulated("tsp-link")
    with crossbar:
        stats = crossbar.stats
        assert crossbar.record()["fast_path"] is True

        def cost(call):
            before = stats.bus_round_trips
            call()
            return stats.bus_round_trips - before

        assert cost(lambda: crossbar.read_cell(0, 0)) == 1
        assert cost(lambda: crossbar.read_cells(np.argwhere(np.ones((ROWS, COLS))))) == 1
        assert cost(lambda: crossbar.read_row(1)) == 1
        assert cost(lambda: crossbar.read_all()) == 1
        row = [(2, j) for j in range(COLS)]
        amplitudes = np.linspace(1.05, 1.25, COLS)
        assert cost(lambda: crossbar.pulse_and_read(row, amplitudes, 1e-3)) <= 2  # target
        assert cost(lambda: crossbar.pulse_and_read(row, amplitudes, 1e-3)) == 1
        assert cost(lambda: crossbar.iv_sweep(0, 1, [0.1, 0.2])) == 1
        assert crossbar.emulation.emulators["smu"].script_calls >= 6


def test_round_trips_per_operation_per_command_path():
    crossbar, _ = emulated("bus")
    with crossbar:
        stats = crossbar.stats
        assert crossbar.record()["fast_path"] is False
        before = stats.bus_round_trips
        crossbar.read_cell(0, 0)
        assert stats.bus_round_trips - before == 2 + 2  # *OPC? + reading, both error queues
        before = stats.bus_round_trips
        crossbar.read_row(1)
        assert stats.bus_round_trips - before == 2 * COLS + 2
        before = stats.bus_round_trips
        crossbar.pulse_and_read([(2, j) for j in range(COLS)], np.linspace(1.05, 1.25, COLS), 1e-3)
        assert stats.bus_round_trips - before == 4 * COLS + 4


# -- faults --------------------------------------------------------------------------------------


def fault_after(emulator, kind, measurements):
    """Inject `kind` once the emulator has handled `measurements` more reading commands."""
    original = emulator.handle
    count = {"n": 0}

    def handle(line):
        if "measure.i()" in line or line.startswith("xbl_"):
            count["n"] += 1
            if count["n"] == measurements + 1:
                emulator.inject_fault(kind)
        return original(line)

    emulator.handle = handle


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("drop", (ConnectionLost, InstrumentTimeout)),
        ("garble", InstrumentError),
        ("silence", InstrumentTimeout),
        ("error", InstrumentError),
    ],
)
@pytest.mark.parametrize("link", ["tsp-link", "bus"])
def test_fault_mid_operation_leaves_outputs_off_and_keeps_results(link, kind, error):
    crossbar, chip = emulated(link, smu={"timeout": 0.3}, matrix={"timeout": 0.3})
    lab = crossbar.emulation
    smu = lab.emulators["smu"]
    try:
        first = crossbar.read_all()  # results before the fault stay valid
        crossbar.pulse([(0, 1)], 1.4, 1e-3)
        cells = np.argwhere(np.ones((ROWS, COLS)))
        if kind == "error":
            smu.push_error(5005, "Interlock engaged")  # as if the hardware reported a fault
        elif link == "tsp-link":
            fault_after(smu, kind, 0)  # the script call itself breaks
        else:  # per command: the link breaks after 4 of the 15 readings
            fault_after(smu, kind, 3 if kind == "drop" else 4)
        if kind == "drop" and link == "tsp-link":
            smu.inject_fault("drop")
        with pytest.raises(error) as info:
            crossbar.read_cells(cells)
        assert info.value.instrument == "smu"
        if kind == "error":
            assert "5005 Interlock engaged" in str(info.value)
        assert_safe(lab)
        np.testing.assert_allclose(first, initial_g(), rtol=1e-5)
        assert crossbar.ledger.counts[0, 1] == 1
        partial = crossbar.last_partial
        done = len(partial["currents"])
        if link == "tsp-link":
            assert done == 0  # one reply per operation: nothing of it arrived
        else:  # the readings taken before the fault (all of them when the error queue told)
            assert done == (len(cells) if kind == "error" else 4)
        kept = partial["cells"]
        np.testing.assert_allclose(
            partial["currents"] / 0.1, chip.g[kept[:, 0], kept[:, 1]], rtol=1e-5
        )
        if kind != "drop":  # the links survive the other faults: the crossbar works again
            np.testing.assert_allclose(crossbar.read_row(2), chip.g[2], rtol=1e-5)
    finally:
        crossbar.close()
    assert_safe(lab)


# -- limits --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limits_rig():
    crossbar, _ = emulated("tsp-link")
    yield crossbar
    crossbar.close()


@settings(max_examples=20, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["read", "pulse", "pulse_and_read", "sweep"]),
            st.integers(0, ROWS - 1),
            st.integers(0, COLS - 1),
            st.floats(-4.0, 4.0, allow_nan=False),
            st.floats(1e-6, 0.05),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_random_operations_never_source_beyond_the_limits(limits_rig, operations):
    crossbar = limits_rig
    limits = crossbar.limits
    smu = crossbar.emulation.emulators["smu"]
    for kind, row, col, volts, width in operations:
        try:
            if kind == "read":
                crossbar.read_cells([(row, col)], v_read=volts or 0.1)
            elif kind == "pulse":
                crossbar.pulse([(row, col)], volts, width)
            elif kind == "pulse_and_read":
                crossbar.pulse_and_read([(row, col)], volts, width, v_read=0.1)
            else:
                crossbar.iv_sweep(row, col, [volts / 2, volts])
        except (LimitError, ValueError):
            pass
    for event in smu.source_log:
        if event.quantity == "current_limit":
            assert event.value <= limits.compliance_current
        elif event.quantity == "pulse":
            assert abs(event.value) <= limits.max_pulse_voltage
        else:
            assert abs(event.value) <= max(limits.max_sweep_voltage, limits.max_pulse_voltage / 2)


# -- configuration ------------------------------------------------------------------------------


def test_record_names_identities_limits_and_channel_map():
    crossbar, _ = emulated("tsp-link")
    with crossbar:
        record = crossbar.record()
    assert record["backend"] == "SmuMatrixCrossbar"
    assert "Model 2636B" in record["identity"]["smu"]
    assert record["identity"]["matrix"] == "TSP-Link node 2: Model 707B"
    assert record["limits"]["max_pulse_voltage"] == 1.6
    assert record["channel_map"]["bit_lines"][0] == "2/03"
    assert record["channel_map"]["rows"] == {"A": "drive", "B": "sense", "C": "gnd"}
    assert record["capabilities"]["parallel_pulse_cells"] == COLS


def test_twin_config_opens_with_the_real_chip():
    config = small_config("tsp-link")
    with open_crossbar(config) as crossbar:
        assert isinstance(crossbar, SmuMatrixCrossbar) and crossbar.shape == (ROWS, COLS)
        truth = crossbar.emulation.chip.conductances(0.1)
        np.testing.assert_allclose(crossbar.read_all(), truth, rtol=0.1)
    assert_safe(crossbar.emulation)


def test_real_config_parses():
    with TWIN.with_name("keithley2600-707b.toml").open("rb") as handle:
        config = tomllib.load(handle)
    wiring, settings_ = parse_wiring(config, "real:")
    assert (len(wiring.word_lines), len(wiring.bit_lines)) == (32, 32)
    assert settings_["link"] == "tsp-link" and wiring.bias_row == "B"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["channel_map"]["bit_lines"].append("1/01"), "already used by word_lines"),
        (lambda c: c["channel_map"]["bit_lines"].pop(), r"do not match .*emulator.chip"),
        (lambda c: c["channel_map"]["word_lines"].__setitem__(0, "7/01"), "outside slots"),
        (lambda c: c["matrix"]["rows"].update(D="probe"), "role 'probe'"),
        (lambda c: c["matrix"]["rows"].pop("C"), "no row has role 'gnd'"),
        (lambda c: c["smu"].update(driver="keithley2450"), "needs a TSP master"),
        (lambda c: c["smu"].update(bias_channel="a"), "must differ"),
        (lambda c: c["matrix"].update(slots=8) or c.pop("emulate"), "emulator-only"),
        (lambda c: c["smu"].update(colour="red"), "unknown key"),
    ],
)
def test_config_errors_name_the_key(change, message):
    config = copy.deepcopy(small_config("tsp-link"))
    change(config)
    with pytest.raises(ConfigError, match=message):
        parse_wiring(config, "test.toml:")
