"""Folding FL updates into a running sum one at a time: O(model) memory however many updates a round
merges, and the bits of the merge that holds them all in a list.

`PartialSum` is sum_k c_k * (x_k clipped) over model-shaped updates, in the order they are added, with the
very float operations of the list merges (`aggregate.weighted_average`'s `out += float32(w / total) * x`,
`dp.clip`'s `x * float32(f)`, `ClientDP.merge`'s float64 sum), so adding the updates in sorted device
order gives what the list merge gives, bit for bit. It merges with another partial sum over other
updates (host workers, edge aggregators: each folds its share, a coordinator merges them in a fixed
order) and travels as a blob (`encode` / `decode`).

A `SumRule` is what a merge that only clips and sums (config.SUM_RULES: `mean`, `norm_bound`; client-level
DP) does to each update. Its `Plan` holds the round-level constants (the order, the denominator, the
clip bound, FedBuff's shrink); with them an update's coefficient and clip factor follow from its own
weight and norm, so it can be added the moment it is in. A round that folds before it has every update
plans from what it expects (its uploaders, their reported norms) and keeps the sum only if the plan of
what it finally merges is the same (`Plan.key`); else it folds again from the stored updates. The
median, the trimmed mean and Krum need every update at once: `sum_rule` gives None for them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from semifl.protocol.tensors import decode_arrays, encode_arrays

from . import dp, robust
from .strategy import average_fl


class PartialSum:
    """sum_k c_k * x_k, c_k = w_k / denominator, per layer; float32 (a mean's sum) or float64 (DP's)."""

    def __init__(self, shapes, dtype=np.float32, denominator: float = 1.0):
        self.dtype = np.dtype(dtype)
        self.sum = [np.zeros(s, self.dtype) for s in shapes]
        self.denominator = float(denominator)
        self.weight = 0.0            # sum of the w_k added
        self.keys: list[str] = []    # what was added, in order
        self._tmp = None             # one scratch array per layer: no temporary per add

    @property
    def count(self) -> int:
        return len(self.keys)

    def add(self, arrays, weight: float = 1.0, scale: float = 1.0, key: str = "") -> None:
        """sum += (weight / denominator) * (x * float32(scale)): x clipped first as `dp.clip` does,
        then weighted as `weighted_average` (float32) or `ClientDP.merge` (float64) weight it."""
        if self._tmp is None:
            self._tmp = [np.empty_like(o) for o in self.sum]
        f32 = self.dtype == np.float32
        c = np.float32(weight / self.denominator) if f32 else weight / self.denominator
        for o, a, t in zip(self.sum, arrays, self._tmp):
            if o.shape != np.shape(a):
                raise ValueError(f"an update layer of shape {np.shape(a)} added to a sum of {o.shape}")
            x = a
            if scale != 1.0:
                if f32:
                    x = np.multiply(a, np.float32(scale), out=t)
                else:   # float32 product, as the clip makes it, then widened
                    x = (a * np.float32(scale)).astype(np.float32)
            if f32:
                np.add(o, np.multiply(x, c, out=t), out=o)
            else:
                np.copyto(t, x)
                if c != 1.0:
                    np.multiply(t, c, out=t)
                np.add(o, t, out=o)
        self.weight += weight
        self.keys.append(key)

    def merge(self, other: PartialSum) -> None:
        """Add another partial sum over other updates (same shapes, dtype and denominator)."""
        if (other.dtype, other.denominator) != (self.dtype, self.denominator) or len(other.sum) != len(self.sum):
            raise ValueError("partial sums of different plans do not add up")
        if set(other.keys) & set(self.keys):
            raise ValueError(f"updates in both partial sums: {sorted(set(other.keys) & set(self.keys))[:3]}")
        for o, p in zip(self.sum, other.sum):
            o += p
        self.weight += other.weight
        self.keys += other.keys

    def encode(self, meta: dict | None = None) -> bytes:
        """The sum as a wire blob (its arrays in its dtype; weight, denominator and keys in the meta)."""
        m = dict(meta or {}, kind="partial_sum", denominator=self.denominator, weight=self.weight, keys=self.keys)
        return encode_arrays(m, self.sum)

    @classmethod
    def decode(cls, blob) -> PartialSum:
        meta, arrays = decode_arrays(blob)
        if meta.get("kind") != "partial_sum" or not arrays:
            raise ValueError("not a partial sum")
        ps = cls([a.shape for a in arrays], arrays[0].dtype, meta["denominator"])
        ps.sum = [np.array(a) for a in arrays]
        ps.weight, ps.keys = float(meta["weight"]), list(meta["keys"])
        return ps


@dataclass(frozen=True)
class Summand:
    """One update as a sum rule sees it: its device, its weight in the list merge (the sample count),
    its L2 norm (aggregate.global_norm) and its staleness weight (FLUpdate.weight)."""
    device: str
    weight: float
    norm: float
    staleness: float = 1.0


@dataclass
class Plan:
    """A sum rule's constants for one round: the devices in the order they are added, the denominator,
    the clip bound (None: no clip; each update's clip factor is min(1, bound / norm)), FedBuff's shrink."""
    order: tuple[str, ...]
    denominator: float
    bound: float | None = None
    shrink: float = 1.0
    unit: bool = False       # client DP: each update weighs min(1, staleness), not its sample count
    dtype: type = np.float32
    report: dict = field(default_factory=dict)   # what the rule says of the round (merge.last)

    @property
    def key(self) -> tuple:
        """What the folded sum depends on besides the updates themselves."""
        return self.order, self.denominator, self.bound, self.shrink, self.unit, np.dtype(self.dtype).str

    def weight(self, s: Summand) -> float:
        return min(1.0, float(s.staleness)) if self.unit else s.weight * s.staleness

    def scale(self, s: Summand) -> float:
        """dp.clip's factor: min(1, bound / norm) (1 for a zero norm or no bound)."""
        if self.bound is None or s.norm <= 0:
            return 1.0
        return min(1.0, self.bound / s.norm)

    def empty(self, shapes) -> PartialSum:
        return PartialSum(shapes, self.dtype, self.denominator)

    def add(self, ps: PartialSum, s: Summand, arrays) -> None:
        ps.add(arrays, self.weight(s), self.scale(s), s.device)


class SumRule:
    """The mean (`strategy.average_fl`, `robust.Rule`): sum_i w_i s_i x_i / sum_i w_i s_i, times
    sum_i w_i s_i / sum_i w_i when any update is stale (s_i: FedBuff's staleness weight)."""
    name = "mean"

    def __init__(self, merge=None):
        self.merge = merge   # the rule object whose `last` the round reports (None: average_fl)

    def plan(self, summands: list[Summand]) -> Plan:
        """The round's constants from the updates it merges, in the order the list merge takes them."""
        s = sorted(summands, key=lambda u: u.device)
        w = [u.weight for u in s]
        total = float(sum(w))
        if any(u.staleness != 1.0 for u in s):   # as average_fl: the staleness-weighted mean, shrunk
            w = [x * u.staleness for x, u in zip(w, s)]
            return Plan(tuple(u.device for u in s), float(sum(w)), shrink=sum(w) / total)
        return Plan(tuple(u.device for u in s), total)

    def finish(self, plan: Plan, ps: PartialSum) -> list[np.ndarray]:
        """The merge's result from the folded sum; the rule's report set as its list merge sets it."""
        if self.merge is not None:
            self.merge.last = dict(plan.report)
        return ps.sum if plan.shrink == 1.0 else [o * np.float32(plan.shrink) for o in ps.sum]


class NormBoundSum(SumRule):
    """`robust.NormBound`: every update clipped to the bound (fixed, or adaptive_k x the median norm), then the mean."""
    name = "norm_bound"

    def plan(self, summands):
        p = super().plan(summands)
        by = {u.device: u for u in summands}
        n = np.array([by[d].norm for d in p.order])
        p.bound = self.merge.bound or self.merge.adaptive_k * float(np.median(n)) if len(n) else None
        p.report = {"bound": round(p.bound, 6), "clipped": [d for d, x in zip(p.order, n) if x > p.bound]} if len(n) else {}
        return p


class ClientDPSum(SumRule):
    """`dp.ClientDP.merge`: each update clipped to C, counted once (times min(1, staleness)), summed in
    float64, noised and divided by the expected number of clients (`ClientDP.release`)."""
    name = "client_dp"

    def plan(self, summands):
        s = sorted(summands, key=lambda u: u.device)
        return Plan(tuple(u.device for u in s), 1.0, bound=self.merge.clip, unit=True, dtype=np.float64,
                    report={"norms": [u.norm for u in s], "bits": sum(u.norm <= self.merge.clip for u in s)})

    def finish(self, plan, ps):
        d = self.merge
        out = d.release(ps.sum, ps.count, plan.report["bits"])
        d.last["norms"] = plan.report["norms"]
        d.took_part(plan.order)
        return [o.astype(np.float32) for o in out]


def sum_rule(merge) -> SumRule | None:
    """The sum rule of a strategy's merge (`Strategy.fl_merge`), or None for a merge that needs every
    update at once (median, trimmed mean, Krum) or one this module does not know."""
    if merge is average_fl:
        return SumRule()
    if type(merge) is robust.Rule:
        return SumRule(merge)
    if type(merge) is robust.NormBound:
        return NormBoundSum(merge)
    owner = getattr(merge, "__self__", None)
    if type(owner) is dp.ClientDP and getattr(merge, "__func__", None) is dp.ClientDP.merge:
        return ClientDPSum(owner)
    return None
