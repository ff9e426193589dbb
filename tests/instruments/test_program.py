"""Write-verify programming: algorithm behaviour on a small synthetic crossbar, and the
statistics it reaches on the simulated SiOx chip."""

from __future__ import annotations

import numpy as np
import pytest

from instruments.crossbar import BiasScheme, Capabilities, Crossbar
from instruments.limits import LimitError, SafetyLimits
from instruments.program import (
    STATUSES,
    ProgramResult,
    WriteVerifyConfig,
    estimate_read_noise,
    program_map,
)
from simulation.config import ConfigError


class ToyCrossbar(Crossbar):
    """Synthetic crossbar: per-device window [g_low, g_high] (S), threshold switching with a
    step that grows exponentially with overdrive, cycle-to-cycle spread, relative read noise."""

    def __init__(
        self,
        rows: int = 16,
        cols: int = 16,
        seed: int = 0,
        stuck_fraction: float = 0.05,
        noise: float = 0.005,
        limits: SafetyLimits | None = None,
    ) -> None:
        capabilities = Capabilities(
            rows, cols, (BiasScheme.GROUNDED,), (1e-6, 1e-2), (-3.0, 3.0), (1e-9, 1e-3)
        )
        super().__init__(limits or SafetyLimits(), capabilities, {"toy": "synthetic"})
        self.rng = np.random.default_rng(seed)
        shape = (rows, cols)
        self.g_low = 5e-7 * np.exp(0.1 * self.rng.standard_normal(shape))
        self.g_high = 2.8e-6 * np.exp(0.1 * self.rng.standard_normal(shape))
        self.g = self.rng.uniform(self.g_low, self.g_high)
        self.threshold = 0.9 + 0.05 * self.rng.standard_normal(shape)
        self.stuck = self.rng.random(shape) < stuck_fraction
        self.noise = noise
        self.calls = 0

    def _read_cells(self, cells: np.ndarray, v_read: float, averages: int) -> np.ndarray:
        self.stats.bus_round_trips += 1
        g = self.g[cells[:, 0], cells[:, 1]]
        return v_read * g * (1 + self.noise / np.sqrt(averages) * self.rng.standard_normal(g.shape))

    def _pulse(self, cells: np.ndarray, amplitudes: np.ndarray, width: float) -> None:
        self.stats.bus_round_trips += 1
        self.calls += 1
        r, c = cells[:, 0], cells[:, 1]
        over = np.maximum(np.abs(amplitudes) - self.threshold[r, c], 0.0)
        rate = 0.03 * np.exp(0.3 * self.rng.standard_normal(len(r))) * (width / 5e-5)
        fraction = np.clip(rate * np.expm1(over / 0.12), 0.0, 1.0)
        g = self.g[r, c]
        up = g + fraction * (self.g_high[r, c] - g)
        down = g - fraction * (g - self.g_low[r, c])
        self.g[r, c] = np.where(self.stuck[r, c], g, np.where(amplitudes > 0, up, down))

    def _iv_sweep(self, row: int, col: int, voltages: np.ndarray) -> np.ndarray:
        return self.g[row, col] * voltages

    def _outputs_off(self) -> None:
        pass


def toy_targets(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(7e-7, 2.2e-6, shape)


def test_config_defaults_round_trip_and_validation() -> None:
    config = WriteVerifyConfig()
    assert WriteVerifyConfig.from_config(config.to_config()) == config
    assert config.ramp(-1) == config.ramp(+1)
    custom = WriteVerifyConfig.from_config({"reset_v_start": 0.5, "reset_v_max": 1.0}, "wv")
    assert custom.ramp(-1) == (0.5, config.v_step, 1.0)
    with pytest.raises(ConfigError, match=r"wv: unknown key\(s\) 'v_stat'"):
        WriteVerifyConfig.from_config({"v_stat": 0.5}, "wv")
    with pytest.raises(ConfigError, match=r"wv\.v_start: 2\.0 V exceeds v_max"):
        WriteVerifyConfig.from_config({"v_start": 2.0}, "wv")
    with pytest.raises(ConfigError, match=r"wv\.averages"):
        WriteVerifyConfig.from_config({"averages": 0}, "wv")
    with pytest.raises(ConfigError, match="step_reduction"):
        WriteVerifyConfig(step_reduction=1.5)
    with pytest.raises(ConfigError, match="both 0"):
        WriteVerifyConfig(relative_tolerance=0.0, absolute_tolerance=0.0)


def test_read_noise_estimate_is_the_relative_std_of_a_difference() -> None:
    rng = np.random.default_rng(0)
    g = np.full(100_000, 1e-6)
    first = g * (1 + 0.01 * rng.standard_normal(g.size))
    second = g * (1 + 0.01 * rng.standard_normal(g.size))
    assert estimate_read_noise(first, second) == pytest.approx(0.01 * np.sqrt(2), rel=0.02)


def test_toy_chip_converges_and_flags_stuck_cells() -> None:
    crossbar = ToyCrossbar(24, 24, seed=3)
    targets = toy_targets(crossbar.shape)
    result = program_map(crossbar, targets, WriteVerifyConfig(pulse_width=5e-5))
    summary = result.summary()
    free = ~crossbar.stuck
    assert summary["pending_cells"] == 0 and not result.cancelled
    # Every free cell converges; the last verify reads sit inside the 2 % band.
    assert np.all(result.status[free] == "converged")
    assert summary["within_tolerance"] >= 0.99
    assert summary["p95_relative_error"] <= 0.02
    # Stuck cells: flagged, unless their stuck value happened to lie inside the band.
    inside = np.abs(crossbar.g - targets) <= result.tolerance
    assert np.all((result.status == "stuck") == (crossbar.stuck & ~inside))
    assert summary["max_pulses"] <= WriteVerifyConfig().max_pulses
    np.testing.assert_array_equal(result.pulses, crossbar.ledger.counts)
    # One pulse_and_read call per iteration, whatever the number of cells.
    assert crossbar.calls == result.iterations
    assert summary["bus_round_trips"] == crossbar.stats.bus_round_trips


def test_mask_leaves_other_cells_alone() -> None:
    crossbar = ToyCrossbar(8, 8, seed=4, stuck_fraction=0.0)
    before = crossbar.g.copy()
    mask = np.zeros(crossbar.shape, dtype=bool)
    mask[2:5, 3:6] = True
    result = program_map(crossbar, toy_targets(crossbar.shape), mask=mask)
    assert np.all(crossbar.ledger.counts[~mask] == 0)
    np.testing.assert_array_equal(crossbar.g[~mask], before[~mask])
    assert np.all(result.status[~mask] == "skipped")
    assert np.all(np.isnan(result.achieved[~mask])) and np.all(np.isnan(result.targets[~mask]))
    assert np.all(result.status[mask] == "converged")


def test_cancel_then_resume_skips_finished_cells() -> None:
    crossbar = ToyCrossbar(16, 16, seed=5)
    targets = toy_targets(crossbar.shape)
    calls = {"n": 0}

    def stop_after_six() -> bool:
        calls["n"] += 1
        return calls["n"] > 6

    events: list[dict] = []
    partial = program_map(crossbar, targets, should_stop=stop_after_six, on_progress=events.append)
    # should_stop is polled once before the first reads, then before every iteration.
    assert partial.cancelled and partial.iterations == 5
    counts = partial.summary()
    assert 0 < counts["pending_cells"] < 256
    # The partial result is consistent with the chip: its pulse counts are the ledger's.
    np.testing.assert_array_equal(partial.pulses, crossbar.ledger.counts)
    assert events[-1]["final"] and events[-1]["done"] == 256 - counts["pending_cells"]
    assert all(e["stage"] == "program" for e in events)
    finished_before = partial.finished.copy()
    ledger_before = crossbar.ledger.counts.copy()
    resumed = program_map(crossbar, targets, finished=partial)
    # Finished cells got no further pulse; everything else finished now.
    np.testing.assert_array_equal(
        crossbar.ledger.counts[finished_before], ledger_before[finished_before]
    )
    assert resumed.count("pending") == 0 and not resumed.cancelled
    np.testing.assert_array_equal(resumed.pulses, crossbar.ledger.counts)
    np.testing.assert_array_equal(resumed.status[finished_before], partial.status[finished_before])
    assert resumed.iterations > partial.iterations
    # A result survives the trip through plain arrays (a session file).
    copy = ProgramResult.from_arrays(resumed.to_arrays(), resumed.metadata())
    np.testing.assert_array_equal(copy.status, resumed.status)
    np.testing.assert_array_equal(copy.achieved, resumed.achieved)
    assert copy.config == resumed.config


def test_progress_every_k_iterations() -> None:
    crossbar = ToyCrossbar(8, 8, seed=6, stuck_fraction=0.0)
    events: list[dict] = []
    result = program_map(
        crossbar, toy_targets(crossbar.shape), {"progress_every": 3}, on_progress=events.append
    )
    iterations = [e["iteration"] for e in events if not e["final"]]
    assert iterations == list(range(3, result.iterations + 1, 3))
    assert events[-1]["final"] and events[-1]["done"] == events[-1]["total"] == 64
    assert events[-1]["achieved"].shape == (8, 8)


def test_unresponsive_and_max_pulse_cells_are_reported_not_retried() -> None:
    crossbar = ToyCrossbar(4, 4, seed=7, stuck_fraction=0.0)
    targets = toy_targets(crossbar.shape)
    targets[0, 0] = 3 * crossbar.g_high[0, 0]  # above the device's own window
    result = program_map(crossbar, targets, {"max_pulses": 60})
    assert result.status[0, 0] == "unresponsive"
    assert result.pulses[0, 0] < 60
    tight = program_map(
        ToyCrossbar(4, 4, seed=8, stuck_fraction=0.0),
        targets * 0 + 1.5e-6,
        {"max_pulses": 3, "relative_tolerance": 1e-4, "absolute_tolerance": 0.0},
    )
    assert np.all(np.isin(tight.status, ["max_pulses", "converged"]))
    assert tight.pulses.max() <= 3


def test_limits_and_bad_targets_are_refused_before_any_pulse() -> None:
    crossbar = ToyCrossbar(4, 4, limits=SafetyLimits(max_pulse_voltage=1.0))
    with pytest.raises(LimitError, match="write-verify config v_max"):
        program_map(crossbar, toy_targets(crossbar.shape))
    with pytest.raises(LimitError, match="reset_v_max"):
        program_map(crossbar, toy_targets(crossbar.shape), {"v_max": 1.0, "reset_v_max": 1.1})
    targets = toy_targets(crossbar.shape)
    targets[1, 2] = -1e-6
    with pytest.raises(ValueError, match=r"targets\[1, 2\]"):
        program_map(crossbar, targets, {"v_max": 1.0})
    with pytest.raises(ValueError, match="shape"):
        program_map(crossbar, np.ones((3, 3)))
    assert crossbar.ledger.counts.sum() == 0


def test_statuses_are_known() -> None:
    assert STATUSES[0] == "skipped" and "stuck" in STATUSES


# -- the simulated SiOx chip ---------------------------------------------------------------------


def read_window(chip) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free I/V at 0.1 V of every device at its own G_off and G_on (ground truth)."""
    from simulation.iv import poole_frenkel_exponent_coefficient

    model = chip.parameters.current_model
    z1, z2 = chip._normals
    s1, s2 = model.residual_std
    rho = model.residual_correlation
    edges = []
    for g in (chip.g_off, chip.g_on):
        log_r = -np.log(g)
        log_c = model.slope[0] * log_r + model.intercept[0] + s1 * z1
        log_d = (
            model.slope[1] * log_r + model.intercept[1] + s2 * (rho * z1 + np.sqrt(1 - rho**2) * z2)
        )
        beta = poole_frenkel_exponent_coefficient(np.exp(log_d), model.temperature)
        edges.append(np.exp(log_c) * np.exp(beta * np.sqrt(0.1)))
    return edges[0], edges[1]


class Recording:
    """Wraps a crossbar's pulse_and_read to record the largest |amplitude| (V) and the calls."""

    def __init__(self, crossbar: Crossbar) -> None:
        self.largest = 0.0
        self.calls = 0
        inner = crossbar.pulse_and_read

        def pulse_and_read(cells, amplitude, width, v_read=None, averages=1):
            self.largest = max(self.largest, float(np.max(np.abs(amplitude))))
            self.calls += 1
            return inner(cells, amplitude, width, v_read, averages)

        crossbar.pulse_and_read = pulse_and_read  # type: ignore[method-assign]


def simulated_chip_and_targets(seed: int = 0):
    from instruments import open_crossbar

    crossbar = open_crossbar("simulated-siox-high-r-32x32")
    low, high = read_window(crossbar.chip)
    free = ~crossbar.chip.stuck
    # Uniform targets inside the window every free device can reach.
    lower, upper = low[free].max(), high[free].min()
    targets = np.random.default_rng(seed).uniform(lower, upper, crossbar.shape)
    return crossbar, targets


def test_write_verify_on_the_simulated_32x32_chip() -> None:
    """>= 98 % of non-stuck cells within 5 % (in fact all within the 2 % band) in <= 50
    pulses, every stuck cell flagged unless its value happened to lie inside its band, and no
    pulse above the limits."""
    crossbar, targets = simulated_chip_and_targets()
    recording = Recording(crossbar)
    with crossbar:
        result = program_map(crossbar, targets)
        chip = crossbar.chip
        free = ~chip.stuck
        truth = chip.conductances(0.1)
    error = np.abs(truth - targets) / targets
    assert np.mean(error[free] <= 0.05) >= 0.98
    assert np.mean(result.relative_error[free] <= 0.05) >= 0.98
    assert result.summary()["within_tolerance"] >= 0.98
    assert result.pulses[free].max() <= 50
    inside = np.abs(truth - targets) <= result.tolerance
    assert np.all((result.status == "stuck") | ~chip.stuck | inside)
    assert np.all(result.status[free] != "stuck")
    assert recording.largest <= WriteVerifyConfig().v_max <= crossbar.limits.max_pulse_voltage
    assert recording.calls == result.iterations
    np.testing.assert_array_equal(result.pulses, crossbar.ledger.counts)


def test_resume_on_the_simulated_chip_gives_finished_cells_no_more_pulses() -> None:
    crossbar, targets = simulated_chip_and_targets(seed=1)
    with crossbar:
        # Program the top half, then all of it, resuming from the partial result.
        half = np.zeros(crossbar.shape, dtype=bool)
        half[:16] = True
        first = program_map(crossbar, targets, mask=half)
        assert first.count("pending") == 0 and np.all(first.status[~half] == "skipped")
        counts = crossbar.ledger.counts.copy()
        resumed = program_map(crossbar, targets, finished=first)
        np.testing.assert_array_equal(crossbar.ledger.counts[half], counts[half])
        assert resumed.count("pending") == 0 and resumed.count("skipped") == 0
        np.testing.assert_array_equal(resumed.pulses, crossbar.ledger.counts)


def test_should_stop_mid_run_returns_a_consistent_partial_result() -> None:
    crossbar, targets = simulated_chip_and_targets(seed=2)
    polls = {"n": 0}

    def stop() -> bool:
        polls["n"] += 1
        return polls["n"] > 4

    with crossbar:
        partial = program_map(crossbar, targets, should_stop=stop)
        assert partial.cancelled and partial.iterations == 3
        np.testing.assert_array_equal(partial.pulses, crossbar.ledger.counts)
        pending = partial.status == "pending"
        assert pending.any() and (partial.status == "converged").any()
        # The achieved map is the last verify read of every cell.
        truth = crossbar.chip.conductances(0.1)
        np.testing.assert_allclose(partial.achieved, truth, rtol=0.02)
        resumed = program_map(crossbar, targets, finished=partial)
        assert resumed.count("pending") == 0
        assert resumed.summary()["within_tolerance"] >= 0.98
