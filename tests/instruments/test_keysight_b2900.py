"""Keysight B2900 driver: byte-exact commands, and the driver against its emulator over TCP."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instruments.chip import ChipParameters, SimulatedChip
from instruments.drivers.keysight_b2900 import KeysightB2900
from instruments.drivers.transport import (
    ConnectionLost,
    IdentityMismatch,
    InstrumentError,
    InstrumentTimeout,
    ScriptedTransport,
    VisaTransport,
)
from instruments.emulators.bench import Bench
from instruments.emulators.keysight_b2900 import KeysightB2900Emulator
from instruments.emulators.server import EmulatorServer
from instruments.limits import LimitError, SafetyLimits
from simulation.current_models import Ohmic

IDN2 = "Keysight Technologies,B2902A,MY51140123,5.0.2040.0"
IDN1 = "Agilent Technologies,B2911A,MY51140124,3.4.2011.5100"
NO_ERROR = '+0,"No error"'
LIMITS = SafetyLimits(
    max_read_voltage=0.5,
    max_sweep_voltage=1.0,
    max_pulse_voltage=2.0,
    compliance_current=1e-3,
    min_pulse_width=1e-6,
    max_pulse_width=1e-2,
)


def configure_script(n: str, compliance: str = "0.0001", rng: str = "0.0001") -> list:
    return [
        (f":SOUR{n}:FUNC:MODE VOLT", None),
        (f":SOUR{n}:FUNC:SHAP DC", None),
        (f":SOUR{n}:VOLT:MODE FIX", None),
        (f":SOUR{n}:VOLT:RANG:AUTO OFF", None),
        (f":SOUR{n}:VOLT:RANG 2", None),
        (f':SENS{n}:FUNC "CURR"', None),
        (f":SENS{n}:CURR:PROT {compliance}", None),
        (f":SENS{n}:CURR:RANG:AUTO OFF", None),
        (f":SENS{n}:CURR:RANG {rng}", None),
        (f":SENS{n}:CURR:NPLC 0.1", None),
        (f":OUTP{n}:ON:AUTO OFF", None),
        (":SYST:ERR?", NO_ERROR),
    ]


class OhmicChip:
    """Fake chip: I_ij = G_ij (V_word_i - V_bit_j) when both lines are driven; logs drives."""

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


def sync(driver: KeysightB2900) -> None:
    """Wait until the emulator has handled every write."""
    assert driver.transport.query("*OPC?") == "1"


def connected(steps: list, idn: str = IDN2) -> tuple[KeysightB2900, ScriptedTransport]:
    transport = ScriptedTransport([("*IDN?", idn), (":SYST:ERR?", NO_ERROR), *steps], "b2900")
    driver = KeysightB2900(transport, LIMITS)
    driver.connect()
    return driver, transport


# -- byte-exact ----------------------------------------------------------------------------------


def test_connect_takes_the_channel_count_from_the_model():
    driver, transport = connected([])
    assert driver.channels == ("1", "2") and driver.model == "B2902"
    one, _ = connected([], IDN1)
    assert one.channels == ("1",)
    with pytest.raises(ValueError, match="channel"):
        one.set_voltage("2", 0.1)
    transport.assert_done()


def test_connect_rejects_other_instruments_and_a_wrong_configured_count():
    transport = ScriptedTransport([("*IDN?", "Keysight Technologies,B2962A,MY1,1.0")])
    with pytest.raises(IdentityMismatch):
        KeysightB2900(transport, LIMITS).connect()
    transport = ScriptedTransport([("*IDN?", IDN1), (":SYST:ERR?", NO_ERROR)])
    with pytest.raises(IdentityMismatch, match="config says 2"):
        KeysightB2900(transport, LIMITS, channel_count=2).connect()


def test_configure_channel_2():
    driver, transport = connected(configure_script("2"))
    driver.configure("2", 1e-4, 0.1)
    transport.assert_done()
    assert driver.nplc == {"2": 0.1}


def test_configure_b2911_uses_the_10_na_range():
    driver, transport = connected(configure_script("1", "5e-09", "1e-08"), IDN1)
    driver.configure("1", 5e-9, 0.1)
    transport.assert_done()


def test_configure_refuses_before_writing():
    driver, transport = connected([])
    with pytest.raises(LimitError):
        driver.configure("1", 5e-3, 1.0)
    with pytest.raises(ValueError, match="aperture"):
        driver.configure("1", 1e-4, 200.0)
    assert transport.sent == ["*IDN?", ":SYST:ERR?"]


def test_set_voltage_output_measure_compliance_and_off():
    driver, transport = connected(
        [
            (":SOUR1:VOLT 0.2", None),
            (":OUTP1 ON", None),
            (":MEAS:CURR? (@1)", "+2.000000E-06"),
            (":SENS1:CURR:PROT:TRIP?", "0"),
            (":OUTP1 OFF", None),
            (":OUTP2 OFF", None),
        ]
    )
    transport.round_trips = 0
    driver.set_voltage("1", 0.2)
    driver.set_output("1", True)
    assert driver.measure_current("1") == pytest.approx(2e-6)
    assert transport.round_trips == 1
    assert driver.in_compliance("1") is False
    driver.output_off()
    transport.assert_done()


def test_levels_beyond_limits_send_nothing():
    driver, transport = connected([])
    with pytest.raises(LimitError):
        driver.set_voltage("1", -2.1)
    with pytest.raises(LimitError):
        driver.pulse("1", 2.5, 1e-3)
    with pytest.raises(LimitError, match="B2900"):
        driver.pulse("1", 1.0, 2e-5)  # allowed by the limits, below the 50 us minimum
    with pytest.raises(LimitError):
        driver.sweep("2", [0.5, 1.01])
    assert transport.sent == ["*IDN?", ":SYST:ERR?"]


def test_measure_overflow_raises():
    driver, _ = connected([(":MEAS:CURR? (@2)", "+9.910000E+37")])
    with pytest.raises(InstrumentError, match="overflow"):
        driver.measure_current("2")


def test_pulse_uses_pulse_shape_and_one_round_trip():
    driver, transport = connected(
        [
            (":SOUR1:FUNC:SHAP PULS", None),
            (":SOUR1:VOLT 0", None),
            (":SOUR1:VOLT:TRIG -1.2", None),
            (":SOUR1:PULS:DEL 0", None),
            (":SOUR1:PULS:WIDT 0.0001", None),
            (":TRIG1:COUN 1", None),
            (":OUTP1 ON", None),
            (":INIT (@1)", None),
            ("*OPC?", "1"),
            (":SOUR1:VOLT:TRIG 0", None),
            (":SOUR1:FUNC:SHAP DC", None),
            (":OUTP1 OFF", None),
        ]
    )
    transport.round_trips = 0
    driver.pulse("1", -1.2, 1e-4)
    transport.assert_done()
    assert transport.round_trips == 1


def test_sweep_list_mode_one_fetch():
    volts = [0.1, -0.2, 0.3]
    driver, transport = connected(
        [
            (":SOUR2:VOLT 0.05", None),
            (":OUTP2 ON", None),
            (":SOUR2:VOLT:MODE LIST", None),
            (":SOUR2:LIST:VOLT 0.1,-0.2,0.3", None),
            (":TRIG2:COUN 3", None),
            (":INIT (@2)", None),
            ("*WAI", None),
            (":FETC:ARR:CURR? (@2)", "+1.0E-07,-2.0E-07,+3.0E-07"),
            (":SOUR2:VOLT:MODE FIX", None),
            (":SOUR2:VOLT 0.05", None),
        ]
    )
    driver.set_voltage("2", 0.05)
    driver.set_output("2", True)
    transport.round_trips = 0
    assert driver.sweep("2", volts) == pytest.approx([1e-7, -2e-7, 3e-7])
    assert transport.round_trips == 1
    transport.assert_done()


def test_sweep_longer_than_2500_points_appends():
    volts = [0.0] * 2600
    reply = ",".join(["+0.0E+00"] * 2600)
    driver, transport = connected(
        [
            (":OUTP1 ON", None),
            (":SOUR1:VOLT:MODE LIST", None),
            (":SOUR1:LIST:VOLT " + ",".join(["0"] * 2500), None),
            (":SOUR1:LIST:VOLT:APP " + ",".join(["0"] * 100), None),
            (":TRIG1:COUN 2600", None),
            (":INIT (@1)", None),
            ("*WAI", None),
            (":FETC:ARR:CURR? (@1)", reply),
            (":SOUR1:VOLT:MODE FIX", None),
            (":SOUR1:VOLT 0", None),
            (":OUTP1 OFF", None),
        ]
    )
    assert len(driver.sweep("1", volts)) == 2600
    transport.assert_done()


def test_read_errors_drains_signed_codes():
    errors = ['-113,"Undefined header"', '-222,"Data out of range"']
    driver, _ = connected(
        [(":SYST:ERR?", errors[0]), (":SYST:ERR?", errors[1]), (":SYST:ERR?", NO_ERROR)]
    )
    assert driver.read_errors() == errors


# -- against the emulator over TCP ---------------------------------------------------------------


@pytest.fixture
def rig():
    """A B2902A emulator on a 2x3 ohmic fake chip: channel 2 on word 1, ground on bit 2."""
    g = np.array([[1e-5, 2e-5, 3e-5], [4e-5, 5e-5, 6e-5]])
    chip = OhmicChip(g)
    bench = Bench(chip)
    emulator = KeysightB2900Emulator(bench, model="B2902A")
    bench.connect(("word", 1), "smu.2")
    bench.connect(("bit", 2), "gnd")
    server = EmulatorServer(emulator).start()
    transport = VisaTransport("b2900", server.resource, timeout=2.0)
    driver = KeysightB2900(transport, LIMITS)
    driver.connect()
    yield driver, emulator, chip
    transport.close()
    server.stop()


def test_emulated_read_is_ohms_law_and_compliance_trips(rig):
    driver, _emulator, chip = rig
    driver.configure("2", 1e-4, 0.5)
    driver.set_voltage("2", -0.4)
    driver.set_output("2", True)
    assert driver.measure_current("2") == pytest.approx(6e-5 * -0.4, rel=1e-9)
    assert chip.drives[-1][2] == pytest.approx(0.01)
    assert driver.in_compliance("2") is False
    driver.set_voltage("2", 2.0)  # 120 uA wanted, 100 uA compliance
    assert driver.measure_current("2") == pytest.approx(1e-4)
    assert driver.in_compliance("2") is True
    assert driver.transport.query(":STAT:QUES:COND?") == "2"
    driver.check_errors("test")


def test_emulated_sweep_and_pulse(rig):
    driver, emulator, chip = rig
    driver.configure("2", 1e-3, 0.1)
    volts = list(np.linspace(-1.0, 1.0, 41))
    currents = driver.sweep("2", volts)
    np.testing.assert_allclose(currents, 6e-5 * np.array(volts), rtol=1e-9, atol=1e-15)
    before = len(chip.drives)
    driver.pulse("2", 1.5, 2e-4)
    peak = [d for d in chip.drives[before:] if d[0][1] == pytest.approx(1.5)]
    assert [d[2] for d in peak] == [pytest.approx(2e-4)]
    sync(driver)
    channel = emulator.channels[2]
    assert channel.shape == "DC" and channel.voltage_mode == "FIX"
    assert not channel.state.output_on and channel.state.level == 0.0
    assert [e.value for e in emulator.source_log if e.quantity == "pulse"] == [1.5]
    driver.check_errors("sweep and pulse")


def test_instrument_error_surfaces(rig):
    driver, emulator, _ = rig
    driver.transport.write(":SOUR3:VOLT 1")  # no channel 3
    driver.transport.write(":sens2:curr:prot abc")  # not a number
    with pytest.raises(InstrumentError) as info:
        driver.check_errors(":sens2:curr:prot abc")
    assert info.value.instrument == "b2900" and ":sens2:curr:prot abc" in str(info.value)
    assert '-113,"Undefined header"' in info.value.reply
    assert '-104,"Data type error"' in info.value.reply
    assert emulator.channels[2].state.level == 0.0


def test_faults_are_typed_and_outputs_can_still_be_turned_off(rig):
    driver, emulator, _ = rig
    driver.configure("2", 1e-4, 0.1)
    driver.set_voltage("2", 0.3)
    driver.set_output("2", True)
    driver.transport._resource.timeout = 300  # ms
    emulator.inject_fault("silence")
    with pytest.raises(InstrumentTimeout):
        driver.measure_current("2")
    emulator.inject_fault("garble")
    with pytest.raises(InstrumentError, match="garbled"):
        driver.measure_current("2")
    driver.output_off()
    sync(driver)
    assert not any(c.state.output_on for c in emulator.channels.values())
    emulator.inject_fault("drop")
    with pytest.raises((InstrumentTimeout, ConnectionLost)):
        driver.measure_current("2")
    with pytest.raises(ConnectionLost):
        driver.output_off()
        driver.output_off()


def test_real_simulated_chip_row_current_is_sum_of_g_v():
    chip = SimulatedChip(ChipParameters(rows=3, cols=4, seed=5, current_model=Ohmic()))
    bench = Bench(chip)
    emulator = KeysightB2900Emulator(bench, model="B2901A")
    bench.connect(("word", 2), "smu.1")
    for col in range(4):
        bench.connect(("bit", col), "gnd")
    with EmulatorServer(emulator) as server:
        transport = VisaTransport("b2900", server.resource, timeout=2.0)
        driver = KeysightB2900(transport, LIMITS)
        driver.connect()
        assert driver.channels == ("1",)
        driver.configure("1", 1e-4, 1.0)
        currents = driver.sweep("1", [0.2] * 8)
        transport.close()
    expected = 0.2 * chip.state()[2].sum()
    assert np.mean(currents) == pytest.approx(expected, rel=0.01)


# -- hypothesis: nothing out of limits ever reaches the instrument --------------------------------


@pytest.fixture(scope="module")
def shared_rig():
    bench = Bench(OhmicChip(np.full((2, 2), 1e-5)))
    emulator = KeysightB2900Emulator(bench, model="B2902A")
    bench.connect(("word", 0), "smu.1")
    bench.connect(("word", 1), "smu.2")
    bench.connect(("bit", 0), "gnd")
    server = EmulatorServer(emulator).start()
    transport = VisaTransport("b2900", server.resource, timeout=2.0)
    driver = KeysightB2900(transport, LIMITS)
    driver.connect()
    driver.configure("1", 1e-4, 0.01)
    driver.configure("2", 1e-4, 0.01)
    yield driver, emulator
    transport.close()
    server.stop()


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    operations=st.lists(
        st.tuples(
            st.sampled_from(["set_voltage", "pulse", "sweep", "configure", "output"]),
            st.sampled_from(["1", "2"]),
            st.floats(-4.0, 4.0, allow_nan=False),
            st.floats(1e-6, 5e-2),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_random_calls_never_source_beyond_limits(shared_rig, operations):
    driver, emulator = shared_rig
    for name, channel, level, width in operations:
        try:
            if name == "set_voltage":
                driver.set_voltage(channel, level)
            elif name == "pulse":
                driver.pulse(channel, level, width)
            elif name == "sweep":
                driver.sweep(channel, [level / 2, level])
            elif name == "configure":
                driver.configure(channel, width / 10, 0.01)
            else:
                driver.set_output(channel, level > 0)
        except LimitError:
            pass
    for event in emulator.source_log:
        if event.quantity == "current_limit":
            assert 0 < event.value <= LIMITS.compliance_current
        else:
            assert abs(event.value) <= LIMITS.max_pulse_voltage
    assert driver.read_errors() == []
