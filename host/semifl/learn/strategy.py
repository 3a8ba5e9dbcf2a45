"""Strategies: small classes that turn accepted contributions into the next global model.

Transport-free (numpy in, numpy out) and shared by the in-process simulator and the MQTT service.
A round object calls `aggregate` once per round (or merge); nothing else changes the global model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import aggregate, compress, mlp
from .data import to_float


@dataclass
class FLUpdate:
    """A device's model change for one round: delta = local - global (pruned entries are 0)."""
    device: str
    delta: list[np.ndarray]
    n: int  # samples the device trained on
    mask: list[np.ndarray] | None = None   # entries its compressed copy kept (seed 001); None: all
    staleness: int = 0     # global-model versions between the one it trained on and the one it updates
    weight: float = 1.0    # the round kind's staleness weight (buffered rounds: FedBuff's 1/sqrt(1 + staleness))
    norm: float | None = None   # its L2 norm, where delta is a view of less than the update (robust.view)


def average_fl(fl: list[FLUpdate], weights: list[float]) -> list[np.ndarray]:
    """The FL part of a round: the weighted mean of the deltas or, when any device trained a pruned
    copy of its own (per-device compression), the mask-aware mean: each weight over the devices that kept it.
    Staleness weights s_i (buffered rounds) are not normalized away: FedBuff's sum_i s_i w_i delta_i /
    sum_i w_i, so a buffer of stale updates takes a shorter step."""
    shrink = 1.0
    if any(u.weight != 1.0 for u in fl):
        total = float(sum(weights))
        weights = [w * u.weight for w, u in zip(weights, fl)]
        shrink = sum(weights) / total
    if any(u.mask is not None for u in fl):
        out = compress.masked_average([u.delta for u in fl], [u.mask for u in fl], weights)
    else:
        out = aggregate.weighted_average([u.delta for u in fl], weights)
    return out if shrink == 1.0 else [o * np.float32(shrink) for o in out]


@dataclass
class CLBatch:
    """Raw samples a CL uploader sent this round (uint8 pixels, int labels)."""
    device: str
    x: np.ndarray
    y: np.ndarray


class Strategy:
    name = "base"
    uses_cl = False
    # The seam every FL merge goes through: merge(fl, weights) -> the FL part of the round. A robust
    # rule (learn/robust.py) or client-level DP (learn/dp.py) replaces it per instance.
    fl_merge = staticmethod(average_fl)
    # whether `aggregate` sees the FL updates only through fl_merge(sorted by device, [u.n]) and
    # sum(u.n): then a round may merge them itself (a folded sum, learn/fold.py) and hand over the result
    folds = False

    def forget(self, device: str) -> None:
        """Drop whatever the strategy remembers of `device` (a quarantined device); stateless: nothing."""

    def observe_fleet(self, dataset_sizes: dict[str, int]) -> None:
        """Each device's full number of samples (from its capability report), before aggregation.
        Strategies that weight by it (semifl+'s `balanced`) keep it; the others ignore it."""

    def aggregate(self, params: list[np.ndarray], fl: list[FLUpdate], cl: list[CLBatch]) -> list[np.ndarray]:
        raise NotImplementedError

    def aggregate_merged(self, params: list[np.ndarray], part: list[np.ndarray], n: int,
                         cl: list[CLBatch]) -> list[np.ndarray]:
        """`aggregate` with the FL part merged already (a folded sum, a secure sum) over updates of n
        samples in all: one update that carries it, merged as itself."""
        own = self.__dict__.get("fl_merge")
        self.fl_merge = lambda ups, weights: ups[0].delta
        try:
            return self.aggregate(params, [FLUpdate("merged", part, n)], cl)
        finally:
            if own is None:
                del self.fl_merge
            else:
                self.fl_merge = own

    def state(self) -> tuple[dict, dict[str, list[np.ndarray]]]:
        """What must survive a host restart, as (JSON-able meta, named lists of arrays). The store
        writes it in the same transaction as the round's model; stateless strategies have none."""
        return {}, {}

    def load_state(self, meta: dict, arrays: dict[str, list[np.ndarray]]) -> None:
        """Inverse of `state` (a restarted host calls it before its first round)."""


class FedAvg(Strategy):
    """McMahan et al.: the sample-weighted mean of the FL updates. CL uploads are not used."""
    name = "fedavg"
    folds = True

    def aggregate(self, params, fl, cl):
        if not fl:
            return params
        fl = sorted(fl, key=lambda u: u.device)
        return aggregate.apply_delta(params, self.fl_merge(fl, [u.n for u in fl]))


class SemiFL(Strategy):
    """Ni et al. (SemiFL): one step on the mix of the FL updates and the host's own gradient on the
    CL uploaders' samples, weighted by sample counts (seed code: gradient_combine)."""
    name = "semifl"
    uses_cl = True
    folds = True

    def __init__(self, lr: float = 0.1):
        self.lr = lr

    def cl_delta(self, params, cl: list[CLBatch]) -> tuple[list[np.ndarray], int]:
        cl = sorted(cl, key=lambda b: b.device)
        x = to_float(np.concatenate([b.x for b in cl]))
        y = np.concatenate([b.y for b in cl]).astype(np.int64)
        _, g = mlp.loss_and_grad(params, x, y)
        return [np.float32(-self.lr) * gi for gi in g], len(y)

    def aggregate(self, params, fl, cl):
        fl = sorted(fl, key=lambda u: u.device)
        parts, weights = [], []
        if fl:
            n_fl = sum(u.n for u in fl)
            parts.append(self.fl_merge(fl, [u.n for u in fl]))
            weights.append(n_fl)
        if cl:
            d, n_cl = self.cl_delta(params, cl)
            parts.append(d)
            weights.append(n_cl)
        if not parts:
            return params
        return aggregate.apply_delta(params, aggregate.weighted_average(parts, weights))
