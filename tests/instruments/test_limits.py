import numpy as np
import pytest

from instruments.limits import EnduranceLedger, LimitError, SafetyLimits
from simulation.config import ConfigError


def test_from_config_reads_values_and_defaults():
    limits = SafetyLimits.from_config({"max_pulse_voltage": 2.0, "max_pulses_per_cell": 50})
    assert limits.max_pulse_voltage == 2.0
    assert limits.max_pulses_per_cell == 50
    assert limits.max_read_voltage == SafetyLimits().max_read_voltage
    assert SafetyLimits.from_config(limits.to_config()) == limits


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"max_pulse_voltag": 2.0}, "unknown key"),
        ({"max_pulse_voltage": -1.0}, "limits.max_pulse_voltage"),
        ({"compliance_current": "1 mA"}, "limits.compliance_current"),
        ({"min_pulse_width": 1e-3, "max_pulse_width": 1e-4}, "min_pulse_width"),
        ({"max_pulses_per_cell": 0}, "limits.max_pulses_per_cell"),
    ],
)
def test_bad_config_names_the_key(config, message):
    with pytest.raises(ConfigError, match=message):
        SafetyLimits.from_config(config, "limits")


def test_checks_raise_with_the_level_and_the_limit():
    limits = SafetyLimits(max_read_voltage=0.2, max_pulse_voltage=1.5, compliance_current=1e-4)
    limits.check_read_voltage(np.array([0.2, -0.2, 0.0]))
    with pytest.raises(LimitError, match=r"\|V\| = 0\.25 V exceeds limits.max_read_voltage"):
        limits.check_read_voltage(np.array([0.1, -0.25]))
    with pytest.raises(LimitError, match="finite"):
        limits.check_read_voltage(np.array([np.nan]))
    limits.check_pulse(-1.5, 1e-4)
    with pytest.raises(LimitError, match="max_pulse_voltage"):
        limits.check_pulse(1.6, 1e-4)
    with pytest.raises(LimitError, match="pulse width"):
        limits.check_pulse(1.0, 1.0)
    with pytest.raises(LimitError, match="compliance"):
        limits.check_compliance(2e-4)


def test_endurance_ledger_refuses_whole_request_without_counting():
    ledger = EnduranceLedger((2, 3), budget=2)
    ledger.charge(np.array([0, 1]), np.array([0, 2]))
    ledger.charge(np.array([0]), np.array([0]))
    assert ledger.counts[0, 0] == 2 and ledger.counts[1, 2] == 1
    with pytest.raises(LimitError, match=r"cell \(0, 0\) would receive pulse 3"):
        ledger.charge(np.array([1, 0]), np.array([2, 0]))
    assert ledger.counts[1, 2] == 1  # nothing of the refused request was counted
    # repeated cells within one request are counted each time
    with pytest.raises(LimitError):
        ledger.charge(np.array([1, 1]), np.array([2, 2]))
