"""Partitioners: split training-sample indices over federated devices.

Every partitioner returns ``list[np.ndarray]``: one sorted int64 array of sample indices (into ``y``) per
device. All randomness comes from ``np.random.default_rng(seed)``, so a (y, parameters, seed) triple always
gives the same split. Nothing here reads data or files.
"""
from __future__ import annotations

import numpy as np

NAMES = ("class", "k-classes", "dirichlet", "iid")


def _labels(y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
        raise ValueError("labels must be non-negative integers")
    return y.astype(np.int64, copy=False)


def _check_devices(n_devices: int) -> int:
    n_devices = int(n_devices)
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}")
    return n_devices


def _n_classes(y: np.ndarray, n_classes: int | None) -> int:
    if n_classes is None:
        return int(y.max()) + 1 if y.size else 0
    return int(n_classes)


def one_class(y, n_devices: int, n_classes: int) -> list[np.ndarray]:
    """One class per device (the SemiFL seed's split): device i gets every sample of class i % n_classes.

    With n_devices <= n_classes the parts are disjoint (classes >= n_devices are left out); with more
    devices than classes, devices i and i + n_classes hold the same samples. No randomness.
    """
    y = _labels(y)
    n_devices, n_classes = _check_devices(n_devices), int(n_classes)
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    return [np.flatnonzero(y == i % n_classes) for i in range(n_devices)]


def k_classes(y, n_devices: int, k: int, seed: int, block: int | None = None, *,
              n_classes: int | None = None) -> list[np.ndarray]:
    """k classes per device, as disjoint blocks (no sample goes to two devices).

    Class assignment is round-robin: device i holds classes (i*k + j) % n_classes for j < k (n_classes
    defaults to max(y) + 1), so with n_devices*k a multiple of n_classes every class has the same number
    of holders. Each class's samples are shuffled (one rng from ``seed``, classes in increasing order) and
    cut into one block per holder: with ``block=None`` the class is split into as-equal-as-possible blocks
    (sizes differ by at most one; every sample of a held class is used); with ``block=B`` each holder gets
    exactly B samples of that class (e.g. IoTSL's 1200-image blocks) and the rest is unused — ValueError if
    a class has fewer than B * holders samples. Classes no device holds are left out.
    """
    y = _labels(y)
    n_devices, k = _check_devices(n_devices), int(k)
    C = _n_classes(y, n_classes)
    if not 1 <= k <= C:
        raise ValueError(f"k must be in 1..{C} (number of classes), got {k}")
    if block is not None and int(block) < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    holders: list[list[int]] = [[] for _ in range(C)]
    for i in range(n_devices):
        for j in range(k):
            holders[(i * k + j) % C].append(i)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_devices)]
    for c in range(C):
        devs = holders[c]
        if not devs:
            continue
        idx = rng.permutation(np.flatnonzero(y == c))
        if block is None:
            blocks = np.array_split(idx, len(devs))
        else:
            b = int(block)
            if b * len(devs) > len(idx):
                raise ValueError(f"class {c} has {len(idx)} samples, fewer than block={b} x {len(devs)} devices")
            blocks = [idx[m * b:(m + 1) * b] for m in range(len(devs))]
        for d, blk in zip(devs, blocks):
            parts[d].append(blk)
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def dirichlet(y, n_devices: int, alpha: float, seed: int, min_size: int = 10,
              max_tries: int = 1000) -> list[np.ndarray]:
    """Label-Dirichlet non-IID split (Hsu et al. 2019; the NIID-Bench / FedMA recipe).

    For each class, shuffle its samples and draw device proportions p ~ Dir(alpha * 1); devices that
    already hold >= len(y)/n_devices samples get no more (p set to 0, renormalised); the class is cut at
    the cumulative proportions. The whole draw is repeated until every device holds >= min_size samples
    (ValueError after ``max_tries`` draws). Parts are disjoint and cover every sample. Small alpha: each
    device sees few classes; large alpha: close to IID.
    """
    y = _labels(y)
    n_devices, alpha, min_size = _check_devices(n_devices), float(alpha), int(min_size)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    n = len(y)
    if n_devices * min_size > n:
        raise ValueError(f"{n} samples cannot give {n_devices} devices >= {min_size} each")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    cap = n / n_devices
    for _ in range(max(1, int(max_tries))):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_devices)]
        sizes = np.zeros(n_devices, np.int64)
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(n_devices, alpha))
            p = p * (sizes < cap)
            p = p / p.sum() if p.sum() > 0 else np.full(n_devices, 1.0 / n_devices)
            cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
            for d, blk in enumerate(np.split(idx, cuts)):
                parts[d].append(blk)
                sizes[d] += len(blk)
        if sizes.min() >= min_size:
            return [np.sort(np.concatenate(p)) for p in parts]
    raise ValueError(f"dirichlet(alpha={alpha}): no split with every device >= {min_size} samples "
                     f"after {max_tries} tries; raise alpha or lower min_size")


def iid(n: int, n_devices: int, seed: int) -> list[np.ndarray]:
    """IID split of range(n): one seeded permutation cut into n_devices near-equal parts (sizes differ by
    at most one). Disjoint, covers every sample."""
    n_devices = _check_devices(n_devices)
    perm = np.random.default_rng(seed).permutation(int(n))
    return [np.sort(p) for p in np.array_split(perm, n_devices)]


def partition(name: str, y, n_devices: int, seed: int = 0, **params) -> list[np.ndarray]:
    """Dispatch by name: "class" (one_class; params n_classes, default max(y)+1), "k-classes" (k, block,
    n_classes), "dirichlet" (alpha, min_size, max_tries), "iid" (none). Unknown names raise ValueError;
    unknown params raise TypeError."""
    key = str(name).strip().lower().replace("_", "-")
    y = _labels(y)
    if key == "class":
        return one_class(y, n_devices, params.pop("n_classes", None) or _n_classes(y, None), **params)
    if key == "k-classes":
        return k_classes(y, n_devices, seed=seed, **params)
    if key == "dirichlet":
        return dirichlet(y, n_devices, seed=seed, **params)
    if key == "iid":
        return iid(len(y), n_devices, seed, **params)
    raise ValueError(f"unknown partition {name!r}; choose one of {', '.join(NAMES)}")


def describe(parts: list[np.ndarray], y, n_classes: int) -> dict[int, dict]:
    """Per-device summary for run records: {device_index: {"n": samples, "hist": per-class counts}},
    plain ints only (json.dumps-able; JSON turns the keys into strings)."""
    y = _labels(y)
    return {i: {"n": int(len(p)),
                "hist": [int(v) for v in np.bincount(y[np.asarray(p, np.int64)], minlength=int(n_classes))]}
            for i, p in enumerate(parts)}
