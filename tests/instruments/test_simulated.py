"""The simulated backend through the Crossbar interface: reads, pulses, bias schemes, limits,
outputs-off on errors, configs."""

import numpy as np
import pytest

from instruments import BiasScheme, LimitError, open_crossbar
from instruments.factory import CONFIG_DIR, load_instrument_config
from instruments.simulated import SimulatedCrossbar
from simulation.circuit import solve_lines
from simulation.config import ConfigError


def make_crossbar(rows: int = 12, cols: int = 8, **chip) -> SimulatedCrossbar:
    config = {
        "backend": "simulated",
        "bias_scheme": "v/2",
        "read_bias_scheme": "grounded",
        "limits": {"max_pulse_voltage": 2.0},
        "read": {"v_read": 0.1},
        "chip": {"rows": rows, "cols": cols, "seed": 11, **chip},
    }
    crossbar = open_crossbar(config)
    assert isinstance(crossbar, SimulatedCrossbar)
    return crossbar


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("simulated-*.toml")), ids=lambda p: p.stem)
def test_shipped_configs_open(path) -> None:
    config, _ = load_instrument_config(path)
    with open_crossbar(path) as crossbar:
        assert crossbar.shape == (config["chip"]["rows"], config["chip"]["cols"])
        assert crossbar.capabilities.vmm and crossbar.capabilities.parallel_read_rows
        assert crossbar.capabilities.parallel_pulse_cells == crossbar.shape[1]
        assert set(crossbar.capabilities.bias_schemes) == set(BiasScheme)
        assert crossbar.record()["chip"]["rows"] == crossbar.shape[0]
    assert crossbar.closed and not crossbar.outputs_on


def test_read_all_equals_ground_truth_within_read_noise() -> None:
    with open_crossbar("simulated-siox-high-r-32x32") as crossbar:
        measured = crossbar.read_all()
        truth = crossbar.chip.conductances(crossbar.v_read)
        relative = measured / truth - 1
        assert np.abs(relative).max() < 5 * 0.005
        assert relative.std() == pytest.approx(0.005, rel=0.15)
        np.testing.assert_allclose(crossbar.read_row(4), truth[4], rtol=5 * 0.005)
        cells = [(0, 0), (5, 31), (31, 2)]
        conductances, currents = crossbar.read_cells(cells, averages=4)
        np.testing.assert_allclose(conductances, truth[tuple(np.array(cells).T)], rtol=3 * 0.005)
        np.testing.assert_allclose(currents, conductances * crossbar.v_read, rtol=1e-12)


def test_patterns_round_trip_without_swapping_rows_and_columns() -> None:
    fractions = {"stuck_off_fraction": 0.0, "stuck_on_fraction": 0.0, "stuck_random_fraction": 0.0}
    crossbar = make_crossbar(12, 8, initial_state="off", **fractions)
    rows, cols = crossbar.shape
    # Checkerboard: SET the cells with (row + col) even with repeated pulses.
    on = (np.add.outer(np.arange(rows), np.arange(cols)) % 2) == 0
    cells = np.argwhere(on)
    for _ in range(15):  # V/2 = 0.6 V stays below the ~0.7 V thresholds
        crossbar.pulse(cells, 1.2, 1e-4)
    measured = crossbar.read_all()
    assert measured.shape == (12, 8)
    assert measured[on].min() > 2 * measured[~on].max()
    # Gradient along the columns: column j gets j SET pulses from G_off.
    quiet = {"c2c_sigma": 0.05, "d2d_sigma": 0.02, "threshold_sigma": 0.01}
    gradient = make_crossbar(12, 8, initial_state="off", **quiet, **fractions)
    for count in range(1, cols):
        targets = np.argwhere(np.arange(cols)[None, :].repeat(rows, 0) >= count)
        gradient.pulse(targets, 0.9, 1e-5)
    measured = gradient.read_all()
    column_means = measured.mean(axis=0)
    assert np.all(np.diff(column_means) > 0)
    assert np.all(np.diff(measured, axis=1).mean(axis=0) > 0)  # increasing along every row
    assert np.ptp(measured.mean(axis=1)) < 0.2 * np.ptp(column_means)  # flat down the columns


def test_pulse_above_the_limit_raises_and_changes_nothing() -> None:
    crossbar = make_crossbar()
    state, time = crossbar.chip.state(), crossbar.chip.time
    with pytest.raises(LimitError, match="max_pulse_voltage"):
        crossbar.pulse([(1, 1)], 2.5, 1e-5)
    with pytest.raises(LimitError, match="pulse width"):
        crossbar.pulse([(1, 1)], 1.0, 1.0)
    np.testing.assert_array_equal(crossbar.chip.state(), state)
    assert crossbar.chip.time == time
    assert crossbar.ledger.counts.sum() == 0


def test_a_failing_backend_call_leaves_outputs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    crossbar = make_crossbar()
    crossbar.read_all()
    assert crossbar.outputs_on

    def broken(*args, **kwargs):
        raise RuntimeError("simulated instrument fault")

    monkeypatch.setattr(crossbar.chip, "drive", broken)
    with pytest.raises(RuntimeError, match="fault"):
        crossbar.pulse([(0, 0)], 1.0, 1e-5)
    assert not crossbar.outputs_on and crossbar.outputs_off_calls == 1
    crossbar.read_cells([(0, 0)])
    assert crossbar.outputs_on
    crossbar.close()
    assert not crossbar.outputs_on and crossbar.outputs_off_calls == 2


def test_row_pulses_are_one_drive_call_per_row_and_amplitude() -> None:
    crossbar = make_crossbar()
    calls = []
    drive = crossbar.chip.drive

    def counting(words, bits, duration):
        calls.append((words.copy(), bits.copy(), duration))
        return drive(words, bits, duration)

    crossbar.chip.drive = counting  # type: ignore[method-assign]
    cells = [(2, 0), (2, 3), (5, 1), (2, 6)]
    crossbar.pulse(cells, [1.0, 1.0, 1.0, -1.0], 2e-5)
    assert len(calls) == 3
    words, bits, duration = calls[0]
    assert duration == 2e-5
    assert words[2] == 1.0 and np.all(np.delete(words, 2) == 0.5)
    assert np.all(bits[[0, 3]] == 0.0) and np.all(np.delete(bits, [0, 3]) == 0.5)
    assert calls[2][0][2] == -1.0 and calls[2][1][6] == 0.0 and calls[2][1][0] == -0.5


def test_half_select_disturb_through_the_crossbar() -> None:
    fractions = {"stuck_off_fraction": 0.0, "stuck_on_fraction": 0.0, "stuck_random_fraction": 0.0}
    crossbar = make_crossbar(
        16, 16, initial_state="rest", relaxation_rate=0.0, c2c_sigma=0.0, **fractions
    )
    before = crossbar.chip.state()
    for _ in range(5):
        crossbar.pulse([(5, 9)], 1.3, 1e-5)
    change = np.abs(crossbar.chip.state() - before) / (crossbar.chip.g_on - crossbar.chip.g_off)
    half = np.concatenate([np.delete(change[5], 9), np.delete(change[:, 9], 5)])
    assert change[5, 9] > 0.5
    assert half.max() < 0.25 * change[5, 9]
    assert half.mean() < 0.02 * change[5, 9]
    assert not np.delete(np.delete(change, 5, axis=0), 9, axis=1).any()
    # Under the grounded scheme the whole selected row sees the full pulse.
    crossbar.set_bias_scheme("grounded")
    row_before = crossbar.chip.state()[3]
    crossbar.pulse([(3, 0)], 1.4, 1e-5)
    moved = crossbar.chip.state()[3] != row_before
    assert moved[~crossbar.chip.stuck[3]].all()


def test_floating_reads_see_sneak_paths_grounded_reads_do_not() -> None:
    crossbar = make_crossbar(6, 5, device="ideal", read_noise=0.0, read_noise_floor=0.0)
    crossbar.read_bias_scheme = None
    crossbar.set_bias_scheme("grounded")
    g = crossbar.chip.state()
    cells = [(0, 0), (3, 2), (5, 4)]
    grounded, _ = crossbar.read_cells(cells)
    np.testing.assert_allclose(grounded, g[tuple(np.array(cells).T)], rtol=1e-12)
    crossbar.set_bias_scheme("floating")
    floating, _ = crossbar.read_cells(cells)
    for (row, col), value in zip(cells, floating, strict=True):
        words, bits = np.full((1, 6), np.nan), np.full((1, 5), np.nan)
        words[0, row], bits[0, col] = 0.1, 0.0
        reference = -solve_lines(words, bits, g).bit_currents[0, col] / 0.1
        assert value == pytest.approx(reference, rel=1e-12)
        assert value > 1.5 * g[row, col]
    # V/2 reads add the half-selected cells of the column (at v/2) to the measurement.
    crossbar.set_bias_scheme("v/2")
    half, _ = crossbar.read_cells([(0, 0)])
    assert half[0] == pytest.approx(g[0, 0] + 0.5 * g[1:, 0].sum(), rel=1e-12)
    # read_bias_scheme overrides the scheme for single-cell reads.
    crossbar.read_bias_scheme = BiasScheme.GROUNDED
    assert crossbar.read_cells([(0, 0)])[0][0] == pytest.approx(g[0, 0], rel=1e-12)


def test_multiply_and_iv_sweep() -> None:
    crossbar = make_crossbar(device="ideal", read_noise=0.0, read_noise_floor=0.0)
    voltages = np.random.default_rng(2).uniform(-0.3, 0.3, (4, 12))
    np.testing.assert_allclose(
        crossbar.multiply(voltages), voltages @ crossbar.chip.state(), rtol=1e-12
    )
    pf = make_crossbar(read_noise=0.0, read_noise_floor=0.0, relaxation_rate=0.0)
    pf.read_bias_scheme = None
    pf.set_bias_scheme("grounded")
    sweep = np.linspace(-0.4, 0.4, 9)
    currents = pf.iv_sweep(2, 3, sweep)
    np.testing.assert_allclose(currents, pf.chip.device_currents(sweep[:, None, None])[:, 2, 3])
    np.testing.assert_allclose(currents, -currents[::-1], rtol=1e-12)
    with pytest.raises(LimitError):
        pf.iv_sweep(2, 3, np.array([0.0, 2.0]))
    # A sweep past the SET threshold switches the device, as on a real chip.
    before = pf.chip.state()[2, 3]
    pf.iv_sweep(2, 3, np.linspace(0, 1.4, 8))
    assert pf.chip.state()[2, 3] > before or pf.chip.stuck[2, 3]


def test_config_errors_name_the_key() -> None:
    base = {"backend": "simulated", "chip": {"rows": 4, "cols": 4}}
    with pytest.raises(ConfigError, match="'colour'"):
        open_crossbar({**base, "colour": "blue"})
    with pytest.raises(ConfigError, match=r"read.v_read"):
        open_crossbar({**base, "read": {"v_read": 0.9}})
    with pytest.raises(ConfigError, match="'nplcs'"):
        open_crossbar({**base, "read": {"nplcs": 1}})
    with pytest.raises(ConfigError, match=r"chip.*'wordlines'"):
        open_crossbar({**base, "chip": {"wordlines": 4}})
    with pytest.raises(ConfigError, match="bias_scheme"):
        open_crossbar({**base, "bias_scheme": "v/4"})
    with pytest.raises(ConfigError, match="limits"):
        open_crossbar({**base, "limits": {"max_pulse_voltage": -1}})
