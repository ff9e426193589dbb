"""Deployment plans: tiling, block-diagonal placement, config round trips, maps, chip defects."""

import json
import warnings

import numpy as np
import pytest
import torch

from simulation.config import ConfigError
from simulation.device_model import DeviceModel, disturbance_key
from simulation.mapping import ConductanceRange
from simulation.nonidealities import DISTURBANCES
from training.deployment import (
    DeploymentError,
    DeploymentPlan,
    TilePlacement,
    chip_map,
    fix_chip_defects,
    layer_conductances,
    layer_maps,
    network_layer_shapes,
    plan_deployment,
)
from training.layers import memristive_cores, set_network_device_model
from training.networks import build_network

RANGE = ConductanceRange(5.25e-7, 2.62e-6)
SHAPES = [(7, 6), (4, 4), (3, 10)]


def assert_block_diagonal(plan):
    words, bits = set(), set()
    for tile in plan.tiles:
        rows = set(range(*tile.chip_rows))
        cols = set(range(*tile.chip_cols))
        assert not rows & words and not cols & bits
        words |= rows
        bits |= cols
        assert tile.chip_rows[1] <= plan.array_shape[0]
        assert tile.chip_cols[1] <= plan.array_shape[1]


def test_a_layer_is_cut_into_balanced_tiles_with_whole_column_pairs():
    plan = plan_deployment([(7, 6)], (40, 40), tile_shape=(3, 4))
    assert [t.layer_rows for t in plan.tiles_of(0)] == [(0, 3)] * 2 + [(3, 5)] * 2 + [(5, 7)] * 2
    assert [t.layer_cols for t in plan.tiles_of(0)] == [(0, 4), (4, 6)] * 3
    # 3 row blocks x 2 column blocks: twice the word lines, three times the bit lines.
    assert plan.used_shape == (14, 18)
    assert all(t.layer_cols[0] % 2 == 0 and t.layer_cols[1] % 2 == 0 for t in plan.tiles)
    # An odd tile width rounds down to whole pairs.
    plan = plan_deployment([(2, 10)], (40, 40), tile_shape=(5, 5))
    assert [t.layer_cols for t in plan.tiles] == [(0, 4), (4, 8), (8, 10)]


@pytest.mark.parametrize("tile_shape", [None, (3, 4), (2, 2), (5, 6), (1, 8)])
def test_tiles_never_share_a_line_and_cover_each_layer_once(tile_shape):
    plan = plan_deployment(SHAPES, (100, 100), tile_shape)
    assert_block_diagonal(plan)
    assert plan.chip_mask().sum() == sum(r * c for r, c in SHAPES)
    for layer, (rows, cols) in enumerate(SHAPES):
        covered = np.zeros((rows, cols), dtype=int)
        for tile in plan.tiles_of(layer):
            covered[tile.layer_slices] += 1
            assert tile.shape[0] <= plan.tile_shape[0] and tile.shape[1] <= plan.tile_shape[1]
        assert np.all(covered == 1)
        assert plan.word_lines(layer).sum() == sum(t.shape[0] for t in plan.tiles_of(layer))
    # Layers are placed in order from the top-left corner.
    assert plan.tiles[0].chip_row == 0 and plan.tiles[0].chip_col == 0
    assert [t.layer for t in plan.tiles] == sorted(t.layer for t in plan.tiles)


def test_untiled_plan_is_the_layers_on_the_diagonal():
    plan = plan_deployment(SHAPES, (14, 20))
    assert plan.tile_shape == (14, 20)
    assert [(t.chip_row, t.chip_col) for t in plan.tiles] == [(0, 0), (7, 6), (11, 10)]
    assert plan.used_shape == (14, 20)


def test_plan_round_trips_through_json():
    plan = plan_deployment(SHAPES, (64, 48), tile_shape=(4, 4))
    config = json.loads(json.dumps(plan.to_config()))
    assert DeploymentPlan.from_config(config) == plan
    tile = plan.tiles[3]
    assert TilePlacement.from_config(tile.to_config()) == tile


def test_a_network_too_large_for_the_array_names_its_needs_and_the_array():
    with pytest.raises(DeploymentError) as error:
        plan_deployment(SHAPES, (13, 40))
    message = str(error.value)
    assert "needs 14 word lines and 20 bit lines" in message
    assert "array is 13x40" in message
    assert isinstance(error.value, ConfigError)
    with pytest.raises(DeploymentError, match=r"needs 14 word lines and 18 bit lines.*10x30"):
        plan_deployment([(7, 6)], (10, 30), tile_shape=(3, 4))


def test_bad_tile_shapes_and_layers_are_rejected():
    with pytest.raises(DeploymentError, match="cols >= 2"):
        plan_deployment(SHAPES, (80, 80), tile_shape=(4, 1))
    with pytest.raises(DeploymentError, match="tile_shape"):
        plan_deployment(SHAPES, (80, 80), tile_shape=(0, 4))
    with pytest.raises(DeploymentError, match=r"layer_shapes\[0\].*odd"):
        plan_deployment([(3, 5)], (80, 80))
    with pytest.raises(DeploymentError, match="array_shape"):
        plan_deployment(SHAPES, (80,))


def test_inconsistent_plans_from_config_are_rejected():
    config = plan_deployment([(4, 4), (4, 4)], (20, 20)).to_config()
    shared = json.loads(json.dumps(config))
    shared["tiles"][1]["chip_row"] = 2  # overlaps the word lines of tile 0
    with pytest.raises(DeploymentError, match=r"tiles\[1\]: shares word lines with tiles\[0\]"):
        DeploymentPlan.from_config(shared)
    split_pair = json.loads(json.dumps(config))
    split_pair["tiles"][0]["layer_cols"] = [1, 4]
    with pytest.raises(DeploymentError, match="pair"):
        DeploymentPlan.from_config(split_pair)
    outside = json.loads(json.dumps(config))
    outside["tiles"][1]["chip_col"] = 18
    with pytest.raises(DeploymentError, match="outside the 20x20 array"):
        DeploymentPlan.from_config(outside)
    missing = json.loads(json.dumps(config))
    del missing["tiles"][1]
    with pytest.raises(DeploymentError, match="layer 1 do not cover"):
        DeploymentPlan.from_config(missing)
    unknown = {**config, "tilez": []}
    with pytest.raises(ConfigError, match="tilez"):
        DeploymentPlan.from_config(unknown)


def test_chip_map_and_layer_maps_round_trip_exactly():
    plan = plan_deployment(SHAPES, (40, 50), tile_shape=(3, 4))
    rng = np.random.default_rng(0)
    maps = [rng.uniform(RANGE.g_off, RANGE.g_on, shape) for shape in SHAPES]
    chip = chip_map(plan, maps)
    assert chip.shape == (40, 50)
    assert np.all(np.isnan(chip[~plan.chip_mask()]))
    assert np.all(np.isfinite(chip[plan.chip_mask()]))
    back = layer_maps(plan, chip)
    assert all(np.array_equal(a, b) for a, b in zip(back, maps, strict=True))
    # And the other way, on the cells in use.
    full = rng.normal(size=(40, 50))
    again = chip_map(plan, layer_maps(plan, full), fill=0.0)
    mask = plan.chip_mask()
    assert np.array_equal(again[mask], full[mask]) and np.all(again[~mask] == 0)
    # Bool maps stay bool with a bool fill.
    masks = chip_map(plan, [m > 1.5e-6 for m in maps], fill=False)
    assert masks.dtype == bool and masks.sum() == sum(int((m > 1.5e-6).sum()) for m in maps)
    with pytest.raises(ValueError, match=r"layer_maps\[1\]: shape \(4, 5\)"):
        chip_map(plan, [maps[0], np.zeros((4, 5)), maps[2]])
    with pytest.raises(ValueError, match="does not match the plan's array"):
        layer_maps(plan, np.zeros((40, 49)))


def small_network(model, sampling="resample", seed=3):
    spec = {"input_shape": [1, 3, 3], "classes": 3, "hidden": [5], "seed": 1}
    network = build_network(spec).double()
    set_network_device_model(network, model, sampling=sampling, seed=seed)
    return network


def test_layer_conductances_are_the_cores_nominal_targets_in_float64():
    network = build_network({"input_shape": [1, 3, 3], "classes": 3, "hidden": [5]})
    set_network_device_model(network, DeviceModel(RANGE))
    targets = layer_conductances(network)
    assert network_layer_shapes(network) == [(10, 10), (6, 6)]
    for (conductances, k_g), core in zip(targets, memristive_cores(network), strict=True):
        expected, expected_k = core.conductances()
        assert conductances.dtype == np.float64 and isinstance(k_g, float)
        np.testing.assert_allclose(conductances, expected.detach().double().numpy(), rtol=1e-6)
        assert k_g == pytest.approx(float(expected_k.detach()), rel=1e-6)
        assert conductances.max() == pytest.approx(RANGE.g_on, rel=1e-6)
    set_network_device_model(network, None)
    with pytest.raises(RuntimeError, match="layer 0: no device model"):
        layer_conductances(network)


def chip_defects(plan, seed=0, fraction=0.2):
    rng = np.random.default_rng(seed)
    mask = rng.random(plan.array_shape) < fraction
    values = rng.uniform(0.0, RANGE.g_on, plan.array_shape)
    return mask, values


def test_stuck_freezing_puts_exactly_the_chips_stuck_cells_into_each_layer():
    noise = DISTURBANCES["programming_noise"]([0.05], relative=True)
    stuck = DISTURBANCES["stuck_at_g_off"](0.1)
    model = DeviceModel(RANGE, disturbances=(noise, stuck))
    network = small_network(model)
    plan = plan_deployment(network_layer_shapes(network), (48, 48), tile_shape=(4, 4))
    mask, values = chip_defects(plan)
    counts = fix_chip_defects(network, plan, mask, values)
    key = disturbance_key(1, stuck)
    for index, core in enumerate(memristive_cores(network)):
        layer_mask = layer_maps(plan, mask)[index]
        layer_values = layer_maps(plan, values)[index]
        draws = core.pinned_draws[key]
        assert core.sampling == "resample" and core.realisation is None
        assert torch.equal(draws["stuck"], torch.from_numpy(layer_mask))
        np.testing.assert_array_equal(draws["values"].numpy()[layer_mask], layer_values[layer_mask])
        assert counts[index] == int(layer_mask.sum()) > 0
        # Only the stuck part is pinned: programming noise is still drawn afresh.
        assert set(core.pinned_draws) == {key}
        # The layer's devices hold the measured stuck values, the others are disturbed targets.
        conductances, _ = core.conductances()
        generator = torch.Generator().manual_seed(core.chip_seed)
        drawn = model.draw(core.crossbar_shape, generator, torch.float64)
        held = model.disturb(conductances.detach(), {**drawn, **core.pinned_draws}).numpy()
        np.testing.assert_array_equal(held[layer_mask], layer_values[layer_mask])
    # Two forward passes differ (noise resampled) but agree on every pinned stuck device's input.
    x = torch.rand(3, 1, 3, 3, dtype=torch.float64)
    first, second = network(x), network(x)
    assert not torch.equal(first, second)


def test_with_two_stuck_disturbances_only_the_chips_stuck_cells_remain():
    off, on = DISTURBANCES["stuck_at_g_off"](0.3), DISTURBANCES["stuck_at_g_on"](0.3)
    model = DeviceModel(RANGE, disturbances=(off, on))
    network = small_network(model, sampling="frozen")
    plan = plan_deployment(network_layer_shapes(network), (20, 20))
    mask, values = chip_defects(plan, seed=4)
    fix_chip_defects(network, plan, mask, values)
    for index, core in enumerate(memristive_cores(network)):
        assert not core.pinned_draws[disturbance_key(0, off)]["stuck"].any()
        layer_mask = torch.from_numpy(layer_maps(plan, mask)[index])
        assert torch.equal(core.pinned_draws[disturbance_key(1, on)]["stuck"], layer_mask)
        conductances, _ = core.conductances()
        held = model.disturb(conductances.detach(), {**core.realisation, **core.pinned_draws})
        changed = held != conductances.detach()
        assert torch.equal(changed & ~layer_mask, torch.zeros_like(changed))


def test_a_model_without_stuck_devices_gets_nothing_and_a_warning():
    model = DeviceModel(RANGE, disturbances=(DISTURBANCES["d2d_lognormal"](0.1, 0.2),))
    network = small_network(model)
    plan = plan_deployment(network_layer_shapes(network), (20, 20))
    mask, values = chip_defects(plan)
    with pytest.warns(RuntimeWarning) as record:
        counts = fix_chip_defects(network, plan, mask, values)
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert messages[0].startswith("layer 0: the device model has no stuck disturbance")
    assert f"{int(layer_maps(plan, mask)[1].sum())} stuck device(s)" in messages[1]
    assert counts == [None, None]
    assert all(core.pinned_draws == {} for core in memristive_cores(network))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fix_chip_defects(network, plan, np.zeros((20, 20), bool), 0.0) == [None] * 2


def test_freezing_checks_its_inputs():
    model = DeviceModel(RANGE, disturbances=(DISTURBANCES["stuck_at_g_off"](0.1),))
    network = small_network(model)
    plan = plan_deployment(network_layer_shapes(network), (20, 20))
    with pytest.raises(ValueError, match=r"stuck_mask_chip: shape \(20, 19\)"):
        fix_chip_defects(network, plan, np.zeros((20, 19), bool), 0.0)
    mask = np.zeros((20, 20), bool)
    mask[0, 0] = True
    with pytest.raises(ValueError, match="stuck_values_chip, layer 0"):
        fix_chip_defects(network, plan, mask, -1.0)
    other = plan_deployment([(10, 10)], (20, 20))
    with pytest.raises(DeploymentError, match="do not match"):
        fix_chip_defects(network, other, mask, 0.0)
    # A scalar stuck value applies to every stuck cell.
    assert fix_chip_defects(network, plan, mask, 1e-7) == [1, 0]
    assert (
        float(memristive_cores(network)[0].pinned_draws["0_stuck_at_g_off"]["values"][0, 0]) == 1e-7
    )
