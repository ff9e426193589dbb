"""Line resistance as a nonideality of the training engine: a layer's crossbar cut into tiles.

A layer's (in + 1, 2 out) array is split into tiles of at most `tile_shape` (rows, cols), as a
chip is built from arrays (Joksas et al.'s later `LineResistance`: 128 x 64 tiles, r_word = 0.35
Ohm, r_bit = 0.32 Ohm). Rows are cut into balanced blocks and columns into balanced blocks of
(+, -) pairs (the same cut as `training.deployment.plan_deployment`). Every tile is its own
crossbar: word lines driven at the left, bit lines into a virtual ground at the bottom, segment
resistances r_word / r_bit, optional driver / sense resistances. Tiles that split a layer's rows
add their bit-line currents. All tiles are solved together by `simulation.circuit`
(`crossbar_currents`): smaller tiles are padded at the top (rows) and right (cols) with
zero-current devices, which leaves the circuit unchanged. Gradients reach the voltages and the
conductances by the adjoint method, and through the current model's parameters for nonlinear
devices (Newton's method on the same system).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import torch

from simulation.circuit import (
    CrossbarLines,
    ElementwiseDevices,
    abs_,
    crossbar_currents,
    exp_,
    sqrt_,
)
from simulation.config import (
    ConfigError,
    ConfigIdentity,
    key_path,
    read_float,
    read_float_list,
    reject_unknown_keys,
)
from simulation.current_models import CurrentModel, PooleFrenkel
from simulation.mapping import balanced_spans
from simulation.nonidealities.base import Draws


class LineResistance(ConfigIdentity):
    """Word-line and bit-line segment resistances (Ohm) on tiles of at most `tile_shape`."""

    kind: ClassVar[str] = "line_resistance"
    _KEYS: ClassVar[tuple[str, ...]] = (
        "kind", "r_word", "r_bit", "tile_shape", "r_driver", "r_sense", "tolerance",
    )  # fmt: skip

    def __init__(
        self,
        r_word: float = 0.35,
        r_bit: float = 0.32,
        tile_shape: tuple[int, int] = (128, 64),
        r_driver: float = 0.0,
        r_sense: float = 0.0,
        tolerance: float = 1e-10,
    ) -> None:
        for name, value in (("r_word", r_word), ("r_bit", r_bit), ("r_driver", r_driver),
                            ("r_sense", r_sense)):  # fmt: skip
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"line_resistance.{name}: {value!r} Ohm; allowed: finite >= 0")
        rows, cols = (int(tile_shape[0]), int(tile_shape[1]))
        if rows < 1 or cols < 2:
            raise ConfigError(
                f"line_resistance.tile_shape: {tile_shape!r}; allowed: rows >= 1, cols >= 2"
            )
        if not (0 < tolerance < 1e-3):
            raise ConfigError(f"line_resistance.tolerance: {tolerance!r}; allowed: 0 < t < 1e-3")
        self.r_word, self.r_bit = float(r_word), float(r_bit)
        self.r_driver, self.r_sense = float(r_driver), float(r_sense)
        self.tile_shape = (rows, cols)
        self.tolerance = float(tolerance)
        self._tilings: dict[tuple[int, int], _Tiling] = {}
        self._tile_lines: dict[tuple[int, int], CrossbarLines] = {}

    def to_config(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "r_word": self.r_word, "r_bit": self.r_bit,
            "tile_shape": list(self.tile_shape), "r_driver": self.r_driver,
            "r_sense": self.r_sense, "tolerance": self.tolerance,
        }  # fmt: skip

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> LineResistance:
        reject_unknown_keys(config, cls._KEYS, where)
        return cls(
            r_word=read_float(config, "r_word", where, default=0.35, minimum=0.0),
            r_bit=read_float(config, "r_bit", where, default=0.32, minimum=0.0),
            tile_shape=_read_tile_shape(config, where),
            r_driver=read_float(config, "r_driver", where, default=0.0, minimum=0.0),
            r_sense=read_float(config, "r_sense", where, default=0.0, minimum=0.0),
            tolerance=read_float(config, "tolerance", where, default=1e-10, minimum=0.0),
        )

    def tiling(self, shape: tuple[int, int]) -> _Tiling:
        """How a (rows, cols) array is cut into tiles (cached per shape)."""
        if shape not in self._tilings:
            self._tilings[shape] = _Tiling(shape, self.tile_shape)
        return self._tilings[shape]

    def _lines(self, tile: tuple[int, int]) -> CrossbarLines:
        """The lines of one tile (cached per tile shape)."""
        if tile not in self._tile_lines:
            self._tile_lines[tile] = CrossbarLines.build(
                tile, self.r_word, self.r_bit, self.r_driver, self.r_sense
            )
        return self._tile_lines[tile]

    def column_currents(
        self,
        voltages: torch.Tensor,
        conductances: torch.Tensor,
        current_model: CurrentModel,
        draws: Draws,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bit-line currents (batch, cols) in A and device power (batch,) in W of a layer's
        array, voltages (batch, rows) in V, conductances (rows, cols) in S (disturbed)."""
        tiling = self.tiling(tuple(conductances.shape))
        lines = self._lines(tiling.tile)
        v_tiles = tiling.voltages(voltages)
        if current_model.is_linear:
            g_tiles = tiling.gather(conductances) * tiling.cell_mask.to(conductances)
            out, power = crossbar_currents(v_tiles, g_tiles, lines)
        elif isinstance(current_model, PooleFrenkel):
            g_tiles = tiling.gather(conductances)
            devices = _PooleFrenkelTiles(current_model, tiling, draws)
            out, power = crossbar_currents(
                v_tiles, g_tiles, lines, devices, tolerance=self.tolerance
            )
        else:
            g_tiles = tiling.gather(conductances)
            function = tiling.device_function(current_model, draws)
            out, power = crossbar_currents(
                v_tiles, g_tiles, lines, function, tolerance=self.tolerance
            )
        return tiling.scatter(out, conductances.shape[1]), power


def _read_tile_shape(config: Mapping[str, Any], where: str) -> tuple[int, int]:
    pair = read_float_list(config, "tile_shape", where, length=2, minimum=1.0, default=(128, 64))
    if any(value != int(value) for value in pair):
        raise ConfigError(f"{key_path(where, 'tile_shape')}: expected two integers, got {pair!r}")
    return int(pair[0]), int(pair[1])


class _Tiling:
    """Tiles of a (rows, cols) array: gather indices (t, M) and (t, N) into the padded tiles,
    masks of real cells, and where each tile's columns go."""

    def __init__(self, shape: tuple[int, int], most: tuple[int, int]) -> None:
        rows, cols = shape
        row_blocks = balanced_spans(rows, most[0])
        if cols % 2 == 0:
            col_blocks = [(2 * a, 2 * b) for a, b in balanced_spans(cols // 2, most[1] // 2)]
        else:
            col_blocks = balanced_spans(cols, most[1])
        self.blocks = [(r, c) for r in row_blocks for c in col_blocks]
        tile_rows = max(b - a for a, b in row_blocks)
        tile_cols = max(b - a for a, b in col_blocks)
        self.tile = (tile_rows, tile_cols)
        row_index, row_mask, col_index, col_mask = [], [], [], []
        for (r0, r1), (c0, c1) in self.blocks:
            pad = tile_rows - (r1 - r0)
            row_index.append([r0] * pad + list(range(r0, r1)))  # padding at the top
            row_mask.append([False] * pad + [True] * (r1 - r0))
            pad = tile_cols - (c1 - c0)
            col_index.append(list(range(c0, c1)) + [c1 - 1] * pad)  # padding at the right
            col_mask.append([True] * (c1 - c0) + [False] * pad)
        self.row_index = torch.tensor(row_index)
        self.row_mask = torch.tensor(row_mask)
        self.col_index = torch.tensor(col_index)
        self.col_mask = torch.tensor(col_mask)

    @cached_property
    def cell_mask(self) -> torch.Tensor:
        return self.row_mask[:, :, None] & self.col_mask[:, None, :]

    def gather(self, array: torch.Tensor) -> torch.Tensor:
        """(..., rows, cols) -> (..., t, M, N) tiles (padded cells copy a real one)."""
        return array[..., self.row_index[:, :, None], self.col_index[:, None, :]]

    def voltages(self, voltages: torch.Tensor) -> torch.Tensor:
        """(batch, rows) -> (batch, t, M), padded word lines at 0 V."""
        return voltages[:, self.row_index] * self.row_mask.to(voltages)

    def scatter(self, out: torch.Tensor, cols: int) -> torch.Tensor:
        """Tile outputs (batch, t, N) -> layer bit-line currents (batch, cols), summed."""
        flat_mask = self.col_mask.reshape(-1)
        index = self.col_index.reshape(-1)[flat_mask]
        values = out.reshape(out.shape[0], -1)[:, flat_mask]
        result = out.new_zeros(out.shape[0], cols)
        return result.index_add(1, index, values)

    def device_function(self, model: CurrentModel, draws: Draws):
        """I(V, G) on tiles (batch, t, M, N) through the model's elementwise device currents:
        every cell becomes one word line of a one-column array."""
        tiled = {name: self.gather(value) for name, value in draws.items()}
        mask = self.cell_mask

        def current(volts: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            flat_draws = {
                name: value.to(g).reshape(*value.shape[:-3], -1, 1) for name, value in tiled.items()
            }
            flow = model.device_currents(volts.reshape(volts.shape[0], -1), g.reshape(-1, 1),
                                         flat_draws)  # fmt: skip
            return flow[..., 0].reshape(volts.shape) * mask.to(flow)

        return current


class _PooleFrenkelTiles(ElementwiseDevices):
    """Poole-Frenkel devices on tiles in closed form: parameters ln c (-inf on padded cells, which
    then carry no current) and beta; I = c V e^x and dI/dV = c e^x (1 + x / 2), x = beta sqrt|V|;
    dI/d ln c = I and dI/d beta = I sqrt|V|."""

    def __init__(self, model: PooleFrenkel, tiling: _Tiling, draws: Draws) -> None:
        self.model, self.tiling = model, tiling
        self.draws = {name: tiling.gather(value) for name, value in draws.items()}

    def parameters(self, conductances: torch.Tensor) -> tuple[torch.Tensor, ...]:
        draws = {name: value.to(conductances) for name, value in self.draws.items()}
        log_c, beta = self.model._log_c_and_beta(conductances, draws, differentiable=True)
        mask = self.tiling.cell_mask
        if not bool(mask.all()):
            log_c = log_c.masked_fill(~mask, -math.inf)
        return log_c, beta

    def prepare(self, params):
        log_c, beta = params
        return exp_(_copy(log_c)), beta

    def currents(self, volts, prepared, slope, out=None):
        c, beta = prepared
        x = sqrt_(abs(volts) if out is None else abs_(volts, out=out[-1]))
        if x.shape == beta.shape or out is not None:
            x *= beta
        else:
            x = x * beta  # volts may be smaller than the parameters (broadcast)
        if not slope:
            flow = exp_(x)
            flow *= c
            flow *= volts
            return flow, None
        if out is None:
            scaled = exp_(_copy(x))
        else:
            scaled = out[0]
            scaled[...] = x
            exp_(scaled)
        scaled *= c  # I / V
        x *= 0.5
        x += 1.0
        x *= scaled  # the slope c e^x (1 + x / 2)
        if out is None:
            return scaled * volts, x
        scaled *= volts
        return scaled, x

    def partials(self, volts, prepared, flow, out=None):
        root = sqrt_(abs(volts) if out is None else abs_(volts, out=out))
        root *= flow
        return flow, root

    def closed_form(self, prepared):
        return prepared


def _copy(array):
    """A copy of a numpy array or a torch tensor."""
    return array.copy() if isinstance(array, np.ndarray) else array.clone()
