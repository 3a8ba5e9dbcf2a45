"""Datasets from files (IDX, gz or not) and partitioners. Deterministic by seed; no downloads."""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = ("Fashion-MNIST not found. Install it with `sudo apt-get install dataset-fashion-mnist` "
                "(files in /usr/share/datasets/fashion-mnist/) or pass --data DIR holding "
                "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
                "t10k-labels-idx1-ubyte[.gz].")


class DataNotFound(FileNotFoundError):
    pass


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (uint8 data; .gz or raw), checking the magic and the declared shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} bytes of data, header says {dims}")
    return data.reshape(dims)


def _find(root: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        p = os.path.join(root, name)
        if os.path.exists(p):
            return p
    raise DataNotFound(INSTALL_HINT + f" (missing {stem} in {root})")


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # uint8 (n, 784)
    y_train: np.ndarray  # uint8 (n,)
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def load_idx_dataset(root: str | None = None, name: str | None = None) -> Dataset:
    """Load an MNIST-style IDX folder (default: Debian's Fashion-MNIST)."""
    root = root or FASHION_MNIST_DIR
    if not os.path.isdir(root):
        raise DataNotFound(INSTALL_HINT + f" ({root} does not exist)")
    x_tr = read_idx(_find(root, "train-images-idx3-ubyte"))
    y_tr = read_idx(_find(root, "train-labels-idx1-ubyte"))
    x_te = read_idx(_find(root, "t10k-images-idx3-ubyte"))
    y_te = read_idx(_find(root, "t10k-labels-idx1-ubyte"))
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise ValueError(f"{root}: image and label counts differ")
    name = name or ("fashion-mnist" if "fashion" in root.lower() else os.path.basename(os.path.normpath(root)))
    return Dataset(name, x_tr.reshape(len(x_tr), -1), y_tr, x_te.reshape(len(x_te), -1), y_te)


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1]: the one input scaling every side uses."""
    return x.astype(np.float32) * np.float32(1.0 / 255.0)


def partition_by_class(y: np.ndarray, classes_per_device: list[list[int]]) -> list[np.ndarray]:
    """Each device gets every training sample of its classes (the seed: one class per device)."""
    return [np.flatnonzero(np.isin(y, cls)) for cls in classes_per_device]


def partition_iid(n: int, n_devices: int, seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(p) for p in np.array_split(perm, n_devices)]
