"""The Crossbar base: checks before the backend, outputs off on every exit path."""

import numpy as np
import pytest

from instruments.crossbar import BiasScheme, Capabilities, Crossbar, as_cells
from instruments.limits import LimitError, SafetyLimits


class OhmicCrossbar(Crossbar):
    """A backend that records every call: ohmic cells, pulses scale G."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.g = np.arange(1, 7, dtype=float).reshape(2, 3) * 1e-6
        self.calls: list[str] = []
        self.outputs_on = False
        self.fail_on = fail_on
        capabilities = Capabilities(
            rows=2,
            cols=3,
            bias_schemes=(BiasScheme.GROUNDED, BiasScheme.HALF),
            pulse_width_range=(1e-6, 1e-2),
            voltage_range=(-2.0, 2.0),
            compliance_range=(1e-9, 1e-3),
            vmm=True,
        )
        limits = SafetyLimits(max_read_voltage=0.3, max_pulse_voltage=1.5, max_pulses_per_cell=3)
        super().__init__(limits, capabilities, {"ohmic": "test"}, v_read=0.1)

    def _enter(self, name):
        self.calls.append(name)
        self.outputs_on = True
        if self.fail_on == name:
            raise OSError(f"{name} failed")

    def _read_cells(self, cells, v_read, averages):
        self._enter("read")
        return self.g[cells[:, 0], cells[:, 1]] * v_read

    def _pulse(self, cells, amplitudes, width):
        self._enter("pulse")
        self.g[cells[:, 0], cells[:, 1]] *= 1 + 0.1 * np.sign(amplitudes)

    def _multiply(self, voltages):
        self._enter("multiply")
        return voltages @ self.g

    def _iv_sweep(self, row, col, voltages):
        self._enter("sweep")
        return self.g[row, col] * voltages

    def _outputs_off(self):
        self.calls.append("off")
        self.outputs_on = False


def test_reads_return_conductance_in_siemens_in_row_col_order():
    crossbar = OhmicCrossbar()
    assert crossbar.read_cell(1, 2) == pytest.approx(6e-6)
    np.testing.assert_allclose(crossbar.read_row(1), [4e-6, 5e-6, 6e-6])
    conductances, currents = crossbar.read_all(0.2, with_currents=True)
    np.testing.assert_allclose(conductances, crossbar.g)
    np.testing.assert_allclose(currents, crossbar.g * 0.2)
    np.testing.assert_allclose(crossbar.multiply(np.array([[0.1, 0.2]])), [[0.1, 0.2]] @ crossbar.g)


def test_out_of_limit_requests_never_reach_the_backend():
    crossbar = OhmicCrossbar()
    before = crossbar.g.copy()
    with pytest.raises(LimitError):
        crossbar.read_all(0.5)
    with pytest.raises(LimitError):
        crossbar.pulse([(0, 0), (1, 1)], [1.0, 2.0], 1e-4)
    with pytest.raises(LimitError):
        crossbar.pulse([(0, 0)], 1.0, 1.0)
    with pytest.raises(LimitError):
        crossbar.multiply(np.array([0.1, 0.4]))
    with pytest.raises(LimitError):
        crossbar.iv_sweep(0, 0, np.linspace(-2, 2, 5))
    assert crossbar.calls == []
    np.testing.assert_array_equal(crossbar.g, before)
    assert crossbar.ledger.counts.sum() == 0


def test_endurance_budget_stops_pulses_before_the_backend():
    crossbar = OhmicCrossbar()
    for _ in range(3):
        crossbar.pulse([(0, 1)], 1.0, 1e-4)
    with pytest.raises(LimitError, match="endurance"):
        crossbar.pulse([(0, 1)], 1.0, 1e-4)
    assert crossbar.calls.count("pulse") == 3
    assert crossbar.stats.pulses == 3


@pytest.mark.parametrize("operation", ["read", "pulse", "multiply", "sweep"])
def test_backend_error_turns_outputs_off_and_propagates(operation):
    crossbar = OhmicCrossbar(fail_on=operation)
    calls = {
        "read": lambda: crossbar.read_all(),
        "pulse": lambda: crossbar.pulse([(0, 0)], 1.0, 1e-4),
        "multiply": lambda: crossbar.multiply(np.zeros(2)),
        "sweep": lambda: crossbar.iv_sweep(0, 0, np.array([0.1])),
    }
    with pytest.raises(OSError, match="failed"):
        calls[operation]()
    assert crossbar.calls[-1] == "off"
    assert not crossbar.outputs_on


def test_context_manager_turns_outputs_off_on_exit_and_on_exceptions():
    with OhmicCrossbar() as crossbar:
        crossbar.read_all()
        assert crossbar.outputs_on
    assert not crossbar.outputs_on and crossbar.closed
    with pytest.raises(RuntimeError, match="closed"):
        crossbar.read_all()
    with pytest.raises(KeyError), OhmicCrossbar() as other:
        other.pulse([(1, 1)], -1.0, 1e-4)
        raise KeyError("user code failed")
    assert not other.outputs_on


def test_pulse_and_read_reads_every_cell_and_pulses_nonzero_amplitudes_only():
    crossbar = OhmicCrossbar()
    g = crossbar.pulse_and_read([(0, 0), (0, 1)], [1.0, 0.0], 1e-4)
    np.testing.assert_allclose(g, [1.1e-6, 2e-6])
    np.testing.assert_array_equal(crossbar.ledger.counts, [[1, 0, 0], [0, 0, 0]])


def test_bias_scheme_must_be_declared():
    crossbar = OhmicCrossbar()
    crossbar.set_bias_scheme("v/2")
    assert crossbar.bias_scheme is BiasScheme.HALF
    with pytest.raises(ValueError, match="v/3"):
        crossbar.set_bias_scheme("v/3")
    assert crossbar.record()["bias_scheme"] == "v/2"


def test_as_cells_validates_shape_and_bounds():
    np.testing.assert_array_equal(as_cells((1, 2), (2, 3)), [[1, 2]])
    with pytest.raises(IndexError, match=r"cell \(2, 0\) is outside the 2x3"):
        as_cells([(0, 0), (2, 0)], (2, 3))
    with pytest.raises(ValueError, match="integers"):
        as_cells([(0.5, 1)], (2, 3))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        as_cells([1, 2, 3], (2, 3))
