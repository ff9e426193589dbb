"""Mux board: byte-exact driver commands, the emulator's protocol edge cases and watchdog, and the
driver against the emulator over TCP (pyserial socket://) with injected faults."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from instruments.drivers.mux_board import BoardConfig, MuxBoard
from instruments.drivers.transport import (
    ConnectionLost,
    IdentityMismatch,
    InstrumentError,
    InstrumentTimeout,
    ScriptedTransport,
)
from instruments.emulators.bench import Bench
from instruments.emulators.mux_board import MuxBoardEmulator, MuxBoardServer, serve_mux_board

IDN = "xbarlab,mux-board,SN042,1.0.0"
CONF = "64,64,2,-5.000000,5.000000,16"
CONNECT = [
    ("*IDN?", IDN),
    ("CONF?", CONF),
    ("ERR?", "0 No error"),
    ("SAFE", "OK"),
    ("WDOG 10.000", "OK"),
]


class TinyChip:
    """Ohmic G (rows, cols); floating (NaN) lines carry no current; no switching."""

    def __init__(self, rows: int = 3, cols: int = 4) -> None:
        self.shape = (rows, cols)
        self.lock = threading.RLock()
        self.g = 1e-6 * (1 + np.arange(rows * cols).reshape(rows, cols))

    def drive(self, word, bit, duration):
        volts = np.asarray(word)[:, None] - np.asarray(bit)[None, :]
        flow = np.where(np.isnan(volts), 0.0, self.g * np.nan_to_num(volts))
        return flow.sum(axis=1), -flow.sum(axis=0)


def scripted(extra: list[tuple[str, str | None]]) -> tuple[MuxBoard, ScriptedTransport]:
    transport = ScriptedTransport(CONNECT + extra, name="mux")
    board = MuxBoard(transport)
    board.connect()
    return board, transport


# -- driver, byte-exact ---------------------------------------------------------------------------


def test_connect_sequence_and_config() -> None:
    board, transport = scripted([])
    transport.assert_done()
    assert board.identity == IDN
    assert board.config == BoardConfig(64, 64, 2, -5.0, 5.0, 16)
    assert board.watchdog == 10.0
    assert board.dac == {1: 0.0, 2: 0.0}


def test_every_command_byte_exact() -> None:
    board, transport = scripted(
        [
            ("CONN W3 HI", "OK"),
            ("CONN B63 BIAS2", "OK"),
            ("ALL W LO", "OK"),
            ("ALL B FLOAT", "OK"),
            ("ROUTE W0 B1,5,63 BIAS1 BIAS2", "OK"),
            ("ROUTE W7 B2 LO BIAS1", "OK"),
            ("DAC 1 0.100000", "OK"),
            ("DAC 2 -1.250000", "OK"),
            ("DAC? 1", "0.099945"),
            ("STATE?", "HF,LL"),
            ("WDOG 0.500", "OK"),
            ("WDOG?", "0.500"),
            ("SAFE", "OK"),
            ("*RST", "OK"),
            ("ERR?", "201 Line out of range; W64 not in 0..63"),
            ("ERR?", "0 No error"),
        ]
    )
    board.connect_line("word", 3, "HI")
    board.connect_line("bit", 63, "bias2")
    board.connect_all("word", "LO")
    board.connect_all("bit", "FLOAT")
    board.route(0, [1, 5, 63], "BIAS1", "BIAS2")
    board.route(7, (2,), "LO", "BIAS1")
    # 0.1 V -> code floor(5.1 / 10 * 65536 + 0.5) = 33423 -> -5 + 33423 * 10 / 65536 V
    assert board.set_dac(1, 0.1) == pytest.approx(-5 + 33423 * 10 / 65536, abs=1e-9)
    assert board.set_dac(2, -1.25) == pytest.approx(-1.25, abs=1e-12)  # exact code 24576
    assert board.dac_level(1) == pytest.approx(0.099945)
    assert board.state() == ("HF", "LL")
    board.set_watchdog(0.5)
    assert board.watchdog_timeout() == 0.5
    board.output_off()
    assert board.dac == {1: 0.0, 2: 0.0}
    board.reset()
    assert board.read_errors() == ["201 Line out of range; W64 not in 0..63"]
    transport.assert_done()
    assert transport.round_trips == len(CONNECT) + 16


def test_refused_command_raises_with_queue() -> None:
    board, transport = scripted(
        [
            ("DAC 2 4.000000", "ERR 401 Hardware fault; DAC 2 not responding"),
            ("ERR?", "401 Hardware fault; DAC 2 not responding"),
            ("ERR?", "0 No error"),
        ]
    )
    with pytest.raises(InstrumentError) as caught:
        board.set_dac(2, 4.0)
    assert caught.value.command == "DAC 2 4.000000"
    assert "ERR 401" in caught.value.reply and "board error queue" in str(caught.value)
    assert board.dac[2] == 0.0  # not recorded as set
    transport.assert_done()


def test_unexpected_reply_is_an_error() -> None:
    board, _ = scripted([("SAFE", "KO")])
    with pytest.raises(InstrumentError, match="expected 'OK'"):
        board.safe()


def test_bad_arguments_raise_before_writing() -> None:
    board, transport = scripted([])
    with pytest.raises(ValueError, match=r"word line 64 is outside the board's 0..63"):
        board.connect_line("word", 64, "HI")
    with pytest.raises(ValueError, match="terminal 'GND'"):
        board.connect_line("bit", 0, "GND")
    with pytest.raises(ValueError, match="terminal 'HI'"):
        board.route(0, [1], "HI", "LO")
    with pytest.raises(ValueError, match="at least one bit line"):
        board.route(0, [], "LO", "LO")
    with pytest.raises(ValueError, match=r"DAC 1 level 5.5 V is outside"):
        board.set_dac(1, 5.5)
    with pytest.raises(ValueError, match="DAC channel 3"):
        board.set_dac(3, 0.0)
    with pytest.raises(ValueError, match=r"watchdog 0\.0 s"):
        board.set_watchdog(0.0)
    transport.assert_done()  # nothing was sent


def test_identity_mismatch() -> None:
    board = MuxBoard(ScriptedTransport([("*IDN?", "Arduino,relay,1,0")], name="mux"))
    with pytest.raises(IdentityMismatch) as caught:
        board.connect()
    assert caught.value.reply == "Arduino,relay,1,0"


def test_connect_warns_on_watchdog_event_and_raises_on_errors() -> None:
    event = "301 Watchdog expired; board safed; no command for 5 s"
    board = MuxBoard(
        ScriptedTransport(
            [("*IDN?", IDN), ("CONF?", CONF), ("ERR?", event), ("ERR?", "0 No error"), *CONNECT[3:]]
        )
    )
    with pytest.warns(RuntimeWarning, match="301 Watchdog expired"):
        board.connect()
    assert board.events == [event]
    board = MuxBoard(
        ScriptedTransport(
            [
                ("*IDN?", IDN),
                ("CONF?", CONF),
                ("ERR?", "101 Unknown command"),
                ("ERR?", "0 No error"),
            ]
        )
    )
    with pytest.raises(InstrumentError, match="101 Unknown command"):
        board.connect()


def test_quantisation_driver_matches_firmware() -> None:
    emulator = MuxBoardEmulator(Bench(TinyChip()))
    config = BoardConfig.parse(emulator.handle("CONF?") or "")
    for volts in [*np.linspace(-5.0, 4.9998, 41).tolist(), 0.1, 1e-4, 7.6e-5, -2.5, 1 / 3]:
        text = f"{volts:.6f}"
        assert emulator.handle(f"DAC 1 {text}") == "OK"
        assert config.quantize(float(text)) == pytest.approx(emulator.dac_volts(1), abs=1e-9)
    assert emulator.handle("DAC 1 0") == "OK" and emulator.dac_volts(1) == 0.0


# -- emulator protocol ---------------------------------------------------------------------------


@pytest.fixture
def emulator() -> MuxBoardEmulator:
    """A 64 x 64 board on a 3 x 4 chip: chip rows on board lines 5, 0, 3; cols on 1, 7, 2, 4."""
    bench = Bench(TinyChip())
    bench.add_channel("smu.1")
    return MuxBoardEmulator(bench, word_map=[5, 0, 3], bit_map=[1, 7, 2, 4])


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("FOO", 101),
        ("", 101),
        ("CONN W1", 102),
        ("CONN X1 HI", 102),
        ("DAC 1 abc", 102),
        ("ROUTE W1 B HI LO", 102),
        ("CONN W" + "1" * 300 + " HI", 103),
        ("CONN W1 H\u00e9", 104),
        ("CONN W64 HI", 201),
        ("CONN B99 LO", 201),
        ("ROUTE W0 B1,64 LO LO", 201),
        ("CONN W1 GND", 202),
        ("DAC 1 5.0", 203),
        ("DAC 2 -5.1", 203),
        ("WDOG 0.05", 204),
        ("WDOG 601", 204),
        ("ROUTE W0 B1 HI LO", 205),
        ("DAC 3 0.5", 206),
        ("DAC? 0", 206),
    ],
)
def test_refused_lines_answer_err_and_queue(emulator: MuxBoardEmulator, line: str, code: int):
    before = emulator.handle("STATE?")
    reply = emulator.handle(line)
    assert reply is not None and reply.startswith(f"ERR {code} ")
    assert emulator.handle("ERR?") == reply[len("ERR ") :]
    assert emulator.handle("ERR?") == "0 No error"
    assert emulator.handle("STATE?") == before  # a refused command changes nothing
    assert emulator.dac_volts(1) == 0.0


def test_route_state_and_bench_wiring(emulator: MuxBoardEmulator) -> None:
    bench = emulator.bench
    assert emulator.handle("dac 1 1.25") == "OK"  # case-insensitive; 1.25 V is code 40960
    assert emulator.handle("ROUTE W0 B7,4 BIAS1 LO") == "OK"
    words, bits = (emulator.handle("STATE?") or "").split(",")
    assert len(words) == len(bits) == 64
    assert words[0] == "H" and set(words[1:]) == {"1"}
    assert bits == "L" * 64  # selected bit lines 7, 4 on LO, the others on LO as asked
    # board word 0 is chip row 1; board bits 7 and 4 are chip cols 1 and 3
    assert bench.links[("word", 1)] == {"smu.1"}
    assert bench.links[("word", 0)] == {"mux.bias1"} and bench.links[("word", 2)] == {"mux.bias1"}
    assert bench.links[("bit", 1)] == {"gnd"} and bench.links[("bit", 3)] == {"gnd"}
    assert bench.fixed["mux.bias1"] == 1.25
    word, bit = bench.line_voltages()
    np.testing.assert_array_equal(word, [1.25, math.nan, 1.25])
    np.testing.assert_array_equal(bit, [0.0, 0.0, 0.0, 0.0])
    assert emulator.handle("SAFE") == "OK"
    assert emulator.is_safe() and not any(bench.links.values())
    assert emulator.handle("STATE?") == "F" * 64 + "," + "F" * 64
    assert emulator.handle("DAC? 1") == "0.000000"


def test_route_levels_one_by_one(emulator: MuxBoardEmulator) -> None:
    assert emulator.handle("ROUTE W3 B2 FLOAT BIAS2") == "OK"
    words, bits = (emulator.handle("STATE?") or "").split(",")
    assert words == "FFFH" + "F" * 60
    assert bits == "22L" + "2" * 61
    assert emulator.handle("CONN B2 BIAS1") == "OK"
    assert emulator.handle("ALL W LO") == "OK"
    words, bits = (emulator.handle("STATE?") or "").split(",")
    assert words == "L" * 64 and bits[2] == "1"


def test_identity_conf_and_common_commands(emulator: MuxBoardEmulator) -> None:
    assert emulator.handle("*IDN?") == "xbarlab,mux-board,EMU00001,1.0.0"
    assert emulator.handle("CONF?") == "64,64,2,-5.000000,5.000000,16"
    assert emulator.handle("*OPC?") == "1"
    assert emulator.handle("WDOG 2.5") == "OK" and emulator.handle("WDOG?") == "2.500"
    emulator.handle("DAC 2 1")
    assert emulator.handle("*RST") == "OK"
    assert emulator.is_safe() and emulator.handle("WDOG?") == "5.000"
    emulator.handle("FOO")
    assert emulator.handle("*CLS") == "OK" and emulator.handle("ERR?") == "0 No error"
    assert next(e.value for e in emulator.source_log if e.channel == "bias2") == pytest.approx(
        -5 + 39322 * 10 / 2**16, abs=1e-12
    )  # the quantised level 1.000061 V is logged


def test_error_queue_overflow(emulator: MuxBoardEmulator) -> None:
    for _ in range(20):
        emulator.handle("FOO")
    replies = [emulator.handle("ERR?") for _ in range(17)]
    assert replies[:15] == ["101 Unknown command; 'FOO'"] * 15
    assert replies[15] == "350 Error queue overflow"
    assert replies[16] == "0 No error"


def test_watchdog_safes_after_silence_and_is_fed_by_commands() -> None:
    now = [0.0]
    bench = Bench(TinyChip())
    bench.add_channel("smu.1")
    emulator = MuxBoardEmulator(bench, clock=lambda: now[0])
    assert emulator.handle("WDOG 2") == "OK"
    assert emulator.handle("DAC 1 1.5") == "OK"
    assert emulator.handle("ROUTE W0 B0 BIAS1 BIAS1") == "OK"
    now[0] = 1.9
    assert not emulator.check_watchdog()
    assert emulator.handle("STATE?") is not None  # feeds
    now[0] = 3.8
    assert not emulator.check_watchdog()
    emulator.handle("FOO")  # an unknown command does not feed
    now[0] = 4.0
    assert emulator.check_watchdog()
    assert emulator.is_safe() and not any(bench.links.values())
    assert bench.fixed["mux.bias1"] == 0.0
    assert emulator.handle("ERR?") == "101 Unknown command; 'FOO'"
    assert emulator.handle("ERR?") == "301 Watchdog expired; board safed; no command for 2 s"
    now[0] = 100.0  # already safe: no second trip, nothing queued
    assert not emulator.check_watchdog()
    assert emulator.handle("ERR?") == "0 No error"


def test_hi_terminal_missing_is_a_hardware_fault() -> None:
    emulator = MuxBoardEmulator(Bench(TinyChip()), hi_terminal="smu.a")
    reply = emulator.handle("CONN W0 HI")
    assert reply == "ERR 401 Hardware fault; SMU input 'smu.a' is not wired"


def test_serve_mux_board_reads_channel_map() -> None:
    bench = Bench(TinyChip())
    config = {"smu": {"channel": "a"}, "channel_map": {"word_lines": {"first": 8, "count": 3}}}
    server = serve_mux_board(bench, config)
    try:
        assert isinstance(server, MuxBoardServer)
        assert server.url == f"socket://127.0.0.1:{server.port}"
        assert server.emulator.word_wiring == {8: 0, 9: 1, 10: 2}
        assert server.emulator.bit_wiring == {0: 0, 1: 1, 2: 2, 3: 3}
        assert server.emulator.bench_terminals["HI"] == "smu.a"
    finally:
        server.stop()
    with pytest.raises(ValueError, match=r"channel_map.*3 lines, the chip has 4"):
        serve_mux_board(bench, {"channel_map": {"bit_lines": [0, 1, 2]}})


# -- driver against the emulator over TCP ---------------------------------------------------------


@pytest.fixture
def served():
    bench = Bench(TinyChip())
    bench.add_channel("smu.1")
    server = serve_mux_board(bench, {"channel_map": {"word_lines": [5, 0, 3]}})
    yield server
    server.stop()


def test_driver_over_socket(served: MuxBoardServer) -> None:
    board = MuxBoard.open(served.url, timeout=1.0, watchdog=3.0)
    try:
        assert board.identity == "xbarlab,mux-board,EMU00001,1.0.0"
        assert served.emulator.watchdog == 3.0
        assert board.set_dac(1, 0.2) == pytest.approx(served.emulator.dac_volts(1), abs=1e-12)
        board.route(5, [2], "LO", "BIAS1")
        words, bits = board.state()
        assert words[5] == "H" and words[0] == "L" and bits[2] == "L" and bits[0] == "1"
        assert served.emulator.bench.links[("word", 0)] == {"smu.1"}
        with pytest.raises(InstrumentError) as caught:
            board._command("CONN W70 HI")
        assert caught.value.reply == "ERR 201 Line out of range; W70 not in 0..63"
        assert board.read_errors() == []  # drained into the exception
        board.output_off()
        assert served.emulator.is_safe()
        assert board.transport.sent[:5] == ["*IDN?", "CONF?", "ERR?", "SAFE", "WDOG 3.000"]
    finally:
        board.close()


def test_wrong_identity_over_socket(served: MuxBoardServer) -> None:
    served.emulator.identity = "acme,relay-box,1,2"  # type: ignore[misc]
    with pytest.raises(IdentityMismatch, match="acme,relay-box"):
        MuxBoard.open(served.url, timeout=1.0)


@pytest.mark.parametrize(
    ("fault", "error"),
    [("garble", InstrumentError), ("silence", InstrumentTimeout), ("drop", ConnectionLost)],
)
def test_faults_over_socket(served: MuxBoardServer, fault: str, error: type) -> None:
    board = MuxBoard.open(served.url, timeout=0.3, watchdog=0.3)
    try:
        board.set_dac(1, 0.3)
        board.route(0, [0], "BIAS1", "BIAS1")
        served.emulator.inject_fault(fault)
        with pytest.raises(error) as caught:
            board.state()
        assert caught.value.instrument == "mux board" and caught.value.command == "STATE?"
        if fault != "drop":
            board.safe()  # the link recovers: the host can still make the board safe
            assert served.emulator.is_safe()
        else:
            with pytest.raises(ConnectionLost):
                board.safe()
            deadline = time.monotonic() + 2.0  # the watchdog floats everything instead
            while not served.emulator.is_safe() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert served.emulator.is_safe() and served.emulator.watchdog_trips == 1
    finally:
        board.close()


def test_watchdog_thread_over_socket(served: MuxBoardServer) -> None:
    board = MuxBoard.open(served.url, timeout=1.0, watchdog=0.2)
    try:
        board.set_dac(2, 1.0)
        board.route(0, [1], "LO", "BIAS2")
        assert not served.emulator.is_safe()
        time.sleep(0.5)
        assert served.emulator.is_safe() and not any(served.emulator.bench.links.values())
        with pytest.raises(InstrumentError, match="301 Watchdog expired"):
            board.check_errors("read")
        assert board.events == ["301 Watchdog expired; board safed; no command for 0.2 s"]
    finally:
        board.close()
