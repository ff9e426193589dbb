"""On-chip computation and measured-conductance mode: a network on a crossbar computes what the
software network computes with the chip's conductances."""

import copy

import numpy as np
import pytest
import torch

from instruments import open_crossbar
from instruments.crossbar import BiasScheme, Capabilities, Crossbar
from instruments.limits import LimitError, SafetyLimits
from simulation.current_models import PooleFrenkel
from simulation.device_model import CURRENT_MODEL_KEY, DeviceModel
from simulation.mapping import ConductanceRange, append_bias_input, currents_to_outputs
from simulation.nonidealities import DISTURBANCES
from training.deployment import (
    DeploymentError,
    chip_map,
    layer_conductances,
    layer_maps,
    network_layer_shapes,
    plan_deployment,
)
from training.layers import MemristiveLinear, memristive_cores, set_network_device_model
from training.networks import build_network
from training.on_chip import OnChip, chip_forward, evaluate_on_chip

RANGE = ConductanceRange(5.25e-7, 2.62e-6)
IDEAL = DeviceModel(RANGE)
STUCK = DeviceModel(RANGE, disturbances=(DISTURBANCES["stuck_at_g_off"](0.3),))


class OhmicCrossbar(Crossbar):
    """An ideal chip: multiply = V @ G exactly; records every multiply's word-line voltages."""

    def __init__(self, conductances, fail=False):
        rows, cols = conductances.shape
        limits = SafetyLimits()
        capabilities = Capabilities(
            rows=rows,
            cols=cols,
            bias_schemes=(BiasScheme.GROUNDED,),
            pulse_width_range=(limits.min_pulse_width, limits.max_pulse_width),
            voltage_range=(-limits.max_pulse_voltage, limits.max_pulse_voltage),
            compliance_range=(1e-9, limits.compliance_current),
            vmm=True,
        )
        super().__init__(limits, capabilities, {"fake": "ohmic"})
        self.conductances = np.asarray(conductances, dtype=float)
        self.fail = fail
        self.voltages = []

    def _multiply(self, voltages):
        if self.fail:
            raise OSError("instrument went away")
        self.voltages.append(voltages.copy())
        return voltages @ self.conductances

    def _read_cells(self, cells, v_read, averages):
        return v_read * self.conductances[cells[:, 0], cells[:, 1]]

    def _pulse(self, cells, amplitudes, width):
        raise NotImplementedError

    def _iv_sweep(self, row, col, voltages):
        return voltages * self.conductances[row, col]

    def _outputs_off(self):
        pass


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def mlp(model=IDEAL, hidden=(5,), seed=1):
    spec = {"input_shape": [1, 3, 3], "classes": 3, "hidden": list(hidden), "seed": seed}
    network = build_network(spec).double()
    set_network_device_model(network, model, sampling="frozen", seed=7)
    return network


def programmed_chip(network, plan, seed=0, spread=0.1):
    """Nominal targets with a relative programming error; random devices off the tiles."""
    rng = np.random.default_rng(seed)
    targets = layer_conductances(network)
    programmed = [g * (1 + spread * rng.standard_normal(g.shape)) for g, _ in targets]
    chip = chip_map(plan, programmed)
    spare = rng.uniform(RANGE.g_off, RANGE.g_on, plan.array_shape)
    chip = np.where(plan.chip_mask(), chip, spare)
    return chip, [k for _, k in targets]


def software_with_measured(network, plan, chip, k_gs):
    twin = copy.deepcopy(network)
    for core, measured, k_g in zip(
        memristive_cores(twin), layer_maps(plan, chip), k_gs, strict=True
    ):
        core.set_measured_conductances(torch.from_numpy(measured), k_g)
    return twin


def assert_relative(actual, expected, rel):
    scale = expected.abs().max()
    assert float((actual - expected).abs().max() / scale) <= rel


# -- measured-conductance mode ------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["double", "standard"])
def test_measured_nominal_conductances_give_the_ideal_layer(weights):
    layer = MemristiveLinear(6, 4, weights=weights, generator=seeded()).double()
    x = torch.rand(5, 6, generator=seeded(1), dtype=torch.float64)
    ideal = layer(x)  # no device model: x @ W + b
    layer.set_device_model(IDEAL)
    conductances, _ = layer.conductances()
    layer.set_measured_conductances(conductances.detach())
    torch.testing.assert_close(layer(x), ideal, rtol=1e-12, atol=1e-12)
    # Disturbances are skipped: the measurement already holds them.
    layer.set_device_model(STUCK, sampling="frozen", seed=1)
    assert layer.realisation["0_stuck_at_g_off"]["stuck"].any()
    disturbed = layer(x)
    layer.set_measured_conductances(conductances.detach())
    torch.testing.assert_close(layer(x), ideal, rtol=1e-12, atol=1e-12)
    layer.set_measured_conductances(None)
    torch.testing.assert_close(layer(x), disturbed, rtol=0, atol=0)


def test_measured_mode_uses_the_given_k_g_and_checks_its_inputs():
    layer = MemristiveLinear(3, 2, generator=seeded()).double()
    layer.set_device_model(IDEAL)
    x = torch.tensor([[0.2, 0.4, 1.0]], dtype=torch.float64)
    measured = torch.full((4, 4), 1e-6, dtype=torch.float64)
    measured[:, 0] = 2e-6  # output 0: I+ - I- = k_V (0.2 + 0.4 + 1 + 1) 1e-6 A
    layer.set_measured_conductances(measured, k_g=1e-6)
    assert layer.measured_k_g == 1e-6
    torch.testing.assert_close(layer(x), torch.tensor([[2.6, 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape \(4, 3\) does not match this layer's crossbar"):
        layer.set_measured_conductances(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="finite and >= 0 S"):
        layer.set_measured_conductances(-measured)
    with pytest.raises(ValueError, match="k_g"):
        layer.set_measured_conductances(measured, k_g=0.0)
    # A new device model is a new chip: the measurement is dropped.
    layer.set_device_model(IDEAL)
    assert layer.measured_conductances is None
    with pytest.raises(RuntimeError, match="no device model"):
        MemristiveLinear(3, 2).set_measured_conductances(measured)


def test_measured_mode_applies_the_current_model_with_the_frozen_draws():
    model = DeviceModel(RANGE, current_model=PooleFrenkel.high_r_siox())
    layer = MemristiveLinear(5, 3, generator=seeded()).double()
    layer.set_device_model(model, sampling="frozen", seed=4)
    measured = torch.rand(6, 6, generator=seeded(2), dtype=torch.float64) * 2e-6 + 5e-7
    layer.set_measured_conductances(measured, k_g=3e-7)
    x = torch.rand(4, 5, generator=seeded(3), dtype=torch.float64)
    voltages = 0.5 * append_bias_input(x)
    draws = {k: v.double() for k, v in layer.realisation[CURRENT_MODEL_KEY].items()}
    currents, power = model.current_model.column_currents(voltages, measured, draws)
    expected = currents_to_outputs(currents, 0.5, torch.tensor(3e-7, dtype=torch.float64))
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=0)
    assert layer.last_power.item() == pytest.approx(power.mean().item(), rel=1e-10)


def test_measured_conductances_survive_a_state_dict_round_trip():
    network = mlp(STUCK)
    plan = plan_deployment(network_layer_shapes(network), (20, 20))
    chip, k_gs = programmed_chip(network, plan)
    source = software_with_measured(network, plan, chip, k_gs)
    x = torch.rand(4, 1, 3, 3, generator=seeded(1), dtype=torch.float64)
    loaded = mlp(IDEAL, seed=9)
    loaded.load_state_dict(source.state_dict())
    for a, b in zip(memristive_cores(loaded), memristive_cores(source), strict=True):
        assert torch.equal(a.measured_conductances, b.measured_conductances)
        assert a.measured_k_g == b.measured_k_g
    torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


# -- on-chip forward ----------------------------------------------------------------------------


@pytest.mark.parametrize("tile_shape", [None, (4, 4), (3, 2)])
def test_on_chip_forward_equals_software_with_the_programmed_conductances(tile_shape):
    network = mlp(IDEAL)
    plan = plan_deployment(network_layer_shapes(network), (80, 80), tile_shape)
    if tile_shape is not None:
        assert len(plan.tiles_of(0)) > 1 and len({t.layer_rows for t in plan.tiles_of(0)}) > 1
    chip, k_gs = programmed_chip(network, plan)
    crossbar = OhmicCrossbar(chip)
    x = torch.rand(8, 1, 3, 3, generator=seeded(1), dtype=torch.float64)
    on_chip = chip_forward(network, crossbar, plan, k_gs, x)
    software = software_with_measured(network, plan, chip, k_gs)(x)
    assert_relative(on_chip, software, 1e-9)
    # The programming error is visible: on-chip is not the nominal network.
    assert float((on_chip - network(x).detach()).abs().max()) > 1e-3
    # One multiply per layer; each of its read configurations drives one tile's word lines
    # with k_V [x, 1] (the bias line at k_V) and every other word line at 0 V.
    assert len(crossbar.voltages) == 2
    for layer, voltages in enumerate(crossbar.voltages):
        tiles = plan.tiles_of(layer)
        rows = plan.layer_shapes[layer][0]
        voltages = voltages.reshape(len(tiles), len(x), plan.array_shape[0])
        for tile, driven in zip(tiles, voltages, strict=True):
            off = np.ones(plan.array_shape[0], dtype=bool)
            off[slice(*tile.chip_rows)] = False
            assert np.all(driven[:, off] == 0.0)
            if tile.layer_rows[1] == rows:
                assert np.all(driven[:, tile.chip_rows[1] - 1] == 0.5)
            if layer == 0:
                inputs = 0.5 * x.flatten(1).numpy()[:, slice(*tile.layer_rows)]
                stop = min(tile.layer_rows[1], rows - 1) - tile.layer_rows[0]
                assert np.array_equal(driven[:, slice(*tile.chip_rows)][:, :stop], inputs)
    # The cores are themselves again.
    assert all("crossbar_forward" not in core.__dict__ for core in memristive_cores(network))


def test_on_chip_convolution_and_dense_layers_match_software():
    spec = {
        "kind": "cnn",
        "input_shape": [1, 4, 4],
        "classes": 3,
        "hidden": [4],
        "channels": [2],
        "memristive_convolutions": True,
    }
    network = build_network(spec).double()
    set_network_device_model(network, IDEAL)
    plan = plan_deployment(network_layer_shapes(network), (48, 56), tile_shape=(4, 4))
    chip, k_gs = programmed_chip(network, plan, seed=5)
    x = torch.rand(3, 1, 4, 4, generator=seeded(2), dtype=torch.float64)
    on_chip = chip_forward(network, OhmicCrossbar(chip), plan, k_gs, x)
    assert_relative(on_chip, software_with_measured(network, plan, chip, k_gs)(x), 1e-9)


def test_evaluate_on_chip_counts_multiplies_and_reports_no_power():
    network = mlp(IDEAL)
    plan = plan_deployment(network_layer_shapes(network), (30, 30), (6, 6))
    chip, k_gs = programmed_chip(network, plan, spread=0.3)
    x = torch.rand(25, 1, 3, 3, generator=seeded(3), dtype=torch.float64)
    software = software_with_measured(network, plan, chip, k_gs)
    y = software(x).argmax(dim=1)
    y[:5] = (y[:5] + 1) % 3  # five wrong labels: accuracy 0.8 exactly
    network.train()
    result = evaluate_on_chip(network, OhmicCrossbar(chip), plan, k_gs, (x, y), batch_size=10)
    assert result.accuracy == 0.8 and result.examples == 25
    assert result.multiplies == 2 * 3 and result.power is None
    assert network.training
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    again = evaluate_on_chip(network, OhmicCrossbar(chip), plan, k_gs, loader)
    assert again.accuracy == 0.8 and again.multiplies == 2 * 4
    assert again.loss == pytest.approx(result.loss, rel=1e-12)


def test_the_cores_are_restored_when_the_chip_fails():
    network = mlp(IDEAL)
    plan = plan_deployment(network_layer_shapes(network), (20, 20))
    chip, k_gs = programmed_chip(network, plan)
    x = torch.rand(2, 1, 3, 3, generator=seeded(1), dtype=torch.float64)
    before = network(x)
    with pytest.raises(OSError, match="went away") as error:
        chip_forward(network, OhmicCrossbar(chip, fail=True), plan, k_gs, x)
    assert any("layer 0" in note for note in error.value.__notes__)
    assert all("crossbar_forward" not in core.__dict__ for core in memristive_cores(network))
    torch.testing.assert_close(network(x), before, rtol=0, atol=0)
    # Voltages beyond the read limit never reach the chip.
    with pytest.raises(LimitError, match="max_read_voltage"):
        chip_forward(network, OhmicCrossbar(chip), plan, k_gs, 3 * torch.ones(1, 1, 3, 3))


def test_on_chip_checks_the_plan_against_network_and_crossbar():
    network = mlp(IDEAL)
    plan = plan_deployment(network_layer_shapes(network), (20, 20))
    chip, k_gs = programmed_chip(network, plan)
    with pytest.raises(DeploymentError, match="the crossbar is 20x21"):
        OnChip(network, OhmicCrossbar(np.ones((20, 21))), plan, k_gs)
    with pytest.raises(DeploymentError, match="do not match"):
        OnChip(mlp(IDEAL, hidden=(4,)), OhmicCrossbar(chip), plan, k_gs)
    with pytest.raises(ValueError, match="k_gs: got 1"):
        OnChip(network, OhmicCrossbar(chip), plan, k_gs[:1])
    # k_gs None: the nominal k_G of each core.
    x = torch.rand(3, 1, 3, 3, generator=seeded(1), dtype=torch.float64)
    torch.testing.assert_close(
        chip_forward(network, OhmicCrossbar(chip), plan, None, x),
        chip_forward(network, OhmicCrossbar(chip), plan, k_gs, x),
        rtol=1e-12,
        atol=0,
    )


def test_simulated_ohmic_chip_without_noise_computes_with_its_conductances():
    config = {
        "backend": "simulated",
        "chip": {
            "rows": 32,
            "cols": 32,
            "seed": 2,
            "device": "ideal",
            "initial_state": "random",
            "read_noise": 0.0,
            "read_noise_floor": 0.0,
        },
    }
    network = mlp(IDEAL)
    plan = plan_deployment(network_layer_shapes(network), (32, 32), (6, 6))
    with open_crossbar(config) as crossbar:
        chip = crossbar.chip.conductances()
        k_gs = [k for _, k in layer_conductances(network)]
        x = torch.rand(6, 1, 3, 3, generator=seeded(4), dtype=torch.float64)
        on_chip = chip_forward(network, crossbar, plan, k_gs, x)
    assert_relative(on_chip, software_with_measured(network, plan, chip, k_gs)(x), 1e-9)


def test_measured_conductances_survive_a_checkpoint(tmp_path):
    from training.checkpoint import load_checkpoint, save_checkpoint

    spec = {"input_shape": [1, 3, 3], "classes": 3, "hidden": [5], "seed": 1}
    network = build_network(spec)
    set_network_device_model(network, IDEAL)
    plan = plan_deployment(network_layer_shapes(network), (20, 20))
    chip, k_gs = programmed_chip(network, plan)
    source = software_with_measured(network, plan, chip, k_gs)
    path = save_checkpoint(tmp_path / "measured.pt", source, spec)
    loaded, _, _ = load_checkpoint(path)  # weights_only=True: plain types only
    for core, measured, k_g in zip(
        memristive_cores(loaded), layer_maps(plan, chip), k_gs, strict=True
    ):
        np.testing.assert_array_equal(core.measured_conductances.numpy(), measured)
        assert core.measured_k_g == k_g
    x = torch.rand(4, 1, 3, 3, generator=seeded(1))
    torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)
