"""Split learning on the device (IoTSL's client side): the device keeps the first layers f_a, sends the
smashed data of a batch with its labels, and updates f_a with the gradient the host returns for that
batch. One batch is in flight at a time, as in the seed's sequential SL.

Transport-free: the agent feeds it the task, f_a and each gradient; the host's in-process runner
drives the same object.
"""
from __future__ import annotations

import time

import numpy as np

from semifl.learn import compress, nn


class SplitError(ValueError):
    """A message the split client cannot use (wrong batch, wrong shape): refused, nothing changes."""


class SplitClient:
    def __init__(self, f_a: nn.Net, x: np.ndarray, y: np.ndarray):
        """f_a: the device part's layers; x: float inputs shaped as f_a's input; y: int labels."""
        self.net, self.x, self.y = f_a, x, np.asarray(y, np.int64)
        self.params: list[np.ndarray] | None = None
        self.task: dict | None = None
        self.batches: list[np.ndarray] = []
        self.next = 0                 # index of the next batch to send
        self.in_flight = None         # (batch id, caches) of the batch whose gradient is awaited
        self.compute_s = 0.0          # CPU time of this epoch's forward and backward passes (the energy meter's)

    def begin(self, task: dict, params: list[np.ndarray]):
        """Start an epoch of task {"batch", "lr", "seed", "smashed": dtype} from the f_a it was handed."""
        if [tuple(p.shape) for p in params] != [tuple(s) for s in self.net.shapes()]:
            raise SplitError(f"f_a shapes {[p.shape for p in params]} are not {self.net.shapes()}")
        self.task, self.params = task, [np.array(p, np.float32) for p in params]
        order = np.random.default_rng(task["seed"]).permutation(len(self.y))
        b = int(task["batch"])
        self.batches = [order[i:i + b] for i in range(0, len(order), b)]
        self.next, self.in_flight, self.compute_s = 0, None, 0.0

    @property
    def done(self) -> bool:
        return self.task is not None and self.next == len(self.batches) and self.in_flight is None

    def smashed(self) -> tuple[int, list[tuple[np.ndarray, float]], np.ndarray]:
        """-> (batch id, the smashed data as (array, scale) in the task's dtype, uint8 labels)."""
        if self.in_flight is not None:
            raise SplitError(f"batch {self.in_flight[0]} still awaits its gradient")
        i = self.next
        idx = self.batches[i]
        t0 = time.process_time()
        out, caches = self.net.forward(self.params, self.x[idx], keep=True)
        self.compute_s += time.process_time() - t0
        self.in_flight = (i, caches, out.shape)
        self.next += 1
        return i, compress.encode_delta([out], self.task.get("smashed", "float32")), self.y[idx].astype(np.uint8)

    def gradient(self, batch: int, grad: np.ndarray):
        """Apply the host's d loss / d smashed for `batch`: backprop through f_a and one SGD step."""
        if self.in_flight is None or batch != self.in_flight[0]:
            raise SplitError(f"a gradient for batch {batch}, which is not the one in flight "
                             f"({None if self.in_flight is None else self.in_flight[0]})")
        _, caches, shape = self.in_flight
        if tuple(grad.shape) != tuple(shape) or not np.isfinite(grad).all():
            raise SplitError(f"gradient of shape {grad.shape} (finite: {bool(np.isfinite(grad).all())}), expected {shape}")
        t0 = time.process_time()
        g = self.net.backward(self.params, caches, grad.astype(np.float32))
        lr = np.float32(self.task["lr"])
        self.params = [p - lr * d for p, d in zip(self.params, g)]
        self.compute_s += time.process_time() - t0
        self.in_flight = None
