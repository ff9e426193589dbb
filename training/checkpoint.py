"""Checkpoints: a network's spec, parameters, device models and frozen chips in one file.

The file is a torch archive of plain types (loaded with weights_only=True, so opening a checkpoint
never runs code). The state dict carries each crossbar's device model config, sampling mode and
frozen realisation, so a loaded network computes exactly what the saved one did.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from training.networks import build_network, validate_spec

FORMAT = "xbarlab-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not an xbarlab checkpoint or does not match its network spec."""


def _payload(network: nn.Module, spec: dict[str, Any], metadata: dict[str, Any] | None) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "network": validate_spec(spec),
        "state_dict": network.state_dict(),
        "metadata": metadata or {},
    }


def save_checkpoint(
    path: str | Path,
    network: nn.Module,
    spec: dict[str, Any],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write atomically (temporary file, then rename): a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(_payload(network, spec, metadata), temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def checkpoint_bytes(
    network: nn.Module, spec: dict[str, Any], metadata: dict[str, Any] | None = None
) -> bytes:
    """The checkpoint as bytes (what `save_checkpoint` writes), e.g. for a session file."""
    buffer = io.BytesIO()
    torch.save(_payload(network, spec, metadata), buffer)
    return buffer.getvalue()


def load_checkpoint(path: str | Path) -> tuple[nn.Sequential, dict[str, Any], dict[str, Any]]:
    """Rebuild the network; returns (network, spec, metadata)."""
    path = Path(path)
    with path.open("rb") as handle:
        return _load(handle, str(path))


def network_from_bytes(
    data: bytes, where: str = "checkpoint"
) -> tuple[nn.Sequential, dict[str, Any], dict[str, Any]]:
    """Rebuild the network from `checkpoint_bytes` output; returns (network, spec, metadata)."""
    return _load(io.BytesIO(data), where)


def _load(handle: IO[bytes], where: str) -> tuple[nn.Sequential, dict[str, Any], dict[str, Any]]:
    try:
        payload = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged archive
        raise CheckpointError(f"{where}: not a readable xbarlab checkpoint ({error})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not an xbarlab checkpoint (no '{FORMAT}' marker)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: checkpoint format version {payload.get('format_version')!r} is not "
            f"supported; this xbarlab reads version {FORMAT_VERSION}"
        )
    spec = validate_spec(payload["network"], f"{where}: network")
    network = build_network(spec)
    try:
        network.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        message = f"{where}: parameters do not fit the network spec ({error})"
        raise CheckpointError(message) from error
    return network, spec, payload.get("metadata", {})
