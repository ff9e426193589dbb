"""Keithley 2600B driver: byte-exact commands, and the driver against its emulator over TCP."""

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instruments.drivers.keithley2600 import Keithley2600, lua_table, num, script_lines
from instruments.drivers.transport import (
    ConnectionLost,
    IdentityMismatch,
    InstrumentError,
    InstrumentTimeout,
    ScriptedTransport,
    VisaTransport,
)
from instruments.emulators.bench import Bench
from instruments.emulators.keithley707b import Keithley707BEmulator
from instruments.emulators.keithley2600 import Keithley2600Emulator, parse_lua_arguments
from instruments.emulators.server import EmulatorServer
from instruments.limits import LimitError, SafetyLimits

LIMITS = SafetyLimits(max_read_voltage=0.3, max_pulse_voltage=2.0, compliance_current=1e-4)
IDN = "Keithley Instruments Inc., Model 2636B, 4420002, 4.0.4"
ZERO = "0.00000e+00"


class OhmicChip:
    """Ohmic devices G (S); floating lines disconnected (fully driven configurations only)."""

    def __init__(self, g: np.ndarray) -> None:
        self.g = np.asarray(g, dtype=float)
        self.shape = self.g.shape
        self.lock = threading.RLock()
        self.time = 0.0

    def drive(self, word, bit, duration):
        word, bit = np.asarray(word, float), np.asarray(bit, float)
        dv = np.nan_to_num(word)[:, None] - np.nan_to_num(bit)[None, :]
        connected = ~np.isnan(word)[:, None] & ~np.isnan(bit)[None, :]
        cell = np.where(connected, self.g * dv, 0.0)
        self.time += duration
        return cell.sum(axis=1), -cell.sum(axis=0)


def scripted(*steps):
    transport = ScriptedTransport(list(steps), name="smu")
    return transport, Keithley2600(transport, LIMITS, load_script=False)


# -- byte-exact ----------------------------------------------------------------------------------


def test_connect_configure_source_measure_off_byte_exact():
    transport, smu = scripted(
        ("*IDN?", IDN),
        ("print(errorqueue.count)", ZERO),
        ("smua.source.func = smua.OUTPUT_DCVOLTS", None),
        ("smua.source.limiti = 0.0001", None),
        ("smua.measure.nplc = 0.1", None),
        ("smua.measure.autorangei = smua.AUTORANGE_ON", None),
        ("smub.measure.rangei = 1e-06", None),
        ("smub.measure.autorangei = smub.AUTORANGE_ON", None),
        ("smua.source.levelv = 0.25", None),
        ("smua.source.output = smua.OUTPUT_ON", None),
        ("print(smua.measure.i())", "2.50000e-06"),
        ("smub.source.levelv = -1.5 delay(0.001) smub.source.levelv = 0", None),
        ("smua.source.levelv = 0", None),
        ("smua.source.output = smua.OUTPUT_OFF", None),
        ("smub.source.levelv = 0", None),
        ("smub.source.output = smub.OUTPUT_OFF", None),
    )
    assert smu.connect() == IDN
    smu.configure("a", 1e-4, 0.1)
    smu.set_current_range("b", 1e-6)
    smu.set_current_range("b", None)
    smu.set_voltage("a", 0.25)
    smu.set_output("a", True)
    assert smu.measure_current("a") == pytest.approx(2.5e-6)
    smu.pulse("b", -1.5, 1e-3)
    smu.output_off()
    transport.assert_done()


def test_sweep_and_error_queue_byte_exact():
    transport, smu = scripted(
        ("smua.source.levelv = 0.1", None),
        ("print(smua.measure.i())", "1.00000e-07"),
        ("smua.source.levelv = -0.2", None),
        ("print(smua.measure.i())", "-2.00000e-07"),
        ("print(errorqueue.count)", "2.00000e+00"),
        ("print(errorqueue.next())", "-2.85000e+02\tTSP Syntax error\t2.00000e+01\t1.00000e+00"),
        ("print(errorqueue.next())", "-2.86000e+02\tTSP Runtime error\t2.00000e+01\t1.00000e+00"),
    )
    assert smu.sweep("a", [0.1, -0.2]) == [pytest.approx(1e-7), pytest.approx(-2e-7)]
    assert smu.read_errors() == ["-285 TSP Syntax error", "-286 TSP Runtime error"]
    transport.assert_done()


def test_load_script_and_script_calls_byte_exact():
    lines = script_lines()
    assert lines[0].startswith("-- xbarlab.tsp") and "endscript" not in lines
    transport, smu = scripted(
        ("loadscript xbarlab", None),
        *[(line, None) for line in lines],
        ("endscript", None),
        ("xbarlab.run()", None),
        ("print(errorqueue.count)", ZERO),
        (
            'xbl_setup(2,{1,1},{1,2},{4,4,4},{1,2,3},"a","b","b","A","B","C","B")',
            None,
        ),
        ("xbl_read(0.1,2,{0,1},{2,0})", "1.00000e-07, 2.00000e-07, 0.00000e+00"),
        ("xbl_readrow(0.1,1,1)", "1.00000e-07, 2.00000e-07, 3.00000e-07, 0.00000e+00"),
        ("xbl_readall(0.1,1)", ", ".join(["1.00000e-07"] * 6 + [ZERO])),
        ('xbl_pulse(0.001,"v/2",{0,1},{{0,2},{1}},{1.5,-1.25})', "2.00000e+00, 0.00000e+00"),
        (
            'xbl_pulseread(0.001,"floating",{1},{{0,1,2}},{1.5},0.1,1,{1,1,1},{0,1,2})',
            "1.0e-07, 2.0e-07, 3.0e-07, 0.0e+00",
        ),
        ("xbl_sweep(0,1,{0.1,0.2})", "1.00000e-07\t2.00000e-07\t0.00000e+00"),
    )
    smu.load_script()
    smu.script_setup(2, [(1, 1), (1, 2)], [(4, 1), (4, 2), (4, 3)], ("a", "b", "b"), tuple("ABCB"))
    assert smu.script_read(0.1, 2, [0, 1], [2, 0]) == [1e-7, 2e-7]
    assert smu.script_read_row(0.1, 1, 1, 3) == [1e-7, 2e-7, 3e-7]
    assert smu.script_read_all(0.1, 1, 6) == [1e-7] * 6
    smu.script_pulse(1e-3, "v/2", [(0, [0, 2], 1.5), (1, [1], -1.25)])
    assert smu.script_pulse_read(
        1e-3, "floating", [(1, [0, 1, 2], 1.5)], 0.1, 1, [1] * 3, [0, 1, 2]
    )
    assert smu.script_sweep(0, 1, [0.1, 0.2]) == [1e-7, 2e-7]
    transport.assert_done()


def test_script_reply_with_errors_raises_naming_them():
    transport, smu = scripted(
        ("xbl_readall(0.1,1)", "1.00000e-07, 1.00000e+00"),
        ("print(errorqueue.count)", "1.00000e+00"),
        ("print(errorqueue.next())", "-2.86000e+02\tTSP Runtime error: short\t2.0e+01\t1.0e+00"),
    )
    smu.script_loaded = True
    with pytest.raises(InstrumentError, match=r"smu.*xbl_readall.*-286 TSP Runtime error: short"):
        smu.script_read_all(0.1, 1, 1)
    transport.assert_done()


def test_out_of_limit_levels_raise_before_anything_is_written():
    transport, smu = scripted()
    smu.script_loaded = True
    with pytest.raises(LimitError, match="max_pulse_voltage"):
        smu.set_voltage("a", 2.5)
    with pytest.raises(LimitError, match="pulse width"):
        smu.pulse("a", 1.0, 1.0)
    with pytest.raises(LimitError, match="compliance"):
        smu.configure("a", 1e-3, 1.0)
    with pytest.raises(LimitError, match="max_read_voltage"):
        smu.script_read(0.5, 1, [0], [0])
    with pytest.raises(LimitError, match="max_pulse_voltage"):
        smu.script_pulse(1e-3, "v/2", [(0, [0], 2.1)])
    with pytest.raises(ValueError, match="channel 'c'"):
        smu.set_output("c", True)
    assert transport.sent == []


def test_number_and_table_formats():
    assert num(1e-4) == "0.0001" and num(-1.5) == "-1.5" and num(2) == "2"
    assert lua_table([0, 1.5, [2, 3]]) == "{0,1.5,{2,3}}"
    assert parse_lua_arguments('0.1, "v/2", {1,{2, 3}}, {}, -1e-3') == [
        0.1,
        "v/2",
        [1.0, [2.0, 3.0]],
        [],
        -1e-3,
    ]
    with pytest.raises(ValueError):
        parse_lua_arguments("{1,2")


# -- against the emulator over TCP ---------------------------------------------------------------

G = np.array([[1e-6, 2e-6, 3e-6], [4e-6, 5e-6, 6e-6]])


@pytest.fixture
def lab():
    chip = OhmicChip(G)
    bench = Bench(chip)
    emulator = Keithley2600Emulator(bench)
    server = EmulatorServer(emulator).start()
    yield bench, emulator, server
    server.stop()


def visa(server, timeout=2.0, name="smu"):
    return VisaTransport(name, server.resource, timeout=timeout)


def test_driver_against_emulator_measures_g_times_v(lab):
    bench, emulator, server = lab
    smu = Keithley2600(visa(server), LIMITS)
    try:
        assert "2636B" in smu.connect()
        assert smu.script_loaded and emulator.functions_defined
        smu.configure("a", 1e-4, 0.01)
        bench.connect(("word", 1), "smu.a")
        bench.connect(("bit", 2), "gnd")
        smu.set_voltage("a", 0.2)
        smu.set_output("a", True)
        assert smu.measure_current("a") == pytest.approx(0.2 * 6e-6, rel=1e-5)
        assert bench.chip.time == pytest.approx(0.01 / 50)
        smu.output_off()
        assert smu.read_errors() == []  # a reply: every write before it has been handled
        assert not bench.channels["smu.a"].output_on
        assert smu.measure_current("a") == 0.0  # output off: high impedance
        levels = [(e.channel, e.quantity, e.value) for e in emulator.source_log]
        assert ("smu.a", "voltage", 0.2) in levels and ("smu.a", "current_limit", 1e-4) in levels
    finally:
        smu.close()


def test_compliance_reads_the_limit(lab):
    bench, _, server = lab
    smu = Keithley2600(visa(server), LIMITS, load_script=False)
    try:
        smu.connect()
        smu.configure("a", 1e-6, 0.01)
        bench.connect(("word", 1), "smu.a")
        bench.connect(("bit", 2), "gnd")
        smu.set_voltage("a", 1.0)
        smu.set_output("a", True)
        assert smu.measure_current("a") == pytest.approx(1e-6)
        assert bench.channels["smu.a"].in_compliance
    finally:
        smu.close()


def test_script_functions_over_tcp_with_linked_matrix(lab):
    bench, emulator, server = lab
    matrix = Keithley707BEmulator(
        bench,
        rows={"A": "smu.a", "B": "smu.b", "C": "gnd"},
        columns={(1, 1): ("word", 0), (1, 2): ("word", 1), (2, 1): ("bit", 0), (2, 2): ("bit", 1)}
        | {(2, 3): ("bit", 2)},
    )
    emulator.link(2, matrix)
    smu = Keithley2600(visa(server), LIMITS)
    try:
        smu.connect()
        for channel in "ab":
            smu.configure(channel, 1e-4, 0.01)
            smu.set_output(channel, True)
        smu.script_setup(
            2, [(1, 1), (1, 2)], [(2, 1), (2, 2), (2, 3)], ("a", "b", "b"), ("A", "B", "C", "B")
        )
        currents = smu.script_read_all(0.1, 1, 6)
        np.testing.assert_allclose(np.reshape(currents, (2, 3)), G * 0.1, rtol=1e-5)
        np.testing.assert_allclose(smu.script_read_row(0.2, 2, 1, 3), G[1] * 0.2, rtol=1e-5)
        np.testing.assert_allclose(smu.script_sweep(0, 2, [0.1, -0.1]), [3e-7, -3e-7], rtol=1e-5)
        assert matrix.closed == set() and smu.transport.round_trips == 3 + 3
        smu.script_pulse(1e-3, "v/2", [(1, [0, 2], 1.5)])
        pulses = [e for e in emulator.source_log if e.quantity == "pulse"]
        assert [p.value for p in pulses] == [1.5]
        assert ("smu.b", 0.75) in [(e.channel, e.value) for e in emulator.source_log]
    finally:
        smu.close()


def test_wrong_identity_raises_identity_mismatch():
    bench = Bench(OhmicChip(G))
    with EmulatorServer(Keithley707BEmulator(bench)) as server:
        smu = Keithley2600(visa(server), LIMITS)
        with pytest.raises(IdentityMismatch, match="707B"):
            smu.connect()
        smu.close()


def test_malformed_command_and_unloaded_function_are_instrument_errors(lab):
    _, _, server = lab
    smu = Keithley2600(visa(server, timeout=0.3), LIMITS, load_script=False)
    try:
        smu.connect()
        smu.transport.write("smua.source.levelv = = 1")
        with pytest.raises(InstrumentError, match=r"smu.*-285 TSP Syntax error") as info:
            smu.check_errors("smua.source.levelv = = 1")
        assert info.value.instrument == "smu" and "-285" in info.value.reply
        smu.script_loaded = True
        with pytest.raises(InstrumentError, match=r"xbl_readall.*-286.*nil value"):
            smu.script_read_all(0.1, 1, 6)  # no reply -> timeout -> the queued error is reported
    finally:
        smu.close()


def test_script_that_is_not_the_shipped_one_is_refused(lab):
    _, emulator, server = lab
    smu = Keithley2600(visa(server), LIMITS, load_script=False)
    try:
        smu.connect()
        smu.transport.write("loadscript xbarlab")
        smu.transport.write_block([*script_lines()[:-1], "print('tampered')"])
        smu.transport.write("endscript")
        smu.transport.write("xbarlab.run()")
        errors = smu.read_errors()
        assert errors[0].startswith("-285") and "cannot run script 'xbarlab'" in errors[0]
        assert errors[1].startswith("-286") and not emulator.functions_defined
    finally:
        smu.close()


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("silence", InstrumentTimeout),
        ("garble", InstrumentError),
        # pyvisa-py reports a peer's close of a raw socket as a read timeout; the writes after
        # it fail with a broken pipe (ConnectionLost)
        ("drop", (InstrumentTimeout, ConnectionLost)),
    ],
)
def test_faults_surface_as_errors(lab, fault, error):
    _, emulator, server = lab
    smu = Keithley2600(visa(server, timeout=0.3), LIMITS, load_script=False)
    try:
        smu.connect()
        emulator.inject_fault(fault)
        with pytest.raises(error) as info:
            smu.measure_current("a")
        assert info.value.instrument == "smu" and info.value.command == "print(smua.measure.i())"
        if fault == "drop":
            with pytest.raises(ConnectionLost):
                smu.output_off()
                smu.output_off()
        else:
            smu.output_off()  # the link survives
            assert smu.read_errors() == []
    finally:
        smu.close()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["level", "pulse", "configure"]),
            st.sampled_from("ab"),
            st.floats(-4.0, 4.0),
            st.floats(1e-7, 0.1),
        ),
        max_size=8,
    )
)
def test_random_calls_never_source_beyond_the_limits(lab, calls):
    _, emulator, server = lab
    limits = SafetyLimits(max_pulse_voltage=1.5, compliance_current=1e-4, max_pulse_width=1e-2)
    smu = Keithley2600(ScriptedTransport([]), limits, load_script=False)
    smu.transport = visa(server)
    try:
        for kind, channel, value, width in calls:
            try:
                if kind == "level":
                    smu.set_voltage(channel, value)
                elif kind == "pulse":
                    smu.pulse(channel, value, width)
                else:
                    smu.configure(channel, abs(value) * 1e-4, 1.0)
            except LimitError:
                pass
        smu.read_errors()  # synchronise: every write has been handled
    finally:
        smu.close()
    for event in emulator.source_log:
        if event.quantity == "current_limit":
            assert event.value <= 1e-4
        else:
            assert abs(event.value) <= 1.5
