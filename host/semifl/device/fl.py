"""The FL client (SemiFL's capable devices): its local computation, numpy only, and its role.

`local_update` is a pure function of (global params, local data, task); `FLClient` is the role a
`Device` plays with it, the same on a Pi and in an in-process run.
"""
from __future__ import annotations

import time

import numpy as np

from semifl.learn import compress, mlp
from semifl.learn.aggregate import global_norm
from semifl.learn.data import to_float
from semifl.protocol import wire
from semifl.protocol.sampling import ceil_fraction, select
from semifl.protocol.tensors import to_wire

from .device import DeviceError, Role


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


class FLClient(Role):
    """SemiFL's FL client: trains the global model of its task's round on a seeded batch and reports
    the update's norm, then uploads the update when asked; with `"upload": true` in the task (buffered
    rounds) it uploads at once (docs/protocol.md §5, §5c)."""
    name = "fl"
    tasks = ("fl", "upload")
    blobs = ("model",)

    def __init__(self, device):
        super().__init__(device)
        self.models: dict[int, list[np.ndarray]] = {}   # model version -> its params (the last few)
        self.download_s: dict[int, float] = {}
        self.results: dict[int, tuple] = {}             # round -> (wire tensors, n, norm) of its update

    def on_blob(self, meta, arrays):
        v = meta.get("round")
        if not isinstance(v, int):
            raise DeviceError("a model blob without an integer round")
        self.models[v] = arrays
        self.download_s[v] = meta.get("_download_s", 0.0)
        for old in [r for r in self.models if r < v - 1]:
            del self.models[old]
        self.dev.phase("idle")

    def run(self, task):
        if task["role"] == "upload":
            return self._upload(task)
        rnd = task["round"]
        if rnd not in self.models:
            return False   # the model it trains on is still arriving
        dev = self.dev
        dev.phase("train")
        t0 = time.perf_counter()
        masks = update_masks(self.models[rnd], task)
        delta, n, norm = local_update(self.models[rnd], dev.x, dev.y, task, masks)
        t_local = dev.computed(time.perf_counter() - t0)
        tensors = encode_update(delta, task, masks)
        times = {"t_local_s": round(t_local, 5), "t_download_s": round(self.download_s.pop(rnd, 0.0), 5)}
        dev.phase("idle")
        if task.get("upload"):   # buffered rounds: no norm report, the update goes at once
            self._send_update(rnd, task["task"], tensors, n, **times)
            return True
        self.results = {rnd: (tensors, n, norm)}
        dev.status("trained", rnd, task=task["task"], n=n, norm=norm, **times)
        return True

    def _upload(self, task):
        rnd = task["round"]
        if rnd not in self.results:
            raise DeviceError(f"upload asked for round {rnd}, which this device did not train")
        tensors, n, _ = self.results[rnd]
        self._send_update(rnd, task["task"], tensors, n)
        return True

    def _send_update(self, rnd: int, task: int, tensors: list, n: int, **extra):
        meta = {"kind": "update", "round": rnd, "task": task, "device": self.dev.id, "n": n, **extra}
        self.dev.send_blob(wire.KIND_UPDATE, rnd, wire.encode_blob(meta, tensors))
