"""The simulated chip: Poole-Frenkel reads, pulse physics, stuck devices, noise, relaxation,
sneak paths and line resistance, configuration."""

import math

import numpy as np
import pytest
import torch

from instruments.chip import ChipParameters, SimulatedChip
from simulation.circuit import solve_crossbar, solve_lines
from simulation.config import ConfigError
from simulation.current_models import Ohmic
from simulation.iv import poole_frenkel_current

QUIET = {"read_noise": 0.0, "read_noise_floor": 0.0}
NO_DEFECTS = {"stuck_off_fraction": 0.0, "stuck_on_fraction": 0.0, "stuck_random_fraction": 0.0}


def make_chip(**overrides) -> SimulatedChip:
    config = {"rows": 8, "cols": 8, "seed": 7, **overrides}
    return SimulatedChip.from_config(config, "test: chip")


def select(chip: SimulatedChip, row: int, col: int, volts: float, scheme: str = "v/2"):
    """Line voltages putting `volts` on (row, col), unselected lines per scheme."""
    rows, cols = chip.shape
    word_level, bit_level = {
        "v/2": (volts / 2, volts / 2),
        "v/3": (volts / 3, 2 * volts / 3),
        "grounded": (0.0, 0.0),
        "floating": (np.nan, np.nan),
    }[scheme]
    words, bits = np.full(rows, word_level), np.full(cols, bit_level)
    words[row], bits[col] = volts, 0.0
    return words, bits


def test_poole_frenkel_read_matches_simulation_iv() -> None:
    chip = make_chip(rows=16, cols=12, initial_state="random")
    c, d_epsilon = chip.poole_frenkel_parameters()
    expected = poole_frenkel_current(
        torch.tensor(0.1, dtype=torch.float64), torch.from_numpy(c), torch.from_numpy(d_epsilon)
    ).numpy()
    np.testing.assert_allclose(chip.device_currents(0.1), expected, rtol=1e-12)
    np.testing.assert_allclose(chip.conductances(0.1), expected / 0.1, rtol=1e-12)
    # The regression: ln c = -1.03 ln R - 0.251 + 0.1 z (high-R SiOx): mean residual ~ 0.
    residual = np.log(c) - (-1.03 * -np.log(chip.state()) - 0.251)
    assert abs(residual.mean()) < 4 * 0.1 / math.sqrt(c.size)
    assert residual.std() == pytest.approx(0.1, rel=0.25)
    # Odd in V, superlinear: I(0.2) > 2 I(0.1).
    np.testing.assert_allclose(chip.device_currents(-0.1), -expected, rtol=1e-15)
    assert np.all(chip.device_currents(0.2) > 2 * expected)


def test_row_reads_equal_ground_truth_within_read_noise() -> None:
    chip = make_chip(rows=32, cols=32, initial_state="random", read_noise=0.005)
    rows = chip.shape[0]
    words = np.eye(rows) * 0.1
    _, bits = chip.read_batch(words, np.zeros((rows, chip.shape[1])))
    relative = -bits / 0.1 / chip.conductances(0.1) - 1
    assert abs(relative.mean()) < 4 * 0.005 / 32
    assert relative.std() == pytest.approx(0.005, rel=0.1)
    # Averaging n reads shrinks the noise by sqrt(n).
    _, averaged = chip.read_batch(words, np.zeros((rows, chip.shape[1])), averages=16)
    assert (-averaged / 0.1 / chip.conductances(0.1) - 1).std() == pytest.approx(0.005 / 4, rel=0.1)


def test_fast_paths_agree_with_each_other_and_the_circuit_solver() -> None:
    chip = make_chip(rows=6, cols=5, initial_state="random", **QUIET)
    rng = np.random.default_rng(1)
    # Few voltage levels (the per-level path) and many (the elementwise path) agree.
    words = rng.choice([0.0, 0.05, 0.1], size=(20, 6))
    bits = rng.choice([0.0, 0.05], size=(20, 5))
    few = chip.read_batch(words, bits)
    volts = words[:, :, None] - bits[:, None, :]
    flow = chip.device_currents(volts)
    np.testing.assert_allclose(few[0], flow.sum(axis=2), rtol=1e-12)
    np.testing.assert_allclose(few[1], -flow.sum(axis=1), rtol=1e-12)
    many_words = rng.uniform(-0.3, 0.3, (50, 6))
    many = chip.read_batch(many_words, np.zeros((50, 5)))
    expected = chip.device_currents(many_words[:, :, None]).sum(axis=1)
    np.testing.assert_allclose(-many[1], expected, rtol=1e-12)


def test_seeded_determinism() -> None:
    first, second, other = make_chip(seed=3), make_chip(seed=3), make_chip(seed=4)
    for chip in (first, second, other):
        chip.drive(*select(chip, 2, 3, 1.2), 1e-5)
    np.testing.assert_array_equal(first.state(), second.state())
    np.testing.assert_array_equal(
        first.read_batch(np.eye(8) * 0.1, np.zeros((8, 8)))[1],
        second.read_batch(np.eye(8) * 0.1, np.zeros((8, 8)))[1],
    )
    assert not np.array_equal(first.state(), other.state())


def test_stuck_fractions_within_binomial_tolerance_and_stuck_devices_never_move() -> None:
    fractions = {
        "stuck_off_fraction": 0.05,
        "stuck_on_fraction": 0.03,
        "stuck_random_fraction": 0.02,
    }
    chip = make_chip(rows=128, cols=128, **fractions)
    n = chip.stuck.size
    for kind, p in zip((1, 2, 3), fractions.values(), strict=True):
        count = int((chip.stuck_kind == kind).sum())
        assert abs(count - n * p) < 4 * math.sqrt(n * p * (1 - p))
    assert chip.stuck.sum() == (chip.stuck_kind > 0).sum()
    np.testing.assert_array_equal(
        chip.state()[chip.stuck_kind == 1], chip.g_off[chip.stuck_kind == 1]
    )
    np.testing.assert_array_equal(
        chip.state()[chip.stuck_kind == 2], chip.g_on[chip.stuck_kind == 2]
    )
    before = chip.state()
    rows, cols = chip.shape
    for volts in (1.5, -1.5):  # every device fully selected, both polarities
        chip.drive(np.full(rows, volts), np.zeros(cols), 1e-4)
    chip.advance(1e4)
    after = chip.state()
    np.testing.assert_array_equal(after[chip.stuck], before[chip.stuck])
    assert np.all(after[~chip.stuck] != before[~chip.stuck])


def test_set_and_reset_pulses_move_toward_the_window_edges_and_saturate() -> None:
    chip = make_chip(initial_state="off", relaxation_rate=0.0, **NO_DEFECTS)
    g0 = chip.state()[3, 4]
    chip.drive(*select(chip, 3, 4, 1.2), 1e-5)
    g1 = chip.state()[3, 4]
    assert g1 > g0
    # Expected step: f = rate (V - V_set) (1)^alpha * lognormal; with c2c noise its median is
    # 0.5 * (1.2 - V_set) * (G_on - G_off).
    f = (g1 - g0) / (chip.g_on[3, 4] - g0)
    assert 0.0 < f < 1.0
    assert f == pytest.approx(0.5 * (1.2 - chip.v_set[3, 4]), rel=2.0)
    for _ in range(200):
        chip.drive(*select(chip, 3, 4, 1.5), 1e-4)
    assert chip.state()[3, 4] == pytest.approx(chip.g_on[3, 4], rel=1e-3)
    for _ in range(200):
        chip.drive(*select(chip, 3, 4, -1.5), 1e-4)
    assert chip.state()[3, 4] == pytest.approx(chip.g_off[3, 4], rel=1e-3)
    # Below threshold nothing happens.
    before = chip.state()
    chip.drive(*select(chip, 3, 4, 0.5), 1e-3)
    np.testing.assert_array_equal(chip.state(), before)


def test_longer_pulses_move_further() -> None:
    moves = {}
    for width in (1e-5, 1e-4):
        chip = make_chip(initial_state="off", c2c_sigma=0.0, relaxation_rate=0.0, **NO_DEFECTS)
        g0 = chip.state()[1, 1]
        chip.drive(*select(chip, 1, 1, 1.0), width)
        moves[width] = (chip.state()[1, 1] - g0) / (chip.g_on[1, 1] - g0)
    overdrive = 1.0 - make_chip(**NO_DEFECTS).v_set[1, 1]
    assert moves[1e-5] == pytest.approx(0.5 * overdrive, rel=1e-12)
    assert moves[1e-4] / moves[1e-5] == pytest.approx(10**0.3, rel=1e-12)


def test_simple_write_verify_converges_in_tens_of_pulses() -> None:
    """ISPP-like loop with 0.8-1.5 V pulses of 10 us: within 5 % of the target read."""
    chip = make_chip(rows=8, cols=8, initial_state="off", **NO_DEFECTS)
    counts = []
    for cell, fraction in (((0, 0), 0.3), ((2, 5), 0.6), ((7, 7), 0.85), ((4, 1), 0.15)):
        truth = chip.conductances(0.1)
        g_max = chip.g_on[cell] * 1.0
        target = truth[cell] + fraction * (g_max - truth[cell])
        amplitude, pulses = 0.8, 0
        while pulses < 100:
            _, bits = chip.read_batch(*[v[None] for v in select(chip, *cell, 0.1, "grounded")])
            measured = -bits[0, cell[1]] / 0.1
            error = measured / target - 1
            if abs(error) < 0.05:
                break
            polarity = -1.0 if error > 0 else 1.0
            chip.drive(*select(chip, *cell, polarity * amplitude), 1e-5)
            amplitude = min(amplitude + 0.05, 1.5)
            pulses += 1
        counts.append(pulses)
        assert abs(chip.conductances(0.1)[cell] / target - 1) < 0.06
    assert max(counts) < 60 and min(counts) >= 2


def test_half_select_disturb_is_small_at_v_over_2() -> None:
    def step_fractions(volts: float) -> np.ndarray:
        """Fraction of the remaining window (G_on - G) each cell moved in one 10 us pulse."""
        chip = make_chip(rows=16, cols=16, initial_state="rest", relaxation_rate=0.0,
                         c2c_sigma=0.0, **NO_DEFECTS)  # fmt: skip
        before = chip.state()
        chip.drive(*select(chip, 5, 9, volts, "v/2"), 1e-5)
        return (chip.state() - before) / (chip.g_on - before)

    strong = step_fractions(1.5)  # V/2 = 0.75 V: just above the mean threshold (0.7 V)
    selected = strong[5, 9]
    half = np.concatenate([np.delete(strong[5], 9), np.delete(strong[:, 9], 5)])
    others = np.delete(np.delete(strong, 5, axis=0), 9, axis=1)
    assert selected == pytest.approx(0.5 * 0.8, abs=0.5 * 0.1)  # rate (V - V_set)
    assert 0 < half.max() < 0.25 * selected  # some half-selected cells are disturbed a little
    assert half.mean() < 0.1 * selected
    assert not others.any()  # unselected cells see 0 V
    normal = step_fractions(1.2)  # V/2 = 0.6 V: below threshold for (nearly) every device
    assert normal[5, 9] > 0.2
    assert np.count_nonzero(normal) <= 1 + 2


def test_relaxation_follows_log_time() -> None:
    chip = make_chip(initial_state="off", c2c_sigma=0.0, **NO_DEFECTS)
    for _ in range(100):
        chip.drive(*select(chip, 2, 2, 1.5), 1e-4)
    programmed = chip.state()[2, 2]
    rest = chip.g_rest[2, 2]
    chip.advance(3600.0)
    keep = 1 - 0.005 * math.log1p(3600.0 / 1.0)
    assert chip.state()[2, 2] == pytest.approx(rest + (programmed - rest) * keep, rel=1e-3)
    assert chip.state()[2, 2] < programmed
    assert chip.time > 3600.0
    with pytest.raises(ValueError, match="seconds"):
        chip.advance(-1.0)


def test_drive_currents_conserve_charge_and_include_noise() -> None:
    quiet = make_chip(initial_state="random", **QUIET)
    words, bits = select(quiet, 1, 2, 0.3, "v/3")
    word_out, bit_out = quiet.drive(words, bits, 0.0)
    assert word_out.sum() + bit_out.sum() == pytest.approx(0.0, abs=1e-20)
    volts = words[:, None] - bits[None, :]
    np.testing.assert_allclose(bit_out, -quiet.device_currents(volts).sum(axis=0), rtol=1e-12)
    noisy = make_chip(initial_state="random")
    assert not np.allclose(noisy.drive(words, bits, 0.0)[1], bit_out, rtol=1e-6, atol=0)
    # Floating terminals read exactly 0.
    _, floating = noisy.drive(*select(noisy, 1, 2, 0.1, "floating"), 0.0)
    assert np.count_nonzero(floating) == 1


def test_sneak_path_read_with_floating_lines_on_an_ohmic_chip() -> None:
    chip = make_chip(rows=4, cols=4, device="ideal", initial_state="random", **QUIET, **NO_DEFECTS)
    assert isinstance(chip.parameters.current_model, Ohmic)
    g = chip.state()
    np.testing.assert_allclose(chip.conductances(0.1), g, rtol=1e-15)
    _, floating = chip.read_batch(*[v[None] for v in select(chip, 0, 0, 0.1, "floating")])
    _, grounded = chip.read_batch(*[v[None] for v in select(chip, 0, 0, 0.1, "grounded")])
    assert -grounded[0, 0] == pytest.approx(0.1 * g[0, 0], rel=1e-12)
    reference = solve_lines(*[v[None] for v in select(chip, 0, 0, 0.1, "floating")], g)
    assert -floating[0, 0] == pytest.approx(-reference.bit_currents[0, 0], rel=1e-12)
    assert -floating[0, 0] > 1.2 * 0.1 * g[0, 0]  # sneak paths read high


def test_line_resistance_lowers_reads_like_the_circuit_solver() -> None:
    chip = make_chip(
        rows=6, cols=5, device="ideal", r_word=200.0, r_bit=100.0, **QUIET, **NO_DEFECTS
    )
    g = chip.state()
    voltages = np.random.default_rng(0).uniform(0, 0.3, (3, 6))
    _, bits = chip.read_batch(voltages, np.zeros((3, 5)))
    np.testing.assert_allclose(-bits, solve_crossbar(voltages, g, 200.0, 100.0), rtol=1e-9)
    assert np.all(-bits < voltages @ g)
    # Poole-Frenkel devices go through Newton; the chip reports them with r > 0 as well.
    pf = make_chip(rows=6, cols=5, r_word=1e3, r_bit=1e3, initial_state="random", **QUIET)
    _, pf_bits = pf.read_batch(np.eye(6)[:2] * 0.1, np.zeros((2, 5)))
    ideal = pf.conductances(0.1)[:2] * 0.1
    assert np.all(-pf_bits < ideal) and np.all(-pf_bits > 0.95 * ideal)


def test_read_batch_refuses_switching_voltages_and_bad_shapes() -> None:
    chip = make_chip()
    with pytest.raises(ValueError, match="threshold"):
        chip.read_batch(np.full((1, 8), 1.0), np.zeros((1, 8)))
    with pytest.raises(ValueError, match="word_voltages"):
        chip.read_batch(np.zeros((1, 7)), np.zeros((1, 8)))
    with pytest.raises(ValueError, match="bit_voltages"):
        chip.drive(np.zeros(8), np.zeros(9), 1e-5)
    with pytest.raises(ValueError, match="duration"):
        chip.drive(np.zeros(8), np.zeros(8), -1.0)


def test_config_validation_names_keys() -> None:
    with pytest.raises(ConfigError, match="'v_sett'"):
        SimulatedChip.from_config({"v_sett": 0.7}, "lab.toml: chip")
    with pytest.raises(ConfigError, match=r"lab.toml: chip.read_noise"):
        SimulatedChip.from_config({"read_noise": -1}, "lab.toml: chip")
    with pytest.raises(ConfigError, match="not found"):
        SimulatedChip.from_config({"device": "no-such-device"}, "chip")
    with pytest.raises(ConfigError, match="power_law"):
        SimulatedChip.from_config({"device": "siox-high-r-power-law"}, "chip")
    with pytest.raises(ConfigError, match="initial_state"):
        SimulatedChip.from_config({"initial_state": "half"}, "chip")
    with pytest.raises(ConfigError, match="stuck fractions"):
        SimulatedChip.from_config({"stuck_off_fraction": 0.6, "stuck_on_fraction": 0.6}, "chip")
    low = SimulatedChip.from_config({"device": "siox-low-r", "rows": 4, "cols": 4}, "chip")
    assert low.parameters.g_off == 6.90e-4 and low.parameters.g_on == 3.45e-3
    custom = ChipParameters.from_config({"g_off": 1e-6, "g_on": 1e-5})
    assert (custom.g_off, custom.g_on, custom.device) == (1e-6, 1e-5, "siox-high-r")
    assert ChipParameters.from_config(custom.to_config()) == custom


def test_isolated_reads_equal_full_array_reads_with_ideal_lines():
    from instruments.chip import SimulatedChip

    chip = SimulatedChip.from_config(
        {"rows": 6, "cols": 5, "seed": 2, "read_noise": 0.0, "read_noise_floor": 0.0,
         "initial_state": "random"}, "chip"
    )  # fmt: skip
    rows, cols = np.array([0, 3, 5, 5]), np.array([4, 0, 2, 2])
    words = np.zeros((4, 6))
    words[np.arange(4), rows] = 0.2
    _, bit = chip.read_batch(words, np.zeros((4, 5)))
    np.testing.assert_allclose(
        chip.read_isolated(rows, cols, 0.2), bit[np.arange(4), cols], rtol=1e-12
    )
    lined = SimulatedChip.from_config({"rows": 3, "cols": 3, "r_word": 1.0}, "chip")
    assert lined.read_isolated(np.array([0]), np.array([0]), 0.1) is None


def test_block_drive_equals_whole_array_drive_and_keeps_the_cache_exact(monkeypatch) -> None:
    """Pulses touch only the devices whose voltage is non-zero; the result (currents, switching,
    random draws) equals evaluating the whole array, and the incrementally updated state cache
    equals a fresh evaluation."""
    import instruments.chip as chip_module

    overrides = {"rows": 12, "cols": 9, "seed": 5, "initial_state": "random", "v_set": 0.7}
    blocks, whole = make_chip(**overrides), make_chip(**overrides)
    pulses = [(3, [1, 4], 1.6), (0, [8], -1.5), (3, [2], 1.2), (11, [0, 1, 2], 1.7)]
    for row, cols, amplitude in pulses:
        words, bits = np.full(12, amplitude / 2), np.full(9, amplitude / 2)
        words[row], bits[cols] = amplitude, 0.0
        got = blocks.drive(words, bits, 1e-5)
        monkeypatch.setattr(chip_module, "_MAX_LEVEL_PAIRS", 0)  # whole-array path
        expected = whole.drive(words, bits, 1e-5)
        monkeypatch.undo()
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-20)
    np.testing.assert_array_equal(blocks.state(), whole.state())
    # A/2 = 0.8-0.85 V > v_set: half-selected devices switched too, on both paths.
    assert np.sum(blocks.state() != make_chip(**overrides).state()) > 8
    # The cache is re-evaluated every RELAXATION_STEP; within one, the pulsed devices were
    # updated at their programming time (40 us ago: relaxation 0.005 ln(1 + 4e-5) ~ 2e-7).
    g, devices = blocks._now()
    blocks._cache = None
    fresh_g, fresh = blocks._now()
    np.testing.assert_allclose(g, fresh_g, rtol=1e-6)
    np.testing.assert_allclose(devices.c, fresh.c, rtol=1e-6)
    np.testing.assert_allclose(devices.beta, fresh.beta, rtol=1e-6)
    assert not np.allclose(g, make_chip(**overrides).state(), rtol=1e-3)


def test_set_state_puts_every_device_at_the_given_conductance() -> None:
    chip = make_chip(**QUIET, device="siox-high-r")
    target = np.linspace(6e-7, 2.5e-6, 64).reshape(8, 8)
    chip.set_state(target)
    np.testing.assert_array_equal(chip.state(), target)
    with pytest.raises(ValueError, match="set_state"):
        chip.set_state(np.zeros((8, 8)))
