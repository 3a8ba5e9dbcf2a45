"""The FL client's local computation, numpy only (no tensorflow on the Pi).

Pure function of (global params, local data, task) so the host's in-process simulator runs the very
same code the agent runs over MQTT.
"""
from __future__ import annotations

import numpy as np

from semifl.learn import compress, mlp
from semifl.learn.aggregate import global_norm
from semifl.learn.data import to_float
from semifl.protocol.sampling import ceil_fraction, select
from semifl.protocol.tensors import to_wire


def local_update(params: list[np.ndarray], x: np.ndarray, y: np.ndarray, task: dict,
                 masks: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], int, float]:
    """One FL round on this device, as the seed: a batch of ceil(fraction*n) samples chosen by the
    task's seed, the global model pruned at rate `prune` (pruned entries stay 0) or, when the task
    names a `compression`, the copy it describes, `epochs` full-batch gradient steps of size `lr`.
    Returns (delta = local - global, samples used, ||delta||). `masks`: this task's keep-masks
    (`update_masks`) when the caller already has them; the same ones then go to `encode_update`."""
    n = len(y)
    idx = select(n, ceil_fraction(n, task.get("fraction", 1.0)), task["seed"])
    xb, yb = to_float(x[idx]), y[idx].astype(np.int64)
    if masks is None:
        masks = update_masks(params, task)
    if "compression" in task:   # a copy compressed to what this device carries (seed 001)
        start, _ = compress.local_model(params, compress.Compression(**task["compression"]), masks)
    else:
        start = [p * m for p, m in zip(params, masks)] if masks else params
    local = [s.copy() for s in start]
    lr = np.float32(task.get("lr", 0.1))
    for _ in range(int(task.get("epochs", 1))):
        _, grads = mlp.loss_and_grad(local, xb, yb)
        for i, g in enumerate(grads):
            if masks:
                g = g * masks[i]
            local[i] = local[i] - lr * g
    delta = [(lo - s).astype(np.float32) for lo, s in zip(local, start)]
    return delta, len(idx), global_norm(delta)


def update_masks(params: list[np.ndarray], task: dict) -> list[np.ndarray] | None:
    """The keep-masks of the copy this task trains (None when nothing is pruned)."""
    rate = task.get("compression", {}).get("prune", task.get("prune", 0.0))
    return mlp.prune_mask(params, rate) if rate > 0 else None


def encode_update(delta: list[np.ndarray], task: dict, masks: list[np.ndarray] | None = None) -> list[tuple]:
    """The delta as wire tensors in the dtype the task's compression asks for (float32 otherwise);
    with `"sparse": true` only the entries the pruned copy holds (`masks`: this task's keep-masks)."""
    dtype = task.get("compression", {}).get("dtype", "float32")
    if task.get("sparse") and masks is not None:
        delta = compress.gather(delta, masks)
    return [to_wire(a, scale) for a, scale in compress.encode_delta(delta, dtype)]
