"""The HDF5 session store: round trips, atomic stages, live stages, crash safety, bad files."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from xbarlab.store import SCHEMA_VERSION, SessionError, SessionStore


def test_round_trip_of_stage_arrays_attrs_and_units(tmp_path):
    path = tmp_path / "s.h5"
    with SessionStore.create(path, {"chip_id": "die-7", "seed": 3}) as store:
        store.write_stage(
            "characterisation/map",
            {"conductance": np.arange(6.0).reshape(2, 3), "stuck": np.eye(2, 3, dtype=bool)},
            attrs={"v_read": 0.1, "limits": {"max_read_voltage": 0.3}, "identity": None},
            units={"conductance": "S"},
        )
        store.log({"event": "characterised", "cells": 6})
    with SessionStore.open(path) as store:
        assert store.metadata["schema_version"] == SCHEMA_VERSION
        assert store.metadata["chip_id"] == "die-7" and store.metadata["seed"] == 3
        assert "torch" in store.metadata["software"]
        stage = store.read_stage("characterisation/map")
        np.testing.assert_array_equal(stage.arrays["conductance"], np.arange(6.0).reshape(2, 3))
        assert stage.arrays["stuck"].dtype == bool
        assert stage.attrs["limits"] == {"max_read_voltage": 0.3}
        assert stage.attrs["identity"] is None and stage.attrs["v_read"] == 0.1
        assert stage.units == {"conductance": "S"}
        assert store.stages() == ["characterisation/map"]
        assert store.events()[0]["cells"] == 6
        with pytest.raises(SessionError, match="read-only"):
            store.log({"event": "x"})


def test_existing_stage_is_not_overwritten_by_accident(tmp_path):
    with SessionStore.create(tmp_path / "s.h5") as store:
        store.write_stage("models/fit", {"x": [1.0]})
        with pytest.raises(SessionError, match="already exists"):
            store.write_stage("models/fit", {"x": [2.0]})
        store.write_stage("models/fit", {"x": [2.0]}, overwrite=True)
        assert store.read_stage("models/fit").arrays["x"][0] == 2.0
    with pytest.raises(SessionError, match="already exists"):
        SessionStore.create(tmp_path / "s.h5")


def test_leftover_partial_stage_is_ignored_and_removed(tmp_path):
    path = tmp_path / "s.h5"
    with SessionStore.create(path) as store:
        group = store.file.create_group("training/run.partial")  # what a crash leaves
        group.attrs["status"] = "complete"
        store.write_stage("training/ok", {"w": [1.0]})
    with SessionStore.open(path) as store:
        assert store.stages() == ["training/ok"]
    with SessionStore.open(path, writable=True) as store:
        assert "training/run.partial" not in store.file
        assert store.events()[-1]["event"] == "removed_partial_stages"


def test_live_stage_resumes_with_what_was_written(tmp_path):
    path = tmp_path / "s.h5"
    with SessionStore.create(path) as store:
        live = store.begin_stage("deployments/d/layer0", {"rows": 2, "cols": 2})
        live.dataset("pulses", (2, 2), np.int32, 0)
        live.write("pulses", 5, (0, 1))
        assert store.status("deployments/d/layer0") == "in_progress"
    with SessionStore.open(path, writable=True) as store:
        live = store.begin_stage("deployments/d/layer0")
        assert live.resumed
        np.testing.assert_array_equal(live.dataset("pulses", (2, 2), np.int32, 0), [[0, 5], [0, 0]])
        with pytest.raises(SessionError, match="cannot resume"):
            live.dataset("pulses", (3, 2), np.int32, 0)
        live.finish(mean_error=0.01)
        assert store.status("deployments/d/layer0") == "complete"
        with pytest.raises(SessionError, match="already complete"):
            store.begin_stage("deployments/d/layer0")


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from xbarlab.store import SessionStore
    store = SessionStore.create(sys.argv[1])
    live = store.begin_stage("deployments/run")
    live.dataset("done", (1000,), np.int8, 0)
    for i in range(1000):
        live.write("done", 1, i)
        store.log({"event": "cell", "index": i})
        print(i, flush=True)
        time.sleep(0.01)
    """
)


def test_sigkill_mid_run_keeps_everything_flushed_and_a_reader_follows(tmp_path):
    path = tmp_path / "s.h5"
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        reported = -1
        while reported < 30:
            reported = int(process.stdout.readline())
        # a viewer opens the file read-only while the writer appends
        with SessionStore.open(path) as viewer:
            assert viewer.status("deployments/run") == "in_progress"
            seen = int(viewer.read_stage("deployments/run").arrays["done"].sum())
            assert seen >= 30
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        reported = max([reported, *(int(line) for line in process.stdout.read().split())])
    finally:
        if process.poll() is None:
            process.kill()
    time.sleep(0.05)
    with SessionStore.open(path, writable=True) as store:
        done = store.read_stage("deployments/run").arrays["done"]
        # every write the writer reported finishing is on disk; at most the one in flight is lost
        assert done[: reported + 1].all()
        assert done.sum() <= reported + 2
        assert len(store.events()) >= reported + 1
        assert store.status("deployments/run") == "in_progress"


def test_corrupted_truncated_and_foreign_files_give_clear_errors(tmp_path):
    path = tmp_path / "s.h5"
    with SessionStore.create(path) as store:
        store.write_stage("a", {"x": np.zeros(1000)})
    truncated = tmp_path / "t.h5"
    truncated.write_bytes(path.read_bytes()[:700])
    with pytest.raises(SessionError, match="corrupted or truncated"):
        SessionStore.open(truncated)
    garbage = tmp_path / "g.h5"
    garbage.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(SessionError, match="corrupted or truncated"):
        SessionStore.open(garbage)
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as other:
        other["x"] = 1
    with pytest.raises(SessionError, match="not an xbarlab session"):
        SessionStore.open(tmp_path / "other.h5")
    with pytest.raises(SessionError, match="no such session"):
        SessionStore.open(tmp_path / "missing.h5")
    with SessionStore.open(path) as store, pytest.raises(SessionError, match="no stage 'b'"):
        store.read_stage("b")
