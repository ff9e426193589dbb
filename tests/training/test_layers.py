"""Memristive layers: ideal equivalence, conv through unfold, frozen chips, power, gradients."""

import pytest
import torch
import torch.nn.functional as functional

from simulation.config import ConfigError
from simulation.device_model import DeviceModel
from simulation.mapping import ConductanceRange
from simulation.nonidealities import DISTURBANCES
from training.layers import MemristiveConv2d, MemristiveLinear, memristive_cores

RANGE = ConductanceRange(5.25e-7, 2.62e-6)
IDEAL = DeviceModel(RANGE)
STUCK = DeviceModel(RANGE, disturbances=(DISTURBANCES["stuck_at_g_off"](0.2),))


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("weights", ["standard", "double"])
@pytest.mark.parametrize("rule", ["min", "avg"])
def test_ideal_crossbar_equals_the_dense_layer(weights, rule):
    layer = MemristiveLinear(6, 4, weights=weights, mapping_rule=rule, generator=seeded()).double()
    x = torch.rand(9, 6, generator=seeded(1), dtype=torch.float64)
    expected = layer(x)  # no device model: x @ W + b
    weights_and_bias = layer.effective_weights()
    torch.testing.assert_close(expected, x @ weights_and_bias[:-1] + weights_and_bias[-1])
    layer.set_device_model(IDEAL)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_power_of_an_ideal_crossbar_is_the_sum_of_v_squared_g():
    layer = MemristiveLinear(3, 2, weights="double", generator=seeded()).double()
    layer.set_device_model(IDEAL)
    x = torch.tensor([[0.2, 1.0, 0.0], [0.5, 0.5, 0.5]], dtype=torch.float64)
    layer(x)
    conductances, _ = layer.conductances()
    voltages = 0.5 * torch.cat([x, torch.ones(2, 1, dtype=torch.float64)], dim=1)
    expected = ((voltages**2) @ conductances.sum(dim=1)).mean()
    assert layer.last_power.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("weights", ["standard", "double"])
def test_convolution_through_unfold_equals_conv2d(weights):
    conv = MemristiveConv2d(2, 3, 3, padding=1, stride=2, weights=weights, generator=seeded())
    conv = conv.double()
    x = torch.rand(2, 2, 7, 7, generator=seeded(3), dtype=torch.float64)
    matrix = conv.core.effective_weights()  # (C kh kw + 1, out)
    kernel = matrix[:-1].T.reshape(3, 2, 3, 3)
    expected = functional.conv2d(x, kernel, matrix[-1], stride=2, padding=1)
    torch.testing.assert_close(conv(x), expected, rtol=1e-12, atol=1e-12)
    conv.set_device_model(IDEAL)
    torch.testing.assert_close(conv(x), expected, rtol=1e-12, atol=1e-12)
    assert conv.last_power.item() > 0


def test_frozen_chip_is_fixed_and_resampling_changes_every_pass():
    layer = MemristiveLinear(20, 10, generator=seeded())
    x = torch.rand(4, 20, generator=seeded(1))
    layer.set_device_model(STUCK, sampling="frozen", seed=5)
    first, second = layer(x), layer(x)
    assert torch.equal(first, second)
    layer.set_device_model(STUCK, sampling="frozen", seed=5)
    assert torch.equal(layer(x), first)  # same seed, same chip
    layer.set_device_model(STUCK, sampling="resample", seed=5)
    assert not torch.equal(layer(x), layer(x))


def test_stuck_devices_get_no_gradient_in_a_frozen_chip():
    layer = MemristiveLinear(8, 4, generator=seeded())
    layer.set_device_model(STUCK, sampling="frozen", seed=2)
    layer(torch.rand(3, 8, generator=seeded(1))).sum().backward()
    stuck = layer.realisation["0_stuck_at_g_off"]["stuck"].bool()
    assert stuck.any()
    # The layer's largest parameter sets k_G, so it gets a gradient through the mapping even
    # when stuck; every other stuck device gets exactly none.
    argmax = layer.theta.detach().argmax()
    gradient = layer.theta.grad.flatten().clone()
    mask = stuck.flatten().clone()
    mask[argmax] = False
    assert torch.all(gradient[mask] == 0)
    assert torch.all(gradient[~stuck.flatten()] != 0)


def test_state_dict_round_trip_keeps_device_model_and_frozen_chip():
    layer = MemristiveLinear(5, 3, generator=seeded())
    layer.set_device_model(STUCK, sampling="frozen", seed=11)
    x = torch.rand(6, 5, generator=seeded(1))
    copy = MemristiveLinear(5, 3, generator=seeded(99))
    copy.load_state_dict(layer.state_dict())
    assert copy.device_model == STUCK and copy.sampling == "frozen"
    assert torch.equal(copy(x), layer(x))


def test_double_weights_stay_non_negative_after_projection():
    layer = MemristiveLinear(4, 2, generator=seeded())
    with torch.no_grad():
        layer.theta.sub_(1.0)
    layer.project_parameters()
    assert layer.theta.min().item() == 0.0


def test_bad_layer_options_name_the_option():
    with pytest.raises(ConfigError, match="weights: 'signed'"):
        MemristiveLinear(3, 2, weights="signed")
    with pytest.raises(ConfigError, match="mapping_rule"):
        MemristiveLinear(3, 2, mapping_rule="max")
    layer = MemristiveLinear(3, 2)
    with pytest.raises(ConfigError, match="sampling: 'sometimes'"):
        layer.set_device_model(IDEAL, sampling="sometimes")


def test_memristive_cores_finds_conv_cores_and_linear_layers():
    network = torch.nn.Sequential(
        MemristiveConv2d(1, 2, 3), torch.nn.Flatten(), MemristiveLinear(2 * 4 * 4, 3)
    )
    assert [core.crossbar_shape for core in memristive_cores(network)] == [(10, 4), (33, 6)]


def test_gradients_through_mapping_and_poole_frenkel_pass_gradcheck():
    from xbarlab.config import load_device_model

    device = load_device_model("siox-high-r")
    layer = MemristiveLinear(4, 3, generator=seeded()).double()
    layer.set_device_model(device, sampling="frozen", seed=1)
    x = torch.rand(5, 4, generator=seeded(2), dtype=torch.float64, requires_grad=True)
    theta = layer.theta.detach().clone().requires_grad_(True)

    def outputs(inputs, parameters):
        return torch.func.functional_call(layer, {"theta": parameters}, (inputs,))

    assert torch.autograd.gradcheck(outputs, (x, theta), eps=1e-6, atol=1e-6, rtol=1e-5)
