"""Config files: every shipped preset and experiment loads; bad files name file, key and value."""

import pytest

from simulation.config import ConfigError
from simulation.device_model import DeviceModel
from xbarlab.config import (
    config_directory,
    device_preset_names,
    load_device_model,
    load_experiment,
)

PAPER_PRESETS = {
    "siox-low-r": (6.90e-4, 3.45e-3),
    "siox-high-r": (5.25e-7, 2.62e-6),
    "stuck-at-g-off": (5.25e-7, 2.62e-6),
    "siox-high-r-stuck-on": (5.25e-7, 2.62e-6),
    "ta-hfo2-stuck": (4.36e-5, 9.78e-4),
    "d2d-more-uniform": (5.25e-7, 2.62e-6),
    "d2d-less-uniform": (5.25e-7, 2.62e-6),
    "d2d-high": (5.25e-7, 2.62e-6),
}


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))
def test_paper_presets_have_the_paper_values(name):
    model = load_device_model(name)
    assert (model.g_range.g_off, model.g_range.g_on) == PAPER_PRESETS[name]
    assert model.k_v == 0.5
    assert DeviceModel.from_config(model.to_config()) == model


def test_preset_parameters():
    high = load_device_model("siox-high-r").current_model.to_config()
    assert high["slope"] == [-1.03, -0.0901] and high["intercept"] == [-0.251, -37.1]
    low = load_device_model("siox-low-r").current_model.to_config()
    assert low["slope"] == [-1.12, -1.34] and low["intercept"] == [0.628, -25.9]
    less = load_device_model("d2d-less-uniform").disturbances[0].to_config()
    assert (less["sigma_on"], less["sigma_off"]) == (0.05, 0.5)
    ta = load_device_model("ta-hfo2-stuck").disturbances[0].to_config()
    assert (ta["probability"], ta["bandwidth"]) == (0.101, 1.77e-5)
    stuck_on = load_device_model("siox-high-r-stuck-on")
    assert stuck_on.disturbances[0].to_config() == {"kind": "stuck_at_g_on", "probability": 0.05}
    assert stuck_on.current_model.kind == "poole_frenkel"


def test_every_shipped_config_loads():
    assert len(device_preset_names()) >= 8
    for name in device_preset_names():
        load_device_model(name)
    for path in sorted((config_directory() / "experiments").glob("*.toml")):
        load_experiment(path)


def test_unknown_preset_lists_the_available_ones():
    expected = r"'siox-medium' does not exist; available: .*siox-high-r"
    with pytest.raises(ConfigError, match=expected):
        load_device_model("siox-medium")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[training]\nepochs = -3\n", "bad.toml: training.epochs: -3 is out of range"),
        ("[training]\naware = true\n", "aware training needs a device"),
        ('device = "siox-high-r"\n[data]\ndataset = "imagenet"\n', "data.dataset: 'imagenet'"),
        ("[evaluation]\nmodes = ['sometimes']\n", "evaluation.modes: ['sometimes']"),
        ("[network]\nhidden = [0]\n", "bad.toml: network.hidden[0]: expected an integer >= 1"),
        ("epochs = 3\n", "unknown key(s) 'epochs'"),
        ("[training\n", "bad.toml: not valid TOML"),
        (
            "[device]\ng_off = 1e-6\ng_on = 2e-6\n[[device.nonidealities]]\n"
            'kind = "stuck_at_g_off"\nprobability = 1.5\n',
            "bad.toml: device.nonidealities[0].probability: 1.5",
        ),
    ],
)
def test_bad_experiment_files_name_file_key_and_value(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    assert fragment in str(caught.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nothing\.toml: config file not found"):
        load_experiment(tmp_path / "nothing.toml")
