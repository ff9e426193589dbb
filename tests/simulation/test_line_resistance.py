"""Line resistance as a training nonideality: tiling, agreement with per-tile circuit solves,
gradients, configuration."""

import numpy as np
import pytest
import torch

from simulation.circuit import solve_crossbar
from simulation.current_models import Ohmic, PooleFrenkel
from simulation.device_model import DeviceModel
from simulation.line_resistance import LineResistance
from simulation.mapping import ConductanceRange


def per_tile_reference(voltages, g, blocks, r_word, r_bit, current=None, slope=None):
    out = np.zeros((voltages.shape[0], g.shape[1]))
    for (r0, r1), (c0, c1) in blocks:
        kwargs = {}
        if current is not None:
            kwargs = {
                "current": lambda v, s=(slice(r0, r1), slice(c0, c1)): current(v, s),
                "slope": lambda v, s=(slice(r0, r1), slice(c0, c1)): slope(v, s),
            }
        out[:, c0:c1] += solve_crossbar(
            voltages[:, r0:r1], g[r0:r1, c0:c1], r_word, r_bit, **kwargs
        )
    return out


def test_tiles_follow_the_deployment_cut_and_sum_to_per_tile_solves() -> None:
    rng = np.random.default_rng(0)
    g = rng.uniform(6.9e-4, 3.45e-3, (37, 14))
    voltages = rng.uniform(0, 0.5, (5, 37))
    line = LineResistance(0.35, 0.32, tile_shape=(16, 6))
    tiling = line.tiling((37, 14))
    rows = sorted({b[0] for b in tiling.blocks})
    cols = sorted({b[1] for b in tiling.blocks})
    assert rows == [(0, 13), (13, 25), (25, 37)]  # balanced, at most 16 rows
    assert cols == [(0, 6), (6, 10), (10, 14)]  # pairs never split, at most 6 columns
    assert tiling.tile == (13, 6)
    currents, power = line.column_currents(
        torch.from_numpy(voltages), torch.from_numpy(g), Ohmic(), {}
    )
    reference = per_tile_reference(voltages, g, tiling.blocks, 0.35, 0.32)
    np.testing.assert_allclose(currents.numpy(), reference, rtol=1e-10)
    # IR drop at low-R conductances is large: far from V @ G.
    assert np.all(currents.numpy() < 0.99 * (voltages @ g))
    assert power.shape == (5,) and np.all(power.numpy() > 0)


def test_poole_frenkel_through_line_resistance_matches_per_tile_newton() -> None:
    rng = np.random.default_rng(1)
    model = PooleFrenkel.low_r_siox()
    g = torch.from_numpy(rng.uniform(6.9e-4, 3.45e-3, (20, 8)))
    draws = model.draw((20, 8), torch.Generator().manual_seed(2), torch.float64)
    voltages = torch.from_numpy(rng.uniform(0, 0.5, (4, 20)))
    line = LineResistance(0.35, 0.32, tile_shape=(9, 4))
    currents, _ = line.column_currents(voltages, g, model, draws)
    log_c, log_d = (p.numpy() for p in model.log_parameters(g, draws))

    def current(v, s):
        c, d = torch.from_numpy(np.exp(log_c[s])), torch.from_numpy(np.exp(log_d[s]))
        from simulation.iv import poole_frenkel_current

        return poole_frenkel_current(torch.from_numpy(v), c, d, model.temperature).numpy()

    def slope(v, s, h=1e-7):
        # Central difference is enough for Newton's Jacobian (the residual is exact).
        return (current(v + h, s) - current(v - h, s)) / (2 * h)

    tiling = line.tiling((20, 8))
    reference = per_tile_reference(
        voltages.numpy(), g.numpy(), tiling.blocks, 0.35, 0.32, current, slope
    )
    np.testing.assert_allclose(currents.numpy(), reference, rtol=1e-8)
    # Without line resistance the same devices pass more current.
    ideal, _ = model.exact_column_currents(voltages, g, draws)
    assert np.all(currents.numpy() < ideal.numpy())


@pytest.mark.parametrize("nonlinear", [False, True])
def test_gradients_through_tiles_pass_gradcheck(nonlinear: bool) -> None:
    rng = np.random.default_rng(3)
    model = PooleFrenkel.high_r_siox(residual_std=(0.1, 0.2)) if nonlinear else Ohmic()
    draws = model.draw((7, 6), torch.Generator().manual_seed(0), torch.float64)
    line = LineResistance(40.0, 30.0, tile_shape=(4, 4))  # large r: visible IR drop at high-R
    g = torch.from_numpy(rng.uniform(2e-4, 1e-3, (7, 6))).requires_grad_(True)
    v = torch.from_numpy(rng.uniform(0.05, 0.5, (3, 7))).requires_grad_(True)
    scale = 1e3

    def f(v, g):
        return scale * line.column_currents(v, g / scale, model, draws)[0]

    assert torch.autograd.gradcheck(f, (v, g * scale), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_device_model_config_round_trip_and_training_forward() -> None:
    config = {
        "g_off": 6.9e-4,
        "g_on": 3.45e-3,
        "current_model": {"kind": "ohmic"},
        "line_resistance": {"r_word": 0.35, "r_bit": 0.32, "tile_shape": [128, 64]},
    }
    model = DeviceModel.from_config(config)
    assert model.line_resistance == LineResistance(0.35, 0.32, (128, 64))
    assert DeviceModel.from_config(model.to_config()) == model
    assert not model.is_ideal
    with pytest.raises(Exception, match="tile_shape"):
        DeviceModel.from_config({**config, "line_resistance": {"tile_shape": [128, 1]}})
    # Ideal lines give exactly the current model's currents.
    plain = DeviceModel(ConductanceRange(6.9e-4, 3.45e-3), line_resistance=LineResistance(0, 0))
    v = torch.rand(3, 10, dtype=torch.float64)
    g = torch.rand(10, 4, dtype=torch.float64) * 1e-3
    assert torch.allclose(plain.array_currents(v, g, {})[0], v @ g, rtol=1e-14, atol=0)


def test_a_training_step_through_line_resistance_lowers_the_loss() -> None:
    from training.layers import MemristiveLinear

    torch.manual_seed(0)
    model = DeviceModel(
        ConductanceRange(6.9e-4, 3.45e-3),
        current_model=PooleFrenkel.low_r_siox(),
        line_resistance=LineResistance(0.35, 0.32, (16, 8)),
    )
    layer = MemristiveLinear(30, 5, generator=torch.Generator().manual_seed(1))
    layer.set_device_model(model, sampling="frozen", seed=3)
    x, target = torch.rand(32, 30), torch.randint(0, 5, (32,))
    optimiser = torch.optim.SGD(layer.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(layer(x), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        layer.project_parameters()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert layer.theta.grad is not None and torch.isfinite(layer.theta.grad).all()


@pytest.mark.parametrize(
    ("low", "high", "r"),
    [(5.25e-7, 2.62e-6, 0.35), (6.9e-4, 3.45e-3, 0.35), (6.9e-4, 3.45e-3, 30.0)],
)
def test_closed_form_poole_frenkel_matches_the_autograd_path(low: float, high: float, r: float):
    """The closed-form path (`ElementwiseDevices`: Newton without autograd, one adjoint solve)
    gives the outputs and gradients of the generic path (autograd device function, nodal
    solvers) in float64: high-R by the IR-drop fixed point, low-R and 30 Ohm segments by Newton
    with conjugate gradients (`simulation.line_drops`)."""
    from simulation.circuit import CrossbarLines, crossbar_currents
    from simulation.line_resistance import _PooleFrenkelTiles

    rng = np.random.default_rng(5)
    model = PooleFrenkel.high_r_siox()
    g0 = torch.from_numpy(rng.uniform(low, high, (45, 12)))
    v0 = torch.from_numpy(rng.uniform(0.0, 0.5, (6, 45)))
    v0[0, :5] = 0.0  # zero volts: finite slopes
    draws = model.draw((45, 12), torch.Generator().manual_seed(4), torch.float64)
    tiling = LineResistance(r, r, (16, 8)).tiling((45, 12))  # padded rows and columns
    lines = CrossbarLines.build(tiling.tile, r, 0.9 * r)
    weights = torch.from_numpy(rng.normal(size=(6, 12)))
    results = []
    for devices in (tiling.device_function(model, draws), _PooleFrenkelTiles(model, tiling, draws)):
        g, v = g0.clone().requires_grad_(True), v0.clone().requires_grad_(True)
        out, power = crossbar_currents(
            tiling.voltages(v), tiling.gather(g), lines, devices, tolerance=1e-12
        )
        currents = tiling.scatter(out, 12)
        (currents * weights).sum().backward()
        results.append((currents.detach(), power, g.grad, v.grad))
    for reference, value in zip(*results, strict=True):
        scale = np.abs(reference.numpy()).max()
        np.testing.assert_allclose(value.numpy(), reference.numpy(), rtol=1e-9, atol=1e-9 * scale)
