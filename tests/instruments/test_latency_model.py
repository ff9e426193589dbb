"""Arithmetic of benchmarks/latency_model.py (loaded from its file: benchmarks is not installed)."""

import importlib.util
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "latency_model.py"
spec = importlib.util.spec_from_file_location("latency_model", PATH)
latency_model = importlib.util.module_from_spec(spec)
sys.modules["latency_model"] = latency_model
spec.loader.exec_module(latency_model)
LatencyModel, OperationCounts = latency_model.LatencyModel, latency_model.OperationCounts


def test_time_is_the_sum_of_its_terms() -> None:
    model = LatencyModel(
        round_trip=1e-3,
        write=0.5e-3,
        relay_settle=4e-3,
        link_command=0.2e-3,
        nplc=1.0,
        line_frequency=50.0,
        measure_overhead=0.3e-3,
        source_settle=0.1e-3,
        pulse_overhead=0.2e-3,
    )
    counts = OperationCounts(
        bus_round_trips=10,
        bus_writes=4,
        relay_switches=3,
        link_commands=3,
        readings=8,
        read_setups=2,
        pulse_events=5,
        pulse_width=1e-4,
    )
    parts = model.breakdown(counts)
    assert parts["bus"] == pytest.approx(10 * 1e-3 + 4 * 0.5e-3)  # 12 ms
    assert parts["relays"] == pytest.approx(12e-3)
    assert parts["link"] == pytest.approx(0.6e-3)
    assert parts["readings"] == pytest.approx(8 * (20e-3 + 0.3e-3) + 2 * 0.1e-3)  # 162.6 ms
    assert parts["pulses"] == pytest.approx(5 * 0.3e-3)
    assert model.time(counts) == pytest.approx(0.012 + 0.012 + 0.0006 + 0.1626 + 0.0015)
    assert model.aperture == pytest.approx(0.02)
    assert model.with_(nplc=0.1).aperture == pytest.approx(0.002)


def test_counts_add_and_subtract() -> None:
    a = OperationCounts(bus_round_trips=3, readings=7, pulse_events=2, pulse_width=1e-4)
    b = OperationCounts(bus_round_trips=1, readings=2, relay_switches=5)
    total = a + b
    assert (total.bus_round_trips, total.readings, total.relay_switches) == (4, 9, 5)
    assert total.pulse_width == 1e-4
    assert (total - b) == a
    with pytest.raises(ValueError, match="pulse_width"):
        a + OperationCounts(pulse_width=2e-4)


def test_presets_and_validation() -> None:
    assert latency_model.GPIB.round_trip == 1e-3 and latency_model.LAN.round_trip == 0.3e-3
    one_query = OperationCounts(bus_round_trips=1)
    gpib, lan = latency_model.GPIB.time(one_query), latency_model.LAN.time(one_query)
    assert gpib == pytest.approx(1e-3) and lan == pytest.approx(0.3e-3)
    with pytest.raises(ValueError, match="relay_settle"):
        LatencyModel(relay_settle=-1.0)
    with pytest.raises(ValueError, match="nplc"):
        LatencyModel(nplc=0.0)
