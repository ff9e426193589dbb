"""Trainer: learning on the offline digits data, L1, memristive validation and selection."""

import pytest
import torch

from simulation.config import ConfigError
from simulation.device_model import DeviceModel
from simulation.mapping import ConductanceRange
from simulation.nonidealities import DISTURBANCES
from training.datasets import load_dataset
from training.evaluation import evaluate_on_chips, evaluate_once
from training.layers import memristive_cores, set_network_device_model
from training.networks import build_network
from training.trainer import TrainerConfig, TrainingStopped, l1_penalty, train

RANGE = ConductanceRange(5.25e-7, 2.62e-6)
STUCK_OFF = DeviceModel(RANGE, disturbances=(DISTURBANCES["stuck_at_g_off"](0.05),))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def mlp(weights="standard", seed=0):
    return build_network(
        {"input_shape": [1, 8, 8], "classes": 10, "hidden": [25], "weights": weights, "seed": seed}
    )


def test_standard_training_on_digits_reaches_ninety_percent(digits):
    network = mlp()
    result = train(network, digits, TrainerConfig(epochs=15, learning_rate=0.01, seed=0))
    assert result.selection == "standard"  # no device model: no memristive validation
    assert result.history[-1].train_accuracy > result.history[0].train_accuracy
    assert evaluate_once(network, digits.test).accuracy >= 0.90


def test_aware_training_on_a_frozen_chip_beats_standard_training_on_that_chip(digits):
    device = DeviceModel(RANGE, disturbances=(DISTURBANCES["stuck_at_g_on"](0.1),))
    standard = mlp()
    train(standard, digits, TrainerConfig(epochs=15, learning_rate=0.01))
    aware = mlp("double")
    set_network_device_model(aware, device, sampling="frozen", seed=7)
    train(aware, digits, TrainerConfig(epochs=15, learning_rate=0.01))
    on_chip = evaluate_on_chips(
        standard, digits.test, device, sampling="frozen", repeats=1, seed=7
    ).median_accuracy
    aware_on_chip = evaluate_once(aware, digits.test).accuracy
    assert aware_on_chip >= 0.85
    assert aware_on_chip > on_chip + 0.05


def test_memristive_validation_runs_on_the_first_every_kth_and_last_epoch(digits):
    network = mlp("double")
    set_network_device_model(network, STUCK_OFF, sampling="resample", seed=1)
    config = TrainerConfig(epochs=7, memristive_validation_every=3, memristive_validation_repeats=4)
    result = train(network, digits, config)
    checked = [r.epoch for r in result.history if r.memristive_validation is not None]
    assert checked == [1, 3, 6, 7]
    best = max(r.memristive_validation for r in result.history if r.memristive_validation)
    assert result.best_score == best
    assert result.selection == "memristive"


def test_selection_restores_the_best_epoch_parameters(digits):
    network = mlp()
    states = {}

    def remember(record):
        states[record.epoch] = {
            k: v.clone() for k, v in network.state_dict().items() if isinstance(v, torch.Tensor)
        }

    result = train(network, digits, TrainerConfig(epochs=4, learning_rate=0.05), on_epoch=remember)
    for name, value in states[result.best_epoch].items():
        assert torch.equal(network.state_dict()[name], value)


def test_l1_regularisation_lowers_power_at_similar_accuracy(digits):
    # Measured at these seeds: 15 epochs give 2.66e-4 W (92.9 %) without L1 and 2.10e-4 W
    # (93.1 %) with gamma 1e-3.
    results = {}
    for gamma in (0.0, 1e-3):
        network = mlp("double")
        set_network_device_model(network, STUCK_OFF, sampling="resample", seed=3)
        train(network, digits, TrainerConfig(epochs=15, l1=gamma, learning_rate=0.01))
        results[gamma] = evaluate_once(network, digits.test)
    assert results[1e-3].power < 0.85 * results[0.0].power
    assert results[1e-3].accuracy > results[0.0].accuracy - 0.03


def test_l1_penalty_is_the_sum_of_absolute_device_parameters():
    network = mlp("double")
    expected = sum(core.theta.abs().sum() for core in memristive_cores(network))
    assert l1_penalty(network).item() == pytest.approx(expected.item())


def test_training_is_reproducible_from_its_seeds(digits):
    runs = []
    for _ in range(2):
        network = mlp("double", seed=4)
        set_network_device_model(network, STUCK_OFF, sampling="resample", seed=5)
        train(network, digits, TrainerConfig(epochs=2, seed=6))
        runs.append(network.state_dict())
    for name, value in runs[0].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, runs[1][name])


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"epochs": 0}, "training.epochs: 0 is out of range"),
        ({"optimizer": "rmsprop"}, "training.optimizer: 'rmsprop' is not allowed"),
        ({"learning_rate": -1.0}, "training.learning_rate: -1.0"),
        ({"l1": "high"}, "training.l1: expected a number"),
        ({"epoch": 3}, "unknown key(s) 'epoch'"),
    ],
)
def test_bad_trainer_config_names_the_key(table, fragment):
    with pytest.raises(ConfigError) as caught:
        TrainerConfig.from_config(table, "training")
    assert fragment in str(caught.value)


def test_should_stop_is_polled_between_batches(digits):
    polls = []

    def stop_on_the_fifth_poll():
        polls.append(1)
        return len(polls) >= 5

    with pytest.raises(TrainingStopped, match="epoch 1 at example 256"):
        train(
            mlp(),
            digits,
            TrainerConfig(epochs=3, batch_size=64),
            should_stop=stop_on_the_fifth_poll,
        )
    assert len(polls) == 5
