"""Closed-form I-V curves: Poole-Frenkel and power law (values, limits, symmetry, gradients)."""

import math

import pytest
import torch

from simulation.iv import (
    BOLTZMANN,
    ELEMENTARY_CHARGE,
    poole_frenkel_current,
    poole_frenkel_exponent_coefficient,
    power_law_current,
)

F64 = torch.float64


def test_constants_are_codata() -> None:
    assert ELEMENTARY_CHARGE == 1.602176634e-19
    assert BOLTZMANN == 1.380649e-23


def test_poole_frenkel_against_hand_computation() -> None:
    voltage, c, d_epsilon, temperature = 0.3, 2.0e-7, 3.0e-17, 300.0
    q, k = 1.602176634e-19, 1.380649e-23
    expected = (
        c
        * voltage
        * math.exp(q / (k * temperature) * math.sqrt(q * voltage / (math.pi * d_epsilon)))
    )
    current = poole_frenkel_current(torch.tensor(voltage, dtype=F64), c, d_epsilon, temperature)
    assert current.item() == pytest.approx(expected, rel=1e-14)
    # The default temperature is 293.15 K (q / (k_B T) ~ 39.58 / V).
    assert q / (k * 293.15) == pytest.approx(39.58, abs=0.01)
    at_room = poole_frenkel_current(torch.tensor(-voltage, dtype=F64), c, d_epsilon)
    expected_room = (
        c * voltage * math.exp(q / (k * 293.15) * math.sqrt(q * voltage / (math.pi * d_epsilon)))
    )
    assert at_room.item() == pytest.approx(-expected_room, rel=1e-14)


def test_exponent_coefficient_matches_the_current() -> None:
    voltages = torch.linspace(-0.5, 0.5, 41, dtype=F64)
    c, d_epsilon = 5.1e-7, 2.2e-17
    beta = poole_frenkel_exponent_coefficient(d_epsilon, 293.15)
    assert beta == pytest.approx(1.906, abs=2e-3)
    direct = torch.sign(voltages) * c * voltages.abs() * torch.exp(beta * voltages.abs().sqrt())
    torch.testing.assert_close(
        poole_frenkel_current(voltages, c, d_epsilon), direct, rtol=1e-14, atol=0
    )
    # Works on tensors too and broadcasts.
    betas = poole_frenkel_exponent_coefficient(torch.tensor([1e-17, 4e-17], dtype=F64), 293.15)
    assert betas[0] / betas[1] == pytest.approx(2.0, rel=1e-14)


def test_poole_frenkel_tends_to_ohmic_for_large_d_epsilon() -> None:
    voltages = torch.linspace(-1.0, 1.0, 101, dtype=F64)
    c = 1e-3
    errors = []
    for d_epsilon in (1e-10, 1e-8, 1e-6):
        current = poole_frenkel_current(voltages, c, d_epsilon)
        errors.append(
            ((current - c * voltages).abs() / (c * voltages.abs()).clamp_min(1e-300)).max()
        )
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-4
    assert errors[1] < 1e-4 * 10  # sqrt scaling: 10x smaller per 100x larger d_epsilon


def test_poole_frenkel_is_odd_and_zero_at_zero() -> None:
    voltages = torch.linspace(0.0, 1.0, 33, dtype=F64)
    c = torch.tensor([[1e-7], [3e-6]], dtype=F64)
    d_epsilon = torch.tensor([[1e-17], [5e-16]], dtype=F64)
    positive = poole_frenkel_current(voltages, c, d_epsilon)
    negative = poole_frenkel_current(-voltages, c, d_epsilon)
    assert positive.shape == (2, 33)
    torch.testing.assert_close(negative, -positive, rtol=0, atol=0)
    assert positive[:, 0].eq(0).all()


def test_poole_frenkel_gradient_is_finite_at_zero() -> None:
    voltages = torch.tensor([0.0, 1e-30, 0.25], dtype=F64, requires_grad=True)
    c, d_epsilon = 2e-6, 2e-17
    current = poole_frenkel_current(voltages, c, d_epsilon)
    (grad,) = torch.autograd.grad(current.sum(), voltages)
    assert torch.isfinite(grad).all()
    assert grad[0].item() == pytest.approx(c, rel=1e-6)  # dI/dV -> c at V = 0
    beta = poole_frenkel_exponent_coefficient(d_epsilon)
    s = 0.5
    expected = c * math.exp(beta * s) * (1 + beta * s / 2)
    assert grad[2].item() == pytest.approx(expected, rel=1e-12)
    float32 = torch.zeros(3, requires_grad=True)
    (grad32,) = torch.autograd.grad(poole_frenkel_current(float32, c, d_epsilon).sum(), float32)
    assert torch.isfinite(grad32).all()


@pytest.mark.parametrize("voltage", [-0.7, -0.25, 0.0, 1e-3, 0.1, 0.5, 2.0])
def test_power_law_with_n_two_is_ohmic(voltage: float) -> None:
    v = torch.tensor(voltage, dtype=F64)
    assert power_law_current(v, 3e-6, 2.0, 0.25).item() == pytest.approx(
        3e-6 * voltage, rel=1e-14, abs=0
    )


@pytest.mark.parametrize("n", [1.5, 2.0, 2.13, 2.99, 4.0])
def test_power_law_reference_point_and_doubling(n: float) -> None:
    g, v_ref = 1.7e-6, 0.25
    assert power_law_current(torch.tensor(v_ref, dtype=F64), g, n, v_ref).item() == pytest.approx(
        g * v_ref, rel=1e-14
    )
    voltages = torch.tensor([-0.3, -0.01, 0.02, 0.2, 0.4], dtype=F64)
    ratio = power_law_current(2 * voltages, g, n, v_ref) / power_law_current(voltages, g, n, v_ref)
    torch.testing.assert_close(ratio, torch.full_like(ratio, n), rtol=1e-12, atol=0)
    # Odd in V.
    torch.testing.assert_close(
        power_law_current(-voltages, g, n, v_ref), -power_law_current(voltages, g, n, v_ref)
    )


def test_power_law_broadcasts_per_device_and_has_finite_gradient_at_zero() -> None:
    voltages = torch.tensor([[0.0], [0.1], [-0.2]], dtype=F64, requires_grad=True)
    conductances = torch.tensor([1e-6, 2e-6, 3e-6], dtype=F64)
    n = torch.tensor([2.0, 2.5, 3.0], dtype=F64)
    current = power_law_current(voltages, conductances, n, 0.25)
    assert current.shape == (3, 3)
    (grad,) = torch.autograd.grad(current.sum(), voltages)
    assert torch.isfinite(grad).all()
    # dI/dV at V = 0: G for n = 2 (Ohmic), 0 for n > 2.
    assert grad[0, 0].item() == pytest.approx(1e-6, rel=1e-12)
    expected = torch.sign(voltages) * conductances * 0.25 * (voltages.abs() / 0.25) ** torch.log2(n)
    torch.testing.assert_close(current, expected, rtol=1e-13, atol=0)
