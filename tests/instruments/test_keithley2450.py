"""Keithley 2450 driver: byte-exact commands, and the driver against its emulator over TCP."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instruments.chip import ChipParameters, SimulatedChip
from instruments.drivers.keithley2450 import Keithley2450
from instruments.drivers.transport import (
    ConnectionLost,
    IdentityMismatch,
    InstrumentError,
    InstrumentTimeout,
    ScriptedTransport,
    VisaTransport,
)
from instruments.emulators.bench import Bench
from instruments.emulators.keithley2450 import Keithley2450Emulator
from instruments.emulators.server import EmulatorServer
from instruments.limits import LimitError, SafetyLimits
from simulation.current_models import Ohmic

IDN = "KEITHLEY INSTRUMENTS,MODEL 2450,04567890,1.7.12b"
NO_ERROR = '0,"No error;0;0 0"'
LIMITS = SafetyLimits(
    max_read_voltage=0.5,
    max_sweep_voltage=1.0,
    max_pulse_voltage=2.0,
    compliance_current=1e-3,
    min_pulse_width=1e-6,
    max_pulse_width=1e-2,
)
CONFIGURE = [
    (":SOUR:FUNC VOLT", None),
    (":SOUR:VOLT:RANG:AUTO OFF", None),
    (":SOUR:VOLT:RANG 2", None),
    (":SOUR:VOLT:ILIM 0.0001", None),
    (':SENS:FUNC "CURR"', None),
    (":SENS:CURR:RANG:AUTO OFF", None),
    (":SENS:CURR:RANG 0.0001", None),
    (":SENS:CURR:NPLC 0.1", None),
    (":SYST:ERR?", NO_ERROR),
]


class OhmicChip:
    """Fake chip: I_ij = G_ij (V_word_i - V_bit_j) when both lines are driven, floating lines
    carry nothing; logs every drive as (word, bit, duration)."""

    def __init__(self, g: np.ndarray) -> None:
        self.g = np.asarray(g, dtype=float)
        self.shape = self.g.shape
        self.lock = threading.RLock()
        self.time = 0.0
        self.drives: list[tuple[np.ndarray, np.ndarray, float]] = []

    def drive(self, word: np.ndarray, bit: np.ndarray, duration: float):
        self.drives.append((word.copy(), bit.copy(), duration))
        self.time += duration
        both = ~np.isnan(word)[:, None] & ~np.isnan(bit)[None, :]
        volts = np.where(both, np.nan_to_num(word)[:, None] - np.nan_to_num(bit)[None, :], 0.0)
        flow = self.g * volts
        return flow.sum(axis=1), -flow.sum(axis=0)


def sync(driver: Keithley2450) -> None:
    """Wait until the emulator has handled every write (a query answers after them)."""
    assert driver.transport.query("*OPC?") == "1"


def scripted(steps: list[tuple[str, str | None]]) -> tuple[Keithley2450, ScriptedTransport]:
    transport = ScriptedTransport(steps, name="k2450")
    return Keithley2450(transport, LIMITS), transport


def configured(steps: list[tuple[str, str | None]]) -> tuple[Keithley2450, ScriptedTransport]:
    driver, transport = scripted([*CONFIGURE, *steps])
    driver.configure("1", 1e-4, 0.1)
    return driver, transport


# -- byte-exact ----------------------------------------------------------------------------------


def test_connect_checks_identity_then_error_queue():
    driver, transport = scripted([("*IDN?", IDN), (":SYST:ERR?", NO_ERROR)])
    assert driver.connect() == IDN
    transport.assert_done()


def test_connect_wrong_identity_raises():
    driver, _ = scripted([("*IDN?", "KEITHLEY INSTRUMENTS INC.,MODEL 2400,1,C30")])
    with pytest.raises(IdentityMismatch, match="MODEL 2400"):
        driver.connect()


def test_connect_with_queued_errors_raises_naming_them():
    error = '-113,"Undefined header;1;2024/01/01 00:00:00.000"'
    driver, _ = scripted([("*IDN?", IDN), (":SYST:ERR?", error), (":SYST:ERR?", NO_ERROR)])
    with pytest.raises(InstrumentError, match="Undefined header") as info:
        driver.connect()
    assert info.value.instrument == "k2450" and info.value.reply == error


def test_configure_sends_fixed_ranges_limit_and_nplc():
    driver, transport = configured([])
    transport.assert_done()
    assert driver.nplc == 0.1 and driver.aperture == pytest.approx(2e-3)
    assert transport.round_trips == 1


def test_configure_refuses_compliance_above_limits_before_writing():
    driver, transport = scripted([])
    with pytest.raises(LimitError, match="compliance"):
        driver.configure("1", 2e-3, 1.0)
    with pytest.raises(ValueError, match="nplc"):
        driver.configure("1", 1e-4, 20.0)
    assert transport.sent == []


def test_set_voltage_output_and_off():
    driver, transport = scripted(
        [(":SOUR:VOLT 0.25", None), (":OUTP ON", None), (":OUTP OFF", None), (":OUTP OFF", None)]
    )
    driver.set_voltage("1", 0.25)
    driver.set_output("1", True)
    driver.set_output("1", False)
    driver.output_off()
    transport.assert_done()
    assert transport.round_trips == 0


def test_set_voltage_beyond_limit_and_bad_channel_send_nothing():
    driver, transport = scripted([])
    with pytest.raises(LimitError, match="max_pulse_voltage"):
        driver.set_voltage("1", 2.5)
    with pytest.raises(LimitError):
        driver.set_voltage("1", float("nan"))
    with pytest.raises(ValueError, match="channel"):
        driver.set_voltage("2", 0.1)
    assert transport.sent == []


def test_measure_current_one_round_trip():
    driver, transport = scripted([(":READ?", "-1.234560E-07")])
    assert driver.measure_current("1") == pytest.approx(-1.23456e-7)
    assert transport.round_trips == 1


def test_measure_overflow_and_garbage_raise():
    driver, _ = scripted([(":READ?", "9.9E+37"), (":READ?", "abc")])
    with pytest.raises(InstrumentError, match="overflow"):
        driver.measure_current("1")
    with pytest.raises(InstrumentError, match="not a number"):
        driver.measure_current("1")


def test_in_compliance_reads_limit_tripped():
    driver, _ = scripted([(":SOUR:VOLT:ILIM:TRIP?", "1"), (":SOUR:VOLT:ILIM:TRIP?", "0")])
    assert driver.in_compliance("1") is True
    assert driver.in_compliance("1") is False


def test_pulse_is_a_two_point_list_sweep_with_output_restored():
    # width 5 ms at NPLC 0.1 (2 ms aperture at 50 Hz): delay 3 ms, then the measurement
    driver, transport = configured(
        [
            (":SOUR:VOLT 0", None),
            (":OUTP ON", None),
            (":SOUR:LIST:VOLT 1.5, 0", None),
            (":SOUR:SWE:VOLT:LIST 1, 0.003, 1, OFF", None),
            (":INIT", None),
            ("*WAI", None),
            (':TRAC:ACT? "defbuffer1"', "2"),
            (":OUTP OFF", None),
        ]
    )
    driver.pulse("1", 1.5, 5e-3)
    transport.assert_done()
    assert transport.round_trips == 2  # configure's error check + the pulse's one
    assert driver.output is False and driver.level == 0.0


def test_pulse_that_did_not_run_raises_with_the_error_queue():
    driver, _ = configured(
        [
            (":SOUR:VOLT 0", None),
            (":OUTP ON", None),
            (":SOUR:LIST:VOLT 1.5, 0", None),
            (":SOUR:SWE:VOLT:LIST 1, 0.003, 1, OFF", None),
            (":INIT", None),
            ("*WAI", None),
            (':TRAC:ACT? "defbuffer1"', "0"),
            (":OUTP OFF", None),
            (":SYST:ERR?", '-221,"Settings conflict;1;x"'),
            (":SYST:ERR?", NO_ERROR),
        ]
    )
    with pytest.raises(InstrumentError, match="Settings conflict"):
        driver.pulse("1", 1.5, 5e-3)


def test_pulse_shorter_than_the_instrument_can_do_raises_before_writing():
    driver, transport = configured([])
    sent = len(transport.sent)
    with pytest.raises(LimitError, match="below what a 2450 can do"):
        driver.pulse("1", 1.0, 5e-4)  # within the configured limits, not within the 2450's
    with pytest.raises(LimitError, match="below"):
        driver.pulse("1", 1.0, 2.02e-3)  # 2 ms aperture + 50 us minimum delay not met
    with pytest.raises(LimitError, match="max_pulse_voltage"):
        driver.pulse("1", 2.5, 5e-3)
    assert len(transport.sent) == sent


def test_pulse_needs_configure_first():
    driver, _ = scripted([])
    with pytest.raises(RuntimeError, match="configure"):
        driver.pulse("1", 1.0, 5e-3)


def test_sweep_sends_list_in_chunks_of_100_and_reads_the_buffer_once():
    voltages = [round(0.005 * k, 3) for k in range(150)]
    first = ", ".join(f"{v:.9g}" for v in voltages[:100])
    rest = ", ".join(f"{v:.9g}" for v in voltages[100:])
    reply = ",".join(f"{1e-6 * v:+.6E}" for v in voltages)
    driver, transport = configured(
        [
            (":OUTP ON", None),
            (f":SOUR:LIST:VOLT {first}", None),
            (f":SOUR:LIST:VOLT:APP {rest}", None),
            (":SOUR:SWE:VOLT:LIST 1, 0, 1, OFF", None),
            (":INIT", None),
            ("*WAI", None),
            (':TRAC:DATA? 1, 150, "defbuffer1", READ', reply),
            (":SOUR:VOLT 0", None),
            (":OUTP OFF", None),
        ]
    )
    currents = driver.sweep("1", voltages)
    transport.assert_done()
    np.testing.assert_allclose(currents, 1e-6 * np.array(voltages), rtol=1e-6, atol=1e-15)
    assert transport.round_trips == 2


def test_sweep_checks_every_point_and_the_reply_length():
    driver, _transport = configured([])
    with pytest.raises(LimitError, match="max_sweep_voltage"):
        driver.sweep("1", [0.1, 1.2])
    assert driver.sweep("1", []) == []
    driver2, _ = configured(
        [
            (":OUTP ON", None),
            (":SOUR:LIST:VOLT 0.1, 0.2", None),
            (":SOUR:SWE:VOLT:LIST 1, 0, 1, OFF", None),
            (":INIT", None),
            ("*WAI", None),
            (':TRAC:DATA? 1, 2, "defbuffer1", READ', "1E-07"),
            (":SOUR:VOLT 0", None),
            (":OUTP OFF", None),
        ]
    )
    with pytest.raises(InstrumentError, match="expected 2 readings"):
        driver2.sweep("1", [0.1, 0.2])


def test_read_errors_drains_until_no_error():
    errors = ['-113,"Undefined header;1;t1"', '-222,"Data out of range;1;t2"']
    driver, _ = scripted(
        [(":SYST:ERR?", errors[0]), (":SYST:ERR?", errors[1]), (":SYST:ERR?", NO_ERROR)]
    )
    assert driver.read_errors() == errors


# -- against the emulator over TCP ---------------------------------------------------------------


@pytest.fixture
def rig():
    """A 2450 emulator on a 2x3 ohmic fake chip, SMU on word 0, ground on bit 1, over TCP."""
    g = np.array([[1e-5, 2e-5, 3e-5], [4e-5, 5e-5, 6e-5]])
    chip = OhmicChip(g)
    bench = Bench(chip)
    emulator = Keithley2450Emulator(bench)
    bench.connect(("word", 0), "smu.1")
    bench.connect(("bit", 1), "gnd")
    server = EmulatorServer(emulator).start()
    transport = VisaTransport("k2450", server.resource, timeout=2.0)
    driver = Keithley2450(transport, LIMITS)
    driver.connect()
    yield driver, emulator, chip
    transport.close()
    server.stop()


def test_emulated_read_is_ohms_law(rig):
    driver, emulator, chip = rig
    driver.configure("1", 1e-4, 0.5)
    driver.set_voltage("1", 0.3)
    driver.set_output("1", True)
    assert driver.measure_current("1") == pytest.approx(2e-5 * 0.3, rel=1e-9)
    assert chip.drives[-1][2] == pytest.approx(0.5 / 50)  # aperture NPLC / 50 Hz
    assert driver.in_compliance("1") is False
    assert emulator.state.output_on and emulator.state.level == 0.3
    driver.check_errors("test")


def test_emulated_compliance_clamps_and_trips(rig):
    driver, emulator, _ = rig
    driver.configure("1", 1e-5, 0.1)
    driver.set_voltage("1", 1.0)  # 20 uA wanted through 2e-5 S, limit 10 uA
    driver.set_output("1", True)
    assert driver.measure_current("1") == pytest.approx(1e-5)
    assert driver.in_compliance("1") is True
    assert emulator.state.in_compliance


def test_emulated_sweep_returns_g_v_and_restores_state(rig):
    driver, emulator, _chip = rig
    driver.configure("1", 1e-4, 0.1)
    voltages = list(np.linspace(-0.9, 0.9, 121))
    driver.transport.round_trips = 0
    currents = driver.sweep("1", voltages)
    assert driver.transport.round_trips == 1
    np.testing.assert_allclose(currents, 2e-5 * np.array(voltages), rtol=1e-5, atol=1e-12)
    sync(driver)
    assert not emulator.state.output_on and emulator.state.level == 0.0
    levels = [e.value for e in emulator.source_log if e.command.startswith(":SOUR:LIST")]
    np.testing.assert_allclose(levels, voltages, rtol=1e-8)


def test_emulated_pulse_holds_the_amplitude_for_the_width(rig):
    driver, emulator, chip = rig
    driver.configure("1", 1e-3, 0.1)
    before = len(chip.drives)
    driver.pulse("1", 1.8, 4e-3, base=0.0)
    peaks = [d for d in chip.drives[before:] if d[0][0] == pytest.approx(1.8)]
    assert sum(d[2] for d in peaks) == pytest.approx(4e-3)
    sync(driver)
    assert not emulator.state.output_on and emulator.state.level == 0.0
    assert max(e.value for e in emulator.source_log) == pytest.approx(1.8)
    driver.check_errors("pulse")


def test_instrument_error_surfaces_naming_instrument_command_and_reply(rig):
    driver, emulator, _ = rig
    driver.transport.write(":SOUR:VOLTAG 1")  # not a legal short or long form
    driver.transport.write(":SENS:CURR:NPLC 50")  # out of range
    with pytest.raises(InstrumentError) as info:
        driver.check_errors(":SENS:CURR:NPLC 50")
    message = str(info.value)
    assert "k2450" in message and ":SENS:CURR:NPLC 50" in message
    assert "-113" in info.value.reply and "-222" in info.value.reply
    assert emulator.nplc == 1.0  # the rejected value did not land


def test_timeout_garble_and_drop_are_typed_errors(rig):
    driver, emulator, _ = rig
    driver.configure("1", 1e-4, 0.1)
    driver.set_voltage("1", 0.2)
    driver.set_output("1", True)
    driver.transport._resource.timeout = 300  # ms
    emulator.inject_fault("silence")
    with pytest.raises(InstrumentTimeout, match="no reply"):
        driver.measure_current("1")
    emulator.inject_fault("garble")
    with pytest.raises(InstrumentError, match="garbled"):
        driver.measure_current("1")
    driver.output_off()  # still talking after both faults
    assert driver.measure_current("1") == 0.0  # NORMal output-off state: 0 V
    sync(driver)
    assert not emulator.state.output_on
    emulator.inject_fault("drop")
    # pyvisa-py reports the peer's close on a raw socket as a read timeout; the next writes
    # then fail with a broken pipe (ConnectionLost) within two tries
    with pytest.raises((InstrumentTimeout, ConnectionLost)):
        driver.measure_current("1")
    with pytest.raises(ConnectionLost):
        driver.output_off()
        driver.output_off()


def test_real_simulated_chip_row_current_is_sum_of_g_v():
    chip = SimulatedChip(ChipParameters(rows=3, cols=4, seed=3, current_model=Ohmic()))
    bench = Bench(chip)
    emulator = Keithley2450Emulator(bench)
    bench.connect(("word", 1), "smu.1")
    for col in range(4):
        bench.connect(("bit", col), "gnd")
    with EmulatorServer(emulator) as server:
        transport = VisaTransport("k2450", server.resource, timeout=2.0)
        driver = Keithley2450(transport, LIMITS)
        driver.connect()
        driver.configure("1", 1e-4, 1.0)
        driver.set_voltage("1", 0.2)
        driver.set_output("1", True)
        readings = [driver.measure_current("1") for _ in range(8)]
        driver.output_off()
        sync(driver)
        assert not emulator.state.output_on
        transport.close()
    expected = 0.2 * chip.state()[1].sum()
    # read noise 0.5 % per reading: the mean of 8 lies well within 1 %
    assert np.mean(readings) == pytest.approx(expected, rel=0.01)


# -- hypothesis: nothing out of limits ever reaches the instrument --------------------------------

OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["set_voltage", "pulse", "sweep", "configure", "output"]),
        st.floats(-4.0, 4.0, allow_nan=False),
        st.floats(1e-7, 5e-2),
    ),
    min_size=1,
    max_size=6,
)


@pytest.fixture(scope="module")
def shared_rig():
    bench = Bench(OhmicChip(np.full((2, 2), 1e-5)))
    emulator = Keithley2450Emulator(bench)
    bench.connect(("word", 0), "smu.1")
    bench.connect(("bit", 0), "gnd")
    server = EmulatorServer(emulator).start()
    transport = VisaTransport("k2450", server.resource, timeout=2.0)
    driver = Keithley2450(transport, LIMITS)
    driver.connect()
    driver.configure("1", 1e-4, 0.01)
    yield driver, emulator
    transport.close()
    server.stop()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=OPERATIONS)
def test_random_calls_never_source_beyond_limits(shared_rig, operations):
    driver, emulator = shared_rig
    for name, level, width in operations:
        try:
            if name == "set_voltage":
                driver.set_voltage("1", level)
            elif name == "pulse":
                driver.pulse("1", level, width)
            elif name == "sweep":
                driver.sweep("1", [level / 3, level / 2, level])
            elif name == "configure":
                driver.configure("1", width / 10, 0.01)
            else:
                driver.set_output("1", level > 0)
        except LimitError:
            pass
    for event in emulator.source_log:
        if event.quantity == "current_limit":
            assert 0 < event.value <= LIMITS.compliance_current
        else:
            assert abs(event.value) <= LIMITS.max_pulse_voltage
    assert driver.read_errors() == []
