"""The HDF5 session store: one file per session, every stage with its config, seeds and metadata.

Layout and rules (docs/session-format.md): the root carries the schema name and version, the
creation time and software versions; each stage is a group (`/characterisation/...`,
`/models/...`, `/training/<run>`, `/deployments/<name>/...`, `/evaluations/<name>`) whose
attributes hold its config and metadata (nested values as JSON strings prefixed "json:") and whose
datasets carry a `units` attribute.

Two ways to write, both flushed to disk before they return:
- `write_stage(path, arrays, attrs)`: a complete stage at once. It is built under
  `<path>.partial` and renamed when whole, so a crash never leaves a half-written stage; partial
  groups left by a crash are deleted when the file is next opened for writing.
- `begin_stage(path, ...)` -> `LiveStage`: a long stage (programming) that fills datasets as it
  goes. Its `status` attribute stays "in_progress" until `finish()`; everything updated before a
  crash is on disk, so the stage can be resumed.

Readers open the file read-only without HDF5 file locking, so a viewer can follow a run that is
appending (they see what was last flushed).
"""

from __future__ import annotations

import datetime
import json
import platform
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import xbarlab

SCHEMA_NAME = "xbarlab-session"
SCHEMA_VERSION = 1
PARTIAL_SUFFIX = ".partial"
_JSON_PREFIX = "json:"


class SessionError(RuntimeError):
    """A session file cannot be used: missing, corrupted, truncated, or of another schema."""


def software_versions() -> dict[str, str]:
    """Versions of xbarlab and the libraries whose behaviour the results depend on."""
    import torch

    return {
        "xbarlab": xbarlab.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "h5py": h5py.version.version,
        "hdf5": h5py.version.hdf5_version,
    }


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def encode_attribute(value: Any) -> Any:
    """An HDF5-storable attribute: numbers, strings and flat numeric arrays as they are;
    None, mappings and mixed lists as a JSON string prefixed "json:"."""
    if isinstance(value, str | bool | int | float | np.integer | np.floating):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value
    return _JSON_PREFIX + json.dumps(value, default=_json_default)


def decode_attribute(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith(_JSON_PREFIX):
        return json.loads(value[len(_JSON_PREFIX) :])
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} {value!r} in a session attribute")


@dataclass
class Stage:
    """A stage read back: datasets as numpy arrays, attributes decoded, units per dataset."""

    path: str
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any]
    units: dict[str, str]


class SessionStore:
    """An open session file. Use `SessionStore.create`, `SessionStore.open` or as a context
    manager; `writable` stores flush after every write."""

    def __init__(self, path: str | Path, file: h5py.File, writable: bool) -> None:
        self.path = Path(path)
        self.file = file
        self.writable = writable

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, metadata: Mapping[str, Any] | None = None) -> SessionStore:
        """A new session file (refuses to overwrite) with schema, versions and metadata."""
        path = Path(path)
        if path.exists():
            raise SessionError(f"{path}: a session file already exists; choose another name")
        path.parent.mkdir(parents=True, exist_ok=True)
        # The default (earliest) format has no write-consistency flags, so viewers can open the
        # file while a run appends and a killed run's file opens again without h5clear.
        file = h5py.File(path, "w-", locking=False)
        file.attrs["schema"] = SCHEMA_NAME
        file.attrs["schema_version"] = SCHEMA_VERSION
        file.attrs["created_utc"] = utc_now()
        file.attrs["software"] = encode_attribute(software_versions())
        for key, value in (metadata or {}).items():
            file.attrs[key] = encode_attribute(value)
        file.require_group("log")
        store = cls(path, file, writable=True)
        store.flush()
        return store

    @classmethod
    def open(cls, path: str | Path, writable: bool = False) -> SessionStore:
        """Open an existing session; read-only unless writable (then crash leftovers go)."""
        path = Path(path)
        if not path.is_file():
            raise SessionError(f"{path}: no such session file")
        try:
            file = h5py.File(path, "r+" if writable else "r", locking=False)
        except OSError as error:
            raise SessionError(
                f"{path}: not a readable HDF5 session file (corrupted or truncated?): {error}"
            ) from None
        if file.attrs.get("schema") != SCHEMA_NAME:
            file.close()
            raise SessionError(f"{path}: not an xbarlab session (schema attribute missing)")
        version = int(file.attrs.get("schema_version", -1))
        if version > SCHEMA_VERSION:
            file.close()
            raise SessionError(
                f"{path}: schema version {version} is newer than this xbarlab understands "
                f"({SCHEMA_VERSION}); upgrade xbarlab"
            )
        store = cls(path, file, writable)
        if writable:
            store._remove_partial_stages()
        return store

    @classmethod
    def open_or_create(
        cls, path: str | Path, metadata: Mapping[str, Any] | None = None
    ) -> SessionStore:
        return cls.open(path, writable=True) if Path(path).exists() else cls.create(path, metadata)

    def close(self) -> None:
        if self.file.id.valid:
            if self.writable:
                self.file.flush()
            self.file.close()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def flush(self) -> None:
        self.file.flush()

    # -- metadata -------------------------------------------------------------------------------

    @property
    def metadata(self) -> dict[str, Any]:
        return {key: decode_attribute(value) for key, value in self.file.attrs.items()}

    def set_metadata(self, **values: Any) -> None:
        self._require_writable("set_metadata")
        for key, value in values.items():
            self.file.attrs[key] = encode_attribute(value)
        self.flush()

    # -- complete stages ------------------------------------------------------------------------

    def write_stage(
        self,
        path: str,
        arrays: Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
        units: Mapping[str, str] | None = None,
        overwrite: bool = False,
    ) -> None:
        """Write a whole stage group atomically (built as `<path>.partial`, then renamed)."""
        self._require_writable("write_stage")
        path = path.strip("/")
        if path in self.file and not overwrite:
            raise SessionError(f"{self.path}: stage {path!r} already exists")
        partial = path + PARTIAL_SUFFIX
        if partial in self.file:
            del self.file[partial]
        group = self.file.create_group(partial)
        for key, value in (attrs or {}).items():
            group.attrs[key] = encode_attribute(value)
        group.attrs["written_utc"] = utc_now()
        group.attrs["status"] = "complete"
        for name, value in (arrays or {}).items():
            dataset = group.create_dataset(name, data=np.asarray(value))
            if units and name in units:
                dataset.attrs["units"] = units[name]
        self.flush()
        if path in self.file:
            del self.file[path]
        self.file.move(partial, path)
        self.flush()

    def read_stage(self, path: str) -> Stage:
        path = path.strip("/")
        if path not in self.file or not isinstance(self.file[path], h5py.Group):
            known = ", ".join(self.stages()) or "none"
            raise SessionError(f"{self.path}: no stage {path!r}; stages: {known}")
        group = self.file[path]
        arrays, units = {}, {}
        for name, item in group.items():
            if isinstance(item, h5py.Dataset):
                arrays[name] = item[()]
                if "units" in item.attrs:
                    units[name] = decode_attribute(item.attrs["units"])
        attrs = {key: decode_attribute(value) for key, value in group.attrs.items()}
        return Stage(path, arrays, attrs, units)

    def stages(self, prefix: str = "") -> list[str]:
        """Paths of stage groups (groups with a status attribute) under prefix, partial ones
        excluded."""
        found: list[str] = []

        def visit(name: str, item: h5py.HLObject) -> None:
            if (
                isinstance(item, h5py.Group)
                and "status" in item.attrs
                and PARTIAL_SUFFIX not in name
            ):
                found.append(name)

        root = self.file[prefix.strip("/")] if prefix.strip("/") else self.file
        root.visititems(visit)
        base = prefix.strip("/")
        return sorted(f"{base}/{name}" if base else name for name in found)

    def has_stage(self, path: str) -> bool:
        path = path.strip("/")
        return path in self.file and "status" in self.file[path].attrs

    def status(self, path: str) -> str | None:
        """ "complete", "in_progress", or None when the stage does not exist."""
        path = path.strip("/")
        if path not in self.file:
            return None
        return decode_attribute(self.file[path].attrs.get("status"))

    # -- long stages ----------------------------------------------------------------------------

    def begin_stage(
        self, path: str, attrs: Mapping[str, Any] | None = None, resume: bool = True
    ) -> LiveStage:
        """A stage filled as work proceeds; resumes an in-progress one when resume is true."""
        self._require_writable("begin_stage")
        path = path.strip("/")
        state = self.status(path)
        if state == "complete":
            raise SessionError(f"{self.path}: stage {path!r} is already complete")
        if state == "in_progress" and not resume:
            del self.file[path]
            state = None
        group = self.file.require_group(path)
        if state is None:
            group.attrs["status"] = "in_progress"
            group.attrs["started_utc"] = utc_now()
        for key, value in (attrs or {}).items():
            group.attrs[key] = encode_attribute(value)
        self.flush()
        return LiveStage(self, group, resumed=state == "in_progress")

    # -- event log ------------------------------------------------------------------------------

    def log(self, event: Mapping[str, Any]) -> None:
        """Append one event (JSON-able mapping) to /log/events, with a UTC timestamp."""
        self._require_writable("log")
        record = json.dumps({"utc": utc_now(), **event}, default=_json_default)
        group = self.file["log"]
        if "events" not in group:
            group.create_dataset(
                "events", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(256,)
            )
        events = group["events"]
        events.resize((events.shape[0] + 1,))
        events[-1] = record
        self.flush()

    def events(self) -> list[dict[str, Any]]:
        if "log" not in self.file or "events" not in self.file["log"]:
            return []
        return [json.loads(item) for item in self.file["log/events"].asstr()[()]]

    # -- helpers --------------------------------------------------------------------------------

    def _require_writable(self, what: str) -> None:
        if not self.writable:
            raise SessionError(f"{self.path}: opened read-only; cannot {what}")

    def _remove_partial_stages(self) -> None:
        partial: list[str] = []
        self.file.visit(
            lambda name: partial.append(name) if name.endswith(PARTIAL_SUFFIX) else None
        )
        for name in sorted(partial, key=len, reverse=True):
            if name in self.file:
                del self.file[name]
        if partial:
            self.log({"event": "removed_partial_stages", "stages": partial})

    def walk(self) -> Iterator[tuple[str, str]]:
        """(path, kind) of every group and dataset, for listings."""
        items: list[tuple[str, str]] = []
        self.file.visititems(
            lambda name, item: items.append(
                (name, "group" if isinstance(item, h5py.Group) else f"dataset {item.shape}")
            )
        )
        yield from items


class LiveStage:
    """A stage being filled: datasets created once (or found again on resume), updated in place,
    flushed on every update."""

    def __init__(self, store: SessionStore, group: h5py.Group, resumed: bool) -> None:
        self.store = store
        self.group = group
        self.resumed = resumed

    @property
    def path(self) -> str:
        return self.group.name.strip("/")

    def dataset(
        self, name: str, shape: tuple[int, ...], dtype: Any, fill: Any, units: str | None = None
    ) -> h5py.Dataset:
        """The dataset `name`, created filled with `fill` unless it exists (then its shape and
        dtype must match)."""
        if name in self.group:
            existing = self.group[name]
            if existing.shape != tuple(shape) or existing.dtype != np.dtype(dtype):
                raise SessionError(
                    f"{self.store.path}: {self.path}/{name} has shape {existing.shape} and dtype "
                    f"{existing.dtype}; cannot resume with {tuple(shape)} {np.dtype(dtype)}"
                )
            return existing
        dataset = self.group.create_dataset(name, shape=shape, dtype=dtype, fillvalue=fill)
        if units:
            dataset.attrs["units"] = units
        self.store.flush()
        return dataset

    def write(self, name: str, values: Any, index: Any = ()) -> None:
        """dataset[index] = values, then flush."""
        self.group[name][index] = values
        self.store.flush()

    def append(self, name: str, values: Any, dtype: Any = float) -> None:
        """Append `values` as one more row of the growing dataset `name` (created on first use
        with rows shaped like `values`), then flush."""
        row = np.asarray(values, dtype=dtype)
        if name not in self.group:
            chunks = (1, *row.shape) if row.ndim else (256,)
            self.group.create_dataset(
                name, shape=(0, *row.shape), maxshape=(None, *row.shape), dtype=dtype,
                chunks=chunks,
            )  # fmt: skip
        dataset = self.group[name]
        if dataset.shape[1:] != row.shape:
            raise SessionError(
                f"{self.store.path}: {self.path}/{name} has rows of shape {dataset.shape[1:]}; "
                f"cannot append {row.shape}"
            )
        dataset.resize(dataset.shape[0] + 1, axis=0)
        dataset[-1] = row
        self.store.flush()

    def read(self, name: str) -> np.ndarray:
        return self.group[name][()]

    def set_attrs(self, **attrs: Any) -> None:
        for key, value in attrs.items():
            self.group.attrs[key] = encode_attribute(value)
        self.store.flush()

    def finish(self, **attrs: Any) -> None:
        self.set_attrs(**attrs, status="complete", finished_utc=utc_now())
