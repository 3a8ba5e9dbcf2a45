"""Compressed local models (Zhang, seed 001): each device trains a copy of the global model compressed
to what it can carry, and the host merges updates from differently compressed copies.

A device's `Compression` is chosen from its capabilities (`for_device`). The host derives the local
model (`local_model`: magnitude pruning at rate p, weight clustering to k shared values per tensor,
or the dtype the device computes in), the device trains it and sends its delta in the dtype it was
told (float32, float16, or int8 with a per-tensor scale), and the host merges deltas with
`masked_average`: a weight is averaged over the devices whose copy kept it, so a weight that half the
fleet pruned is not pulled towards zero by the other half's absence.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import mlp

DTYPES = ("float32", "float16", "int8")


@dataclass(frozen=True)
class Compression:
    prune: float = 0.0        # magnitude-pruning rate of the local copy (seed 000's P, per device)
    clusters: int = 0         # shared values per tensor (0: no clustering)
    dtype: str = "float32"    # what the device computes in and sends its delta as

    def __post_init__(self):
        if not 0.0 <= self.prune < 1.0:
            raise ValueError(f"prune {self.prune} outside [0, 1)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}; choose from {DTYPES}")
        if self.clusters < 0 or self.clusters == 1:
            raise ValueError("clusters must be 0 (off) or at least 2")

    def to_task(self) -> dict:
        return asdict(self)


def for_device(caps: dict, model_bytes: int, full: int = 256 << 20, half: int = 32 << 20) -> Compression:
    """The policy, from the RAM a device reports (FL clients have at least the planner's min_ram, 8 MB):
    `full` or more trains the float32 model whole; `half` or more a copy pruned at 0.3, sending fp16;
    less, a copy pruned at 0.6, sending int8. `model_bytes` scales the thresholds for models larger
    than 4 MB (the float32 size at which they were set for the 200 kB MLP with room to spare)."""
    scale = max(1.0, model_bytes / (4 << 20))
    ram = int(caps.get("ram") or 0)
    if ram >= full * scale:
        return Compression()
    if ram >= half * scale:
        return Compression(prune=0.3, dtype="float16")
    return Compression(prune=0.6, dtype="int8")


def cluster(a: np.ndarray, k: int, iters: int = 10) -> np.ndarray:
    """1-D k-means of a tensor's values with linearly spaced initial centroids (as
    tensorflow-model-optimization's default LINEAR init); every value replaced by its centroid."""
    flat = a.ravel().astype(np.float64)
    cent = np.linspace(flat.min(), flat.max(), k)
    for _ in range(iters):
        idx = np.abs(flat[:, None] - cent[None, :]).argmin(axis=1)
        for j in range(k):
            sel = flat[idx == j]
            if sel.size:
                cent[j] = sel.mean()
    idx = np.abs(flat[:, None] - cent[None, :]).argmin(axis=1)
    return cent[idx].reshape(a.shape).astype(a.dtype)


def local_model(params: list[np.ndarray], c: Compression,
                masks: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """(the compressed copy a device trains, its keep-masks or None when nothing is pruned).
    `masks`: the keep-masks at c.prune when the caller already has them."""
    if masks is None and c.prune > 0:
        masks = mlp.prune_mask(params, c.prune)
    local = [p * m for p, m in zip(params, masks)] if masks else [p.copy() for p in params]
    if c.clusters:   # shared values per tensor; pruned entries stay 0
        local = [cluster(p, c.clusters) for p in local]
        if masks:
            local = [p * m for p, m in zip(local, masks)]
    if c.dtype == "float16":
        local = [p.astype(np.float16).astype(np.float32) for p in local]
    return local, masks


def encode_delta(delta: list[np.ndarray], dtype: str) -> list[tuple[np.ndarray, float]]:
    """A delta as the device sends it: (array, scale) per tensor; int8 is symmetric per tensor."""
    if dtype == "float32":
        return [(d.astype(np.float32), 1.0) for d in delta]
    if dtype == "float16":
        return [(d.astype(np.float16), 1.0) for d in delta]
    out = []
    for d in delta:
        m = float(np.abs(d).max())
        scale = m / 127 if m > 0 else 1.0
        out.append((np.clip(np.round(d / scale), -127, 127).astype(np.int8), scale))
    return out


def decode_delta(parts: list[tuple[np.ndarray, float]], shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """float32 delta from what a device sent; refuses a shape that is not the model's."""
    if len(parts) != len(shapes):
        raise ValueError(f"{len(parts)} tensors, the model has {len(shapes)}")
    out = []
    for (a, scale), shape in zip(parts, shapes):
        if tuple(a.shape) != tuple(shape):
            raise ValueError(f"tensor of shape {a.shape}, expected {shape}")
        out.append(a.astype(np.float32) * np.float32(scale) if a.dtype == np.int8 else a.astype(np.float32))
    return out


def masked_average(deltas: list[list[np.ndarray]], masks: list[list[np.ndarray] | None],
                   weights: list[float]) -> list[np.ndarray]:
    """Per weight: sum_k w_k m_k d_k / sum_k w_k m_k over the devices k whose copy kept it (m = 1);
    0 where no device kept it. `None` masks keep everything. With no masks it is the weighted mean."""
    if not deltas:
        raise ValueError("nothing to average")
    out = []
    for i in range(len(deltas[0])):
        num = np.zeros(deltas[0][i].shape, np.float64)
        den = np.zeros(deltas[0][i].shape, np.float64)
        for d, m, w in zip(deltas, masks, weights):
            keep = 1.0 if m is None else m[i].astype(np.float64)
            num += w * keep * d[i]
            den += w * keep
        out.append(np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0).astype(np.float32))
    return out


def gather(arrays: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
    """The entries a pruned copy holds, tensor by tensor in C order: what a sparse update sends."""
    return [a[m] for a, m in zip(arrays, masks)]


def scatter(values: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
    """Inverse of `gather`: full tensors, zero where the copy was pruned. The host knows the masks
    (it derived the copy), so a sparse update needs no indices."""
    out = []
    for v, m in zip(values, masks):
        full = np.zeros(m.shape, np.float32)
        full[m] = v
        out.append(full)
    return out

