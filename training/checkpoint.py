"""Checkpoints: a network's spec, parameters, device models and frozen chips in one file.

The file is a torch archive of plain types (loaded with weights_only=True, so opening a checkpoint
never runs code). The state dict carries each crossbar's device model config, sampling mode and
frozen realisation, so a loaded network computes exactly what the saved one did.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.networks import build_network, validate_spec

FORMAT = "xbarlab-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not an xbarlab checkpoint or does not match its network spec."""


def save_checkpoint(
    path: str | Path,
    network: nn.Module,
    spec: dict[str, Any],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write atomically (temporary file, then rename): a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "network": validate_spec(spec),
        "state_dict": network.state_dict(),
        "metadata": metadata or {},
    }
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def load_checkpoint(path: str | Path) -> tuple[nn.Sequential, dict[str, Any], dict[str, Any]]:
    """Rebuild the network; returns (network, spec, metadata)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises many types for a damaged archive
        raise CheckpointError(f"{path}: not a readable xbarlab checkpoint ({error})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an xbarlab checkpoint (no '{FORMAT}' marker)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload.get('format_version')!r} is not "
            f"supported; this xbarlab reads version {FORMAT_VERSION}"
        )
    spec = validate_spec(payload["network"], f"{path}: network")
    network = build_network(spec)
    try:
        network.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        message = f"{path}: parameters do not fit the network spec ({error})"
        raise CheckpointError(message) from error
    return network, spec, payload.get("metadata", {})
