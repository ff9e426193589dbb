"""Config round trips and config errors of the stuck, D2D, programming-noise and level models."""

from typing import Any

import pytest

from simulation.config import ConfigError
from simulation.nonidealities import (
    DISTURBANCES,
    D2DLognormal,
    DiscreteLevels,
    Disturbance,
    ProgrammingNoise,
    StuckAtGOff,
    StuckAtGOn,
    StuckAtValue,
    StuckDistribution,
    disturbance_from_config,
)

WHERE = "configs/devices/chip.toml: nonidealities[1]"

INSTANCES = [
    StuckAtGOff(0.05),
    StuckAtGOn(0.0),
    StuckAtValue(1.0, 2.5e-6),
    StuckDistribution(0.101, [1.0e-5, 3.0e-5, 4.4e-5]),
    StuckDistribution(0.101, [0.0, 3.0e-5], bandwidth=1.77e-5),
    D2DLognormal(0.05, 0.5),
    ProgrammingNoise([1.0e-6, 0.02]),
    ProgrammingNoise([0.01, 0.0, 0.03], relative=True),
    DiscreteLevels(levels=[1.0e-6, 5.0e-6, 2.0e-5]),
    DiscreteLevels(count=16),
]


def is_toml_ready(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_toml_ready(v) for k, v in value.items())
    if isinstance(value, list):
        return all(is_toml_ready(v) for v in value)
    return isinstance(value, bool | int | float | str)


@pytest.mark.parametrize("disturbance", INSTANCES, ids=repr)
def test_round_trip(disturbance: Disturbance) -> None:
    config = disturbance.to_config()
    assert config["kind"] == disturbance.kind
    assert is_toml_ready(config)
    rebuilt = disturbance_from_config(config, WHERE)
    assert type(rebuilt) is type(disturbance)
    assert rebuilt == disturbance and hash(rebuilt) == hash(disturbance)
    assert rebuilt.to_config() == config


def test_every_class_is_registered() -> None:
    kinds = {
        "stuck_at_g_off": StuckAtGOff,
        "stuck_at_g_on": StuckAtGOn,
        "stuck_at_value": StuckAtValue,
        "stuck_distribution": StuckDistribution,
        "d2d_lognormal": D2DLognormal,
        "programming_noise": ProgrammingNoise,
        "discrete_levels": DiscreteLevels,
    }
    for kind, cls in kinds.items():
        assert DISTURBANCES[kind] is cls


def test_ints_are_accepted_as_numbers() -> None:
    config = {"kind": "stuck_at_value", "probability": 0, "conductance": 0}
    assert disturbance_from_config(config, WHERE) == StuckAtValue(0.0, 0.0)


BAD_CONFIGS = [
    ({"kind": "stuck_at_gof", "probability": 0.1}, [f"{WHERE}.kind", "'stuck_at_gof'"]),
    ({"probability": 0.1}, [f"{WHERE}.kind", "None"]),
    ({"kind": "stuck_at_g_off"}, [f"{WHERE}.probability", "missing"]),
    ({"kind": "stuck_at_g_off", "probability": 1.5}, [f"{WHERE}.probability", "1.5", "<= 1.0"]),
    ({"kind": "stuck_at_g_on", "probability": -0.1}, [f"{WHERE}.probability", "-0.1", ">= 0.0"]),
    ({"kind": "stuck_at_g_on", "probability": True}, [f"{WHERE}.probability", "True"]),
    ({"kind": "stuck_at_g_on", "probabilty": 0.1}, [WHERE, "'probabilty'", "'probability'"]),
    (
        {"kind": "stuck_at_value", "probability": 0.1, "conductance": -1e-6},
        [f"{WHERE}.conductance", "-1e-06", ">= 0.0"],
    ),
    (
        {"kind": "stuck_distribution", "probability": 0.1, "samples": [1e-5, -2e-5]},
        [f"{WHERE}.samples[1]", "-2e-05", ">= 0.0"],
    ),
    (
        {"kind": "stuck_distribution", "probability": 0.1, "samples": [1e-5]},
        [f"{WHERE}.samples", "[1e-05]", "at least 2"],
    ),
    (
        {"kind": "stuck_distribution", "probability": 0.1, "samples": [1e-5, 1e-5]},
        [f"{WHERE}.samples", "all equal"],
    ),
    (
        {"kind": "stuck_distribution", "probability": 0.1, "samples": [1e-5, 2e-5], "bandwidth": 0},
        [f"{WHERE}.bandwidth", "0.0", "> 0.0"],
    ),
    (
        {"kind": "stuck_distribution", "probability": 0.1, "samples": "1e-5"},
        [f"{WHERE}.samples", "'1e-5'"],
    ),
    (
        {"kind": "d2d_lognormal", "sigma_on": -0.1, "sigma_off": 0.2},
        [f"{WHERE}.sigma_on", "-0.1", ">= 0.0"],
    ),
    ({"kind": "d2d_lognormal", "sigma_on": 0.1}, [f"{WHERE}.sigma_off", "missing"]),
    (
        {"kind": "d2d_lognormal", "sigma_on": 0.1, "sigma_of": 0.2},
        [WHERE, "'sigma_of'", "'sigma_off'"],
    ),
    ({"kind": "programming_noise", "coefficients": []}, [f"{WHERE}.coefficients", "[]"]),
    (
        {"kind": "programming_noise", "coefficients": [1e-6, "x"]},
        [f"{WHERE}.coefficients[1]", "'x'"],
    ),
    (
        {"kind": "programming_noise", "coefficients": [1e-6], "relative": "yes"},
        [f"{WHERE}.relative", "'yes'", "true or false"],
    ),
    ({"kind": "discrete_levels"}, [WHERE, "exactly one", "levels=None", "count=None"]),
    (
        {"kind": "discrete_levels", "levels": [1e-6], "count": 3},
        [WHERE, "exactly one", "levels=[1e-06]", "count=3"],
    ),
    ({"kind": "discrete_levels", "count": 1}, [f"{WHERE}.count", "1", ">= 2"]),
    ({"kind": "discrete_levels", "count": 2.0}, [f"{WHERE}.count", "2.0"]),
    (
        {"kind": "discrete_levels", "levels": [2e-6, 1e-6]},
        [f"{WHERE}.levels", "[2e-06, 1e-06]", "strictly increasing"],
    ),
    ({"kind": "discrete_levels", "levels": [-1e-6]}, [f"{WHERE}.levels[0]", "-1e-06"]),
]


@pytest.mark.parametrize(("config", "fragments"), BAD_CONFIGS, ids=lambda x: repr(x)[:60])
def test_bad_config_names_key_and_value(config: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        disturbance_from_config(config, WHERE)
    for fragment in fragments:
        assert fragment in str(error.value)


@pytest.mark.parametrize(
    ("build", "fragments"),
    [
        (lambda: StuckAtGOff(1.5), ["StuckAtGOff.probability", "1.5"]),
        (lambda: StuckAtValue(0.1, -1.0), ["StuckAtValue.conductance", "-1.0"]),
        (lambda: StuckDistribution(0.1, [1e-5]), ["StuckDistribution.samples"]),
        (lambda: D2DLognormal(0.1, -0.5), ["D2DLognormal.sigma_off", "-0.5"]),
        (lambda: ProgrammingNoise([]), ["ProgrammingNoise.coefficients"]),
        (lambda: DiscreteLevels(), ["DiscreteLevels", "exactly one"]),
    ],
)
def test_constructors_validate_too(build: Any, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        build()
    for fragment in fragments:
        assert fragment in str(error.value)


def test_device_model_reads_the_nonidealities() -> None:
    from simulation.device_model import DeviceModel

    config = {
        "g_off": 1.0e-6,
        "g_on": 1.0e-4,
        "nonidealities": [d.to_config() for d in INSTANCES[:4]],
    }
    model = DeviceModel.from_config(config, "chip.toml")
    assert model.disturbances == tuple(INSTANCES[:4])
    with pytest.raises(ConfigError, match=r"chip\.toml\.nonidealities\[0\]\.probability: 2\.0"):
        DeviceModel.from_config(
            {**config, "nonidealities": [{"kind": "stuck_at_g_off", "probability": 2.0}]},
            "chip.toml",
        )
