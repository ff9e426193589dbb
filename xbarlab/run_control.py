"""Pausing a run at its safe points with the outputs off: one mechanism for the CLI and the GUI.

The pipeline polls `should_stop()` between write-verify iterations, characterisation steps and
training batches. Both front ends build that callable from a stop request and a `PauseGate`: when
a pause has been asked for, the gate turns the instrument outputs off at the next safe point,
reports it, and holds the run there until it is resumed (or stopped). The GUI holds by waiting
(its Resume button); the CLI holds by suspending its own process after the outputs are off, so
Ctrl-Z behaves as in any shell job and `fg` resumes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class PauseGate:
    """A pause request and the hold at the next safe point (thread-safe)."""

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def hold(
        self,
        outputs_off: Callable[[], None],
        notify: Callable[[bool], None] | None = None,
        released: Callable[[], bool] = lambda: False,
        wait: Callable[[], None] | None = None,
        poll_s: float = 0.02,
    ) -> bool:
        """At a safe point: if a pause is pending, turn the outputs off, notify(True), then wait
        until resume() or released() (e.g. an abort), notify(False). `wait` replaces the default
        wait (polling every poll_s seconds), e.g. to suspend the process; the gate is resumed
        when it returns. Returns True when it held."""
        if not self.paused or released():
            return False
        outputs_off()
        if notify is not None:
            notify(True)
        if wait is not None:
            wait()
            self.resume()
        while self.paused and not released():
            self._running.wait(poll_s)
        if notify is not None:
            notify(False)
        return True
