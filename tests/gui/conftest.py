"""GUI tests run headless (Qt's offscreen platform) on a small simulated chip: digits through a
64-6-10 network (72 word x 32 bit lines) on a 72x32 SiOx chip, a few epochs, so that one whole
pipeline run through the window takes seconds."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import time
from collections.abc import Iterator

import pytest
from gui_test_support import FinishedRun, Recorder, small_pipeline, wait_until


@pytest.fixture(scope="module")
def finished_run(qapp, tmp_path_factory) -> Iterator[FinishedRun]:
    """One whole pipeline run (all five stages) through a main window, shared by the tests of a
    module; the window stays open for them and is closed at the end."""
    from gui.main_window import MainWindow

    config = small_pipeline()
    recorder = Recorder()
    window = MainWindow(crossbar_factory=recorder, data=config.experiment.data.load())
    window.resize(1680, 1050)
    window.show()
    session = tmp_path_factory.mktemp("gui") / "run.h5"
    started = time.perf_counter()
    redraws = window.redraws
    window.start_run(config, session=session)
    wait_until(lambda: not window.running, 240, "the pipeline run to end")
    seconds = time.perf_counter() - started
    yield FinishedRun(window, session, recorder, seconds, window.redraws - redraws)
    window.close()
    qapp.processEvents()
    _RETIRED.append(window)  # never destroyed while Qt may still deliver its items' events


_RETIRED: list[object] = []
