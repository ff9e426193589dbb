"""Keithley 707B driver: byte-exact commands, and the driver against its emulator over TCP."""

import threading

import pytest

from instruments.drivers.keithley707b import Keithley707B
from instruments.drivers.keithley2600 import Keithley2600
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
from instruments.emulators.keithley2600 import Keithley2600Emulator
from instruments.emulators.server import EmulatorServer
from instruments.limits import SafetyLimits

IDN = "Keithley Instruments Inc., Model 707B, 4420001, 1.6.0"


class StubChip:
    """What a relay-only test needs of a chip: shape and lock."""

    def __init__(self, rows: int, cols: int) -> None:
        self.shape = (rows, cols)
        self.lock = threading.RLock()


def test_commands_byte_exact():
    transport = ScriptedTransport(
        [
            ("*IDN?", IDN),
            ("print(errorqueue.count)", "0.00000e+00"),
            ('channel.close("1A01,2C12")', None),
            ('channel.open("1A01")', None),
            ('channel.exclusiveclose("3H05")', None),
            ('channel.exclusiveclose("")', None),
            ('channel.open("allslots")', None),
            ('print(channel.getclose("allslots"))', "nil"),
            ('print(channel.getclose("allslots"))', "1A01;2C12"),
            ('channel.setdelay("allslots", 0.003)', None),
            ("*OPC?", "1"),
            ("print(errorqueue.count)", "1.00000e+00"),
            ("print(errorqueue.next())", "-2.86000e+02\tTSP Runtime error\t2.0e+01\t1.0e+00"),
            ('channel.open("allslots")', None),
        ],
        name="matrix",
    )
    matrix = Keithley707B(transport)
    assert matrix.connect() == IDN
    matrix.close_channels(["1A01", "2C12"])
    matrix.open_channels("1A01")
    matrix.exclusive_close([matrix.channel_id(3, "h", 5)])
    matrix.exclusive_close([])
    matrix.open_all()
    assert matrix.closed_channels() == []
    assert matrix.closed_channels() == ["1A01", "2C12"]
    matrix.set_delay(["allslots"], 3e-3)
    matrix.wait()
    assert matrix.read_errors() == ["-286 TSP Runtime error"]
    matrix.output_off()
    transport.assert_done()


def test_tsp_link_node_commands_byte_exact():
    transport = ScriptedTransport(
        [
            ("print(node[2].model)", "707B"),
            ('node[2].channel.exclusiveclose("1A01,1C02")', None),
            ('print(node[2].channel.getclose("allslots"))', "1A01;1C02"),
            ('node[2].channel.open("allslots")', None),
        ]
    )
    matrix = Keithley707B(transport, node=2)
    assert matrix.connect() == "TSP-Link node 2: Model 707B"
    matrix.exclusive_close(["1A01", "1C02"])
    assert matrix.closed_channels() == ["1A01", "1C02"]
    assert matrix.read_errors() == []  # a node's errors land in the master's queue
    matrix.output_off()
    matrix.close()  # does not close the master's link
    transport.assert_done()


def test_invalid_channels_raise_before_anything_is_written():
    transport = ScriptedTransport([])
    matrix = Keithley707B(transport)
    for bad in ("7A01", "1I01", "1A13", "1A1", "allslots"):
        with pytest.raises(ValueError, match=f"channel {bad!r}"):
            matrix.close_channels([bad])
    assert Keithley707B(transport, slots=16).channel_id(16, "B", 12) == "16B12"
    assert transport.sent == []


# -- against the emulator over TCP ---------------------------------------------------------------


@pytest.fixture
def rig():
    bench = Bench(StubChip(2, 3))
    bench.add_channel("smu.a")
    emulator = Keithley707BEmulator(
        bench,
        rows={"A": "smu.a", "C": "gnd"},
        columns={(1, 1): ("word", 0), (1, 2): ("word", 1), (2, 5): ("bit", 2)},
    )
    server = EmulatorServer(emulator).start()
    matrix = Keithley707B(VisaTransport("matrix", server.resource, timeout=2.0))
    yield bench, emulator, matrix
    matrix.close()
    server.stop()


def test_closures_drive_bench_relays(rig):
    bench, _, matrix = rig
    assert "707B" in matrix.connect()
    matrix.close_channels(["1A02", "2C05", "1B01"])  # 1B01: row B not wired, only remembered
    assert matrix.closed_channels() == ["1A02", "1B01", "2C05"]
    assert bench.links[("word", 1)] == {"smu.a"} and bench.links[("bit", 2)] == {"gnd"}
    matrix.exclusive_close(["1A01"])
    assert matrix.closed_channels() == ["1A01"]
    assert bench.lines_of("smu.a") == [("word", 0)] and bench.lines_of("gnd") == []
    matrix.transport.write('channel.close("1A01:1C02")')  # a range: rows A-C, columns 1-2
    assert len(matrix.closed_channels()) == 6
    matrix.output_off()
    assert matrix.closed_channels() == [] and all(not t for t in bench.links.values())
    assert matrix.read_errors() == []


@pytest.mark.parametrize(
    "command",
    [
        'channel.close("1A13")',
        'channel.close("7A01")',
        'channel.exclusiveclose("allslots")',
        'channel.close("1A01,bogus")',
        'channel.open("")',
    ],
)
def test_invalid_channel_lists_queue_an_error_and_change_nothing(rig, command):
    _, emulator, matrix = rig
    matrix.connect()
    matrix.close_channels(["1A02"])
    matrix.transport.write(command)
    errors = matrix.read_errors()
    assert len(errors) == 1 and errors[0].startswith("-286 TSP Runtime error")
    assert matrix.closed_channels() == ["1A02"]
    assert emulator.closed == {(1, "A", 2)}


def test_unknown_command_is_a_syntax_error(rig):
    _, _, matrix = rig
    matrix.connect()
    matrix.transport.write("channel.clos(1A01)")
    with pytest.raises(InstrumentError, match=r"matrix.*-285 TSP Syntax error"):
        matrix.check_errors("channel.clos(1A01)")


def test_emulator_only_slot_extension():
    bench = Bench(StubChip(128, 64))
    columns = {(1 + k // 12, 1 + k % 12): ("word", k) for k in range(128)}
    columns |= {(1 + (128 + k) // 12, 1 + (128 + k) % 12): ("bit", k) for k in range(64)}
    emulator = Keithley707BEmulator(bench, rows={"C": "gnd"}, columns=columns, slots=16)
    emulator.handle('channel.close("16C12")')  # line 191 = bit line 63
    assert bench.links[("bit", 63)] == {"gnd"} and not emulator.errors
    with pytest.raises(ValueError, match="does not exist"):
        Keithley707BEmulator(bench, rows={"C": "gnd"}, columns=columns, slots=6)


def test_wrong_identity_and_faults(rig):
    bench, emulator, matrix = rig
    with EmulatorServer(Keithley2600Emulator(bench)) as server:
        other = Keithley707B(VisaTransport("matrix", server.resource, timeout=2.0))
        with pytest.raises(IdentityMismatch, match="2636B"):
            other.connect()
        other.close()
    matrix.connect()
    matrix.transport._resource.timeout = 300  # ms
    emulator.inject_fault("silence")
    with pytest.raises(InstrumentTimeout):
        matrix.wait()
    emulator.inject_fault("garble")
    with pytest.raises(InstrumentError, match="garbled"):
        matrix.closed_channels()
    assert matrix.closed_channels() == []  # the link survives both
    emulator.inject_fault("drop")
    with pytest.raises((InstrumentTimeout, ConnectionLost)):
        matrix.wait()
    with pytest.raises(ConnectionLost):
        matrix.open_all()
        matrix.open_all()


def test_matrix_as_tsp_link_node_of_a_2600b():
    bench = Bench(StubChip(2, 3))
    smu_emulator = Keithley2600Emulator(bench)
    node = Keithley707BEmulator(bench, rows={"A": "smu.a"}, columns={(1, 1): ("word", 0)})
    smu_emulator.link(2, node)
    with EmulatorServer(smu_emulator) as server:
        transport = VisaTransport("smu", server.resource, timeout=2.0)
        smu = Keithley2600(transport, SafetyLimits(), load_script=False)
        matrix = Keithley707B(transport, node=2)
        try:
            smu.connect()
            assert matrix.connect() == "TSP-Link node 2: Model 707B"
            matrix.exclusive_close(["1A01"])
            assert matrix.closed_channels() == ["1A01"]
            assert bench.links[("word", 0)] == {"smu.a"}
            transport.write('node[2].channel.close("9A01")')
            transport.write('node[3].channel.close("1A01")')
            errors = smu.read_errors()
            assert errors[0].startswith("-286") and "node 2" in errors[0]
            assert errors[1].startswith("-286") and "node[3]" in errors[1]
        finally:
            matrix.close()
            smu.close()
