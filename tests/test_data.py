"""kdlib.lab.data: our IDX reader on tiny files in the real formats, splits, errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs

import kdlib.lab.data as D

IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write ``array`` (uint8) in LeCun's IDX format, independently of kdlib."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes(order="C")
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_idx_dataset(directory: Path, n_train: int = 50, n_test: int = 20, seed: int = 0,
                     compress: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in zip(arrays, IDX_STEMS, strict=True):
        write_idx(directory / (stem + (".gz" if compress else "")), arrays[key], compress)
    return arrays


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """No dataset anywhere: empty KDLIB_DATA_DIR, no env dirs, no Debian directory."""
    for var in ("KDLIB_FASHION_MNIST_DIR", "KDLIB_MNIST_DIR", "KDLIB_DOWNLOAD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KDLIB_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    return tmp_path


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    p = tmp_path / ("x.idx.gz" if compress else "x.idx")
    write_idx(p, a, compress)
    out = D.read_idx(p)
    assert out.dtype == np.uint8 and out.shape == (7, 28, 28)
    np.testing.assert_array_equal(out, a)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(ValueError, match="not an IDX"):
        D.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"abc")
    with pytest.raises(ValueError, match="header promises 5"):
        D.read_idx(short)


def test_fashion_mnist_from_env_dir(tmp_path, no_data, monkeypatch):
    raw = make_idx_dataset(tmp_path / "fm")
    monkeypatch.setenv("KDLIB_FASHION_MNIST_DIR", str(tmp_path / "fm"))
    s = D.load_dataset("fashion_mnist")
    assert s.x_train.shape == (45, 1, 28, 28) and s.x_val.shape == (5, 1, 28, 28)
    assert s.x_test.shape == (20, 1, 28, 28) and s.x_train.dtype == torch.float32
    # the documented rule: validation = last 10% of randperm(50) from a generator seeded 0
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_array_equal(s.y_val.numpy(), raw["train_labels"][perm[45:]])
    np.testing.assert_array_equal(s.y_train.numpy(), raw["train_labels"][perm[:45]])
    np.testing.assert_array_equal(s.y_test.numpy(), raw["test_labels"])
    # normalisation uses the training split only
    train_pixels = raw["train_images"][perm[:45]].astype(np.float64) / 255
    mean, std = train_pixels.mean(), train_pixels.std(ddof=1)
    expected_test = (raw["test_images"].astype(np.float64) / 255 - mean) / std
    np.testing.assert_allclose(s.x_test[:, 0].numpy(), expected_test, rtol=1e-4, atol=1e-4)
    assert abs(float(s.x_train.mean())) < 1e-5 and abs(float(s.x_train.std()) - 1) < 1e-5
    assert s.info["n_train"] == 45 and s.info["n_val"] == 5 and s.info["split_seed"] == 0
    assert s.class_names[3] == "Dress" and s.in_features == 784


def test_subsets_are_prefixes_and_split_seed_matters(tmp_path, no_data, monkeypatch):
    make_idx_dataset(tmp_path / "fm")
    monkeypatch.setenv("KDLIB_FASHION_MNIST_DIR", str(tmp_path / "fm"))
    full = D.load_dataset("fashion_mnist", normalize=False)
    small = D.load_dataset("fashion_mnist", train_size=10, val_size=2, normalize=False)
    assert torch.equal(small.x_train, full.x_train[:10]) and torch.equal(small.x_val, full.x_val[:2])
    other = D.load_dataset("fashion_mnist", split_seed=1, normalize=False)
    assert not torch.equal(other.y_train, full.y_train)
    with pytest.raises(ValueError, match="train_size"):
        D.load_dataset("fashion_mnist", train_size=46)
    with pytest.raises(ValueError, match="val_fraction"):
        D.load_dataset("fashion_mnist", val_fraction=1.0)
    with pytest.raises(ValueError, match="name must be one of"):
        D.load_dataset("imagenet")


def test_mnist_in_torchvision_layout_uncompressed(tmp_path, no_data, monkeypatch):
    root = tmp_path / "root"
    raw = make_idx_dataset(root / "MNIST" / "raw", compress=False)
    monkeypatch.setenv("KDLIB_DATA_DIR", str(root))
    s = D.load_dataset("mnist", val_fraction=0.2)
    assert len(s.y_val) == 10 and len(s.y_train) == 40
    np.testing.assert_array_equal(s.y_test.numpy(), raw["test_labels"])


@pytest.mark.parametrize("name,hints", [
    ("fashion_mnist", ["apt-get install dataset-fashion-mnist", "KDLIB_FASHION_MNIST_DIR",
                       "torchvision.datasets.FashionMNIST"]),
    ("mnist", ["KDLIB_MNIST_DIR", "torchvision.datasets.MNIST"]),
])
def test_missing_data_says_how_to_get_it(no_data, name, hints):
    with pytest.raises(D.DatasetNotFoundError) as err:
        D.load_dataset(name)
    assert isinstance(err.value, FileNotFoundError)
    for hint in hints:
        assert hint in str(err.value)


def test_download_route_is_used_when_allowed(tmp_path, no_data, monkeypatch):
    calls = []

    def fake_download(name, root):
        calls.append(name)
        make_idx_dataset(root / "FashionMNIST" / "raw")

    monkeypatch.setattr(D, "_torchvision_download", fake_download)
    with pytest.raises(D.DatasetNotFoundError):
        D.load_dataset("fashion_mnist")  # downloads are off by default
    assert calls == []
    monkeypatch.setenv("KDLIB_DOWNLOAD", "1")
    assert len(D.load_dataset("fashion_mnist").y_test) == 20 and calls == ["fashion_mnist"]


def test_digits_embedded_default():
    s = D.load_dataset("digits")
    assert s.input_shape == (1, 8, 8) and s.in_features == 64
    assert len(s.y_train) + len(s.y_val) + len(s.y_test) == 1797 and len(s.y_test) == 359
    again = D.load_dataset("digits")
    assert torch.equal(s.x_test, again.x_test)
    assert abs(float(s.x_train.mean())) < 1e-5


def test_real_fashion_mnist(monkeypatch):
    needs(D.DEBIAN_FASHION_MNIST.is_dir(), "Fashion-MNIST (Debian's dataset-fashion-mnist)",
          "`sudo apt-get install dataset-fashion-mnist`, or set KDLIB_FASHION_MNIST_DIR to the IDX files")
    monkeypatch.delenv("KDLIB_FASHION_MNIST_DIR", raising=False)
    monkeypatch.setenv("KDLIB_DATA_DIR", "/nonexistent")
    s = D.load_dataset("fashion_mnist", val_size=1000)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (54000, 1000, 10000)
    assert torch.bincount(s.y_test, minlength=10).tolist() == [1000] * 10


def test_batch_indices_cover_a_permutation():
    g = torch.Generator().manual_seed(3)
    batches = D.batch_indices(10, 4, g)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    again = D.batch_indices(10, 4, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    assert [len(b) for b in D.batch_indices(10, 4, g, drop_last=True)] == [4, 4]
    with pytest.raises(ValueError, match="batch_size"):
        D.batch_indices(10, 0, g)
