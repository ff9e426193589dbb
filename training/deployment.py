"""Where a trained network's crossbars sit on a physical array, and moving maps between the two.

Every memristive core of a network is a crossbar of (in + 1, 2 out) devices (the bias word line
last, columns as interleaved (+, -) pairs). `plan_deployment` splits each one into tiles of at
most `tile_shape` and places all tiles block-diagonally on the chip: no two tiles share a word
line or a bit line. One on-chip multiply then drives one layer's tiles together while every other
word line sits at 0 V (so the other layers' devices see no voltage), and each tile's bit-line
currents are its own; tiles of a layer that split its rows are summed in software. The price of
that independence is array area: a layer cut into R row blocks and C column blocks uses C times its
word lines and R times its bit lines. Columns are split only at even boundaries so a (+, -) pair
never straddles two tiles.

Everything here is numpy/torch and imports nothing from `instruments`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from simulation.config import ConfigError, key_path, read_int, reject_unknown_keys, require_mapping
from simulation.device_model import disturbance_key
from simulation.mapping import balanced_spans
from simulation.nonidealities.stuck import StuckDevices, stuck_draws_from_map
from training.layers import memristive_cores

Shape = tuple[int, int]
Span = tuple[int, int]


class DeploymentError(ConfigError):
    """A network cannot be placed on an array as asked (too large, bad tile shape, bad plan)."""


# -- plans ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TilePlacement:
    """One tile: the block [layer_rows) x [layer_cols) of layer `layer`'s crossbar (index into
    `memristive_cores(network)`), placed with its top-left device at (chip_row, chip_col)."""

    layer: int
    layer_rows: Span
    layer_cols: Span
    chip_row: int
    chip_col: int

    @property
    def shape(self) -> Shape:
        """(rows, cols) of the tile."""
        return (
            self.layer_rows[1] - self.layer_rows[0],
            self.layer_cols[1] - self.layer_cols[0],
        )

    @property
    def chip_rows(self) -> Span:
        """(start, stop) word lines of the tile on the chip."""
        return self.chip_row, self.chip_row + self.shape[0]

    @property
    def chip_cols(self) -> Span:
        """(start, stop) bit lines of the tile on the chip."""
        return self.chip_col, self.chip_col + self.shape[1]

    @property
    def layer_slices(self) -> tuple[slice, slice]:
        """Index of the tile in its layer's (in + 1, 2 out) array."""
        return slice(*self.layer_rows), slice(*self.layer_cols)

    @property
    def chip_slices(self) -> tuple[slice, slice]:
        """Index of the tile in the chip's (rows, cols) array."""
        return slice(*self.chip_rows), slice(*self.chip_cols)

    def to_config(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "layer_rows": list(self.layer_rows),
            "layer_cols": list(self.layer_cols),
            "chip_row": self.chip_row,
            "chip_col": self.chip_col,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "tile") -> TilePlacement:
        table = require_mapping(config, where)
        reject_unknown_keys(
            table, ["layer", "layer_rows", "layer_cols", "chip_row", "chip_col"], where
        )
        return cls(
            layer=read_int(table, "layer", where, minimum=0),
            layer_rows=_read_pair(table, "layer_rows", where),
            layer_cols=_read_pair(table, "layer_cols", where),
            chip_row=read_int(table, "chip_row", where, minimum=0),
            chip_col=read_int(table, "chip_col", where, minimum=0),
        )


@dataclass(frozen=True)
class DeploymentPlan:
    """Tiles of every layer on one array. Shapes are (rows, cols) = (word lines, bit lines).

    array_shape: the chip's array; tile_shape: the largest tile allowed; layer_shapes: each
    core's crossbar (in + 1, 2 out); tiles: in layer order. Checked on construction: every tile
    lies inside the array and its layer, the tiles of a layer cover it exactly once, column
    splits are even, and no two tiles share a word line or a bit line.
    """

    array_shape: Shape
    tile_shape: Shape
    layer_shapes: tuple[Shape, ...]
    tiles: tuple[TilePlacement, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "array_shape", _shape(self.array_shape, "array_shape"))
        object.__setattr__(self, "tile_shape", _shape(self.tile_shape, "tile_shape"))
        shapes = tuple(_shape(s, f"layer_shapes[{i}]") for i, s in enumerate(self.layer_shapes))
        object.__setattr__(self, "layer_shapes", shapes)
        object.__setattr__(self, "tiles", tuple(self.tiles))
        self._validate()

    def _validate(self) -> None:
        rows, cols = self.array_shape
        covered = [np.zeros(shape, dtype=np.int64) for shape in self.layer_shapes]
        word_owner = np.full(rows, -1)
        bit_owner = np.full(cols, -1)
        for index, tile in enumerate(self.tiles):
            where = f"deployment plan: tiles[{index}]"
            if not 0 <= tile.layer < len(self.layer_shapes):
                raise DeploymentError(
                    f"{where}: layer {tile.layer} does not exist; the plan has "
                    f"{len(self.layer_shapes)} layer(s)"
                )
            layer_rows, layer_cols = self.layer_shapes[tile.layer]
            (r0, r1), (c0, c1) = tile.layer_rows, tile.layer_cols
            if not (0 <= r0 < r1 <= layer_rows and 0 <= c0 < c1 <= layer_cols):
                raise DeploymentError(
                    f"{where}: block rows {tile.layer_rows}, cols {tile.layer_cols} is not "
                    f"inside layer {tile.layer}'s {layer_rows}x{layer_cols} crossbar"
                )
            if c0 % 2 or c1 % 2:
                raise DeploymentError(
                    f"{where}: cols {tile.layer_cols} split a (+, -) column pair; "
                    "allowed: even start and stop"
                )
            tile_rows, tile_cols = tile.shape
            if tile_rows > self.tile_shape[0] or tile_cols > self.tile_shape[1]:
                raise DeploymentError(
                    f"{where}: {tile_rows}x{tile_cols} is larger than tile_shape "
                    f"{self.tile_shape[0]}x{self.tile_shape[1]}"
                )
            (a0, a1), (b0, b1) = tile.chip_rows, tile.chip_cols
            if a1 > rows or b1 > cols:
                raise DeploymentError(
                    f"{where}: placed at word lines [{a0}, {a1}), bit lines [{b0}, {b1}), "
                    f"outside the {rows}x{cols} array"
                )
            for owner, (s0, s1), line in (
                (word_owner, (a0, a1), "word"),
                (bit_owner, (b0, b1), "bit"),
            ):
                taken = owner[s0:s1]
                if np.any(taken >= 0):
                    other = int(taken[taken >= 0][0])
                    raise DeploymentError(
                        f"{where}: shares {line} lines with tiles[{other}]; tiles must not share "
                        "a word line or a bit line"
                    )
                owner[s0:s1] = index
            covered[tile.layer][r0:r1, c0:c1] += 1
        for layer, count in enumerate(covered):
            if count.size and not np.all(count == 1):
                raise DeploymentError(
                    f"deployment plan: the tiles of layer {layer} do not cover its "
                    f"{count.shape[0]}x{count.shape[1]} crossbar exactly once"
                )

    # -- views ------------------------------------------------------------------------------

    @property
    def layers(self) -> int:
        """Number of layers (memristive cores) placed."""
        return len(self.layer_shapes)

    @property
    def used_shape(self) -> Shape:
        """(word lines, bit lines) the tiles take: the sums over tiles."""
        return (
            sum(tile.shape[0] for tile in self.tiles),
            sum(tile.shape[1] for tile in self.tiles),
        )

    def tiles_of(self, layer: int) -> list[TilePlacement]:
        """The tiles of one layer, in plan order."""
        if not 0 <= layer < self.layers:
            raise IndexError(f"layer {layer} is not in the plan; it has {self.layers} layer(s)")
        return [tile for tile in self.tiles if tile.layer == layer]

    def chip_mask(self, layer: int | None = None) -> np.ndarray:
        """Bool (rows, cols) of the array: True where a device of the network (or of `layer`)
        sits."""
        mask = np.zeros(self.array_shape, dtype=bool)
        for tile in self.tiles if layer is None else self.tiles_of(layer):
            mask[tile.chip_slices] = True
        return mask

    def word_lines(self, layer: int) -> np.ndarray:
        """Bool (rows,): the word lines one layer's tiles use."""
        lines = np.zeros(self.array_shape[0], dtype=bool)
        for tile in self.tiles_of(layer):
            lines[slice(*tile.chip_rows)] = True
        return lines

    # -- config -----------------------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """A JSON-able (and TOML-able) table; `from_config` gives back an equal plan."""
        return {
            "array_shape": list(self.array_shape),
            "tile_shape": list(self.tile_shape),
            "layer_shapes": [list(shape) for shape in self.layer_shapes],
            "tiles": [tile.to_config() for tile in self.tiles],
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "deployment") -> DeploymentPlan:
        table = require_mapping(config, where)
        reject_unknown_keys(table, ["array_shape", "tile_shape", "layer_shapes", "tiles"], where)
        layer_shapes = _read_list(table, "layer_shapes", where)
        tiles = _read_list(table, "tiles", where)
        tiles_where = key_path(where, "tiles")
        shapes_where = key_path(where, "layer_shapes")
        return cls(
            array_shape=_read_pair(table, "array_shape", where),
            tile_shape=_read_pair(table, "tile_shape", where),
            layer_shapes=tuple(
                _pair(value, key_path(shapes_where, i)) for i, value in enumerate(layer_shapes)
            ),
            tiles=tuple(
                TilePlacement.from_config(value, key_path(tiles_where, i))
                for i, value in enumerate(tiles)
            ),
        )


def plan_deployment(
    layer_shapes: Sequence[Sequence[int]],
    array_shape: Sequence[int],
    tile_shape: Sequence[int] | None = None,
) -> DeploymentPlan:
    """Split each layer's crossbar (in + 1, 2 out) into tiles of at most `tile_shape` (default:
    the array) and place all tiles block-diagonally from the top-left corner, in layer order and,
    within a layer, row block by row block. Blocks are balanced: a layer of n rows cut into
    ceil(n / max_rows) blocks has blocks of n // k or n // k + 1 rows (the same for column pairs).

    Raises DeploymentError naming the word and bit lines the network needs and the array's size
    when the tiles do not fit.
    """
    array = _shape(array_shape, "array_shape")
    tile = array if tile_shape is None else _shape(tile_shape, "tile_shape")
    if tile[1] < 2:
        raise DeploymentError(
            f"tile_shape: {tile[0]}x{tile[1]} holds no (+, -) column pair; allowed: cols >= 2"
        )
    shapes = tuple(_shape(s, f"layer_shapes[{i}]") for i, s in enumerate(layer_shapes))
    for index, (_, cols) in enumerate(shapes):
        if cols % 2:
            raise DeploymentError(
                f"layer_shapes[{index}]: {cols} bit lines is odd; a crossbar has 2 per output"
            )
    blocks = [
        (
            balanced_spans(rows, tile[0]),
            [(2 * a, 2 * b) for a, b in balanced_spans(cols // 2, tile[1] // 2)],
        )
        for rows, cols in shapes
    ]
    need_rows = sum(len(cb) * rows for (_, cb), (rows, _) in zip(blocks, shapes, strict=True))
    need_cols = sum(len(rb) * cols for (rb, _), (_, cols) in zip(blocks, shapes, strict=True))
    if need_rows > array[0] or need_cols > array[1]:
        detail = ", ".join(
            f"layer {i}: {rows}x{cols} in {len(rb)}x{len(cb)} tile(s)"
            for i, ((rows, cols), (rb, cb)) in enumerate(zip(shapes, blocks, strict=True))
        )
        raise DeploymentError(
            f"deployment: the network needs {need_rows} word lines and {need_cols} bit lines "
            f"(block-diagonal tiles of at most {tile[0]}x{tile[1]}; {detail}), but the array is "
            f"{array[0]}x{array[1]}"
        )
    tiles: list[TilePlacement] = []
    row, col = 0, 0
    for layer, (row_blocks, col_blocks) in enumerate(blocks):
        for rows in row_blocks:
            for cols in col_blocks:
                tiles.append(TilePlacement(layer, rows, cols, row, col))
                row += rows[1] - rows[0]
                col += cols[1] - cols[0]
    return DeploymentPlan(array, tile, shapes, tuple(tiles))


def network_layer_shapes(network: nn.Module) -> list[Shape]:
    """The crossbar shape (in + 1, 2 out) of every memristive core, in module order."""
    return [core.crossbar_shape for core in memristive_cores(network)]


# -- conductances and maps ------------------------------------------------------------------


@torch.no_grad()
def layer_conductances(network: nn.Module) -> list[tuple[np.ndarray, float]]:
    """Nominal targets of every core: (G (in + 1, 2 out) in S, float64; k_G in S per unit
    weight). Every core needs a device model (its conductance window)."""
    targets: list[tuple[np.ndarray, float]] = []
    for index, core in enumerate(memristive_cores(network)):
        if core.device_model is None:
            raise RuntimeError(
                f"layer {index}: no device model, so no conductance window to map weights into; "
                "call set_device_model first"
            )
        conductances, k_g = core.conductances()
        targets.append((conductances.detach().cpu().to(torch.float64).numpy(), float(k_g)))
    return targets


def chip_map(
    plan: DeploymentPlan, layer_maps: Sequence[npt.ArrayLike], fill: Any = np.nan
) -> np.ndarray:
    """Per-layer arrays (each its layer's (in + 1, 2 out)) -> one (rows, cols) array of the chip,
    `fill` where no tile sits. The dtype is the layers' and fill's common one."""
    maps = [np.asarray(m) for m in layer_maps]
    if len(maps) != plan.layers:
        raise ValueError(f"layer_maps: got {len(maps)} array(s); the plan has {plan.layers} layers")
    for index, (array, shape) in enumerate(zip(maps, plan.layer_shapes, strict=True)):
        if array.shape != shape:
            raise ValueError(
                f"layer_maps[{index}]: shape {array.shape} does not match the layer's {shape}"
            )
    dtype = np.result_type(*(m.dtype for m in maps), fill) if maps else np.asarray(fill).dtype
    chip = np.full(plan.array_shape, fill, dtype=dtype)
    for tile in plan.tiles:
        chip[tile.chip_slices] = maps[tile.layer][tile.layer_slices]
    return chip


def layer_maps(plan: DeploymentPlan, chip_array: npt.ArrayLike) -> list[np.ndarray]:
    """A (rows, cols) array of the chip -> one array per layer, (in + 1, 2 out) each (copies)."""
    chip = np.asarray(chip_array)
    if chip.shape != plan.array_shape:
        raise ValueError(
            f"chip_array: shape {chip.shape} does not match the plan's array {plan.array_shape}"
        )
    maps = [np.empty(shape, dtype=chip.dtype) for shape in plan.layer_shapes]
    for tile in plan.tiles:
        maps[tile.layer][tile.layer_slices] = chip[tile.chip_slices]
    return maps


# -- a chip's known defects in training -----------------------------------------------------


def fix_chip_defects(
    network: nn.Module,
    plan: DeploymentPlan,
    stuck_mask_chip: npt.ArrayLike,
    stuck_values_chip: float | npt.ArrayLike,
) -> list[int | None]:
    """Pin this chip's measured stuck devices in every core, so training and evaluation see its
    known defects while every other random part (D2D, programming noise, current-model draws)
    stays resampled or frozen as the core is configured.

    stuck_mask_chip: bool (rows, cols) of the array, True where a device is stuck;
    stuck_values_chip: their conductances in S, a scalar or (rows, cols) (read only where stuck).

    The layer's slice of the map is pinned under the key of the *last* stuck disturbance of its
    device model (the one whose output nothing later overrides); any other stuck disturbance gets
    an empty mask, so the layer's stuck set is exactly the chip's. A model with no stuck
    disturbance gets nothing (no invented "measured stuck" step: the model says what the chip
    does); a warning names the layer when the chip has stuck devices there. Call after
    `set_device_model` (which clears pins). Returns, per layer, the number of stuck devices
    pinned, or None where the model has no stuck disturbance.
    """
    cores = memristive_cores(network)
    if [core.crossbar_shape for core in cores] != list(plan.layer_shapes):
        raise DeploymentError(
            f"fix_chip_defects: the plan's layers {list(plan.layer_shapes)} do not match "
            f"the network's crossbars {[core.crossbar_shape for core in cores]}"
        )
    mask = np.asarray(stuck_mask_chip)
    if mask.shape != plan.array_shape:
        raise ValueError(
            f"stuck_mask_chip: shape {mask.shape} does not match the array {plan.array_shape}"
        )
    mask = mask.astype(bool)
    values = np.broadcast_to(np.asarray(stuck_values_chip, dtype=np.float64), plan.array_shape)
    values = np.where(mask, values, 0.0)
    masks, value_maps = layer_maps(plan, mask), layer_maps(plan, values)
    counts: list[int | None] = []
    for index, core in enumerate(cores):
        model = core.device_model
        if model is None:
            raise RuntimeError(f"layer {index}: no device model; call set_device_model first")
        keys = [
            disturbance_key(i, d)
            for i, d in enumerate(model.disturbances)
            if isinstance(d, StuckDevices)
        ]
        if not keys:
            stuck = int(masks[index].sum())
            if stuck:
                warnings.warn(
                    f"layer {index}: the device model has no stuck disturbance, so the chip's "
                    f"{stuck} stuck device(s) in this layer are not modelled",
                    RuntimeWarning,
                    stacklevel=2,
                )
            counts.append(None)
            continue
        pinned = {
            key: {"stuck": torch.zeros(core.crossbar_shape, dtype=torch.bool)} for key in keys[:-1]
        }
        try:
            pinned[keys[-1]] = stuck_draws_from_map(masks[index], value_maps[index])
        except ValueError as error:
            raise ValueError(f"stuck_values_chip, layer {index}: {error}") from None
        core.pin_draws(pinned)
        counts.append(int(masks[index].sum()))
    return counts


# -- helpers ----------------------------------------------------------------------------------


def _shape(value: Any, where: str) -> Shape:
    pair = _pair(value, where)
    if pair[0] < 1 or pair[1] < 1:
        raise DeploymentError(f"{where}: {value!r} is not allowed; allowed: rows, cols >= 1")
    return pair


def _pair(value: Any, where: str) -> tuple[int, int]:
    if (
        isinstance(value, str | bytes)
        or not isinstance(value, Sequence | np.ndarray)
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, int | np.integer) for v in value)
    ):
        raise DeploymentError(f"{where}: expected two integers, got {value!r}")
    first, second = (int(v) for v in value)
    if first < 0 or second < 0:
        raise DeploymentError(f"{where}: {value!r} is not allowed; allowed: integers >= 0")
    return first, second


def _read_pair(table: Mapping[str, Any], key: str, where: str) -> tuple[int, int]:
    if key not in table:
        raise DeploymentError(f"{key_path(where, key)}: required pair of integers is missing")
    return _pair(table[key], key_path(where, key))


def _read_list(table: Mapping[str, Any], key: str, where: str) -> Sequence[Any]:
    value = table.get(key)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise DeploymentError(f"{key_path(where, key)}: expected a list, got {value!r}")
    return value
