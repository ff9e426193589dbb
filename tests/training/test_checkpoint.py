"""Checkpoints hold weights, mapping, device model and frozen chip, and load back identically."""

import pytest
import torch

from simulation.device_model import DeviceModel
from simulation.mapping import ConductanceRange
from simulation.nonidealities import DISTURBANCES
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.layers import memristive_cores, set_network_device_model
from training.networks import build_network

DEVICE = DeviceModel(
    ConductanceRange(5.25e-7, 2.62e-6),
    disturbances=(
        DISTURBANCES["d2d_lognormal"](0.05, 0.5),
        DISTURBANCES["stuck_at_g_off"](0.1),
    ),
    name="test device",
)
SPEC = {
    "input_shape": [1, 8, 8],
    "classes": 10,
    "hidden": [12],
    "weights": "double",
    "mapping_rule": "avg",
    "seed": 3,
}


def test_round_trip_reproduces_outputs_on_the_frozen_chip(tmp_path):
    network = build_network(SPEC)
    set_network_device_model(network, DEVICE, sampling="frozen", seed=42)
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    path = save_checkpoint(tmp_path / "run.pt", network, SPEC, {"note": "hello"})
    loaded, spec, metadata = load_checkpoint(path)
    assert metadata == {"note": "hello"}
    assert spec["mapping_rule"] == "avg"
    for original, copy in zip(memristive_cores(network), memristive_cores(loaded), strict=True):
        assert copy.device_model == DEVICE
        assert copy.sampling == "frozen"
        assert copy.mapping_rule == "avg"
        for part, draws in original.realisation.items():
            for name, value in draws.items():
                assert torch.equal(copy.realisation[part][name], value)
    assert torch.equal(loaded(x), network(x))


def test_ideal_network_round_trip(tmp_path):
    spec = {**SPEC, "weights": "standard"}
    network = build_network(spec)
    x = torch.rand(3, 1, 8, 8)
    loaded, _, _ = load_checkpoint(save_checkpoint(tmp_path / "a.pt", network, spec))
    assert torch.equal(loaded(x), network(x))
    assert all(core.device_model is None for core in memristive_cores(loaded))


def test_not_a_checkpoint_and_truncated_files_are_rejected(tmp_path):
    torch.save({"some": "thing"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: not an xbarlab checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    network = build_network(SPEC)
    path = save_checkpoint(tmp_path / "b.pt", network, SPEC)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"b\.pt: not a readable xbarlab checkpoint"):
        load_checkpoint(path)


def test_saving_leaves_no_temporary_files(tmp_path):
    network = build_network(SPEC)
    save_checkpoint(tmp_path / "c.pt", network, SPEC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
