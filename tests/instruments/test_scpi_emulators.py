"""SCPI parsing helpers and the 2450 / B2900 emulators driven line by line (no sockets)."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest

from instruments.emulators.bench import Bench
from instruments.emulators.keithley2450 import Keithley2450Emulator
from instruments.emulators.keysight_b2900 import KeysightB2900Emulator
from instruments.emulators.scpi import (
    ScpiError,
    command_pattern,
    header,
    parse_bool,
    parse_channel_list,
    parse_number,
    parse_number_list,
    parse_string,
    split_units,
)


class OhmicChip:
    """I_ij = G_ij (V_word_i - V_bit_j) when both lines are driven; floating lines carry nothing."""

    def __init__(self, g: np.ndarray) -> None:
        self.g = np.asarray(g, dtype=float)
        self.shape = self.g.shape
        self.lock = threading.RLock()
        self.time = 0.0

    def drive(self, word: np.ndarray, bit: np.ndarray, duration: float):
        self.time += duration
        both = ~np.isnan(word)[:, None] & ~np.isnan(bit)[None, :]
        volts = np.where(both, np.nan_to_num(word)[:, None] - np.nan_to_num(bit)[None, :], 0.0)
        flow = self.g * volts
        return flow.sum(axis=1), -flow.sum(axis=0)


def matches(spec: str, line: str) -> tuple | None:
    match = re.compile(command_pattern(spec), re.IGNORECASE).fullmatch(line)
    return match.groups() if match else None


# -- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "groups"),
    [
        ("SOUR:VOLT 1", ("", "1")),
        (":sour2:volt:lev:imm:ampl -0.5", ("2", "-0.5")),
        ("SOURCE1:VOLTAGE:LEVEL 3e-3", ("1", "3e-3")),
        (":Source:Voltage 2", ("", "2")),
        ("SOURC:VOLT 1", None),  # neither short nor long form
        ("SOUR:VOLTA 1", None),
        ("SOUR:VOLT:ILIM 1", None),  # a different header
    ],
)
def test_short_long_and_case_insensitive_headers(line, groups):
    assert matches(":SOURce#:VOLTage[:LEVel][:IMMediate][:AMPLitude]", line) == groups


def test_optional_first_node_and_queries():
    spec = "[:SOURce#]:LIST:VOLTage"
    assert matches(spec, ":LIST:VOLT 1,2") == (None, "1,2")
    assert matches(spec, "SOUR2:LIST:VOLT 1") == ("2", "1")
    assert matches(spec, "SOUR2LIST:VOLT 1") is None
    assert re.fullmatch(header(":SYSTem:ERRor[:NEXT]?"), "syst:err:next?", re.I)
    assert not re.fullmatch(header(":SYSTem:ERRor[:NEXT]?"), "SYST:ERR", re.I)


def test_compound_lines_follow_the_scpi_path_rule():
    units = split_units('SOUR:VOLT 1;ILIM 1e-3;:OUTP ON;*OPC?;:SENS:FUNC "CURR;X"')
    assert units == ["SOUR:VOLT 1", ":SOUR:ILIM 1e-3", ":OUTP ON", "*OPC?", ':SENS:FUNC "CURR;X"']
    assert split_units("SOUR:VOLT:ILIM 1e-3;LEV 2e-3") == [
        "SOUR:VOLT:ILIM 1e-3",
        ":SOUR:VOLT:LEV 2e-3",
    ]


def test_parameter_parsing_and_error_codes():
    assert parse_number(" 1.5e-3 ", "x") == 1.5e-3
    assert parse_number("MAX", "x", named={"MAX": 10.0}) == 10.0
    assert parse_number("maximum", "x", named={"MAX": 10.0}) == 10.0
    for text, code in [(None, -109), ("", -109), ("abc", -104), ("1.2.3", -104)]:
        with pytest.raises(ScpiError) as info:
            parse_number(text, "x")
        assert info.value.code == code
    with pytest.raises(ScpiError) as info:
        parse_number("11", "x", 0, 10)
    assert info.value.code == -222 and info.value.message == "Data out of range"
    assert parse_bool("on", "b") is True and parse_bool("0", "b") is False
    with pytest.raises(ScpiError, match="-224"):
        parse_bool("maybe", "b")
    assert parse_number_list("1, -2,3e-1", "l") == [1.0, -2.0, 0.3]
    assert parse_string("'CURR'", "s") == "CURR"
    with pytest.raises(ScpiError, match="-104"):
        parse_string("CURR", "s")
    assert parse_channel_list("(@1:2)", "c", 2) == [1, 2]
    assert parse_channel_list("(@2)", "c", 2) == [2]
    with pytest.raises(ScpiError, match="-224"):
        parse_channel_list("(@3)", "c", 2)
    with pytest.raises(ScpiError, match="-224"):
        parse_channel_list("@1", "c", 2)


# -- Keithley 2450 emulator -----------------------------------------------------------------------


@pytest.fixture
def k2450():
    bench = Bench(OhmicChip(np.array([[1e-6, 2e-6], [3e-6, 4e-6]])))
    emulator = Keithley2450Emulator(bench, prefix="k")
    bench.connect(("word", 0), "k.1")
    bench.connect(("bit", 1), "gnd")
    return emulator, bench


def errors_of(emulator, query=":SYST:ERR?", empty=('0,"No error;0;0 0"', '+0,"No error"')):
    out = []
    while (reply := emulator.handle(query)) not in empty:
        out.append(reply)
    return out


def test_2450_long_and_short_forms_measure_the_same(k2450):
    emulator, _ = k2450
    emulator.handle(":SOURCE:FUNCTION:MODE VOLTAGE")
    emulator.handle(':sense:function:on "CURRENT"')
    emulator.handle("SOURce:VOLTage:LEVel:IMMediate:AMPLitude 0.5")
    emulator.handle("OUTPUT:STATE ON")
    long = float(emulator.handle(":READ?"))
    short = float(emulator.handle(":read?"))
    assert long == short == pytest.approx(2e-6 * 0.5)
    assert emulator.handle(":OUTP?") == "1"
    assert errors_of(emulator) == []


def test_2450_errors_use_scpi_codes_and_the_2450_format(k2450):
    emulator, _ = k2450
    emulator.handle(":SOUR:VOLTAG 1")
    emulator.handle(":SOUR:VOLT abc")
    emulator.handle(":SOUR:VOLT 300")
    emulator.handle(":SENS:CURR:NPLC")
    emulator.handle(":SOUR2:VOLT 1")
    errors = errors_of(emulator)
    codes = [int(e.split(",")[0]) for e in errors]
    assert codes == [-113, -104, -222, -109, -113]
    assert re.fullmatch(r'-113,"Undefined header;1;\d{4}/\d\d/\d\d [\d:]{8}\.\d{3}"', errors[0])
    assert emulator.state.level == 0.0
    assert [e.value for e in emulator.source_log] == []


def test_2450_fixed_range_overflow_and_limit_trip(k2450):
    emulator, _ = k2450
    emulator.handle(":SOUR:VOLT 1;:OUTP ON")
    emulator.handle(":SENS:CURR:RANG 1e-6")  # 2 uA through 2e-6 S: beyond the 1 uA range
    assert float(emulator.handle(":READ?")) == pytest.approx(9.9e37)
    emulator.handle(":SENS:CURR:RANG:AUTO ON;:SOUR:VOLT:ILIM 1e-6")
    assert float(emulator.handle(":READ?")) == pytest.approx(1e-6)
    assert emulator.handle(":SOUR:VOLT:ILIM:TRIP?") == "1"
    emulator.handle(":SOUR:VOLT 0.1")
    emulator.handle(":READ?")
    assert emulator.handle(":SOUR:VOLT:ILIM:TRIP?") == "0"


def test_2450_list_sweep_buffer_and_errors(k2450):
    emulator, _ = k2450
    emulator.handle(":SOUR:LIST:VOLT " + ", ".join(["0.1"] * 101))
    assert [int(e.split(",")[0]) for e in errors_of(emulator)] == [-222]
    emulator.handle(":SOUR:SWE:VOLT:LIST 1, 0")
    assert [int(e.split(",")[0]) for e in errors_of(emulator)] == [-221]  # no list yet
    emulator.handle(":SOUR:LIST:VOLT 0.1, 0.2")
    emulator.handle(":SOUR:LIST:VOLT:APP 0.3")
    assert emulator.handle(":SOUR:LIST:VOLT?").count(",") == 2
    emulator.handle(":SOUR:SWE:VOLT:LIST 2, 1e-3, 2")
    emulator.handle(":INIT")
    assert emulator.state.output_on and emulator.state.level == 0.3
    assert emulator.handle(":TRAC:ACT?") == "4"
    data = emulator.handle(':TRAC:DATA? 1, 4, "defbuffer1", SOUR, READ')
    values = np.array(data.split(","), dtype=float).reshape(4, 2)
    np.testing.assert_allclose(values[:, 0], [0.2, 0.3, 0.2, 0.3])
    np.testing.assert_allclose(values[:, 1], 2e-6 * values[:, 0])
    assert emulator.handle(":TRAC:DATA? 1, 9") is None
    assert [int(e.split(",")[0]) for e in errors_of(emulator)] == [-222]
    emulator.handle(":SOUR:SWE:VOLT:LIST 1, 2e-5")  # delay below 50 us
    assert [int(e.split(",")[0]) for e in errors_of(emulator)] == [-222]


def test_2450_rst_and_cls(k2450):
    emulator, _ = k2450
    emulator.handle(":SOUR:VOLT 1;:OUTP ON;:SENS:CURR:NPLC 5;:BOGUS")
    emulator.handle("*RST")
    assert not emulator.state.output_on and emulator.state.level == 0.0 and emulator.nplc == 1.0
    assert emulator.handle(":SYST:ERR:COUN?") == "1"  # *RST leaves the queue alone
    emulator.handle("*CLS")
    assert emulator.handle(":SYST:ERR:COUN?") == "0"
    assert emulator.handle("*IDN?").startswith("KEITHLEY INSTRUMENTS,MODEL 2450")


def test_2450_output_off_modes(k2450):
    emulator, bench = k2450
    emulator.handle(":SOUR:VOLT 0.5")
    assert bench.terminal_voltage("k.1") == 0.0  # NORMal: 0 V with the output off
    emulator.handle(":OUTP:VOLT:SMOD HIMP")
    assert np.isnan(bench.terminal_voltage("k.1"))
    emulator.handle(":OUTP:VOLT:SMOD GUARD")
    assert [int(e.split(",")[0]) for e in errors_of(emulator)] == [-224]


# -- Keysight B2900 emulator ----------------------------------------------------------------------


@pytest.fixture
def b2900():
    bench = Bench(OhmicChip(np.array([[1e-6, 2e-6], [3e-6, 4e-6]])))
    emulator = KeysightB2900Emulator(bench, model="B2902A")
    bench.connect(("word", 0), "smu.1")
    bench.connect(("word", 1), "smu.2")
    bench.connect(("bit", 0), "gnd")
    return emulator, bench


def test_b2900_channels_forms_and_measure(b2900):
    emulator, _ = b2900
    emulator.handle(":SOURCE2:VOLTAGE:LEVEL:IMMEDIATE:AMPLITUDE 0.2;:OUTPUT2:STATE ON")
    emulator.handle(":sour1:volt 0.1;:outp1 on")
    reply = emulator.handle(":MEAS:CURR? (@1,2)")
    np.testing.assert_allclose(np.array(reply.split(","), dtype=float), [1e-7, 6e-7])
    assert emulator.handle(":MEASURE:CURRENT:DC? (@2)") == "+6.000000E-07"
    emulator.handle(":SOUR3:VOLT 1")
    emulator.handle(":MEAS:CURR? (@3)")
    assert errors_of(emulator) == ['-113,"Undefined header"', '-224,"Illegal parameter value"']


def test_b2900_single_channel_model_has_no_channel_2():
    bench = Bench(OhmicChip(np.ones((1, 1)) * 1e-6))
    emulator = KeysightB2900Emulator(bench, model="B2911A")
    assert "smu.2" not in bench.channels and "B2911A" in emulator.handle("*IDN?")
    emulator.handle(":OUTP2 ON")
    assert errors_of(emulator) == ['-113,"Undefined header"']
    with pytest.raises(ValueError, match="model"):
        KeysightB2900Emulator(Bench(OhmicChip(np.ones((1, 1)))), model="B2962A")


def test_b2900_pulse_train_list_pulses_and_auto_output_on(b2900):
    emulator, _bench = b2900
    emulator.handle(":SOUR1:FUNC:SHAP PULS;:SOUR1:VOLT 0.05;:SOUR1:VOLT:TRIG 1.5")
    emulator.handle(":SOUR1:PULS:WIDT 2e-4;:SOUR1:PULS:DEL 1e-4;:TRIG1:COUN 3")
    emulator.handle(":INIT (@1)")  # automatic output on (default) switches the output on
    channel = emulator.channels[1]
    assert channel.state.output_on and channel.state.level == 0.05
    currents = np.array(emulator.handle(":FETC:ARR:CURR? (@1)").split(","), dtype=float)
    np.testing.assert_allclose(currents, [1.5e-6] * 3)
    assert [e.value for e in emulator.source_log if e.quantity == "pulse"] == [1.5] * 3
    emulator.handle(":SOUR1:VOLT:MODE LIST;:SOUR1:LIST:VOLT 0.5,-0.5;:TRIG1:COUN 2")
    emulator.handle(":INIT (@1)")
    np.testing.assert_allclose(
        np.array(emulator.handle(":FETC:ARR:CURR? (@1)").split(","), dtype=float),
        [0.5e-6, -0.5e-6],
    )
    emulator.handle(":SOUR1:PULS:WIDT 1e-5")  # below 50 us
    assert errors_of(emulator) == ['-222,"Data out of range"']


def test_b2900_auto_on_off_leaves_output_off_and_short_is_an_error(b2900):
    emulator, bench = b2900
    emulator.handle(":OUTP1:ON:AUTO OFF;:SOUR1:VOLT:TRIG 0.3;:INIT (@1)")
    assert not emulator.channels[1].state.output_on
    assert emulator.handle(":FETC:ARR:CURR? (@1)") == "+0.000000E+00"
    bench.connect(("word", 0), "smu.2")  # both channels now on word 0
    emulator.handle(":OUTP1 ON;:OUTP2 ON;:SOUR1:VOLT 0.1;:SOUR2:VOLT 0.2")
    assert emulator.handle(":MEAS:CURR? (@1)") is None
    assert errors_of(emulator)[0].startswith('-200,"Execution error')


def test_b2900_rst_restores_defaults(b2900):
    emulator, _ = b2900
    emulator.handle(":SOUR2:VOLT 1;:OUTP2 ON;:SENS2:CURR:PROT 1e-3;:SOUR2:FUNC:SHAP PULS")
    emulator.handle("*RST")
    channel = emulator.channels[2]
    assert (channel.shape, channel.state.level, channel.state.output_on) == ("DC", 0.0, False)
    assert channel.state.compliance == 1e-4
    assert emulator.handle(":SENS2:CURR:PROT?") == "+1.000000E-04"
