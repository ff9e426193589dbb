"""PauseGate: outputs off before holding, held until resumed or released."""

import threading

from xbarlab.run_control import PauseGate


def test_no_pause_no_hold_and_outputs_untouched() -> None:
    calls: list[str] = []
    assert PauseGate().hold(lambda: calls.append("off")) is False
    assert calls == []


def test_pause_turns_outputs_off_then_holds_until_resumed() -> None:
    gate, calls = PauseGate(), []
    gate.pause()
    timer = threading.Timer(0.1, lambda: (calls.append("resume"), gate.resume()))
    timer.start()
    held = gate.hold(lambda: calls.append("off"), lambda paused: calls.append(f"paused={paused}"))
    assert held is True
    assert calls == ["off", "paused=True", "resume", "paused=False"]
    assert not gate.paused


def test_release_ends_the_hold_without_resuming() -> None:
    gate, stopped = PauseGate(), threading.Event()
    gate.pause()
    threading.Timer(0.05, stopped.set).start()
    assert gate.hold(lambda: None, released=stopped.is_set) is True
    assert gate.paused  # still paused: an abort is not a resume
    assert gate.hold(lambda: None, released=stopped.is_set) is False


def test_a_custom_wait_replaces_the_poll_and_resumes() -> None:
    gate, calls = PauseGate(), []
    gate.pause()
    assert gate.hold(lambda: calls.append("off"), wait=lambda: calls.append("suspended"))
    assert calls == ["off", "suspended"] and not gate.paused
