"""Robust aggregation of FL updates: what a round merges when some devices may be Byzantine.

Pure functions over a list of deltas (each a list of float32 arrays, one per layer, in the order the
caller gives: callers sort by device), and small rule objects with the merge seam's signature
`merge(fl: list[FLUpdate], weights: list[float]) -> list[np.ndarray]` (`strategy.Strategy.fl_merge`),
selected by name (`config.Trust.aggregation`):

* `mean` — the strategy's own weighted, mask-aware mean (`strategy.average_fl`): no defence.
* `norm_bound` — each update scaled down to an L2 norm of at most `clip_norm` (Sun et al. 2019,
  "Can you really backdoor FL?"); `clip_norm` 0: adaptive, `adaptive_k` times the round's median norm.
  Then the weighted, mask-aware mean.
* `median` — coordinate-wise median (Yin et al. 2018).
* `trimmed_mean` — coordinate-wise: the ceil(trim * k) largest and smallest of the k values dropped,
  the rest averaged (Yin et al. 2018).
* `krum` / `multi_krum` — Blanchard et al. 2017: each update's score is the sum of squared distances
  to its n - f - 2 nearest others; Krum keeps the best one, multi-Krum the m = n - f best, merged by
  the weighted, mask-aware mean.

Masks (per-device compressed copies, seed 001): a pruned entry of a device's copy is no vote. The
median and the trimmed mean of an entry are taken over the devices whose copy kept it (0 where none
did), as the mask-aware mean averages each weight over its holders. Krum's distances are over the full
model-shaped deltas (a pruned entry is 0, which it is in the delta), and the kept ones merge mask-aware.
Weights (sample counts): the order statistics (median, trimmed mean) are unweighted, since a weight a
device claims is itself what an attacker would inflate; norm bounding and (multi-)Krum keep them.
Staleness (FedBuff, `FLUpdate.weight`): the mean rules keep `average_fl`'s shrink; the order
statistics are scaled by the same factor sum(s_i w_i) / sum(w_i), so a buffer of stale updates still
takes a shorter step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .aggregate import global_norm
from .dp import clip as dp_clip
from .strategy import FLUpdate, average_fl

RULES = ("mean", "norm_bound", "median", "trimmed_mean", "krum", "multi_krum")


# --- pure functions over deltas --------------------------------------------------------------------
def norms(deltas: list[list[np.ndarray]]) -> np.ndarray:
    """L2 norm of each update over all its layers (float64; aggregate.global_norm of each)."""
    return np.array([global_norm(d) for d in deltas])


def clip(delta: list[np.ndarray], bound: float) -> list[np.ndarray]:
    """`delta` scaled to norm `bound` if it is longer; else unchanged (the same arrays): client-level
    DP's clip (learn/dp.py), without the norm it also returns."""
    return dp_clip(delta, bound)[0]


def _stack(deltas, masks, i):
    """Layer i of every update as an (n, size) float64 array, NaN where a device's copy pruned it."""
    x = np.stack([d[i].ravel() for d in deltas]).astype(np.float64)
    if masks is not None and any(m is not None for m in masks):
        for k, m in enumerate(masks):
            if m is not None:
                x[k, ~m[i].ravel().astype(bool)] = np.nan
    return x


def coordinate_median(deltas: list[list[np.ndarray]], masks: list | None = None) -> list[np.ndarray]:
    """Per entry, the median over the updates (that hold it; 0 where none does)."""
    out = []
    for i, like in enumerate(deltas[0]):
        x = _stack(deltas, masks, i)
        if np.isnan(x).any():
            held = ~np.isnan(x).all(0)
            med = np.zeros(x.shape[1])
            med[held] = np.nanmedian(x[:, held], axis=0)
        else:
            med = np.median(x, axis=0)
        out.append(med.reshape(like.shape).astype(np.float32))
    return out


def trim_count(k, trim: float):
    """How many of k values trimmed_mean drops at each end: ceil(trim * k), leaving at least one."""
    k = np.asarray(k)
    return np.minimum(np.ceil(trim * k - 1e-9).astype(int), (k - 1) // 2).clip(0)


def trimmed_mean(deltas: list[list[np.ndarray]], trim: float, masks: list | None = None) -> list[np.ndarray]:
    """Per entry, the mean of the values left after dropping `trim_count` at each end (over the updates
    that hold the entry; 0 where none does)."""
    out = []
    for i, like in enumerate(deltas[0]):
        x = _stack(deltas, masks, i)
        k = (~np.isnan(x)).sum(0)                # holders per entry
        b = trim_count(k, trim)
        s = np.sort(x, axis=0)                   # NaN (not held) sorts last
        r = np.arange(len(deltas))[:, None]
        keep = (r >= b) & (r < k - b)
        tot = np.where(keep, s, 0.0).sum(0)
        cnt = keep.sum(0)
        out.append(np.where(cnt > 0, tot / np.maximum(cnt, 1), 0.0).reshape(like.shape).astype(np.float32))
    return out


def krum_f(n: int, byzantine: int) -> int:
    """The f Krum assumes: `byzantine`, or when 0 the most n clients allow (2f + 2 < n)."""
    return byzantine if byzantine > 0 else max(0, (n - 3) // 2)


def krum_scores(deltas: list[list[np.ndarray]], f: int) -> np.ndarray:
    """Blanchard et al.'s score: for each update, the sum of squared distances to its n - f - 2
    nearest other updates (at least one)."""
    n = len(deltas)
    flat = np.stack([np.concatenate([a.ravel() for a in d]).astype(np.float64) for d in deltas])
    sq = (flat * flat).sum(1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0.0)
    m = max(1, n - f - 2)
    scores = np.empty(n)
    for i in range(n):
        others = np.sort(np.delete(dist[i], i))
        scores[i] = others[:m].sum()
    return scores


def krum_select(deltas: list[list[np.ndarray]], f: int, m: int = 1) -> list[int]:
    """Indices of the m updates with the lowest Krum scores (ties: the earlier one), in input order."""
    if len(deltas) <= 2:   # no neighbours to vote: nothing to choose between
        return list(range(len(deltas)))
    s = krum_scores(deltas, f)
    return sorted(sorted(range(len(deltas)), key=lambda i: (s[i], i))[:m])


def cosine(a: list[np.ndarray], b: list[np.ndarray], nb: float | None = None) -> float:
    """cos(a, b) over all layers; 0 when either is all zero. nb: b's norm, where the caller scores many
    updates against one reference."""
    dot = sum(float(np.dot(x.ravel().astype(np.float64), y.ravel().astype(np.float64))) for x, y in zip(a, b))
    na, nb = global_norm(a), global_norm(b) if nb is None else nb
    return dot / (na * nb) if na > 0 and nb > 0 else 0.0


def staleness_shrink(fl: list[FLUpdate], weights: list[float]) -> float:
    """FedBuff's step shrink sum(s_i w_i) / sum(w_i) (1 when no update is stale)."""
    if all(u.weight == 1.0 for u in fl):
        return 1.0
    return float(sum(w * u.weight for w, u in zip(weights, fl)) / sum(weights))


# --- rules: the merge seam's signature -------------------------------------------------------------
@dataclass
class Rule:
    """A robust merge: `rule(fl, weights)` -> the FL part of the round. `last` says what it did with
    the last round (clipped, kept: device ids), for the round's metrics."""
    name = "mean"
    last: dict = field(default_factory=dict)

    def __call__(self, fl: list[FLUpdate], weights: list[float]) -> list[np.ndarray]:
        self.last = {}
        return average_fl(fl, weights)


@dataclass
class NormBound(Rule):
    name = "norm_bound"
    bound: float = 0.0        # 0: adaptive
    adaptive_k: float = 2.0   # adaptive bound: this many times the round's median norm

    def __call__(self, fl, weights):
        n = norms([u.delta for u in fl])
        b = self.bound or self.adaptive_k * float(np.median(n))
        clipped = [FLUpdate(u.device, clip(u.delta, b), u.n, u.mask, u.staleness, u.weight) for u in fl]
        self.last = {"bound": round(b, 6), "clipped": [u.device for u, x in zip(fl, n) if x > b]}
        return average_fl(clipped, weights)


@dataclass
class Median(Rule):
    name = "median"

    def __call__(self, fl, weights):
        self.last = {}
        out = coordinate_median([u.delta for u in fl], [u.mask for u in fl])
        return _shrunk(out, staleness_shrink(fl, weights))


@dataclass
class TrimmedMean(Rule):
    name = "trimmed_mean"
    trim: float = 0.2

    def __call__(self, fl, weights):
        self.last = {"trimmed_each_end": int(trim_count(len(fl), self.trim))}
        out = trimmed_mean([u.delta for u in fl], self.trim, [u.mask for u in fl])
        return _shrunk(out, staleness_shrink(fl, weights))


@dataclass
class Krum(Rule):
    name = "krum"
    byzantine: int = 0        # f; 0: the most the round's n allows
    multi: bool = False       # multi-Krum: keep m = n - f updates

    def __call__(self, fl, weights):
        f = krum_f(len(fl), self.byzantine)
        keep = krum_select([u.delta for u in fl], f, max(1, len(fl) - f) if self.multi else 1)
        self.last = {"f": f, "kept": [fl[i].device for i in keep]}
        return average_fl([fl[i] for i in keep], [weights[i] for i in keep])


def _shrunk(out, c):
    return out if c == 1.0 else [o * np.float32(c) for o in out]


def make(name: str = "mean", *, clip_norm: float = 0.0, trim: float = 0.2, byzantine: int = 0) -> Rule:
    """The rule called `name` (config.Trust.aggregation) with its settings."""
    if name == "mean":
        return Rule()
    if name == "norm_bound":
        return NormBound(bound=clip_norm)
    if name == "median":
        return Median()
    if name == "trimmed_mean":
        return TrimmedMean(trim=trim)
    if name in ("krum", "multi_krum"):
        return Krum(byzantine=byzantine, multi=name == "multi_krum")
    raise ValueError(f"unknown aggregation rule {name!r}; choose from {', '.join(RULES)}")


def from_trust(trust) -> Rule:
    """The rule a run's [trust] section names."""
    return make(trust.aggregation, clip_norm=trust.clip_norm, trim=trust.trim, byzantine=trust.byzantine)


# --- anomaly scores --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Thresholds:
    """When an update counts as an outlier of its round: its norm over `norm_hi` or under `norm_lo`
    times the round's median norm, or, where its class score can be computed (`class_scores`), that
    score under `class_cos_min`; where it cannot, its cosine to the round's reference under `cos_min`."""
    norm_hi: float = 3.0
    norm_lo: float = 0.05
    cos_min: float = -0.1
    min_updates: int = 3     # fewer updates than this: no median to compare with, nobody scored
    class_cos_min: float = -0.15
    class_share: float = 0.05   # a device holds a class when at least this share of its samples are of it
    class_holders: int = 3      # a class has a reference when at least this many of the round's updates hold it
    bias_share: float = 1.0     # the bias check is exact for a device whose labels are all one class (the seed)


def output_layer(delta: list[np.ndarray], n_classes: int) -> int | None:
    """Index of the output weights in a delta: the last 2-D array with n_classes columns (None if none)."""
    for i in range(len(delta) - 1, -1, -1):
        if delta[i].ndim == 2 and delta[i].shape[1] == n_classes:
            return i
    return None


def class_scores(fl: list[FLUpdate], hists: dict, n_classes: int,
                 thresholds: Thresholds = Thresholds()) -> dict[str, float]:
    """Per device, how its update agrees, class by class, with the other devices that hold the same
    classes: for each class c, the column c of the output weights' delta (hidden units -> logit c) of
    every update whose device holds c (its reported histogram `hists[dev]`, share >= class_share) has
    a reference, their coordinate-wise median, when at least `class_holders` hold it; a device's score
    is the mean cosine of its columns to those references, weighted by its share of each class.

    Why: cross-entropy moves column c towards the hidden features of the samples labelled c and away
    from those predicted c but labelled otherwise, so devices that hold c push column c the same way
    however different the rest of their data is (non-IID updates disagree as wholes, much less per
    class). A sign-flipped update and one trained on flipped labels pull their own classes' columns
    the other way. Devices without a histogram, or holding no class with a reference, get no score
    (absent from the result). Masks: an entry a device's copy pruned is no vote and not compared."""
    if len(fl) < thresholds.min_updates or not fl:
        return {}
    j = output_layer(fl[0].delta, n_classes)
    if j is None:
        return {}
    share = {}
    for u in fl:
        h = hists.get(u.device)
        if h and len(h) <= n_classes and sum(h) > 0 and u.delta[j].shape == fl[0].delta[j].shape:
            share[u.device] = np.pad(np.asarray(h, np.float64), (0, n_classes - len(h))) / sum(h)
    ups = [u for u in fl if u.device in share]
    if len(ups) < thresholds.class_holders:
        return {}
    cols = np.stack([u.delta[j] for u in ups]).astype(np.float64)            # (n, hidden, C)
    held = np.stack([np.ones(u.delta[j].shape, bool) if u.mask is None else u.mask[j].astype(bool) for u in ups])
    cols = np.where(held, cols, np.nan)
    sh = np.stack([share[u.device] for u in ups])                             # (n, C)
    holders = sh >= thresholds.class_share
    ref = np.full(cols.shape[1:], np.nan)
    for c in range(n_classes):
        if holders[:, c].sum() >= thresholds.class_holders:
            x = cols[holders[:, c], :, c]
            ok = ~np.isnan(x).all(0)
            ref[ok, c] = np.nanmedian(x[:, ok], axis=0)
    out = {}
    plain, refs = not np.isnan(cols).any(), {}   # no pruned entries: each class's reference column is the same for all
    for k, u in enumerate(ups):
        num = den = 0.0
        for c in np.flatnonzero(holders[k]):
            if plain and c in refs:
                both, b, nb = refs[c]
            else:
                both = ~np.isnan(cols[k, :, c]) & ~np.isnan(ref[:, c])
                b = ref[both, c]
                nb = float(np.linalg.norm(b))
                if plain:
                    refs[c] = both, b, nb
            if not both.any():
                continue
            a = cols[k, both, c]
            na = float(np.linalg.norm(a))
            cos = float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0
            num += sh[k, c] * cos
            den += sh[k, c]
        if den > 0:
            out[u.device] = num / den
    return out


def bias_raised(fl: list[FLUpdate], hists: dict | None, n_classes: int, share: float = 0.9) -> dict[str, bool]:
    """Per device whose reported labels are a share of at least `share` one class c (default 1.0: all of
    them): whether its update did not lower the output bias of c. Every gradient step of cross-entropy on
    samples of c raises it, whatever the model (the bias gradient is sum_i (p_c(x_i) - 1) < 0), so an
    honest update never lowers it; a sign-flipped update, or one trained on other labels, does. Exact:
    it needs no other device to compare with, which on a fleet of one class per device (the seed) nothing
    else offers. Below a share of 1 it is not exact (a model that already gives c more than its share
    turns the sign), so it is not the default. A bias its pruned copy does not hold is not judged."""
    out = {}
    for u in fl:
        h = np.asarray((hists or {}).get(u.device) or [], np.float64)
        if len(h) != n_classes or h.sum() <= 0 or h.max() < share * h.sum():
            continue
        w = output_layer(u.delta, n_classes)
        if w is None or w + 1 >= len(u.delta) or u.delta[w + 1].shape != (n_classes,):
            continue
        c = int(h.argmax())
        if u.mask is not None and not u.mask[w + 1][c]:
            continue
        out[u.device] = bool(u.delta[w + 1][c] >= 0)
    return out


def sketch(shapes: list[tuple], n_classes: int, k: int | None, seed: int = 0) -> list[np.ndarray | None]:
    """What a score view keeps of each layer of updates of `shapes`: None (the whole layer) for the
    output weights and their bias (`output_layer`: what the class score and the bias check read), and
    of the other layers the flat indices of k coordinates drawn over all of them without replacement
    (seeded), or None for every layer when k is None or they hold no more than k."""
    j = output_layer([np.empty(s, np.bool_) for s in shapes], n_classes) if n_classes else None
    whole = {j, j + 1} if j is not None and j + 1 < len(shapes) and tuple(shapes[j + 1]) == (n_classes,) else {j}
    sizes = [int(np.prod(s)) if i not in whole else 0 for i, s in enumerate(shapes)]
    if k is None or sum(sizes) <= k:
        return [None] * len(shapes)
    picked = np.sort(np.random.default_rng(seed).choice(sum(sizes), k, replace=False))
    out, start = [], 0
    for i, size in enumerate(sizes):
        out.append(None if i in whole else picked[(picked >= start) & (picked < start + size)] - start)
        start += size
    return out


def view(arrays: list[np.ndarray], index: list[np.ndarray | None]) -> list[np.ndarray]:
    """An update's (or a mask's) score view by `sketch`'s index: whole layers copied, the others as the
    1-D arrays of their kept coordinates (a layer that keeps none is left out)."""
    return [np.array(a) if i is None else np.asarray(a).reshape(-1)[i] for a, i in zip(arrays, index)
            if i is None or len(i)]


def anomaly(fl: list[FLUpdate], thresholds: Thresholds = Thresholds(), hists: dict | None = None,
            n_classes: int = 0) -> dict[str, dict]:
    """Per device of this round's updates: {"norm_ratio": norm / the round's median norm, "cosine": to
    the round's coordinate-wise median (a reference no single update can steer; mask-aware),
    "class_cosine": its `class_scores` (when `hists`, the devices' reported label histograms, and
    `n_classes` allow one), "bias_raised": `bias_raised`'s verdict where it applies, "outlier": bool}.
    With fewer than `min_updates` updates only the exact bias check speaks.
    Where a device has a class score it replaces the whole-update cosine as the criterion: on non-IID
    devices the whole update's cosine to the median is often negative for honest ones.
    An update given as its score view (`view`: the output layer and a sample of the other coordinates)
    carries its whole norm (FLUpdate.norm); its cosine is then over the view."""
    raised = bias_raised(fl, hists, n_classes, thresholds.bias_share) if hists and n_classes else {}
    if len(fl) < thresholds.min_updates:   # no median to compare with: only the exact check
        return {d: {"bias_raised": False, "outlier": True} for d, ok in raised.items() if not ok}
    deltas = [u.delta for u in fl]
    n = np.array([global_norm(u.delta) if u.norm is None else u.norm for u in fl])
    med = float(np.median(n))
    ref = coordinate_median(deltas, [u.mask for u in fl])
    cls = class_scores(fl, hists, n_classes, thresholds) if hists and n_classes else {}
    out, nref = {}, global_norm(ref)
    for u, x in zip(fl, n):
        r = x / med if med > 0 else (0.0 if x == 0 else math.inf)
        c = cosine(u.delta, ref, nref)
        out[u.device] = {"norm_ratio": round(float(r), 4), "cosine": round(float(c), 4)}
        if u.device in cls:
            out[u.device]["class_cosine"] = round(cls[u.device], 4)
            off = cls[u.device] < thresholds.class_cos_min
        else:
            off = c < thresholds.cos_min
        if u.device in raised:
            out[u.device]["bias_raised"] = raised[u.device]
            off = off or not raised[u.device]
        out[u.device]["outlier"] = bool(r > thresholds.norm_hi or r < thresholds.norm_lo or off)
    return out


def norm_outliers(claimed: dict[str, float], k: float = 3.0) -> set[str]:
    """Devices whose reported norm is over k times the median of the round's reports (at least 3)."""
    if len(claimed) < 3:
        return set()
    med = float(np.median(list(claimed.values())))
    return {d for d, v in claimed.items() if v > k * med}


def cl_check(x: np.ndarray, y: np.ndarray, hist: list | None, n_classes: int, tol: float = 0.35) -> str | None:
    """Why a CL batch is suspect, or None: duplicate samples within the batch, or a label distribution
    that differs from the device's reported histogram `hist` (counts per class) by more than `tol` in
    total variation distance (a seeded sample of its data follows its histogram, up to sampling noise)."""
    if len(y) == 0:
        return None
    rows = {x[i].tobytes() + int(y[i]).to_bytes(2, "little") for i in range(len(y))}
    if len(rows) < len(y):
        return f"{len(y) - len(rows)} duplicate samples in a batch of {len(y)}"
    if hist and len(hist) <= n_classes and sum(hist) > 0:
        p = np.bincount(np.asarray(y, np.int64), minlength=n_classes)[:n_classes] / len(y)
        q = np.zeros(n_classes)
        q[:len(hist)] = np.asarray(hist, np.float64) / sum(hist)
        tv = 0.5 * float(np.abs(p - q).sum())
        # sampling noise of a batch of k: allow ~3 standard deviations on top of tol for small batches
        if tv > tol + 1.5 / math.sqrt(len(y)):
            return f"label distribution is {tv:.2f} (total variation) from the device's reported histogram"
    return None


class Quarantine:
    """Strikes per device and round; a device that is an outlier `after` rounds in a row (0: never) is
    quarantined for the rest of the run. A round in which a device was scored and not struck resets its
    streak; a round it took no part in leaves it as it is. Checkpointable (`state` / `load_state`)."""

    def __init__(self, after: int = 3):
        self.after = after
        self.streak: dict[str, int] = {}
        self.quarantined: dict[str, dict] = {}   # device -> {"round", "why"}
        self.struck: dict[str, str] = {}         # this round: device -> why
        self.scored: set[str] = set()            # this round: devices looked at

    def strike(self, dev: str, why: str) -> None:
        self.struck.setdefault(dev, why)
        self.scored.add(dev)

    def clean(self, dev: str) -> None:
        self.scored.add(dev)

    def close(self, rnd: int) -> list[str]:
        """End of round `rnd`: streaks updated. -> the devices quarantined by it."""
        new = []
        for d in sorted(self.scored):
            if d not in self.struck:
                self.streak[d] = 0
                continue
            self.streak[d] = self.streak.get(d, 0) + 1
            if self.after and self.streak[d] >= self.after and d not in self.quarantined:
                self.quarantined[d] = {"round": rnd, "why": self.struck[d]}
                new.append(d)
        self.struck, self.scored = {}, set()
        return new

    def state(self) -> dict:
        return {"streak": {d: s for d, s in self.streak.items() if s}, "quarantined": self.quarantined}

    def load_state(self, meta: dict) -> None:
        self.streak = dict(meta.get("streak", {}))
        self.quarantined = dict(meta.get("quarantined", {}))
