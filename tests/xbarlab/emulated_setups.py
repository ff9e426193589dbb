"""Instrument configs for pipeline tests: the emulated 2600B + 707B twin on a chosen chip."""

from xbarlab.config import config_directory, read_toml


def emulated_setup(rows=70, cols=28):
    """The 2600B + 707B emulated twin with a rows x cols chip (emulator-only extra slots)."""
    config = read_toml(config_directory() / "instruments" / "keithley2600-707b-emulated.toml")
    names = [f"{1 + k // 12}/{1 + k % 12:02d}" for k in range(rows + cols)]
    config["channel_map"] = {"word_lines": names[:rows], "bit_lines": names[rows:]}
    config["matrix"]["slots"] = (rows + cols + 11) // 12
    config["limits"]["max_read_voltage"] = 0.5
    config["emulator"]["chip"] = {**config["emulator"]["chip"], "rows": rows, "cols": cols}
    return config
