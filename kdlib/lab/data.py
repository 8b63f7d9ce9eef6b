"""Datasets as tensors that live on the device, with fixed and recorded splits.

Every loader returns a :class:`Splits`: float32 images ``(N, C, H, W)`` (normalised with
statistics of the training split only) and int64 labels ``(N,)`` for the train,
validation and test splits, already on the requested device. Training loops index these
tensors with a permutation (:func:`batch_indices`); there is no per-sample Python and no
``DataLoader`` in the hot loop (the airbench style).

Datasets (``name`` for :func:`load_dataset`):

``digits``
    scikit-learn's 8×8 handwritten digits (1,797 images, ships with scikit-learn, no
    network). It has no official test split: under a permutation with seed ``split_seed``
    the last 20% are the test split.
``fashion_mnist``, ``mnist``
    The original IDX files (``train-images-idx3-ubyte[.gz]`` ...), 60,000 training and
    10,000 test images of 28×28. Searched, in this order, in ``$KDLIB_FASHION_MNIST_DIR``
    (``$KDLIB_MNIST_DIR``), ``$KDLIB_DATA_DIR/{fashion-mnist,FashionMNIST/raw}``
    (``$KDLIB_DATA_DIR/{mnist,MNIST/raw}``), and for Fashion-MNIST the Debian package's
    ``/usr/share/datasets/fashion-mnist``. With ``download=True`` (or
    ``KDLIB_DOWNLOAD=1``) torchvision fetches them into ``$KDLIB_DATA_DIR`` (default
    ``./data``) where a network exists. Parsed by :func:`read_idx`, our own reader.

Splits: the validation split is the last ``val_fraction`` (default 10%) of the official
training images under ``torch.randperm`` with a ``torch.Generator`` seeded by
``split_seed`` (default 0); the test split is the official one. Subsets of the training
split (``train_size``) are prefixes of that permuted order, so a smaller transfer set is
always contained in a larger one. :attr:`Splits.info` records all of it.

A missing dataset raises :class:`DatasetNotFoundError` (a ``FileNotFoundError``) whose
message says how to obtain the files.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

DATASETS = ("digits", "fashion_mnist", "mnist")
"""Names accepted by :func:`load_dataset`."""

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = {
    "digits": tuple(str(i) for i in range(10)),
    "mnist": tuple(str(i) for i in range(10)),
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on this machine; the message says how to obtain them."""


@dataclass
class Splits:
    """Train / validation / test tensors of one dataset, on one device.

    Attributes:
        name: dataset name (one of :data:`DATASETS`).
        x_train, x_val, x_test: float32 ``(N, C, H, W)``, normalised with the training
            split's statistics (one mean and std per channel).
        y_train, y_val, y_test: int64 ``(N,)`` class indices in ``[0, num_classes)``.
        num_classes: number of classes (10 for all four datasets).
        class_names: human-readable class names.
        info: JSON-ready description of the splits (sizes, seeds, source, statistics),
            stored in every result record.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, ``(C, H, W)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def in_features(self) -> int:
        """Number of inputs of an MLP on this data, ``C·H·W``."""
        return int(np.prod(self.input_shape))

    def to(self, device: torch.device | str) -> Splits:
        """Return a copy with every tensor moved to ``device``."""
        moved = {k: getattr(self, k).to(device) for k in
                 ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        return Splits(self.name, **moved, num_classes=self.num_classes,
                      class_names=self.class_names, info=dict(self.info))


# ----------------------------------------------------------------------------- file formats

def _open_maybe_gz(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzip-compressed when the name ends in ``.gz``.

    Format: two zero bytes, a type byte (0x08 = uint8, ...), a byte with the number of
    dimensions ``d``, then ``d`` big-endian uint32 sizes, then the data in C order.

    Returns:
        numpy array of the stored shape and type (uint8 for (Fashion-)MNIST).

    Raises:
        ValueError: if the header is malformed or the data length does not match the sizes.
    """
    path = Path(path)
    with _open_maybe_gz(path) as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX data has {len(raw) - header} bytes, the header promises {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


# ----------------------------------------------------------------------------- locating files

def _env_dir(var: str) -> Path | None:
    value = os.environ.get(var)
    return Path(value) if value else None


def _data_root() -> Path:
    return _env_dir("KDLIB_DATA_DIR") or Path("data")


def _find_idx_dir(candidates: list[Path]) -> Path | None:
    for d in candidates:
        if all(_idx_path(d, stem) is not None for stem in IDX_FILES.values()):
            return d
    return None


def _idx_path(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _idx_candidates(name: str) -> list[Path]:
    env = "KDLIB_FASHION_MNIST_DIR" if name == "fashion_mnist" else "KDLIB_MNIST_DIR"
    root = _data_root()
    subdirs = ("fashion-mnist", "FashionMNIST/raw") if name == "fashion_mnist" else ("mnist", "MNIST/raw")
    candidates = [p for p in [_env_dir(env)] if p is not None]
    candidates += [root / s for s in subdirs]
    if name == "fashion_mnist":
        candidates.append(DEBIAN_FASHION_MNIST)
    return candidates


def _download_allowed(download: bool | None) -> bool:
    if download is not None:
        return download
    return os.environ.get("KDLIB_DOWNLOAD", "") not in ("", "0")


def _missing_message(name: str, searched: list[Path]) -> str:
    where = ", ".join(str(p) for p in searched)
    env = {"fashion_mnist": "KDLIB_FASHION_MNIST_DIR", "mnist": "KDLIB_MNIST_DIR"}[name]
    how = [f"{name} files not found (searched: {where}). To obtain them:"]
    if name == "fashion_mnist":
        how.append("  * Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
                   f"(installs the four IDX .gz files in {DEBIAN_FASHION_MNIST});")
    tv = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}[name]
    how.append(f"  * on a machine with a network: python -c \"import torchvision; "
               f"torchvision.datasets.{tv}('data', download=True)\" (fetches both splits) and copy "
               "data/ here (or set KDLIB_DATA_DIR to it), or run kdlib with KDLIB_DOWNLOAD=1;")
    files = ", ".join(f"{s}.gz" for s in IDX_FILES.values())
    how.append(f"  * or put the files ({files}) in a directory and set {env}=that directory "
               "(or KDLIB_DATA_DIR to the parent of torchvision's layout).")
    return "\n".join(how)


def _torchvision_download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd  # imported lazily: only needed with a network

    cls = {"fashion_mnist": tvd.FashionMNIST, "mnist": tvd.MNIST}[name]
    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        cls(str(root), train=train, download=True)


def _load_idx_dataset(name: str, download: bool | None) -> tuple[np.ndarray, ...]:
    candidates = _idx_candidates(name)
    directory = _find_idx_dir(candidates)
    if directory is None and _download_allowed(download):
        _torchvision_download(name, _data_root())
        directory = _find_idx_dir(candidates)
    if directory is None:
        raise DatasetNotFoundError(_missing_message(name, candidates))
    arrays = {k: read_idx(_idx_path(directory, stem)) for k, stem in IDX_FILES.items()}
    for split in ("train", "test"):
        if arrays[f"{split}_images"].shape[0] != arrays[f"{split}_labels"].shape[0]:
            raise ValueError(f"{directory}: {split} images and labels differ in number")
    return (arrays["train_images"][:, None], arrays["train_labels"].astype(np.int64),
            arrays["test_images"][:, None], arrays["test_labels"].astype(np.int64), str(directory))


def _load_digits(split_seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8), values 0..16
    y = bunch.target.astype(np.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed)).numpy()
    n_test = round(0.2 * len(y))
    train_idx, test_idx = perm[:-n_test], perm[-n_test:]
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx], "sklearn.datasets.load_digits"


# ----------------------------------------------------------------------------- public API

def load_dataset(
    name: str,
    device: torch.device | str = "cpu",
    *,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    train_size: int | None = None,
    val_size: int | None = None,
    normalize: bool = True,
    download: bool | None = None,
) -> Splits:
    """Load a dataset as normalised tensors on ``device`` with fixed train/val/test splits.

    Args:
        name: one of :data:`DATASETS`.
        device: where the tensors live.
        split_seed: seed of the permutation that picks the validation split (and, for
            ``digits``, the test split).
        val_fraction: fraction of the official training images held out for validation,
            in ``[0, 1)``.
        train_size: keep only the first ``train_size`` images of the (permuted) training
            split; ``None`` keeps all. Normalisation statistics use the kept images.
        val_size: keep only the first ``val_size`` validation images; ``None`` keeps all.
        normalize: subtract the per-channel mean and divide by the per-channel std of the
            training split (pixel values are first scaled to [0, 1]).
        download: allow torchvision to download missing files (default: ``KDLIB_DOWNLOAD``).

    Returns:
        :class:`Splits` on ``device``.

    Raises:
        ValueError: unknown ``name``, ``val_fraction`` outside ``[0, 1)``, sizes out of range.
        DatasetNotFoundError: the files are missing (the message says how to get them).
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {', '.join(DATASETS)}; got {name!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if name == "digits":
        x_tr, y_tr, x_te, y_te, source = _load_digits(split_seed)
        scale = 16.0
    else:
        x_tr, y_tr, x_te, y_te, source = _load_idx_dataset(name, download)
        scale = 255.0
    n_official = len(y_tr)
    perm = torch.randperm(n_official, generator=torch.Generator().manual_seed(split_seed)).numpy()
    n_val = round(val_fraction * n_official)
    train_idx, val_idx = perm[: n_official - n_val], perm[n_official - n_val:]
    for arg, value, limit in (("train_size", train_size, len(train_idx)), ("val_size", val_size, n_val)):
        if value is not None and not (0 < value <= limit if arg == "train_size" else 0 <= value <= limit):
            raise ValueError(f"{arg} must be in [1, {limit}] for {name} (or None), got {value!r}")
    if train_size is not None:
        train_idx = train_idx[:train_size]
    if val_size is not None:
        val_idx = val_idx[:val_size]

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / scale)

    x_train, x_val, x_test = tensor(x_tr[train_idx]), tensor(x_tr[val_idx]), tensor(x_te)
    if normalize:
        mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
        std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        x_train, x_val, x_test = ((x - mean) / std for x in (x_train, x_val, x_test))
        stats = {"mean": [round(v, 6) for v in mean.flatten().tolist()],
                 "std": [round(v, 6) for v in std.flatten().tolist()]}
    else:
        stats = None
    info = {
        "dataset": name, "source": source if name == "digits" else Path(source).name,
        "split_seed": split_seed, "val_fraction": val_fraction,
        "n_train": len(train_idx), "n_val": len(val_idx), "n_test": len(y_te),
        "train_size": train_size, "val_size": val_size,
        "split_rule": ("validation = last val_fraction of the official training set under "
                       "torch.randperm(generator seeded with split_seed); training subset = prefix "
                       "of the rest" + ("; test = last 20% of a permutation with the same seed"
                                        if name == "digits" else "; test = official test set")),
        "normalization": stats, "pixel_scale": scale,
    }
    splits = Splits(
        name, x_train, torch.from_numpy(y_tr[train_idx]), x_val, torch.from_numpy(y_tr[val_idx]),
        x_test, torch.from_numpy(y_te), num_classes=10, class_names=CLASS_NAMES[name], info=info,
    )
    return splits.to(device)


def batch_indices(n: int, batch_size: int, generator: torch.Generator, *, drop_last: bool = False,
                  device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """One epoch's minibatch index tensors: a ``torch.randperm(n)`` cut into batches.

    The permutation is drawn on the CPU from ``generator`` (so the order is the same on
    every device) and then moved to ``device``.

    Returns:
        list of int64 tensors of length ``batch_size`` (the last may be shorter unless
        ``drop_last``).

    Raises:
        ValueError: if ``n < 1`` or ``batch_size < 1``.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    perm = torch.randperm(n, generator=generator).to(device)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    return list(perm[:stop].split(batch_size))


def random_translate(x: torch.Tensor, max_shift: int, fill: float) -> torch.Tensor:
    """Each image of ``x`` translated by its own random whole-pixel shift (input jitter).

    Image ``b`` is moved by ``(dy_b, dx_b)``, each drawn uniformly from ``{-max_shift, ...,
    max_shift}`` with torch's global generator; pixels moved in from outside the image take the
    value ``fill`` (the normalised value of a blank pixel). One ``gather`` over a padded copy,
    so the cost is a few copies of the batch.

    Args:
        x: float images ``(B, C, H, W)``.
        max_shift: largest shift in pixels, ``>= 0`` (0 returns ``x``).
        fill: value of the pixels shifted in.

    Returns:
        ``(B, C, H, W)``, a new tensor (``x`` itself for ``max_shift = 0``).

    Raises:
        ValueError: ``x`` is not 4-dimensional or ``max_shift < 0``.
    """
    if x.dim() != 4 or max_shift < 0:
        raise ValueError(f"need images (B, C, H, W) and max_shift >= 0, got shape {tuple(x.shape)} "
                         f"and max_shift {max_shift}")
    if max_shift == 0:
        return x
    B, C, H, W = x.shape
    m, Wp = max_shift, W + 2 * max_shift
    padded = torch.nn.functional.pad(x, (m, m, m, m), value=fill).view(B, C, -1)
    # output pixel (i, j) of image b reads padded pixel (i + m - dy_b, j + m - dx_b)
    offset = torch.randint(0, 2 * m + 1, (B, 2), device=x.device)
    rows = torch.arange(H, device=x.device).view(1, H, 1) + offset[:, 0].view(B, 1, 1)
    cols = torch.arange(W, device=x.device).view(1, 1, W) + offset[:, 1].view(B, 1, 1)
    index = (rows * Wp + cols).view(B, 1, H * W).expand(B, C, H * W)
    return padded.gather(2, index).view(B, C, H, W)
