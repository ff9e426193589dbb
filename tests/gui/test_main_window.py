"""The window over the simulated backend: panels hold the pipeline's arrays and numbers, abort
leaves the outputs off and the session resumable, a session file fills every panel, and the GUI
thread stays responsive while cells are programmed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from gui_test_support import Recorder, small_pipeline, wait_until

from gui.app import main as gui_main
from gui.main_window import MainWindow
from gui.state import session_events
from instruments.characterize import sweep_voltages
from instruments.program import STATUSES
from xbarlab.pipeline import ACCURACY_STAGES
from xbarlab.store import SessionStore

STALL_BOUND_MS = 250.0
"""Asserted bound on the longest event-loop stall while programming (target < 100 ms; measured
figures are printed, see the issue note)."""


def _show(window, source: str) -> None:
    window.maps.source.setCurrentText(source)
    window.redraw()


def test_run_fills_panels_with_the_pipelines_arrays_and_numbers(finished_run):
    window = finished_run.window
    assert window.errors == [], [e.message for e in window.errors]
    assert len(window.run_results) == 1
    summary = window.run_results[0]["summary"]
    with SessionStore.open(finished_run.session) as store:
        targets = store.read_stage("deployments/main/program").arrays["targets"]
        program = store.read_stage("deployments/main/program")
        readback = store.read_stage("deployments/main/readback").arrays["conductances"]
        fitted = store.read_stage("models/fitted").attrs["device_model"]
        evaluations = {
            n: store.read_stage(f"evaluations/{n}").attrs for n in ("main", "fine_tuned")
        }
        history = store.read_stage("training/main").attrs["history"]["history"]
        characterisation = store.read_stage("characterisation").arrays["map"]

    _show(window, "deployment main")
    # Maps: exactly the backend's reads and the programmed targets.
    np.testing.assert_array_equal(window.maps.measured.values, readback)
    np.testing.assert_array_equal(window.maps.target.values, targets)
    window_s = fitted["g_on"] - fitted["g_off"]
    np.testing.assert_allclose(
        window.maps.error.values, (readback - targets) / window_s, rtol=1e-12, equal_nan=True
    )
    assert np.isnan(window.maps.error.values).sum() == np.isnan(targets).sum()
    _show(window, "characterisation map")
    np.testing.assert_array_equal(window.maps.measured.values, characterisation)
    assert window.maps.target.values is None

    # Accuracy: the pipeline's numbers, stage by stage, both deployments.
    for name in ("main", "fine_tuned"):
        assert window.accuracy.accuracies[name] == evaluations[name]["accuracy"]
        assert window.accuracy.accuracies[name] == summary[name]["accuracy"]
        assert set(window.accuracy.accuracies[name]) == set(ACCURACY_STAGES)
    _, train_curve = window.accuracy.curves[("train", "train_accuracy")].getData()
    np.testing.assert_allclose(train_curve, [100 * r["train_accuracy"] for r in history])
    bars = window.accuracy.bars["main"].opts["height"]
    np.testing.assert_allclose(
        bars, [100 * evaluations["main"]["accuracy"][s] for s in ACCURACY_STAGES]
    )

    # Mapping error: write-verify summary and read-back metrics as the pipeline stored them.
    _show(window, "deployment main")
    window.mapping.refresh(window.state, window.state.deployments["main"])
    live, readback_metrics = window.mapping.values["live"], window.mapping.values["readback"]
    for key in ("cells", "mean_relative_error", "p95_relative_error", "within_tolerance"):
        assert live[key] == pytest.approx(program.attrs["summary"][key], rel=1e-12)
        assert readback_metrics[key] == evaluations["main"]["mapping"][key]
    scored = (program.arrays["status"] != STATUSES.index("stuck")) & np.isfinite(targets)
    errors = window.mapping.errors
    assert errors.size == scored.sum()
    np.testing.assert_allclose(
        np.sort(errors), np.sort((readback[scored] - targets[scored]) / targets[scored])
    )
    _, counts = window.mapping.bars.getData()
    assert counts.sum() == np.sum(np.abs(100 * errors) <= window.mapping.span)

    # Redraws coalesced: at most 10 a second (+1 for the final one).
    assert finished_run.redraws <= 10 * finished_run.seconds + 1
    # Every job leaves the outputs off.
    assert [c.outputs_on for c in finished_run.recorder.crossbars] == [False]


def test_gui_thread_stays_responsive_while_programming(finished_run):
    stall = finished_run.window.stall
    print(f"longest event-loop stall per stage (ms): {stall.longest_ms}")
    assert stall.ticks.get("program", 0) > 20
    assert stall.longest_ms["program"] < STALL_BOUND_MS


def test_cell_history_hover_and_iv_sweep(finished_run):
    window = finished_run.window
    _show(window, "deployment main")
    deployment = window.state.deployments["main"]
    row, col = (
        int(v) for v in np.unravel_index(np.argmax(deployment.pulses), deployment.pulses.shape)
    )
    window.maps.select_cell(row, col)
    pulses, conductances = window.cell.history.getData()
    assert pulses[-1] == deployment.pulses[row, col] > 3
    assert conductances[-1] == deployment.achieved[row, col]
    assert np.all(np.diff(pulses) > 0)
    assert window.maps.measured.describe(row, col).startswith(f"row {row}, col {col}: ")
    assert window.maps.measured.describe(row, col).endswith("S")

    window.cell.v_max.setValue(0.4)
    window.cell.points.setValue(5)
    window.cell.iv_button.click()
    wait_until(lambda: window.cell.iv_data is not None or window.errors, 30, "the I-V sweep")
    assert window.errors == []
    voltages, currents = window.cell.iv_curve.getData()
    np.testing.assert_allclose(voltages, sweep_voltages(0.4, 5))
    positive = voltages > 0.1
    assert np.all(currents[positive] > 0) and np.all(currents[voltages < -0.1] < 0)
    assert finished_run.recorder.crossbars[0].outputs_on is False


def test_open_session_fills_every_panel_read_only(qtbot, finished_run):
    review = MainWindow()
    qtbot.addWidget(review)
    assert review.open_session(finished_run.session)
    live = finished_run.window
    assert not review.run_panel.run_button.isEnabled()
    for name in ("main", "fine_tuned"):
        a, b = review.state.deployments[name], live.state.deployments[name]
        np.testing.assert_array_equal(a.targets, b.targets)
        np.testing.assert_array_equal(a.readback, b.readback)
        np.testing.assert_array_equal(a.pulses, b.pulses)
        assert a.summary == pytest.approx(b.summary, nan_ok=True)
    assert review.accuracy.accuracies == live.accuracy.accuracies
    assert len(review.state.epochs["train"]) == len(live.state.epochs["train"]) == 3
    for key in ("train_accuracy", "validation_accuracy", "memristive_validation"):
        _, y_review = review.accuracy.curves[("train", key)].getData()
        _, y_live = live.accuracy.curves[("train", key)].getData()
        np.testing.assert_array_equal(y_review, y_live)
    _show(review, "deployment main")
    for heatmap in (review.maps.target, review.maps.measured, review.maps.error):
        assert heatmap.values is not None and np.isfinite(heatmap.values).any()
    review.maps.select_cell(70, 20)
    assert "cell (70, 20)" in review.cell.info.text()
    # Write-verify histories and convergence come back from the file as they were seen live
    # (float32 in the file).
    deployment, seen = review.state.deployments["main"], live.state.deployments["main"]
    row, col = (int(v) for v in np.unravel_index(np.argmax(seen.pulses), seen.pulses.shape))
    pulses, conductances = deployment.cell_history(row, col)
    live_pulses, live_conductances = seen.cell_history(row, col)
    assert len(pulses) > 3
    np.testing.assert_array_equal(pulses, live_pulses)
    np.testing.assert_allclose(conductances, live_conductances, rtol=1e-6)
    assert deployment.done[-1] == seen.done[-1] and len(deployment.done) >= len(seen.done) - 1
    assert review.mapping.values["live"]["cells"] > 0
    assert review.mapping.values["readback"]["cells"] > 0
    assert "read-back" in review.accuracy.table.text()
    assert "fine_tune: done" in review.run_panel.status.text()


def test_screenshot_of_a_session_from_the_entry_point(finished_run, tmp_path):
    png = tmp_path / "review.png"
    assert gui_main(["--session", str(finished_run.session), "--screenshot", str(png)]) == 0
    assert png.stat().st_size > 10_000
    assert gui_main(["--session", str(tmp_path / "missing.h5"), "--screenshot", str(png)]) == 2


def test_pause_then_abort_mid_programming(qtbot, tmp_path):
    """Pause turns the outputs off and holds; abort stops programming with the outputs off and
    the session consistent; running the stage again resumes without re-pulsing finished cells."""
    config = small_pipeline(epochs=1)
    recorder = Recorder()
    window = MainWindow(crossbar_factory=recorder, data=config.experiment.data.load())
    qtbot.addWidget(window)
    session = tmp_path / "aborted.h5"
    window.start_run(config, ("characterize", "train", "program"), session)

    def programming() -> bool:
        deployment = window.state.deployments.get("main")
        return deployment is not None and len(deployment.iterations) >= 3

    wait_until(lambda: programming() or not window.running, 120, "programming to start")
    assert window.running, [e.message for e in window.errors]
    window.run_panel.pause_button.click()
    wait_until(lambda: "paused: outputs off" in window.log.lines, 20, "the pause")
    crossbar = recorder.crossbars[0]
    assert crossbar.outputs_on is False
    done = len(window.state.deployments["main"].iterations)
    time.sleep(0.3)
    qtbot.wait(50)
    assert len(window.state.deployments["main"].iterations) == done  # held
    window.run_panel.pause_button.click()  # resume
    wait_until(lambda: len(window.state.deployments["main"].iterations) > done, 20, "resume")
    window.run_panel.abort_button.click()
    wait_until(lambda: not window.running, 30, "the abort")

    assert window.errors == []
    assert window.cancelled and window.cancelled[-1][0] == "run"
    assert crossbar.outputs_on is False and crossbar.outputs_off_calls >= 2
    assert window.state.stage_status["program"] == "aborted"
    window.redraw()
    assert "aborted" in window.run_panel.status.text()
    with SessionStore.open(session) as store:
        assert store.status("characterisation") == "complete"
        assert store.status("training/main") == "complete"
        assert store.status("deployments/main/program") == "in_progress"
        assert store.status("deployments/main/readback") is None
        assert not any(name.endswith(".partial") for name, _ in store.walk())
        before = store.read_stage("deployments/main/program").arrays
        replayed = session_events(store)
    pending = before["status"] == STATUSES.index("pending")
    finished = np.isin(before["status"], [STATUSES.index(s) for s in ("converged", "stuck")])
    assert pending.sum() > 0 and finished.sum() > 0 and before["pulses"].sum() > 0
    assert any(e.kind == "end" and e.data.get("status") == "interrupted" for e in replayed)

    # The session is consistent: the program stage resumes where it stopped.
    window.start_run(config, ("program",), session)
    wait_until(lambda: not window.running, 60, "the resumed programming")
    assert window.errors == []
    with SessionStore.open(session) as store:
        assert store.status("deployments/main/program") == "complete"
        after = store.read_stage("deployments/main/program").arrays
    np.testing.assert_array_equal(after["pulses"][finished], before["pulses"][finished])
    assert np.all(after["pulses"][pending] >= before["pulses"][pending])
    assert not np.any(after["status"] == STATUSES.index("pending"))
    assert crossbar.outputs_on is False


def test_errors_are_shown_with_what_to_do(qtbot, tmp_path):
    window = MainWindow()
    qtbot.addWidget(window)
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nwrong_key = 1\n')
    assert window.start_run(bad, ("train",), tmp_path / "s.h5") is None
    assert "wrong_key" in window.errors[-1].message and str(bad) in window.errors[-1].message
    assert window.dialogs and window.dialogs[-1].isVisible()
    window.connect_instrument(str(tmp_path / "no-such-instrument.toml"))
    wait_until(lambda: len(window.errors) == 2, 10, "the connect error")
    assert window.errors[-1].kind == "connect"
    assert "no-such-instrument" in window.errors[-1].message
    assert "config" in window.errors[-1].hint.lower()
    # A stage whose inputs are not in the session says which stage to run first.
    window.start_run(small_pipeline(), ("evaluate",), tmp_path / "empty.h5")
    wait_until(lambda: len(window.errors) == 3, 30, "the pipeline error")
    assert "run the stage that makes it first" in window.errors[-1].message
    assert window.connection_info is not None  # the run connected the config's instrument
    assert not window.running
