"""Split learning on the host (IoTSL, seed 002): the host holds f_b, answers each batch of smashed data
with the gradient at the cut, and relays f_a from one device to the next (sequential SL) or averages
the devices' f_a at the end of the round (the parallel, SplitFed-style variant).

Transport-free: the split-learning round (`service/rounds/split.py`), over MQTT or in-process, drives
the same `SplitServer`; values are counted as the seed counts them (Table I).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import nn


def comm_params(n_i: int, f_i: int, w_i: int) -> int:
    """The seed's values one device moves in one epoch: N_i smashed rows of F_i plus a label each up,
    N_i gradients of F_i down, and w_i parameters of f_a to the next device: N_i (2 F_i + 1) + w_i.
    C_total = n K [N_i (2 F_i + 1) + w_i] over K devices and n rounds."""
    return n_i * (2 * f_i + 1) + w_i


@dataclass
class SplitServer:
    """f_b, its SGD step per batch, and the f_a the host holds between devices."""
    f_b: nn.Net
    params_b: list
    params_a: list                 # the latest f_a: what the next device starts from (after a dropout too)
    lr: float = 0.01
    values: dict = field(default_factory=dict)   # device -> values moved, {"up", "down"}, as the seed counts them

    def step(self, dev: str, smashed: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
        """One batch: f_b forward and backward, f_b updated, -> (d loss / d smashed, loss)."""
        if tuple(smashed.shape[1:]) != tuple(self.f_b.input_shape):
            raise ValueError(f"smashed data of shape {tuple(smashed.shape[1:])}, the cut is {self.f_b.input_shape}")
        if len(labels) != len(smashed):
            raise ValueError(f"{len(labels)} labels for {len(smashed)} smashed rows")
        if not np.isfinite(smashed).all():
            raise ValueError("smashed data contains NaN or Inf")
        out, caches = self.f_b.forward(self.params_b, smashed, keep=True)
        loss, dlogits = nn.softmax_xent(out, labels.astype(np.int64))
        g_b, d_cut = self.f_b.backward(self.params_b, caches, dlogits, need_dx=True)
        lr = np.float32(self.lr)
        self.params_b = [p - lr * g for p, g in zip(self.params_b, g_b)]
        v = self.values.setdefault(dev, {"up": 0, "down": 0})
        v["up"] += smashed.size + len(labels)
        v["down"] += d_cut.size
        return d_cut.astype(np.float32), loss

    def take_back(self, dev: str, params_a: list):
        """A device finished its epoch and sent its f_a (counted; SplitFed averages them later)."""
        self.values.setdefault(dev, {"up": 0, "down": 0})["up"] += sum(p.size for p in params_a)

    def hand_over(self, dev: str, params_a: list):
        """Sequential SL: the f_a a device sent back is what the next device starts from."""
        self.take_back(dev, params_a)
        self.params_a = [np.asarray(p, np.float32) for p in params_a]

    def handed(self, dev: str):
        """The host sent `dev` its starting f_a (the relay's extra hop: the seed sends device to device)."""
        self.values.setdefault(dev, {"up": 0, "down": 0})["down"] += sum(p.size for p in self.params_a)

    def average_a(self, parts: list[tuple[list, int]]):
        """SplitFed: f_a as the sample-weighted mean of the devices' copies."""
        total = sum(n for _, n in parts)
        self.params_a = [sum(np.float32(n / total) * p[k] for p, n in parts) for k in range(len(parts[0][0]))]

    @property
    def params(self) -> list:
        """The whole model f = f_a then f_b, in wire order."""
        return list(self.params_a) + list(self.params_b)
