"""Weight <-> conductance mapping: the ideal crossbar equals x @ W + b exactly."""

import pytest
import torch

from simulation.config import ConfigError
from simulation.mapping import (
    ConductanceRange,
    append_bias_input,
    append_bias_row,
    currents_to_outputs,
    deinterleave,
    double_weights_to_conductances,
    inputs_to_voltages,
    interleave,
    standard_weights_to_conductances,
)

HIGH_R = ConductanceRange(5.25e-7, 2.62e-6)


def ideal_outputs(x, conductances, k_g, k_v=0.5):
    voltages = inputs_to_voltages(append_bias_input(x), k_v)
    return currents_to_outputs(voltages @ conductances, k_v, k_g)


@pytest.mark.parametrize("rule", ["min", "avg"])
def test_standard_mapping_round_trip_equals_dense_layer(rule):
    generator = torch.Generator().manual_seed(1)
    weights = torch.randn(7, 4, generator=generator, dtype=torch.float64)
    bias = torch.randn(4, generator=generator, dtype=torch.float64)
    x = torch.rand(5, 7, generator=generator, dtype=torch.float64)
    conductances, k_g = standard_weights_to_conductances(
        append_bias_row(weights, bias), HIGH_R, rule
    )
    assert conductances.shape == (8, 8)
    torch.testing.assert_close(
        ideal_outputs(x, conductances, k_g), x @ weights + bias, rtol=1e-12, atol=1e-12
    )


def test_minimum_rule_puts_one_device_of_each_pair_at_g_off_and_max_weight_at_g_on():
    weights = torch.tensor([[2.0, -1.0], [0.5, -4.0]], dtype=torch.float64)
    conductances, k_g = standard_weights_to_conductances(weights, HIGH_R, "min")
    positive, negative = deinterleave(conductances)
    assert torch.all(torch.minimum(positive, negative) == HIGH_R.g_off)
    # |w| = 4 is the layer's largest weight: its negative device sits at g_on.
    assert negative[1, 1].item() == pytest.approx(HIGH_R.g_on, rel=1e-14)
    assert k_g.item() == pytest.approx(HIGH_R.window / 4.0)


def test_average_rule_is_symmetric_about_the_middle_and_within_the_window():
    weights = torch.tensor([[3.0, -1.0, 0.0]], dtype=torch.float64)
    conductances, _ = standard_weights_to_conductances(weights, HIGH_R, "avg")
    positive, negative = deinterleave(conductances)
    middle = 0.5 * (HIGH_R.g_off + HIGH_R.g_on)
    torch.testing.assert_close(positive + negative, torch.full_like(positive, 2 * middle))
    assert conductances.min().item() == pytest.approx(HIGH_R.g_off, rel=1e-12)
    assert conductances.max().item() == pytest.approx(HIGH_R.g_on, rel=1e-12)


def test_double_weights_map_largest_parameter_to_g_on_and_zero_to_g_off():
    theta = torch.tensor([[0.0, 2.0], [1.0, 0.5], [0.25, 0.0]], dtype=torch.float64)
    conductances, k_g = double_weights_to_conductances(theta, HIGH_R)
    assert conductances[0, 1].item() == pytest.approx(HIGH_R.g_on, rel=1e-14)
    assert conductances[0, 0].item() == HIGH_R.g_off
    x = torch.tensor([[0.3, 0.9]], dtype=torch.float64)
    positive, negative = deinterleave(theta)
    expected = append_bias_input(x) @ (positive - negative)
    torch.testing.assert_close(
        ideal_outputs(x, conductances, k_g), expected, rtol=1e-12, atol=1e-15
    )


def test_interleave_and_deinterleave_are_inverse():
    positive, negative = torch.arange(6.0).reshape(2, 3), -torch.arange(6.0).reshape(2, 3)
    paired = interleave(positive, negative)
    assert paired[0].tolist() == [0.0, -0.0, 1.0, -1.0, 2.0, -2.0]
    back = deinterleave(paired)
    assert torch.equal(back[0], positive) and torch.equal(back[1], negative)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"g_off": 2e-6, "g_on": 1e-6}, "g_on"),
        ({"g_off": -1e-6, "g_on": 1e-6}, "g_off"),
        ({"g_on": 1e-6}, "g_off"),
        ({"g_off": "1e-6", "g_on": 1e-5}, "g_off"),
    ],
)
def test_bad_conductance_ranges_name_the_key(config, fragment):
    with pytest.raises(ConfigError, match=f"dev.toml: {fragment}"):
        ConductanceRange.from_config(config, "dev.toml:")
