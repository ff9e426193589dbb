"""Image classification datasets for crossbar training: digits, MNIST, Fashion-MNIST, CIFAR-10.

``load_dataset(name, data_dir)`` returns a :class:`DatasetSplits` holding train, validation and
test :class:`~torch.utils.data.TensorDataset` objects of ``(x, y)``: ``x`` is ``float32`` in
``[0, 1]`` with its image shape ``(N, C, H, W)`` and ``y`` is ``int64`` class indices. Networks
built from fully connected crossbar layers (MLPs) take flat vectors: use :func:`flatten_inputs`
(or ``x.reshape(len(x), -1)``); ``DatasetSplits.num_features`` is the flat length.

Where the data comes from:

- ``"digits"``: scikit-learn's bundled 8x8 digits (1797 images, offline). Pixel values 0..16 are
  divided by 16. The test split is a fixed stratified 25 % holdout drawn with seed
  :data:`DIGITS_TEST_SEED` (0), independent of ``split_seed``.
- ``"mnist"``, ``"fashion-mnist"``: the four gzipped IDX files, parsed and validated here.
  Pixels are divided by 255.
- ``"cifar10"``: the python-version tarball ``cifar-10-python.tar.gz`` or its extracted folder
  ``cifar-10-batches-py``. Pixels are divided by 255.

Files are looked up in ``data_dir`` (a folder holding them directly or in a subfolder named like
the dataset, e.g. ``DIR/mnist``), or, when ``data_dir`` is None, in the user cache
``<cache>/<name>`` where ``<cache>`` is ``cache_dir``, else ``$XBARLAB_CACHE/datasets``, else
``~/.cache/xbarlab/datasets``. The network is used only with ``download=True``: each missing file
is fetched once from the dataset's mirrors, checked against its published MD5 and only then
renamed into place. Local folders are not required to match the checksums (labs may have
re-packed files); their format is validated instead. :func:`verify_checksums` checks a folder
against the published digests on request.

CIFAR-10 batches are Python pickles. A downloaded tarball is unpickled only after its MD5 matched
the published one, and every batch, downloaded or local, is read by a restricted unpickler that
only allows the globals needed to rebuild numpy arrays, so a foreign pickle cannot run code.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import logging
import math
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = [
    "CLASS_NAMES",
    "DATASETS",
    "DIGITS_TEST_FRACTION",
    "DIGITS_TEST_SEED",
    "ChecksumError",
    "DatasetError",
    "DatasetNotFoundError",
    "DatasetSplits",
    "DownloadError",
    "default_cache_dir",
    "flatten_inputs",
    "load_dataset",
    "verify_checksums",
]

logger = logging.getLogger(__name__)

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")

#: Seed and size of the fixed stratified test holdout of the digits dataset.
DIGITS_TEST_SEED = 0
DIGITS_TEST_FRACTION = 0.25

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "digits": tuple(str(digit) for digit in range(10)),
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
}

_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
}

#: Subfolders of a data folder that may hold a dataset's files (checked before the folder itself).
_SUBFOLDERS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist", "MNIST/raw"),
    "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw"),
    "cifar10": ("cifar10",),
}

_TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
_TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
_TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
_TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
_IDX_FILES = (_TRAIN_IMAGES, _TRAIN_LABELS, _TEST_IMAGES, _TEST_LABELS)
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049

_CIFAR_TARBALL = "cifar-10-python.tar.gz"
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{index}" for index in range(1, 6))
_CIFAR_TEST_BATCH = "test_batch"
_CIFAR_BATCHES = (*_CIFAR_TRAIN_BATCHES, _CIFAR_TEST_BATCH)

#: Published MD5 digests of the original files (MNIST and Fashion-MNIST checked against
#: byte-exact originals).
_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        _TRAIN_IMAGES: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        _TRAIN_LABELS: "d53e105ee54ea40749a09fcbcd1e9432",
        _TEST_IMAGES: "9fb629c4189551a2d022fa330f9573f3",
        _TEST_LABELS: "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        _TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        _TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
        _TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79",
        _TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {_CIFAR_TARBALL: "c58f30108f718f92721af3b95e74349a"},
}

#: Base URLs tried in order; a file's URL is the base followed by its name.
_MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    # Plain HTTP only; the MD5 check guards the content.
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

_FETCH_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


class DatasetError(ValueError):
    """A dataset file is corrupt, truncated or not in the expected format (names the file)."""


class ChecksumError(DatasetError):
    """A file's MD5 digest differs from the published one (names file, expected and actual)."""


class DatasetNotFoundError(FileNotFoundError):
    """Dataset files are missing; the message says which, where, and how to get them."""

    def __init__(self, message: str, missing: Iterable[str] = (), folder: Path | None = None):
        super().__init__(message)
        self.missing = tuple(missing)
        self.folder = folder

    def __str__(self) -> str:
        return str(self.args[0])


class DownloadError(OSError):
    """No mirror could deliver a file (network errors; names every URL tried)."""


@dataclass
class DatasetSplits:
    """Train / validation / test splits of one dataset.

    Each split is a ``TensorDataset`` of ``(x, y)``: ``x`` float32 in [0, 1] shaped
    ``(N, *input_shape)``, ``y`` int64 class indices. Flatten ``x`` for MLPs with
    :func:`flatten_inputs`.
    """

    name: str
    train: TensorDataset
    validation: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, ...]
    num_classes: int
    source: str

    @property
    def num_features(self) -> int:
        """Length of one flattened input vector (e.g. 784 for MNIST)."""
        return math.prod(self.input_shape)

    def summary(self) -> dict[str, Any]:
        """Plain values describing the splits, for experiment records."""
        return {
            "name": self.name,
            "source": self.source,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
        }


def flatten_inputs(x: torch.Tensor) -> torch.Tensor:
    """Flatten image batches ``(N, C, H, W)`` to ``(N, C*H*W)`` for fully connected networks."""
    return x.reshape(x.shape[0], -1)


def default_cache_dir() -> Path:
    """Root of the dataset cache: ``$XBARLAB_CACHE/datasets`` or ``~/.cache/xbarlab/datasets``.

    Each dataset lives in a subfolder named like it (``<root>/mnist``).
    """
    configured = os.environ.get("XBARLAB_CACHE")
    if configured:
        return Path(configured).expanduser() / "datasets"
    return Path("~/.cache/xbarlab/datasets").expanduser()


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    validation_fraction: float = 0.2,
    split_seed: int = 0,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> DatasetSplits:
    """Load a dataset and split its training part into train and validation.

    Args:
        name: one of :data:`DATASETS` (``"digits"``, ``"mnist"``, ``"fashion-mnist"``,
            ``"cifar10"``).
        data_dir: folder holding the files directly or in a subfolder named like the dataset
            (``DIR`` or ``DIR/mnist``). None: use the cache (see :func:`default_cache_dir`).
            Ignored for ``"digits"``, which is bundled with scikit-learn.
        validation_fraction: share of the training data held out for validation, in [0, 1)
            (0.2 gives 48000 / 12000 for MNIST). The split is a permutation drawn with
            ``numpy.random.default_rng(split_seed)``: the same seed gives the same split.
        split_seed: seed of the train / validation split (not of the test split, which is fixed).
        download: fetch missing files from the dataset's mirrors into ``DIR/<name>`` (or the
            cache folder), verifying the published MD5 first. Without it the network is
            never used.
        cache_dir: root of the cache used when ``data_dir`` is None; files go to
            ``cache_dir/<name>``.
        limit_train: keep only the first ``limit_train`` training examples of the seeded shuffle
            (a random subset, nested for growing limits); validation is not affected.
        limit_test: keep only the first ``limit_test`` test examples.

    Examples keep the order of the original files within each split.

    Raises:
        ValueError: unknown name or an argument out of range.
        DatasetNotFoundError: files are missing (and ``download`` is False).
        DatasetError: a file is corrupt or truncated (the message names it).
        ChecksumError: a downloaded file does not match its published MD5.
        DownloadError: no mirror could be reached for a missing file.
    """
    key = _canonical_name(name)
    fraction = _check_fraction(validation_fraction)
    seed = _check_seed(split_seed)
    limit_train = _check_limit("limit_train", limit_train)
    limit_test = _check_limit("limit_test", limit_test)

    if key == "digits":
        *arrays, scale, source = _load_digits()
        x_pool, y_pool, x_test, y_test = (array.copy() for array in arrays)
    else:
        folder, source_path = _locate(key, data_dir, cache_dir, download)
        if key == "cifar10":
            x_pool, y_pool, x_test, y_test = _load_cifar10(source_path)
        else:
            x_pool, y_pool, x_test, y_test = _load_idx_dataset(folder)
        scale = 255
        source = str(source_path)

    n_pool = len(y_pool)
    n_validation = math.floor(fraction * n_pool + 0.5)
    if n_pool - n_validation < 1:
        raise ValueError(
            f"load_dataset: validation_fraction={fraction!r} leaves no training examples "
            f"out of {n_pool}"
        )
    order = np.random.default_rng(seed).permutation(n_pool)
    validation_index = np.sort(order[:n_validation])
    train_order = order[n_validation:]
    if limit_train is not None:
        train_order = train_order[:limit_train]
    train_index = np.sort(train_order)
    test_count = len(y_test) if limit_test is None else min(limit_test, len(y_test))

    return DatasetSplits(
        name=key,
        train=_tensor_dataset(x_pool[train_index], y_pool[train_index], scale),
        validation=_tensor_dataset(x_pool[validation_index], y_pool[validation_index], scale),
        test=_tensor_dataset(x_test[:test_count], y_test[:test_count], scale),
        input_shape=_INPUT_SHAPES[key],
        num_classes=len(CLASS_NAMES[key]),
        source=source,
    )


def verify_checksums(folder: str | os.PathLike[str], name: str) -> dict[str, str]:
    """Check the original files of ``name`` in ``folder`` (or ``folder/<name>``) against the
    published MD5 digests.

    Returns ``{file name: md5}``. Raises :class:`DatasetNotFoundError` when a file is absent
    and :class:`ChecksumError` listing every mismatch. Loading does not require this.
    """
    key = _canonical_name(name)
    if key == "digits":
        raise ValueError("verify_checksums: 'digits' is bundled with scikit-learn; no files")
    root = Path(folder).expanduser()
    candidates = _candidate_folders(key, root)
    published = _MD5[key]
    best = max(candidates, key=lambda path: sum((path / f).is_file() for f in published))
    missing = [filename for filename in published if not (best / filename).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{key}: cannot verify checksums, missing original file(s) in {best}: "
            f"{', '.join(missing)}",
            missing,
            best,
        )
    digests: dict[str, str] = {}
    mismatches = []
    for filename, expected in published.items():
        actual = _md5(best / filename)
        digests[filename] = actual
        if actual != expected:
            mismatches.append(f"{best / filename}: expected MD5 {expected}, actual {actual}")
    if mismatches:
        raise ChecksumError(f"{key}: checksum mismatch: " + "; ".join(mismatches))
    return digests


# --- arguments ---------------------------------------------------------------------------------


def _canonical_name(name: Any) -> str:
    if not isinstance(name, str):
        raise ValueError(f"dataset name: expected a string, got {name!r}; allowed: {DATASETS}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"dataset name: {name!r} is not known; allowed: {list(DATASETS)}")
    return key


def _check_fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"load_dataset: validation_fraction: expected a number, got {value!r}")
    value = float(value)
    if not (0.0 <= value < 1.0):
        raise ValueError(
            f"load_dataset: validation_fraction={value!r} is out of range; allowed: 0 <= value < 1"
        )
    return value


def _check_seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"load_dataset: split_seed: expected an integer >= 0, got {value!r}")
    return int(value)


def _check_limit(what: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"load_dataset: {what}: expected an integer >= 1 or None, got {value!r}")
    return int(value)


# --- locating and downloading ------------------------------------------------------------------


def _candidate_folders(key: str, root: Path) -> list[Path]:
    """Subfolders named like the dataset first, then the folder itself."""
    return [root / sub for sub in _SUBFOLDERS[key]] + [root]


def _idx_file(folder: Path, filename: str) -> Path | None:
    """The gzipped IDX file, or its decompressed twin (name without ``.gz``), if present."""
    for path in (folder / filename, folder / filename.removesuffix(".gz")):
        if path.is_file():
            return path
    return None


def _missing_in(key: str, folder: Path) -> tuple[list[str], Path | None]:
    """Files of ``key`` missing in ``folder``, and the path to load from when none are."""
    if key == "cifar10":
        for extracted in (folder / _CIFAR_FOLDER, folder):
            if all((extracted / batch).is_file() for batch in _CIFAR_BATCHES):
                return [], extracted
        if (folder / _CIFAR_TARBALL).is_file():
            return [], folder / _CIFAR_TARBALL
        extracted = folder / _CIFAR_FOLDER
        if extracted.is_dir():
            absent = [b for b in _CIFAR_BATCHES if not (extracted / b).is_file()]
            return [f"{_CIFAR_FOLDER}/{batch}" for batch in absent], None
        return [_CIFAR_TARBALL], None
    missing = [filename for filename in _IDX_FILES if _idx_file(folder, filename) is None]
    return missing, (folder if not missing else None)


def _locate(
    key: str,
    data_dir: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    download: bool,
) -> tuple[Path, Path]:
    """Return (folder, path to load) for ``key``, downloading missing files if allowed."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        folders = _candidate_folders(key, root)
        target = root / key
    else:
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        target = root / key
        folders = [target]

    best_folder, best_missing = folders[0], None
    for folder in folders:
        missing, path = _missing_in(key, folder)
        if path is not None:
            return folder, path
        if best_missing is None or len(missing) < len(best_missing):
            best_folder, best_missing = folder, missing
    assert best_missing is not None

    if download:
        _download_missing(key, target)
        missing, path = _missing_in(key, target)
        if path is not None:
            return target, path
        best_folder, best_missing = target, missing

    others = [str(folder) for folder in folders if folder != best_folder]
    also = f" (also looked in {', '.join(others)})" if others else ""
    where = (
        f"pass --data-dir DIR (data_dir=) naming a folder that holds them directly or in DIR/{key}"
        if data_dir is None
        else "place them there"
    )
    mirrors = ", ".join(_MIRRORS[key])
    alternative = f" (or its extracted folder {_CIFAR_FOLDER})" if key == "cifar10" else ""
    raise DatasetNotFoundError(
        f"{key}: missing file(s) in {best_folder}: {', '.join(best_missing)}{alternative}{also}. "
        f"To get them, {where}, or use download=True to download them from {mirrors} into "
        f"{target} (verified against the published MD5 checksums).",
        best_missing,
        best_folder,
    )


def _download_missing(key: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for filename, md5 in _MD5[key].items():
        if not (folder / filename).is_file():
            _download_file(filename, md5, _MIRRORS[key], folder)


def _download_file(filename: str, expected: str, mirrors: Iterable[str], folder: Path) -> None:
    """Fetch ``filename`` from the first mirror that delivers the published MD5, atomically."""
    failures: list[str] = []
    mismatches: list[str] = []
    for base in mirrors:
        url = base + filename
        handle, temporary_name = tempfile.mkstemp(
            prefix=f".{filename}.", suffix=".part", dir=folder
        )
        os.close(handle)
        temporary = Path(temporary_name)
        try:
            logger.info("downloading %s into %s", url, folder)
            try:
                _fetch(url, temporary)
            except (OSError, http.client.HTTPException, ValueError) as error:
                failures.append(f"{url}: {error}")
                continue
            actual = _md5(temporary)
            if actual != expected:
                mismatches.append(f"actual {actual} from {url}")
                continue
            os.replace(temporary, folder / filename)
            return
        finally:
            temporary.unlink(missing_ok=True)
    if mismatches:
        raise ChecksumError(
            f"{filename}: MD5 checksum mismatch, expected {expected}, "
            f"{'; '.join(mismatches)}; the download was deleted"
            + (f" (other mirrors failed: {'; '.join(failures)})" if failures else "")
        )
    raise DownloadError(f"{filename}: download failed from every mirror: {'; '.join(failures)}")


def _fetch(url: str, destination: Path) -> None:
    """Write the body of ``url`` to ``destination`` (the only function that uses the network)."""
    request = urllib.request.Request(url, headers={"User-Agent": "xbarlab-datasets"})
    with (
        urllib.request.urlopen(request, timeout=_FETCH_TIMEOUT_S) as response,
        open(destination, "wb") as out,
    ):
        while chunk := response.read(_CHUNK):
            out.write(chunk)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- parsing -----------------------------------------------------------------------------------


@functools.cache
def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, str]:
    """scikit-learn's digits, split once per process (callers get copies: `load_dataset`)."""
    import sklearn
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedShuffleSplit

    bunch = load_digits()
    images = np.rint(bunch.images).astype(np.uint8)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    splitter = StratifiedShuffleSplit(
        n_splits=1, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_TEST_SEED
    )
    pool_index, test_index = next(splitter.split(images, labels))
    pool_index, test_index = np.sort(pool_index), np.sort(test_index)
    source = (
        f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__}); test: stratified "
        f"{DIGITS_TEST_FRACTION:.0%} holdout, seed {DIGITS_TEST_SEED}"
    )
    arrays = (images[pool_index], labels[pool_index], images[test_index], labels[test_index])
    return (*arrays, 16, source)


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzipped if its name ends in ``.gz``)."""
    kind = "image" if magic == _IDX_IMAGES_MAGIC else "label"
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as stream:
                data = stream.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetError(
            f"{path}: cannot read the gzip-compressed IDX {kind} file, it is corrupt or "
            f"truncated ({error})"
        ) from error
    if len(data) < 4:
        raise DatasetError(f"{path}: truncated, {len(data)} bytes is too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DatasetError(
            f"{path}: bad magic number {found} (0x{found:08x}); an IDX {kind} file starts with "
            f"{magic} (0x{magic:08x})"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated inside the IDX header ({len(data)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims)
    found_bytes = len(data) - header
    if found_bytes != expected:
        state = "truncated" if found_bytes < expected else "has trailing data"
        raise DatasetError(
            f"{path}: {state}: the header declares dimensions {dims} ({expected} bytes of data), "
            f"the file holds {found_bytes}"
        )
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def _read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = _read_idx(images_path, _IDX_IMAGES_MAGIC, 3)
    labels = _read_idx(labels_path, _IDX_LABELS_MAGIC, 1)
    if images.shape[1:] != (28, 28):
        raise DatasetError(f"{images_path}: images are {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
        raise DatasetError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    if len(labels) and labels.max() > 9:
        raise DatasetError(f"{labels_path}: label {int(labels.max())} is out of range 0..9")
    return images[:, None, :, :], labels.astype(np.int64)


def _load_idx_dataset(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    paths = {}
    for filename in _IDX_FILES:
        path = _idx_file(folder, filename)
        assert path is not None
        paths[filename] = path
    x_pool, y_pool = _read_idx_pair(paths[_TRAIN_IMAGES], paths[_TRAIN_LABELS])
    x_test, y_test = _read_idx_pair(paths[_TEST_IMAGES], paths[_TEST_LABELS])
    return x_pool, y_pool, x_test, y_test


def _numpy_core(module: str) -> str:
    """Map ``numpy.core.*`` (old pickles) to ``numpy._core.*`` on numpy 2."""
    if module.startswith("numpy.core") and hasattr(np, "_core"):
        return "numpy._core" + module.removeprefix("numpy.core")
    return module


_PICKLE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals needed to rebuild numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a CIFAR-10 batch"
            )
        return super().find_class(_numpy_core(module), name)


def _field(batch: Mapping[Any, Any], key: str) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise KeyError(key)


def _read_cifar_batch(stream: IO[bytes], where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _BatchUnpickler(stream, encoding="bytes").load()
    except Exception as error:  # a corrupt pickle can raise almost anything
        raise DatasetError(
            f"{where}: not a readable CIFAR-10 batch ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(batch, Mapping):
        raise DatasetError(f"{where}: expected a pickled dict, got {type(batch).__name__}")
    try:
        data = np.asarray(_field(batch, "data"))
        labels = np.asarray(_field(batch, "labels"))
    except KeyError as error:
        raise DatasetError(f"{where}: the batch has no {error.args[0]!r} entry") from error
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{where}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.ndim != 1 or len(labels) != len(data) or labels.dtype.kind not in "iu":
        raise DatasetError(
            f"{where}: labels are {labels.dtype} {labels.shape}, expected {len(data)} integers"
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{where}: labels are out of range 0..9")
    # Each row holds 1024 red, then 1024 green, then 1024 blue values, each plane row-major.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _load_cifar10(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if path.is_dir():
        for batch in _CIFAR_BATCHES:
            with open(path / batch, "rb") as stream:
                batches[batch] = _read_cifar_batch(stream, str(path / batch))
    else:
        try:
            # One sequential pass: no seeking back in the compressed stream.
            with tarfile.open(path, "r:gz") as tar:
                for member in tar:
                    folder, _, batch = member.name.rpartition("/")
                    if (
                        folder.endswith(_CIFAR_FOLDER)
                        and batch in _CIFAR_BATCHES
                        and member.isfile()
                    ):
                        stream = tar.extractfile(member)
                        assert stream is not None
                        batches[batch] = _read_cifar_batch(stream, f"{path}: {member.name}")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise DatasetError(
                f"{path}: cannot read the CIFAR-10 tarball, it is corrupt or truncated ({error})"
            ) from error
        absent = [batch for batch in _CIFAR_BATCHES if batch not in batches]
        if absent:
            raise DatasetError(
                f"{path}: the tarball lacks {', '.join(f'{_CIFAR_FOLDER}/{b}' for b in absent)}"
            )
    x_pool = np.concatenate([batches[batch][0] for batch in _CIFAR_TRAIN_BATCHES])
    y_pool = np.concatenate([batches[batch][1] for batch in _CIFAR_TRAIN_BATCHES])
    x_test, y_test = batches[_CIFAR_TEST_BATCH]
    return x_pool, y_pool, x_test, y_test


def _tensor_dataset(x: np.ndarray, y: np.ndarray, scale: int) -> TensorDataset:
    """uint8 images -> float32 in [0, 1] (value / scale, correctly rounded), labels -> int64."""
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    inputs /= scale
    return TensorDataset(inputs, torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))
