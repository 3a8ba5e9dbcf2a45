"""Pure aggregation functions over lists of float32 arrays. No I/O, no state."""
from __future__ import annotations

import numpy as np


def weighted_average(updates: list[list[np.ndarray]], weights: list[float]) -> list[np.ndarray]:
    """sum_k w_k u_k / sum_k w_k, layer by layer, in the given order (callers sort for determinism)."""
    if not updates:
        raise ValueError("nothing to average")
    total = float(sum(weights))
    out = [np.zeros_like(a) for a in updates[0]]
    for u, w in zip(updates, weights):
        c = np.float32(w / total)
        for o, a in zip(out, u):
            o += c * a
    return out


def mix(a: list[np.ndarray], wa: float, b: list[np.ndarray], wb: float) -> list[np.ndarray]:
    """(wa*a + wb*b) / (wa + wb): SemiFL's sample-weighted mix of the FL and CL parts."""
    return weighted_average([a, b], [wa, wb])


def apply_delta(params: list[np.ndarray], delta: list[np.ndarray]) -> list[np.ndarray]:
    return [p + d for p, d in zip(params, delta)]


def global_norm(arrays: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in arrays)))
