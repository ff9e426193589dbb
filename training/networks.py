"""Networks built from a plain spec (a TOML-ready dict), so a checkpoint can rebuild them.

Spec keys: kind ("mlp" or "cnn"), input_shape (C, H, W), classes, hidden (list of widths),
activation ("sigmoid", "relu", "tanh"), weights ("double" or "standard"), mapping_rule, seed
(initialisation), and for "cnn" channels (conv widths, 3x3, each followed by 2x2 max-pooling) and
memristive_convolutions (whether the convolutions run on crossbars too; the paper's were digital).
The last layer's outputs are logits; softmax lives in the loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from simulation.config import (
    ConfigError,
    key_path,
    read_choice,
    read_int,
    reject_unknown_keys,
    require_mapping,
)
from simulation.mapping import MAPPING_RULES
from training.layers import WEIGHT_IMPLEMENTATIONS, MemristiveConv2d, MemristiveLinear

ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}
NETWORK_KINDS = ("mlp", "cnn")
SPEC_KEYS = (
    "kind",
    "input_shape",
    "classes",
    "hidden",
    "activation",
    "weights",
    "mapping_rule",
    "seed",
    "channels",
    "memristive_convolutions",
)


class ClippedReLU(nn.Module):
    """ReLU capped at 1, so the next crossbar's inputs (voltages) stay within k_V."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, 1.0)


def validate_spec(spec: Mapping[str, Any], where: str = "network") -> dict[str, Any]:
    """Check a network spec and fill defaults; errors name the key, value and what is allowed."""
    table = require_mapping(spec, where)
    reject_unknown_keys(table, SPEC_KEYS, where)
    out: dict[str, Any] = {
        "kind": read_choice(table, "kind", where, NETWORK_KINDS, default="mlp"),
        "classes": read_int(table, "classes", where, minimum=2),
        "activation": read_choice(table, "activation", where, list(ACTIVATIONS), default="sigmoid"),
        "weights": read_choice(table, "weights", where, WEIGHT_IMPLEMENTATIONS, default="double"),
        "mapping_rule": read_choice(table, "mapping_rule", where, MAPPING_RULES, default="min"),
        "seed": read_int(table, "seed", where, default=0, minimum=0),
    }
    out["input_shape"] = _int_list(table, "input_shape", where, length=3)
    out["hidden"] = _int_list(table, "hidden", where, default=[25])
    if out["kind"] == "cnn":
        out["channels"] = _int_list(table, "channels", where, default=[32, 64, 64])
        flag = table.get("memristive_convolutions", False)
        if not isinstance(flag, bool):
            raise ConfigError(
                f"{key_path(where, 'memristive_convolutions')}: expected true or false, "
                f"got {flag!r}"
            )
        out["memristive_convolutions"] = flag
    return out


def _int_list(
    table: Mapping[str, Any],
    key: str,
    where: str,
    *,
    length: int | None = None,
    default: list[int] | None = None,
) -> list[int]:
    path = key_path(where, key)
    if key not in table:
        if default is None:
            raise ConfigError(f"{path}: required list of integers is missing")
        return list(default)
    values = table[key]
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ConfigError(f"{path}: expected a list of integers, got {values!r}")
    if length is not None and len(values) != length:
        raise ConfigError(f"{path}: expected {length} integers, got {values!r}")
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{path}[{index}]: expected an integer >= 1, got {value!r}")
    return [int(v) for v in values]


def build_network(spec: Mapping[str, Any]) -> nn.Sequential:
    """A freshly initialised network (seeded by spec["seed"]) from a spec."""
    spec = validate_spec(spec)
    generator = torch.Generator().manual_seed(spec["seed"])
    activation = ACTIVATIONS[spec["activation"]]
    layer_options = {
        "weights": spec["weights"],
        "mapping_rule": spec["mapping_rule"],
        "generator": generator,
    }
    layers: list[nn.Module] = []
    channels, height, width = spec["input_shape"]
    if spec["kind"] == "cnn":
        for index, out_channels in enumerate(spec["channels"]):
            last = index == len(spec["channels"]) - 1
            if spec["memristive_convolutions"]:
                conv: nn.Module = MemristiveConv2d(
                    channels, out_channels, 3, padding=1, **layer_options
                )
            else:
                conv = nn.Conv2d(channels, out_channels, 3, padding=1)
            layers += [conv, ClippedReLU() if last else nn.ReLU()]
            if height >= 2 and width >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = out_channels
    layers.append(nn.Flatten())
    width_in = channels * height * width
    for width_out in spec["hidden"]:
        layers += [MemristiveLinear(width_in, width_out, **layer_options), activation()]
        width_in = width_out
    layers.append(MemristiveLinear(width_in, spec["classes"], **layer_options))
    return nn.Sequential(*layers)


def count_synapses(network: nn.Module) -> int:
    """Weights plus biases held by crossbars, sum over layers of (in + 1) * out."""
    from training.layers import memristive_cores

    return sum(core.synapses for core in memristive_cores(network))


def input_size(spec: Mapping[str, Any]) -> int:
    """Number of input values of one example."""
    return math.prod(validate_spec(spec)["input_shape"])
