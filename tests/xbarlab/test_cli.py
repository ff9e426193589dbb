"""The xbarlab command: train end to end on the offline digits data, and clean errors."""

import re
import subprocess
import sys

import pytest

from training.checkpoint import load_checkpoint
from xbarlab.cli import main


def test_train_prints_every_accuracy_and_power_and_writes_a_checkpoint(tmp_path, capsys):
    checkpoint = tmp_path / "run.pt"
    code = main(
        ["train", "--epochs", "3", "--repeats", "2", "--quiet", "--checkpoint", str(checkpoint)]
    )
    output = capsys.readouterr().out
    assert code == 0
    for label in (
        "train accuracy",
        "validation accuracy",
        "memristive validation (median)",
        "test accuracy, ideal crossbar",
        "test accuracy, resample (median of 2)",
        "test accuracy, frozen (median of 2)",
        "power, resample (device-only)",
    ):
        assert label in output
    power = re.search(
        r"power, resample \(device-only\)\s+([0-9.e+-]+) W = ([0-9.e+-]+) TOPS/W", output
    )
    watts, tops = float(power.group(1)), float(power.group(2))
    # 64-25-10 network: (64 + 1) * 25 + (25 + 1) * 10 = 1885 synapses, t_read = 50 ns.
    assert tops == pytest.approx(2 * 1885 / (50e-9 * watts) / 1e12, rel=1e-3)
    _, spec, metadata = load_checkpoint(checkpoint)
    assert spec["hidden"] == [25] and metadata["aware"] is True
    assert metadata["trainer"]["epochs"] == 3


def test_standard_training_flag_and_device_override(tmp_path, capsys):
    code = main(
        [
            "train",
            "--standard",
            "--device",
            "stuck-at-g-off",
            "--epochs",
            "2",
            "--quiet",
            "--repeats",
            "1",
            "--checkpoint",
            str(tmp_path / "s.pt"),
        ]
    )
    output = capsys.readouterr().out
    assert code == 0
    assert "standard training" in output and "Stuck at G_off" in output
    assert "memristive validation" not in output


def test_bad_config_exits_with_a_message_naming_the_key(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[training]\noptimizer = 'lbfgs'\n")
    assert main(["train", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert "bad.toml: training.optimizer: 'lbfgs' is not allowed" in error


def test_console_script_help_lists_the_commands():
    completed = subprocess.run(
        [sys.executable, "-m", "xbarlab", "--help"], capture_output=True, text=True, check=True
    )
    assert "train" in completed.stdout and "reproduce" in completed.stdout


def test_read_writes_the_map_and_sweeps_a_cell(tmp_path, capsys):
    import numpy as np

    from xbarlab.cli import main

    output = tmp_path / "map.npy"
    code = main(
        [
            "read",
            "--instrument",
            "simulated-siox-high-r-32x32",
            "--output",
            str(output),
            "--session",
            str(tmp_path / "s.h5"),
            "--iv",
            "1,2",
            "--iv-points",
            "2",
        ]
    )
    assert code == 0
    conductances = np.load(output)
    assert conductances.shape == (32, 32)
    assert np.all((conductances > 1e-8) & (conductances < 1e-4))
    printed = capsys.readouterr().out
    assert "+0.500" in printed and "-0.500" in printed  # the sweep's turning points


def test_every_command_has_help(capsys):
    import pytest

    from xbarlab.cli import main

    for command in ("demo", "characterize", "train", "program", "read", "evaluate", "emulate"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: xbarlab " + command in capsys.readouterr().out


def test_gui_command_passes_its_options_to_the_gui(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["gui", "--help"])
    assert stop.value.code == 0
    assert "--screenshot" in capsys.readouterr().out
