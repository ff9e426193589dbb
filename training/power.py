"""Energy efficiency from crossbar device power (Joksas et al. 2022, section 7).

The paper's figure counts only the power dissipated in the devices, |V I| summed over every device
of every layer (bias rows and both devices of each pair included), during a read of t_read = 50 ns.
It ignores DACs, ADCs, drivers and wires, so it is an optimistic, device-only figure; it is kept for
comparison with the paper.
"""

from __future__ import annotations

DEFAULT_READ_TIME = 50e-9
"""s, the paper's assumed duration of one crossbar read."""

EFFICIENCY_LABEL = "device-only energy efficiency (the paper's figure: |V I| of the devices only)"


def operations_per_inference(synapses: int) -> int:
    """One multiply and one add per synapse: 2 N_synapses operations."""
    return 2 * synapses


def energy_efficiency(synapses: int, power: float, read_time: float = DEFAULT_READ_TIME) -> float:
    """Operations per joule, 2 N_synapses / (t_read P); power in W, read_time in s."""
    if power <= 0:
        raise ValueError(f"power must be > 0 W to define an efficiency, got {power!r}")
    if read_time <= 0:
        raise ValueError(f"read_time must be > 0 s, got {read_time!r}")
    return operations_per_inference(synapses) / (read_time * power)


def tops_per_watt(synapses: int, power: float, read_time: float = DEFAULT_READ_TIME) -> float:
    """Energy efficiency in tera-operations per second per watt (TOPS/W)."""
    return energy_efficiency(synapses, power, read_time) / 1e12
