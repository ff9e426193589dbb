"""Device model composition: declared order, config round trip, errors naming keys."""

import pytest
import torch

from simulation.config import ConfigError
from simulation.device_model import DeviceModel
from simulation.mapping import ConductanceRange
from simulation.nonidealities import DISTURBANCES

RANGE = ConductanceRange(1e-6, 5e-6)


def test_disturbances_act_in_the_declared_order():
    stuck_on = DISTURBANCES["stuck_at_g_on"](1.0)
    stuck_off = DISTURBANCES["stuck_at_g_off"](1.0)
    conductances = torch.full((2, 3), 3e-6)
    for order, expected in (((stuck_on, stuck_off), 1e-6), ((stuck_off, stuck_on), 5e-6)):
        model = DeviceModel(RANGE, disturbances=order)
        disturbed = model.disturb(conductances, model.draw((2, 3)))
        assert torch.all(disturbed == expected)


def test_ideal_model_computes_v_at_g():
    model = DeviceModel(RANGE)
    assert model.is_ideal and not model.is_random
    voltages = torch.rand(4, 3, dtype=torch.float64)
    conductances = torch.rand(3, 2, dtype=torch.float64) * 1e-6
    currents, power = model.column_currents(voltages, conductances, model.draw((3, 2)))
    torch.testing.assert_close(currents, voltages @ conductances)
    expected_power = (voltages.unsqueeze(-1) ** 2 * conductances).sum(dim=(1, 2))
    torch.testing.assert_close(power, expected_power)


def test_config_round_trip():
    model = DeviceModel(
        RANGE,
        k_v=0.3,
        disturbances=(DISTURBANCES["d2d_lognormal"](0.1, 0.3), DISTURBANCES["stuck_at_g_on"](0.02)),
        name="x",
    )
    assert DeviceModel.from_config(model.to_config()) == model


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"g_off": 1e-6, "g_on": 5e-6, "k_v": 0}, "dev.toml: k_v: 0.0 is out of range"),
        ({"g_off": 1e-6, "g_on": 5e-6, "colour": 1}, "unknown key(s) 'colour'"),
        (
            {"g_off": 1e-6, "g_on": 5e-6, "nonidealities": [{"kind": "stuck_at_g_off"}]},
            "dev.toml: nonidealities[0].probability",
        ),
        (
            {"g_off": 1e-6, "g_on": 5e-6, "nonidealities": [{"kind": "gremlins"}]},
            "dev.toml: nonidealities[0].kind: 'gremlins' is not a known nonideality",
        ),
        (
            {"g_off": 1e-6, "g_on": 5e-6, "current_model": {"kind": "quantum"}},
            "dev.toml: current_model.kind: 'quantum'",
        ),
    ],
)
def test_bad_configs_name_the_key(config, fragment):
    with pytest.raises(ConfigError) as caught:
        DeviceModel.from_config(config, "dev.toml:")
    assert fragment in str(caught.value)
