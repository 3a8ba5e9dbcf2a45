"""Human activity recognition data (PerFit's case study): ARFF files, one subject per device.

WISDM-2019's smartwatch accelerometer set ships one ARFF file per subject (`data_<id>_accel_watch.arff`):
10-second windows as 91 numeric features, the activity letter first and the subject id last. Any folder
of ARFF files in that shape loads; nothing is downloaded.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from .data import DataNotFound

WISDM_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "shared", "data", "wisdm-2019", "watch_accel")


def read_arff(path: str) -> tuple[list[str], dict[str, list[str]], list[list[str]]]:
    """-> (attribute names, nominal attributes' values, data rows as strings). Dense ARFF only."""
    names, nominal, rows, in_data = [], {}, [], False
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("%"):
                continue
            if in_data:
                fields = [s.strip().strip("'\"") for s in line.split(",")]
                if len(fields) != len(names):
                    raise ValueError(f"{path}:{n}: {len(fields)} fields, the header declares {len(names)}")
                rows.append(fields)
                continue
            low = line.lower()
            if low.startswith("@attribute"):
                rest = line[len("@attribute"):].strip()
                if rest[0] in "'\"":
                    end = rest.index(rest[0], 1)
                    name, kind = rest[1:end], rest[end + 1:].strip()
                else:
                    name, kind = rest.split(None, 1)
                names.append(name)
                if kind.startswith("{"):
                    nominal[name] = [v.strip().strip("'\"") for v in kind.strip("{}").split(",")]
            elif low.startswith("@data"):
                in_data = True
    if not names or not in_data:
        raise ValueError(f"{path}: not an ARFF file (no @attribute or @data section)")
    return names, nominal, rows


@dataclass
class Subject:
    id: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass
class HARData:
    name: str
    classes: list[str]
    features: list[str]
    subjects: list[Subject] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def pooled(self, part: str = "train") -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate([getattr(s, f"x_{part}") for s in self.subjects]),
                np.concatenate([getattr(s, f"y_{part}") for s in self.subjects]))


def split_subject(y: np.ndarray, test_fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (stratified) train/test indices; a class with one window stays in train."""
    tr, te = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_fraction)) if len(idx) > 1 else 0
        te += idx[:k].tolist()
        tr += idx[k:].tolist()
    return np.sort(np.array(tr, np.int64)), np.sort(np.array(te, np.int64))


def load_har(path: str | None = None, test_fraction: float = 0.25, seed: int = 0, subjects: int | None = None,
             standardize: bool = True) -> HARData:
    """A folder of per-subject ARFF files -> HARData, one Subject per file (sorted by name), each split
    75/25 stratified by activity (seeded). The label is the first nominal attribute; a trailing numeric
    or nominal "class"/subject column is dropped. With standardize, features are scaled by the mean and
    standard deviation of all subjects' training windows (the host's one-off statistics, which devices
    receive with the model)."""
    path = os.path.abspath(path or WISDM_DIR)
    if not os.path.isdir(path):
        raise DataNotFound(f"{path}: no such folder of ARFF files. Pass --data with a folder of per-subject "
                           f"ARFF files (WISDM-2019's wisdm-dataset/arff_files/watch/accel)")
    files = sorted(f for f in os.listdir(path) if f.endswith(".arff"))
    if not files:
        raise DataNotFound(f"{path}: no .arff files (pass --data with a folder of per-subject ARFF files)")
    files = files[:subjects] if subjects else files
    rng = np.random.default_rng(seed)
    loaded, features = [], None
    for fname in files:
        names, nominal, rows = read_arff(os.path.join(path, fname))
        label = next(n for n in names if n in nominal)
        feats = [i for i, n in enumerate(names) if n != label and n.lower() != "class"]
        if features is None:
            features = [names[i] for i in feats]
        elif [names[i] for i in feats] != features:
            raise ValueError(f"{fname}: feature attributes differ from {files[0]}'s")
        li = names.index(label)
        x = np.array([[float(r[i]) for i in feats] for r in rows], np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{fname}: non-finite feature values")
        loaded.append((fname, x, [r[li] for r in rows], nominal[label]))
    # subjects declare only the activities they did: the label set is the sorted union
    classes = sorted({c for *_, declared in loaded for c in declared})
    parts = []
    for fname, x, labels, _ in loaded:
        y = np.array([classes.index(v) for v in labels], np.int64)
        tr, te = split_subject(y, test_fraction, rng)
        sid = fname.split("_")[1] if fname.count("_") >= 2 else fname[:-5]
        parts.append(Subject(sid, x[tr], y[tr], x[te], y[te]))
    data = HARData(os.path.basename(os.path.dirname(path)) if os.path.basename(path) == "watch_accel"
                   else os.path.basename(path), classes, features, parts)
    if standardize:
        xtr, _ = data.pooled()
        mu, sd = xtr.mean(axis=0), xtr.std(axis=0)
        sd[sd < 1e-6] = 1.0
        for s in data.subjects:
            s.x_train = ((s.x_train - mu) / sd).astype(np.float32)
            s.x_test = ((s.x_test - mu) / sd).astype(np.float32)
        data.mean, data.std = mu, sd
    return data


def as_grid(x: np.ndarray, side: int) -> np.ndarray:
    """(n, f) features -> (n, side, side, 1), zero-padded: the CNN's view of a feature vector."""
    if x.shape[1] > side * side:
        raise ValueError(f"{x.shape[1]} features do not fit a {side}x{side} grid")
    out = np.zeros((len(x), side * side), np.float32)
    out[:, :x.shape[1]] = x
    return out.reshape(len(x), side, side, 1)


def grid_side(n_features: int) -> int:
    return math.isqrt(n_features - 1) + 1


def feature_view(input_shape: tuple, n_features: int):
    """A net's view of a feature vector: a net over vectors takes it as is, one over a grid (h, w, 1)
    takes it zero-padded to its side (the CNN's)."""
    if len(input_shape) == 1:
        return lambda x: x
    side = input_shape[0]
    if side * side < n_features:
        raise ValueError(f"{n_features} features do not fit the net's {input_shape} input")
    return lambda x: as_grid(x, side)
