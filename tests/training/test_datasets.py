"""Tests of training.datasets: offline, with tiny synthetic files and (if present) real MNIST."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from training import datasets
from training.datasets import (
    DATASETS,
    ChecksumError,
    DatasetError,
    DatasetNotFoundError,
    DatasetSplits,
    flatten_inputs,
    load_dataset,
    verify_checksums,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def shared_datasets_dir() -> Path:
    configured = os.environ.get("XBARLAB_DATA_DIR")
    return Path(configured) if configured else (REPO_ROOT / "../shared/datasets").resolve()


# --- synthetic files ---------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_gz(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as stream:
        stream.write(payload)


def tiny_mnist(n_train: int = 30, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": np.arange(n_train, dtype=np.uint8) % 10,
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }


def write_tiny_mnist(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    write_gz(folder / IDX_FILES[0], idx_bytes(arrays["x_train"], 2051))
    write_gz(folder / IDX_FILES[1], idx_bytes(arrays["y_train"], 2049))
    write_gz(folder / IDX_FILES[2], idx_bytes(arrays["x_test"], 2051))
    write_gz(folder / IDX_FILES[3], idx_bytes(arrays["y_test"], 2049))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def all_examples(splits: DatasetSplits) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.cat([splits.train.tensors[0], splits.validation.tensors[0]])
    y = torch.cat([splits.train.tensors[1], splits.validation.tensors[1]])
    return x, y


# --- digits ------------------------------------------------------------------------------------


def test_datasets_names():
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "cifar10")


def test_digits_loads_offline_with_shapes_range_and_sizes():
    splits = load_dataset("digits")
    assert splits.name == "digits"
    assert splits.input_shape == (1, 8, 8)
    assert splits.num_classes == 10
    assert splits.num_features == 64
    assert "load_digits" in splits.source
    sizes = [len(splits.train), len(splits.validation), len(splits.test)]
    assert sum(sizes) == 1797
    assert len(splits.test) == 450  # stratified 25 % holdout
    assert len(splits.validation) == round(0.2 * (1797 - 450))
    for part in (splits.train, splits.validation, splits.test):
        x, y = part.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert set(y.tolist()) == set(range(10))
    assert float(splits.train.tensors[0].max()) == 1.0  # 16 / 16
    assert flatten_inputs(splits.test.tensors[0]).shape == (450, 64)
    # Stratified: every class has 43..46 test examples.
    counts = torch.bincount(splits.test.tensors[1], minlength=10)
    assert int(counts.min()) >= 43 and int(counts.max()) <= 46


def test_digits_split_is_seeded_and_test_is_fixed():
    first = load_dataset("digits", split_seed=3)
    again = load_dataset("digits", split_seed=3)
    other = load_dataset("digits", split_seed=4)
    for a, b in zip(
        first.train.tensors + first.validation.tensors,
        again.train.tensors + again.validation.tensors,
        strict=True,
    ):
        assert torch.equal(a, b)
    assert not torch.equal(first.validation.tensors[0], other.validation.tensors[0])
    for a, b in zip(first.test.tensors, other.test.tensors, strict=True):
        assert torch.equal(a, b)
    # The train + validation pool is the same set whatever the seed.
    x_first, _ = all_examples(first)
    x_other, _ = all_examples(other)
    assert torch.equal(
        x_first.flatten(1).sum(1).sort().values, x_other.flatten(1).sum(1).sort().values
    )


def test_digits_validation_fraction_and_limits():
    splits = load_dataset("digits", validation_fraction=0.0, limit_train=100, limit_test=7)
    assert len(splits.validation) == 0
    assert splits.validation.tensors[0].shape == (0, 1, 8, 8)
    assert len(splits.train) == 100
    assert len(splits.test) == 7
    full = load_dataset("digits")
    assert torch.equal(splits.test.tensors[0], full.test.tensors[0][:7])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"validation_fraction": -0.1}, "validation_fraction"),
        ({"split_seed": -1}, "split_seed"),
        ({"limit_train": 0}, "limit_train"),
        ({"limit_test": 2.5}, "limit_test"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("digits", **kwargs)


def test_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match="cifar10"):
        load_dataset("imagenet")


# --- IDX (MNIST format) ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["direct", "subfolder"])
def test_idx_round_trip(tmp_path, layout):
    arrays = tiny_mnist()
    write_tiny_mnist(tmp_path / "mnist" if layout == "subfolder" else tmp_path, arrays)
    splits = load_dataset("mnist", tmp_path, validation_fraction=0.2, split_seed=5)
    assert splits.input_shape == (1, 28, 28)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (24, 6, 10)
    assert splits.source == str(tmp_path / "mnist" if layout == "subfolder" else tmp_path)

    expected_test = torch.from_numpy(arrays["x_test"].astype(np.float32))[:, None] / 255
    assert torch.equal(splits.test.tensors[0], expected_test)  # exact pixel / 255
    assert splits.test.tensors[1].tolist() == arrays["y_test"].tolist()

    # Train + validation together are exactly the training file, each image with its label.
    x, y = all_examples(splits)
    pixels = (x * 255).round().to(torch.uint8).numpy()[:, 0]
    by_image = {p.tobytes(): int(label) for p, label in zip(pixels, y, strict=True)}
    assert by_image == {
        p.tobytes(): int(label)
        for p, label in zip(arrays["x_train"], arrays["y_train"], strict=True)
    }
    assert float(x.max()) <= 1.0 and float(x.min()) >= 0.0


def test_idx_without_validation_keeps_file_order(tmp_path):
    arrays = tiny_mnist()
    write_tiny_mnist(tmp_path, arrays)
    splits = load_dataset("mnist", tmp_path, validation_fraction=0.0)
    assert splits.train.tensors[1].tolist() == arrays["y_train"].tolist()
    expected = torch.from_numpy(arrays["x_train"].astype(np.float32))[:, None] / 255
    assert torch.equal(splits.train.tensors[0], expected)


def test_idx_limit_train_is_a_seeded_nested_subset(tmp_path):
    write_tiny_mnist(tmp_path, tiny_mnist())
    small = load_dataset("mnist", tmp_path, limit_train=5, limit_test=3)
    larger = load_dataset("mnist", tmp_path, limit_train=10)
    full = load_dataset("mnist", tmp_path)
    assert (len(small.train), len(small.test), len(larger.train)) == (5, 3, 10)
    assert torch.equal(small.validation.tensors[0], full.validation.tensors[0])

    def keys(splits):
        return {x.numpy().tobytes() for x in splits.train.tensors[0]}

    assert keys(small) <= keys(larger) <= keys(full)


def test_idx_bad_magic_names_the_file(tmp_path):
    arrays = tiny_mnist()
    write_tiny_mnist(tmp_path, arrays)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    write_gz(bad, idx_bytes(arrays["y_train"], 2051))
    with pytest.raises(DatasetError, match="magic number") as info:
        load_dataset("mnist", tmp_path)
    assert str(bad) in str(info.value)


def test_idx_truncated_payload_names_the_file(tmp_path):
    arrays = tiny_mnist()
    write_tiny_mnist(tmp_path, arrays)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_gz(bad, idx_bytes(arrays["x_test"], 2051)[:-100])
    with pytest.raises(DatasetError, match="truncated") as info:
        load_dataset("mnist", tmp_path)
    assert str(bad) in str(info.value)


def test_idx_truncated_gzip_names_the_file(tmp_path):
    write_tiny_mnist(tmp_path, tiny_mnist())
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-200])
    with pytest.raises(DatasetError, match="corrupt or truncated") as info:
        load_dataset("mnist", tmp_path)
    assert str(bad) in str(info.value)


def test_idx_count_mismatch_is_reported(tmp_path):
    arrays = tiny_mnist()
    write_tiny_mnist(tmp_path, arrays)
    write_gz(tmp_path / IDX_FILES[1], idx_bytes(arrays["y_train"][:-1], 2049))
    with pytest.raises(DatasetError, match="labels"):
        load_dataset("mnist", tmp_path)


def test_missing_files_without_download_never_fetch(tmp_path, monkeypatch):
    def no_network(url, destination):
        raise AssertionError(f"network used: {url}")

    monkeypatch.setattr(datasets, "_fetch", no_network)
    folder = tmp_path / "data"
    arrays = tiny_mnist()
    write_gz(folder / IDX_FILES[0], idx_bytes(arrays["x_train"], 2051))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", folder)
    error = info.value
    assert isinstance(error, FileNotFoundError)
    message = str(error)
    for filename in IDX_FILES[1:]:
        assert filename in message
    assert f"missing file(s) in {folder}:" in message
    assert IDX_FILES[0] not in message.split("missing file(s)")[1].split(".")[0]
    assert "download=True" in message
    assert error.missing == IDX_FILES[1:]


def test_missing_cache_names_cache_folder_and_data_dir_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("XBARLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "_fetch", lambda url, destination: pytest.fail(url))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist")
    message = str(info.value)
    assert str(tmp_path / "cache" / "datasets" / "fashion-mnist") in message
    assert "--data-dir" in message and "download=True" in message
    for filename in IDX_FILES:
        assert filename in message


def test_missing_cifar_mentions_tarball(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", cache_dir=tmp_path)


# --- CIFAR-10 ----------------------------------------------------------------------------------


def cifar_batch(n: int, offset: int) -> dict[bytes, object]:
    rng = np.random.default_rng(offset)
    return {
        b"batch_label": b"synthetic",
        b"labels": [int(v) for v in (np.arange(n) + offset) % 10],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
    }


def write_cifar_folder(folder: Path, n: int = 4, old_numpy_names: bool = False) -> dict[str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for index, name in enumerate(names):
        batch = cifar_batch(n, 10 * index)
        payload = pickle.dumps(batch, protocol=2)
        if old_numpy_names:  # like the official files, written with numpy 1 on Python 2
            payload = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (folder / name).write_bytes(payload)
        batches[name] = batch
    return batches


@pytest.mark.parametrize("old_numpy_names", [False, True])
def test_cifar_folder_loads_with_channel_order(tmp_path, old_numpy_names):
    batches = write_cifar_folder(tmp_path / "cifar-10-batches-py", old_numpy_names=old_numpy_names)
    splits = load_dataset("cifar10", tmp_path, validation_fraction=0.0)
    assert splits.input_shape == (3, 32, 32)
    assert splits.source == str(tmp_path / "cifar-10-batches-py")
    x, y = splits.train.tensors
    assert x.shape == (20, 3, 32, 32) and len(splits.test) == 4
    first = batches["data_batch_1"][b"data"][0]
    # Row layout: 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane.
    for channel in range(3):
        plane = first[1024 * channel : 1024 * (channel + 1)].reshape(32, 32)
        assert torch.equal(x[0, channel], torch.from_numpy(plane.astype(np.float32)) / 255)
    assert x[0, 1, 0, 5] * 255 == float(first[1024 + 5])
    assert x[0, 2, 3, 7] * 255 == float(first[2048 + 3 * 32 + 7])
    expected_labels = [
        label for i in range(1, 6) for label in batches[f"data_batch_{i}"][b"labels"]
    ]
    assert y.tolist() == expected_labels
    assert splits.test.tensors[1].tolist() == batches["test_batch"][b"labels"]


def test_cifar_tarball_loads_like_folder(tmp_path):
    source = tmp_path / "src"
    write_cifar_folder(source / "cifar-10-batches-py")
    data = tmp_path / "data" / "cifar10"
    data.mkdir(parents=True)
    with tarfile.open(data / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_tar = load_dataset("cifar10", tmp_path / "data")
    from_folder = load_dataset("cifar10", source)
    assert from_tar.source == str(data / "cifar-10-python.tar.gz")
    for a, b in zip(
        from_tar.train.tensors + from_tar.test.tensors,
        from_folder.train.tensors + from_folder.test.tensors,
        strict=True,
    ):
        assert torch.equal(a, b)


def test_cifar_pickle_with_foreign_globals_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_folder(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}))
    with pytest.raises(DatasetError, match="not allowed") as info:
        load_dataset("cifar10", tmp_path)
    assert str(folder / "test_batch") in str(info.value)


def test_cifar_bad_shape_names_the_batch(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_folder(folder)
    batch = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)


# --- download ----------------------------------------------------------------------------------


def fake_remote(remote: Path, calls: list[str]):
    def fetch(url: str, destination: Path) -> None:
        calls.append(url)
        shutil.copyfile(remote / url.rsplit("/", 1)[1], destination)

    return fetch


def test_download_good_checksum_lands_in_cache_and_loads(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    arrays = tiny_mnist()
    write_tiny_mnist(remote, arrays)
    for filename in IDX_FILES:
        monkeypatch.setitem(datasets._MD5["mnist"], filename, md5(remote / filename))
    calls: list[str] = []
    monkeypatch.setattr(datasets, "_fetch", fake_remote(remote, calls))
    cache = tmp_path / "cache"
    # One file is already cached: only the other three are fetched.
    (cache / "mnist").mkdir(parents=True)
    shutil.copyfile(remote / IDX_FILES[3], cache / "mnist" / IDX_FILES[3])

    splits = load_dataset("mnist", cache_dir=cache, download=True)
    assert calls == [
        "https://ossci-datasets.s3.amazonaws.com/mnist/" + name for name in IDX_FILES[:3]
    ]
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(IDX_FILES)
    assert splits.source == str(cache / "mnist")
    assert splits.test.tensors[1].tolist() == arrays["y_test"].tolist()
    assert verify_checksums(cache, "mnist") == dict(datasets._MD5["mnist"])

    # Everything cached now: no further fetches, even with download=True.
    load_dataset("mnist", cache_dir=cache, download=True)
    assert len(calls) == 3


def test_download_falls_back_to_next_mirror(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    write_tiny_mnist(remote, tiny_mnist())
    for filename in IDX_FILES:
        monkeypatch.setitem(datasets._MD5["mnist"], filename, md5(remote / filename))
    calls: list[str] = []
    good = fake_remote(remote, calls)

    def flaky(url: str, destination: Path) -> None:
        if "ossci" in url:
            calls.append(url)
            raise OSError("connection refused")
        good(url, destination)

    monkeypatch.setattr(datasets, "_fetch", flaky)
    splits = load_dataset("mnist", cache_dir=tmp_path / "cache", download=True)
    assert len(splits.test) == 10
    assert sum("storage.googleapis.com" in url for url in calls) == 4
    assert not [p for p in (tmp_path / "cache" / "mnist").iterdir() if p.name.startswith(".")]


def test_download_bad_checksum_raises_and_leaves_nothing(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    write_tiny_mnist(remote, tiny_mnist())  # not the published files: checksums mismatch
    calls: list[str] = []
    monkeypatch.setattr(datasets, "_fetch", fake_remote(remote, calls))
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError) as info:
        load_dataset("mnist", cache_dir=cache, download=True)
    message = str(info.value)
    first = IDX_FILES[0]
    assert first in message
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in message  # expected
    assert md5(remote / first) in message  # actual
    assert len(calls) == 2  # both mirrors tried
    leftovers = [p for p in cache.rglob("*") if p.is_file()]
    assert leftovers == []


def test_download_into_data_dir_subfolder(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    write_tiny_mnist(remote, tiny_mnist())
    for filename in IDX_FILES:
        monkeypatch.setitem(datasets._MD5["fashion-mnist"], filename, md5(remote / filename))
    calls: list[str] = []
    monkeypatch.setattr(datasets, "_fetch", fake_remote(remote, calls))
    splits = load_dataset("fashion-mnist", tmp_path / "data", download=True)
    assert splits.source == str(tmp_path / "data" / "fashion-mnist")
    assert all(url.startswith("http://fashion-mnist.s3-website") for url in calls)


def test_verify_checksums_reports_mismatch(tmp_path):
    write_tiny_mnist(tmp_path / "mnist", tiny_mnist())
    with pytest.raises(ChecksumError, match="f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        verify_checksums(tmp_path, "mnist")
    with pytest.raises(DatasetNotFoundError):
        verify_checksums(tmp_path / "empty", "mnist")


# --- real data (optional) ----------------------------------------------------------------------


MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist_if_present():
    root = shared_datasets_dir()
    if not all((root / "mnist" / filename).is_file() for filename in IDX_FILES):
        pytest.skip(f"real MNIST not found in {root / 'mnist'} (set XBARLAB_DATA_DIR)")
    splits = load_dataset("mnist", root)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (48000, 12000, 10000)
    _, y = all_examples(splits)
    assert torch.bincount(y, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(splits.test.tensors[1], minlength=10).tolist() == MNIST_TEST_COUNTS
    # Train keeps file order: the first training labels of MNIST are 5 0 4 1 9 2 1 3 1 4.
    in_order = load_dataset("mnist", root, validation_fraction=0.0, limit_test=1)
    assert in_order.train.tensors[1][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert abs(float(in_order.train.tensors[0].mean()) - 0.1307) < 1e-3
    assert verify_checksums(root, "mnist") == {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }


def test_fetch_writes_url_body_offline(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 5000)
    destination = tmp_path / "copy.bin"
    datasets._fetch(source.as_uri(), destination)  # file:// URL: no network involved
    assert destination.read_bytes() == source.read_bytes()
