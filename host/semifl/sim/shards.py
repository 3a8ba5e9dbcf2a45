"""The virtual fleet's training data on disk, each distinct shard once for every device that holds it.

Under `<fleet>/_data/`: the Pis' shards as two .npy files (x, y), which the Pi agent memory-maps (the
pages are shared through the page cache by every process that maps them), and the MCUs' as the node's
two raw files (samples.bin: rows of 784 uint8; labels.bin: one uint8 each), which it reads a row at a
time by offset. A device's config.json names the files and its rows (`first`, `rows`). The seed's
class partition gives every device of a class the same shard: 10,000 devices hold 10 shards, not
10,000 copies; a partition into disjoint parts writes each sample once.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

FOLDER = "_data"


def _indices(ds, spec) -> np.ndarray:
    if spec.indices is not None:
        return np.asarray(spec.indices)
    return np.flatnonzero(np.isin(ds.y_train, spec.classes))


def write_shards(root: Path, ds, specs) -> dict[str, dict]:
    """Write the shards of the devices in `specs` that hold part of `ds` (not those with data of
    their own, `spec.data`). -> {device id: its config.json keys for its data}."""
    folder = Path(root) / FOLDER
    parts: dict[str, dict] = {"pi": {}, "mcu": {}}   # kind -> {shard key: (first row, indices)}
    keys, rows = {}, {"pi": 0, "mcu": 0}
    by_classes: dict[tuple, np.ndarray] = {}
    for spec in specs:
        if spec.data is not None or ds is None:
            continue
        kind = "pi" if spec.device_class == "pi" else "mcu"
        if spec.indices is None:   # the class partition: one look-up per set of classes, not per device
            idx = by_classes.get(tuple(spec.classes))
            if idx is None:
                idx = by_classes[tuple(spec.classes)] = _indices(ds, spec)
        else:
            idx = _indices(ds, spec)
        key = hashlib.sha1(np.ascontiguousarray(idx, np.int64).tobytes()).hexdigest()
        if key not in parts[kind]:
            parts[kind][key] = (rows[kind], idx)
            rows[kind] += len(idx)
        keys[spec.id] = (kind, parts[kind][key][0], len(idx))
    if not keys:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    if parts["pi"]:
        order = np.concatenate([idx for _, idx in parts["pi"].values()])
        files["pi"] = {"x": str(folder / "x.npy"), "y": str(folder / "y.npy")}
        np.save(files["pi"]["x"], ds.x_train[order])
        np.save(files["pi"]["y"], ds.y_train[order])
    if parts["mcu"]:
        order = np.concatenate([idx for _, idx in parts["mcu"].values()])
        files["mcu"] = {"samples": str(folder / "samples.bin"), "labels": str(folder / "labels.bin")}
        ds.x_train[order].tofile(files["mcu"]["samples"])
        ds.y_train[order].astype(np.uint8).tofile(files["mcu"]["labels"])
    return {dev: {**files[kind], "first": int(first), "rows": int(n)} for dev, (kind, first, n) in keys.items()}


def write_public(root: Path, public: np.ndarray) -> str:
    """FD's public pool, which every device holds the same: once per fleet."""
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "public.npy", public)
    return str(folder / "public.npy")
