"""Datasets from files (IDX or numeric CSV, gz or not) and partitioners. Deterministic by seed; no downloads."""
from __future__ import annotations

import csv
import gzip
import io
import math
import os
import struct
from dataclasses import dataclass

import numpy as np

from . import partition as _partition

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
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} bytes, {ndim} dimensions declared)")
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
    """Train/test arrays. x: (n, features), uint8 pixels (IDX) or float32 features (CSV); pass either
    through `to_float`. y: (n,) integer class ids 0..C-1 (uint8 when C <= 256, else int64).
    `classes`: original label for each id 0..C-1 when the source labels were remapped (CSV), else None."""
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str] | None = None

    @property
    def n_classes(self) -> int:
        if self.classes is not None:
            return len(self.classes)
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
    """Model input as float32: uint8 pixels -> [0, 1] (the one input scaling every side uses); floating
    input (e.g. CSV features) -> float32 unchanged in value (no copy if already float32); other integer
    dtypes -> float32 unscaled."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) * np.float32(1.0 / 255.0)
    return x.astype(np.float32, copy=False)


def partition_by_class(y: np.ndarray, classes_per_device: list[list[int]]) -> list[np.ndarray]:
    """Each device gets every training sample of its classes (the seed: one class per device)."""
    return [np.flatnonzero(np.isin(y, cls)) for cls in classes_per_device]


def partition_iid(n: int, n_devices: int, seed: int) -> list[np.ndarray]:
    """Seeded IID split of range(n) (same as `partition.iid`)."""
    return _partition.iid(n, n_devices, seed)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _label_ids(labels: list[str]) -> tuple[np.ndarray, list[str] | None]:
    """Non-negative integer labels ("3", "3.0") are kept as ids (classes=None). Other numeric labels map
    their numerically sorted unique values to 0..C-1; non-numeric labels their sorted unique strings. The
    mapped values are returned as `classes` (id -> original label)."""
    try:
        nums = [float(v) for v in labels]
    except ValueError:
        nums = None
    if nums is not None and all(math.isfinite(v) and v >= 0 and v == int(v) for v in nums):
        y, classes = np.asarray(nums, np.int64), None
    else:
        keys = nums if nums is not None else labels
        uniq = sorted(set(keys))
        pos = {v: i for i, v in enumerate(uniq)}
        y = np.asarray([pos[v] for v in keys], np.int64)
        first = {}
        for k, s in zip(keys, labels):
            first.setdefault(k, s)
        classes = [first[v] for v in uniq]
    return (y.astype(np.uint8) if y.max() < 256 else y), classes


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tr, te = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_te = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, int(round(test_fraction * len(idx)))))
        te.append(idx[:n_te])
        tr.append(idx[n_te:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(te))


def load_csv(path: str, label_col: int | str = -1, delimiter: str = ",", header: bool | str = "auto",
             test_fraction: float = 0.2, seed: int = 0, name: str | None = None) -> Dataset:
    """Load a numeric CSV (``.csv`` or ``.csv.gz``) with one class-label column into a Dataset.

    - ``label_col``: column index (negative counts from the end) or, with a header, its name.
    - ``header``: True / False, or "auto" = the first row is a header when one of its feature fields is not
      a number.
    - Features become float32 (x_train/x_test are float32, not uint8; `to_float` leaves them as they are).
      Every feature must be a finite number: else ValueError naming the line and column.
    - Labels: non-negative integers are used as class ids as they are; other labels (strings...) are mapped
      sorted-unique -> 0..C-1 and the names kept in ``Dataset.classes``.
    - Rows with a different field count than the first row: ValueError naming the line. Blank lines skipped.
    - Split: stratified by class, seeded: each class with >= 2 rows puts round(test_fraction * n) of them
      (at least 1, at most n-1) in the test set; rows keep file order within train and test.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataNotFound(f"CSV file {path} does not exist")
    if not 0 < float(test_fraction) < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if header not in (True, False, "auto"):
        raise ValueError(f"header must be True, False or 'auto', got {header!r}")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        text = f.read()
    rows: list[tuple[int, list[str]]] = []
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    for fields in reader:
        fields = [v.strip() for v in fields]
        if not fields or fields == [""]:
            continue
        rows.append((reader.line_num, fields))
    if not rows:
        raise ValueError(f"{path}: no rows")
    width = len(rows[0][1])
    if width < 2:
        raise ValueError(f"{path}:{rows[0][0]}: need a label column and at least one feature column, "
                         f"got {width} field(s) (delimiter {delimiter!r}?)")
    names = None
    if isinstance(label_col, str):
        if header is False:
            raise ValueError(f"label_col={label_col!r} is a column name but header=False")
        if label_col not in rows[0][1]:
            raise ValueError(f"{path}: no column named {label_col!r} in header {rows[0][1]}")
        lc = rows[0][1].index(label_col)
        header = True
    else:
        lc = int(label_col)
        if not -width <= lc < width:
            raise ValueError(f"{path}: label_col {label_col} out of range for {width} columns")
        lc %= width
    feat_cols = [j for j in range(width) if j != lc]
    if header == "auto":
        header = not all(_is_number(rows[0][1][j]) for j in feat_cols)
    if header:
        names = rows[0][1]
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{path}: no data rows")
    x = np.empty((len(rows), width - 1), np.float32)
    labels = []
    for r, (line, fields) in enumerate(rows):
        if len(fields) != width:
            raise ValueError(f"{path}:{line}: {len(fields)} fields, expected {width} (as on line {rows[0][0]})")
        for k, j in enumerate(feat_cols):
            try:
                v = float(fields[j])
            except ValueError:
                v = None
            if v is None or not math.isfinite(v):
                col = f"column {j + 1}" + (f" ({names[j]!r})" if names else "")
                raise ValueError(f"{path}:{line}: {col} is not a finite number: {fields[j]!r}") from None
            x[r, k] = v
        if fields[lc] == "":
            raise ValueError(f"{path}:{line}: empty label (column {lc + 1})")
        labels.append(fields[lc])
    y, classes = _label_ids(labels)
    tr, te = _stratified_split(y, float(test_fraction), seed)
    if len(te) == 0:
        raise ValueError(f"{path}: too few rows per class for a test split ({len(rows)} rows)")
    base = os.path.basename(path)
    name = name or (base[:-7] if base.endswith(".csv.gz") else base[:-4] if base.endswith(".csv") else base)
    return Dataset(name, x[tr], y[tr], x[te], y[te], classes)


def load_dataset(spec: str | None = None) -> Dataset:
    """Load what the user named: None -> Debian's Fashion-MNIST; a directory -> IDX files in it
    (`load_idx_dataset`); a file ending .csv or .csv.gz -> `load_csv` with its defaults. A missing path
    raises DataNotFound (with the install hint for IDX); an existing file of another kind, ValueError."""
    if spec is None:
        return load_idx_dataset(None)
    spec = os.fspath(spec)
    if spec.lower().endswith((".csv", ".csv.gz")):
        return load_csv(spec)
    if os.path.isfile(spec):
        raise ValueError(f"{spec}: unsupported data file; give an IDX directory or a .csv / .csv.gz file")
    return load_idx_dataset(spec)
