"""What a federated round keeps of the FL updates it accepts, and how it merges them: folded into a
running sum as they come when the merge is a sum (learn/fold.py), else read back whole at the end.

An accepted update is in the store's spool (service/spool.py); the round keeps of it a few numbers
(weight, norm, staleness) and its score view (`robust.view`: what the anomaly score reads; the whole
update while it has at most SCORE_WHOLE values and all of the round's views fit SCORE_BUDGET, else its
output layer and a seeded sample of SCORE_SAMPLE of its other coordinates, the same for every update of
the round), so memory is O(model + SCORE_BUDGET), not O(updates x model).

Folding follows the list merge's order (sorted by device), so its bits are the list merge's: an update
is added once every update sorted before it is in; one that comes earlier waits in the spool. The round
plans the fold from what it expects (its uploaders, their sample counts and reported norms: the bound
of `norm_bound` comes from them); at the end it plans again from what it merges, after screening, and
keeps the sum only if both plans are the same (every uploader in, none screened out, the reported
norms those of the updates received). Else it folds again from the spool, in order, which leaves the
sum exactly as if a screened-out update had never been added. Merges that need every update at once
(median, trimmed mean, Krum), per-device masks (compression) and strategies that do not merge through
their `fl_merge` alone (semifl+) read the kept updates back whole, as before.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semifl.learn import robust
from semifl.learn.fold import PartialSum, Plan, Summand, SumRule
from semifl.learn.strategy import FLUpdate

SCORE_BUDGET = 1 << 23   # float32 values all of a round's score views may hold (32 MiB)
SCORE_WHOLE = 1 << 16    # an update of at most this many values is its own view, budget allowing (the MLP: 49,910)
SCORE_SAMPLE = 1 << 14   # else its view samples this many coordinates (fewer if the budget says so) besides its output layer


@dataclass
class Taken:
    """An accepted FL update as the round keeps it."""
    device: str
    kind: str                  # its kind in the store: "update", "late_update", "update/<version>"
    n: int                     # its weight: the samples the host expects it trained on
    norm: float                # aggregate.global_norm of the update received
    staleness: int = 0
    weight: float = 1.0        # FedBuff's staleness weight (FLUpdate.weight)
    mask: list | None = None   # the keep-masks of its compressed copy (None: all)
    view: list | None = None   # its score view
    mask_view: list | None = None
    source: str = ""           # the aggregator whose spool and partial sum hold it ("": this host's)

    def summand(self) -> Summand:
        return Summand(self.device, self.n, self.norm, self.weight)


class Ingest:
    def __init__(self, rnd: int, shapes, n_classes: int, expected: int, rule: SumRule | None, load):
        """Round `rnd`'s; shapes: the model's; expected: how many updates the round expects (sizes the
        score views); rule: the merge's sum rule (None: the list path); load(taken) -> the update's
        float32 arrays, read back from the spool."""
        self.round, self.shapes, self.rule, self.load = rnd, shapes, rule, load
        size = sum(int(np.prod(s)) for s in shapes)
        whole = size <= SCORE_WHOLE and size * max(1, expected) <= SCORE_BUDGET
        k = None if whole else max(1024, min(SCORE_SAMPLE, SCORE_BUDGET // max(1, expected)))
        self.k = k                        # an aggregator draws the same index from it (and the round)
        self.index = robust.sketch(shapes, n_classes, k, seed=rnd)
        self.taken: dict[tuple[str, str], Taken] = {}
        self.spec: Plan | None = None     # the fold planned from what the round expects
        self.sum: PartialSum | None = None
        self.folded = 0                   # how far along spec.order the sum is
        self.how = ""                     # how `merged` merged: folded, refolded, at_close, list, none, partial
        self.collect = None               # collect(plan, {source: [device]}) -> {source: PartialSum}: aggregators' sums
        self.merged_devices: list[str] | None = None   # what a merge over aggregators' sums took in the end

    def __len__(self):
        return len(self.taken)

    def expect(self, summands: list[Summand]) -> None:
        """Plan the fold from the updates the round expects (its fresh ones: kind "update") and fold
        those already in that are next in order."""
        if self.rule is None:
            return
        self.spec = self.rule.plan(summands)
        self.sum, self.folded = self.spec.empty(self.shapes), 0
        self._advance(None, None)

    def take(self, t: Taken, arrays) -> None:
        """An accepted update: keep its view; fold it (and those waiting on it) if its turn has come.
        `arrays` may be views of the received blob: used now, not kept."""
        t.view = robust.view(arrays, self.index)
        t.mask_view = None if t.mask is None else robust.view(t.mask, self.index)
        self.taken[(t.device, t.kind)] = t
        self._advance(t, arrays)

    def take_remote(self, t: Taken) -> None:
        """An update an aggregator (t.source) accepted and folds: the round keeps its numbers and the
        score view the aggregator computed with this round's `index`."""
        self.taken[(t.device, t.kind)] = t

    def drop(self, source: str) -> list[str]:
        """Forget what aggregator `source` took (it died with its spool). -> the devices it held."""
        gone = [k for k, t in self.taken.items() if t.source == source]
        for k in gone:
            del self.taken[k]
        return [d for d, _ in gone]

    def _advance(self, t: Taken | None, arrays) -> None:
        if self.sum is None:
            return
        order = self.spec.order
        while self.folded < len(order):
            nxt = self.taken.get((order[self.folded], "update"))
            if nxt is None or nxt.staleness:
                return
            self.spec.add(self.sum, nxt.summand(), arrays if nxt is t else self.load(nxt))
            self.folded += 1

    def score(self) -> list[FLUpdate]:
        """The updates as anomaly scoring sees them: their views (with their norms), in the store's order."""
        return [FLUpdate(t.device, t.view, t.n, t.mask_view, t.staleness, t.weight, t.norm)
                for t in (self.taken[k] for k in sorted(self.taken))]

    def merged(self, strategy, params, kept: set[str], cl) -> list[np.ndarray]:
        """strategy.aggregate over the updates of the `kept` devices and the CL batches: the FL part
        folded where it is a sum, else the kept updates read back whole."""
        ts = [self.taken[k] for k in sorted(self.taken) if k[0] in kept]
        if not ts:
            self.how = "none"
            return strategy.aggregate(params, [], cl)
        devices = [t.device for t in ts]
        if self.rule is None or not strategy.folds or any(t.mask is not None for t in ts) or len(set(devices)) < len(ts):
            self.how = "list"
            full = [FLUpdate(t.device, self.load(t), t.n, t.mask, t.staleness, t.weight) for t in ts]
            return strategy.aggregate(params, full, cl)
        if any(t.source for t in ts):
            return self._merged_partial(strategy, params, ts, cl)
        plan = self.rule.plan([t.summand() for t in ts])
        ps, self.how = self.sum, "folded"
        if ps is None or self.spec.key != plan.key or ps.keys != list(plan.order):
            # not planned ahead (buffered rounds, a restart), or not as planned (an update missing or
            # screened out, a norm not the one reported): fold from the spool, in order
            self.how = "at_close" if ps is None else "refolded"
            by = {t.device: t for t in ts}
            ps = plan.empty(self.shapes)
            for d in plan.order:
                plan.add(ps, by[d].summand(), self.load(by[d]))
        self.sum = None
        return strategy.aggregate_merged(params, self.rule.finish(plan, ps), sum(t.n for t in ts), cl)

    def _merged_partial(self, strategy, params, ts: list[Taken], cl) -> list[np.ndarray]:
        """The merge over updates some aggregators hold: one plan over all of them, this host's own
        folded from its spool, each aggregator's partial sum over its share under that plan, added in a
        fixed order (this host's, then by aggregator id). An aggregator that does not answer (it died)
        has its updates taken out; `collect` has them asked for again, and what came back elsewhere is
        planned again with the rest."""
        self.how = "partial"
        kept = {t.device for t in ts}
        while True:
            ts = [self.taken[k] for k in sorted(self.taken) if k[0] in kept]
            if not ts:
                self.how, self.merged_devices = "none", []
                return strategy.aggregate(params, [], cl)
            plan = self.rule.plan([t.summand() for t in ts])
            by = {t.device: t for t in ts}
            shares: dict[str, list[str]] = {}
            for d in plan.order:
                if by[d].source:
                    shares.setdefault(by[d].source, []).append(d)
            got = self.collect(plan, shares) if shares else {}
            if set(got) == set(shares):
                break
            for src in set(shares) - set(got):   # what did not come in elsewhere meanwhile is given up
                kept -= {d for d in shares[src] if (d, "update") not in self.taken or self.taken[(d, "update")].source == src}
        ps = plan.empty(self.shapes)
        for d in plan.order:
            if not by[d].source:
                plan.add(ps, by[d].summand(), self.load(by[d]))
        for src in sorted(got):
            ps.merge(got[src])
        self.sum, self.merged_devices = None, list(plan.order)
        return strategy.aggregate_merged(params, self.rule.finish(plan, ps), sum(t.n for t in ts), cl)
