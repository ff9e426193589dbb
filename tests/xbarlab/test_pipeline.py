"""The whole hardware-in-the-loop pipeline on a small simulated chip."""

import copy

import numpy as np
import pytest

from instruments import open_crossbar
from simulation.config import ConfigError
from training.deployment import DeploymentError
from xbarlab.config import config_directory, read_toml
from xbarlab.pipeline import (
    ACCURACY_STAGES,
    Cancelled,
    Pipeline,
    PipelineConfig,
    PipelineError,
)
from xbarlab.store import SessionStore


def instrument(rows=80, cols=40, seed=3):
    config = read_toml(config_directory() / "instruments" / "simulated-siox-high-r-32x32.toml")
    config["chip"] = {**config["chip"], "rows": rows, "cols": cols, "seed": seed}
    return config


def pipeline_source(aware=True, epochs=12, rows=80, cols=40):
    """digits 64-8-10: crossbars 65 x 16 and 9 x 20, block-diagonal in 74 x 36."""
    return {
        "name": "test",
        "instrument": instrument(rows, cols),
        "experiment": {
            "data": {"dataset": "digits", "limit_train": 900},
            "network": {"hidden": [8], "activation": "sigmoid", "seed": 0},
            "training": {
                "aware": aware,
                "epochs": epochs,
                "optimizer": "adam",
                "learning_rate": 0.02,
                "l1": 1e-4,
                "memristive_validation_repeats": 3,
                "memristive_validation_every": 4,
            },
        },
        "characterize": {"pulse_cells": 32, "iv_cells": 12, "noise_reads": 8},
        "fine_tune": {"epochs": 6, "learning_rate": 0.01},
        "evaluate": {"repeats": 3},
    }


def run(tmp_path, source, stages=None, **kwargs):
    config = PipelineConfig.from_config(source, "test pipeline")
    events = []
    with (
        open_crossbar(config.instrument) as crossbar,
        SessionStore.create(tmp_path / "s.h5") as store,
    ):
        pipeline = Pipeline(config, store, crossbar, on_event=events.append, **kwargs)
        summary = pipeline.run(stages) if stages else pipeline.run()
    return summary, events, tmp_path / "s.h5"


@pytest.fixture(scope="module")
def aware_run(tmp_path_factory):
    return run(tmp_path_factory.mktemp("aware"), pipeline_source())


def test_aware_pipeline_reports_consistent_accuracies_and_mapping(aware_run):
    summary, events, _ = aware_run
    main = summary["main"]
    accuracy = main["accuracy"]
    assert set(accuracy) == set(ACCURACY_STAGES)
    # Trained for this chip, the network works on it: on-chip multiplies agree with the software
    # model of the read-back conductances within 4 points (450 test digits), and both are far
    # above chance.
    assert abs(accuracy["on chip"] - accuracy["read-back"]) <= 0.04
    assert accuracy["on chip"] >= 0.75
    assert abs(accuracy["fitted model"] - accuracy["read-back"]) <= 0.06
    mapping = main["mapping"]
    assert mapping["cells"] == 65 * 16 + 9 * 20
    assert mapping["mean_relative_error"] < 0.03
    assert mapping["within_tolerance"] > 0.75
    assert 0 <= mapping["stuck_fraction"] < 0.05
    assert main["power_w"]["fitted model"] > 0 and main["tops_per_watt"]["read-back"] > 0
    kinds = {(event.stage, event.kind) for event in events}
    for stage in ("characterize", "train", "program", "evaluate", "fine_tune"):
        assert (stage, "start") in kinds and (stage, "end") in kinds
    assert ("program", "progress") in kinds and ("train", "epoch") in kinds


def test_session_holds_every_stage_with_units_and_metadata(aware_run):
    _, _, path = aware_run
    with SessionStore.open(path) as store:
        for stage in (
            "characterisation",
            "models/fitted",
            "training/main",
            "deployments/main/program",
            "deployments/main/readback",
            "evaluations/main",
            "training/fine_tuned",
            "deployments/fine_tuned/program",
            "evaluations/fine_tuned",
        ):
            assert store.status(stage) == "complete", stage
        program = store.read_stage("deployments/main/program")
        assert program.units["achieved"] == "S"
        readback = store.read_stage("deployments/main/readback")
        assert readback.attrs["instrument"]["limits"]["max_pulse_voltage"] == 2.0
        # the session's achieved map is the crossbar's read at the end of write-verify
        used = np.isfinite(program.arrays["targets"])
        assert np.isnan(program.arrays["achieved"][~used]).all()
        relative = np.abs(readback.arrays["conductances"] - program.arrays["achieved"])[used]
        assert np.median(relative / program.arrays["achieved"][used]) < 0.02
        assert store.metadata["pipeline"]["name"] == "test"
        assert "torch" in store.metadata["software"]


def test_hybrid_fine_tuning_recovers_part_of_a_standard_networks_drop(tmp_path):
    summary, _, _ = run(tmp_path, pipeline_source(aware=False, epochs=15))
    deployed, tuned = summary["main"]["accuracy"], summary["fine_tuned"]["accuracy"]
    drop = deployed["ideal"] - deployed["on chip"]
    assert drop > 0.03  # standard training loses accuracy on this chip ...
    assert tuned["on chip"] > deployed["on chip"] + 0.25 * drop  # ... fine-tuning wins back some


def test_stages_run_alone_from_the_session(tmp_path):
    source = pipeline_source(epochs=4)
    run(tmp_path, source, stages=("characterize",))
    config = PipelineConfig.from_config(source, "test")
    with (
        open_crossbar(config.instrument) as crossbar,
        SessionStore.open(tmp_path / "s.h5", writable=True) as store,
    ):
        pipeline = Pipeline(config, store, crossbar)
        with pytest.raises(PipelineError, match="training/main"):
            pipeline.run(("program",))
        pipeline.run(("train",))
        assert store.status("training/main") == "complete"


def test_a_network_too_large_for_the_chip_is_refused_before_training(tmp_path):
    source = pipeline_source(rows=40, cols=40)
    with pytest.raises(DeploymentError, match="needs 74 word lines"):
        run(tmp_path, source, stages=("characterize", "train"))
    with SessionStore.open(tmp_path / "s.h5") as store:
        assert store.status("characterisation") == "complete"
        assert store.status("training/main") is None


def test_stop_during_programming_leaves_outputs_off_and_a_resumable_stage(tmp_path):
    source = pipeline_source(epochs=4)
    run(tmp_path, source, stages=("characterize", "train"))
    config = PipelineConfig.from_config(source, "test")
    iterations = []

    def stop_after_three():
        return len(iterations) >= 3

    def count(event):
        if event.stage == "program" and event.kind == "progress":
            iterations.append(event.data["done"])

    with (
        open_crossbar(config.instrument) as crossbar,
        SessionStore.open(tmp_path / "s.h5", writable=True) as store,
    ):
        pipeline = Pipeline(config, store, crossbar, on_event=count, should_stop=stop_after_three)
        with pytest.raises(Cancelled):
            pipeline.run(("program",))
        assert not crossbar.outputs_on
        assert store.status("deployments/main/program") == "in_progress"
        status_before = store.read_stage("deployments/main/program").arrays["status"].copy()
        pulses_before = store.read_stage("deployments/main/program").arrays["pulses"].copy()
        finished = np.isin(status_before, (2, 3, 4, 5, 6))
        assert (
            0
            < finished.sum()
            < np.isfinite(store.read_stage("deployments/main/program").arrays["targets"]).sum()
        )
        # resume in the same session: finished cells get no more pulses
        ledger_before = crossbar.ledger.counts.copy()
        Pipeline(config, store, crossbar).run(("program",))
        assert store.status("deployments/main/program") == "complete"
        after = store.read_stage("deployments/main/program").arrays
        np.testing.assert_array_equal(after["pulses"][finished], pulses_before[finished])
        np.testing.assert_array_equal(crossbar.ledger.counts[finished], ledger_before[finished])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(colour="red"), "unknown key"),
        (lambda s: s["experiment"]["training"].update(epochs=0), "epochs"),
        (lambda s: s["experiment"]["training"].update(aware="yes"), "aware"),
        (lambda s: s.update(deploy={"tile_rows": 0, "tile_cols": 8}), "tile_rows"),
        (lambda s: s.update(write_verify={"relative_tolerance": -1}), "relative_tolerance"),
    ],
)
def test_bad_pipeline_configs_name_the_key(change, message):
    source = copy.deepcopy(pipeline_source())
    change(source)
    with pytest.raises(ConfigError, match=message):
        PipelineConfig.from_config(source, "pipeline.toml:")
