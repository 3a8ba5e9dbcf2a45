"""Secure federated rounds: SemiFL's round with the FL part merged from a SecAgg+ sum (docs/trust.md,
docs/protocol.md §5d). The host learns the sum of the FL clients' updates, never one of them.

  1. announce and plan as `FederatedRound`; FL clients without the `secagg` role are not planned
  2. the model out to the FL clients, `secagg` train tasks (the FL task's fields plus the L2 clip C and
     the weight cap); CL tasks as usual. Each client trains, clips its update to C on the device and
     answers `trained` with its sample count only (no norm: it would leak)
  3. SecAgg+ over the clients that trained (indices 1..n in device order): setup (task) -> keys
     (status) -> the neighbours' keys (down blob) -> shares (up blob) -> the shares addressed to each
     (down blob) -> masked vectors (up blob, the only thing stored: `store.accept(.., "masked", ..)`)
     -> unmask request (task) -> shares of the survivors' self-mask seeds and of the dropped clients'
     keys (up blob) -> the sum. Every stage waits for the clients still in the round, up to
     `collect_timeout_s`; a client silent, offline or refusing at any stage is dropped and the round
     goes on with the others while SecAgg can recover (the complete graph up to 32 clients: any
     ceil(n/2) - 1 dropouts, so at least a third). When it cannot (`SecAggError`), or fewer than 3
     clients trained, the round has no FL part: logged and counted (`secagg.failed` in its metrics).
  4. the strategy's step with one synthetic update, device "secagg": the weighted mean
     sum_i w_i delta_i / sum_i w_i with w_i = n_i / cap, n = sum of the survivors' samples. FedAvg's
     step is params + sum n_i delta_i / sum n_i and SemiFL mixes that same mean with its CL gradient by
     n_FL = sum n_i: both depend on the updates only through that weighted sum, so the model is plain
     FedAvg's / SemiFL's over the survivors up to the quantization error (learn/secagg.py:
     <= m C / R per coordinate of the sum, R = floor((2^32 - 1) / n)) and C's clipping, which an
     honest update under C does not feel. With client-level DP as the strategy's merge (`ClientDP`)
     every client counts once (w = 1), clips to the DP clip, sends its clip bit when the clip is
     adaptive, and the host noises the secure sum (`ClientDP.release`).

What it cannot do, and says: top-K by norm (every tasked client that trains takes part: ranking would
need each norm, which leaks), norm/claim checks, robust rules and anomaly scores (no single update to
look at: only `aggregation = "mean"`), per-device compression and sparse updates (the masked vectors
must add up entry by entry), carrying late updates (semifl+). The uniform `prune` composes: pruned
entries are zeros in the masked vector. A host restarted mid-round runs the round's SecAgg again with
fresh keys (the server's state is not durable; the masked vectors stored before are kept, not used).
"""
from __future__ import annotations

import logging

import numpy as np

from semifl.fleet.planner import task_seed
from semifl.learn.secagg import (
    MIN_CLIENTS,
    SecAggError,
    SecAggServer,
    error_bound,
    unpack,
)
from semifl.learn.strategy import FLUpdate
from semifl.protocol import wire
from semifl.protocol.tensors import encode_arrays, from_wire

from ..session import Rejected, expect_tensors
from .federated import Context, FederatedRound

log = logging.getLogger("semifl.secure")
CLIP = 10.0       # the default L2 bound C of an update (and the quantizer's box): far above an honest FL update's norm
UP = {"shares": "ct", "masked": "masked", "unmask": "unmasked"}   # up blob kind -> the server's table it fills


class SecureRound(FederatedRound):
    def __init__(self, session, strategy, cfg, init_params, evaluate, *, clip: float = CLIP, **kw):
        """clip: the L2 bound C each device clips its update to (and the quantizer's per-entry box);
        with `ClientDP` as the strategy's merge, its clip instead. The rest as `FederatedRound`."""
        trust = kw.get("trust")
        why = [w for w, bad in (("a robust rule needs single updates", trust is not None and trust.aggregation not in ("mean", "norm_bound")),
                                ("per-device compression", cfg.compression != "none"),
                                ("sparse updates", cfg.sparse_updates),
                                ("late updates carried into the next round", kw.get("carries_late")),
                                ("asynchronous rounds", cfg.mode != "sync")) if bad]
        if why:
            raise ValueError(f"secure aggregation cannot be combined with {', '.join(why)}")
        if not clip > 0:
            raise ValueError(f"secure aggregation: clip must be positive, got {clip}")
        super().__init__(session, strategy, cfg, init_params, evaluate, **kw)
        self.clip = float(clip)   # (self.dp, client-level DP's merge if the strategy has one: FederatedRound's)
        self.sa: SecAggServer | None = None
        self.members: list[str] = []          # this round's SecAgg clients, index i -> members[i - 1]
        self.idx: dict[str, int] = {}
        self.trained: dict[str, int] = {}     # FL client -> samples it reported
        self.stage = ""
        self.cap = 0                          # the weight cap of this round's tasks: w_i = n_i / cap
        self.failed = 0                       # rounds whose FL part SecAgg could not deliver (the run's count)

    # --- inbound ----------------------------------------------------------------------------------
    def on_status(self, dev: str, msg: dict) -> bool:
        if msg.get("kind") != "secagg":
            return False   # `trained` (a plain FL report) is not one a secure round takes
        s, rnd, stage = self.session, msg["round"], msg.get("stage")
        if stage == "trained" and self.busy.get(dev, (None,))[0] == rnd and (rnd < s.round or self.train_closed):
            del self.busy[dev]
            self.zombies.delivered(dev)
            s.rec.late["trained"] += 1   # too late to join its round's SecAgg
            return True
        s.check_round(rnd, f"secagg status {stage!r}")
        if self.plan is None or dev not in self.plan.fl:
            raise Rejected("unexpected", f"{dev} is not an FL client this round")
        if msg.get("task") != s.task_id(rnd, dev):
            raise Rejected("replay", f"task {msg.get('task')} is not this round's task")
        if stage == "trained":
            n = msg.get("n")
            if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
                raise Rejected("schema", "a secagg trained status needs a positive n")
            if dev in self.trained or self.train_closed:
                raise Rejected("replay", f"{dev} already reported its training")
            self.check_n(dev, n)
            self.zombies.delivered(dev)
            self.trained[dev] = n
            self.busy.pop(dev, None)
            s.progress(f"{dev} trained ({len(self.trained)}/{len(self.plan.fl)} FL clients)")
            s.rec.took(dev, **{k: msg[f"t_{k}_s"] for k in ("download", "local") if isinstance(msg.get(f"t_{k}_s"), (int, float))})
        elif stage == "keys":
            i = self._index(dev, msg.get("msg"), "keys")
            if i in self.sa.keys:
                raise Rejected("replay", f"{dev} already sent its keys")
            self._server(self.sa.receive_keys, msg["msg"])
            s.progress(f"{dev}'s keys in ({len(self.sa.keys)}/{self.sa.n})")
        else:
            raise Rejected("schema", f"unknown secagg stage {stage!r}")
        return True

    def _index(self, dev: str, m, stage: str) -> int:
        """dev's SecAgg index, checked against what its message claims (a device speaks only for itself)."""
        if self.sa is None or self.stage != stage or dev not in self.idx:
            raise Rejected("unexpected", f"{dev}'s secagg {stage} outside that stage of this round")
        if not isinstance(m, dict) or m.get("idx") != self.idx[dev]:
            raise Rejected("schema", f"{dev}'s secagg {stage} does not carry its own index {self.idx[dev]}")
        return self.idx[dev]

    @staticmethod
    def _server(fn, *args):
        try:
            fn(*args)
        except SecAggError as e:
            raise Rejected("malformed" if e.reason == "malformed" else "secagg", str(e)) from None

    def on_blob(self, dev: str, kind: int, blob: bytes, crc: int | None = None):
        if kind != wire.KIND_UPDATE:
            return super().on_blob(dev, kind, blob, crc)   # CL samples, as in every federated round
        s = self.session
        meta, tensors = wire.decode_blob(blob)
        what = meta.get("kind")
        if what not in UP:
            raise Rejected("unexpected", f"a {what!r} blob in a secure round (only shares, masked, unmask)")
        s.check_blob(dev, meta)
        if what == "masked":
            i = self._index(dev, {"idx": self.idx.get(dev)}, "masked")
            if i in self.sa.masked:
                raise Rejected("replay", f"{dev} already sent its masked vector")
            expect_tensors(tensors, [("int32", (self.sa.dim,))], "masked")
            self._server(self.sa.receive_masked, i, from_wire(tensors[0]).view(np.uint32).copy())
            if (dev, "masked") not in self.accepted:   # (a restarted host's earlier attempt stays as it was)
                s.store.accept(s.round, dev, "masked", meta["n"], blob)   # the only per-device payload kept
                self.accepted.add((dev, "masked"))
        else:
            if tensors:
                raise Rejected("shape", f"a secagg {what} blob carries no tensors")
            i = self._index(dev, meta.get("msg"), what)
            if i in getattr(self.sa, UP[what]):
                raise Rejected("replay", f"{dev} already sent its {what}")
            self._server(self.sa.receive_shares if what == "shares" else self.sa.receive_unmask,
                         dict(meta["msg"], stage=what))
        s.progress(f"{dev}'s {what} in ({len(getattr(self.sa, UP[what]))}/{self.sa.n})")

    # --- the round --------------------------------------------------------------------------------
    def excluded(self, rnd: int) -> dict[str, str]:
        out = super().excluded(rnd)
        for d, caps in self.session.registry.devices.items():
            if "fl" in caps.get("roles", ()) and "secagg" not in caps.get("roles", ()):
                out.setdefault(d, "cannot mask its update (no secagg role)")
        return out

    def run(self, rnd: int) -> dict:
        s, cfg = self.session, self.cfg
        rec = s.begin(rnd)
        self.trained, self.train_closed, self.asked, self.norms = {}, False, {}, {}
        self.sa, self.members, self.idx, self.stage = None, [], {}, ""
        row = s.store.round_row(rnd)

        plan = self.announce_and_plan(rnd, row)   # stage 1, as every federated round
        self.ctx = Context(rnd, self.params, {}, {})
        self.accepted = {(d, k) for d, k, _ in s.store.contribution_keys(rnd)}
        self.blobs = {}

        # stage 2: every FL client trains (no top-K: all that finish take part), CL uploads as usual
        c = self.dp.clip if self.dp is not None else self.clip
        if plan.fl:
            blob = encode_arrays({"kind": "model", "round": rnd}, self.params)
            self.cap = cap = 0 if self.dp is not None else max(self.expected_n(d) for d in plan.fl)
            for d in plan.fl:
                s.send_down(d, wire.KIND_MODEL, rnd, blob)
            for d in plan.fl:
                s.send_task(d, {"round": rnd, "lr": self.lr, "role": "secagg", "stage": "train", "task": s.task_id(rnd, d),
                                "seed": task_seed(self.seed, rnd, d), "prune": cfg.prune, "fraction": cfg.fl_fraction,
                                "epochs": self.epochs, "clip": c, "cap": cap, "bit": bool(self.dp and self.dp.adaptive)})
                self.busy[d] = (rnd, s.clock())
                self.first_task[d] = rnd
        for d in plan.cl:
            if (d, "samples") not in self.accepted:
                self.asked[d] = s.clock()
                s.send_task(d, {"round": rnd, "lr": self.lr, "role": "cl", "task": s.task_id(rnd, d),
                                "seed": task_seed(self.seed, rnd, d), "fraction": cfg.cl_fraction})
        self._collect_trained(list(plan.fl), s.clock() + s.limits.collect_timeout_s, self.trained)
        for d in plan.fl:
            if d not in self.trained and not s.gone(d):
                self.zombies.missed(d, rnd)
        self.train_closed = True
        rec.mark("train")

        # stage 3: SecAgg+ over the clients that trained
        record = {"clients": len(self.trained), "clip": c}
        mean = self._secure_sum(rnd, sorted(self.trained), c, record)
        rec.mark("secagg")
        want = [(d, "samples") for d in plan.cl]
        s.wait(lambda: all(w in self.accepted or s.gone(w[0]) for w in want), s.limits.collect_timeout_s, "CL uploads")
        s.drop_partial()
        rec.mark("upload")

        # stage 4: the strategy's step on the secure mean and the CL samples
        _, cl = self._contributions(rnd)
        self.prev, self.missing = self.ctx, {w for w in want if w not in self.accepted and not s.gone(w[0])}
        fl = [] if mean is None else [FLUpdate("secagg", mean[0], mean[1])]
        fields = {"trained": sorted(self.trained), "idle": plan.idle, "tasked": list(plan.fl), "secagg": record}
        if not fl:
            return self.merge(rnd, fl, cl, **fields)
        merge = self.strategy.__dict__.get("fl_merge")
        self.strategy.fl_merge = lambda ups, weights: [a.copy() for a in ups[0].delta]   # the mean is the merge
        try:
            return self.merge(rnd, fl, cl, **fields)
        finally:
            if merge is None:
                del self.strategy.fl_merge
            else:
                self.strategy.fl_merge = merge

    def _stage(self, stage: str, table, out: dict, send) -> None:
        """Send each client its message of `stage`, then wait for the answers of those still in."""
        s = self.session
        self.stage = stage
        for i, m in out.items():
            send(self.members[i - 1], m)
        who = [self.members[i - 1] for i in out]
        s.wait(lambda: all(self.idx[d] in table or s.gone(d) for d in who), s.limits.collect_timeout_s, f"secagg {stage}")

    def _secure_sum(self, rnd: int, members: list[str], c: float, record: dict):
        """SecAgg+ over `members` -> (mean delta as model-shaped float32 arrays, sum of samples), or None
        (no FL part: counted in `record` and `self.failed`, logged)."""
        s = self.session
        if not members:
            return None
        bit = bool(self.dp and self.dp.adaptive)
        dim = sum(int(np.prod(sh)) for sh in self.shapes) + 1 + bit
        try:
            if len(members) < MIN_CLIENTS:
                raise SecAggError("too_few_clients", f"{len(members)} FL clients trained; SecAgg needs {MIN_CLIENTS}")
            self.sa = sa = SecAggServer(len(members), dim, c, seed=task_seed(self.seed, rnd, "secagg"),
                                        round_id=f"{s.run_id}/{rnd}")
            self.members, self.idx = members, {d: i + 1 for i, d in enumerate(members)}
            record.update(k=sa.k, t=sa.t)
            nonce = lambda d: s.task_id(rnd, d)
            task = lambda stage, key: lambda d, m: s.send_task(
                d, {"round": rnd, "role": "secagg", "stage": stage, "task": nonce(d),
                    key: {k: v for k, v in m.items() if k != "stage"}})
            down = lambda stage: lambda d, m: s.send_down(
                d, wire.KIND_UPDATE, rnd, wire.encode_blob({"kind": "secagg", "stage": stage, "round": rnd, "task": nonce(d),
                                                           "msg": {k: v for k, v in m.items() if k != "stage"}}, []))
            self._stage("keys", sa.keys, sa.setup(), task("setup", "setup"))
            self._stage("shares", sa.ct, sa.keys_out(), down("keys"))
            self._stage("masked", sa.masked, sa.shares_out(), down("shares"))
            self._stage("unmask", sa.unmasked, sa.unmask_out(), task("unmask", "unmask"))
            self.stage = ""
            total, surv = sa.aggregate()
        except SecAggError as e:
            self.failed += 1
            record.update(failed=e.reason, stage=self.stage or "setup", detail=str(e)[:200], failed_rounds=self.failed)
            log.warning("round %d: secure aggregation failed at stage %s (%s): the round has no FL part",
                        rnd, self.stage or "setup", e)
            return None
        finally:
            self.stage = ""
        survivors = [members[i - 1] for i in surv]
        record.update(survivors=survivors, dropped=sorted(set(members) - set(survivors)),
                      error_bound=error_bound(c, len(members), len(surv)))
        parts, wsum, bits = unpack(total, self.shapes, c, bit)
        n = sum(self.trained[d] for d in survivors)
        if self.dp is not None:   # each client counted once, the noise added to the secure sum
            mean = self.dp.release(parts, len(surv), bits)
            self.dp.took_part(survivors)
        else:
            if wsum <= 0:
                record.update(failed="weight", failed_rounds=self.failed + 1)
                self.failed += 1
                log.warning("round %d: the secure sum's weights add up to %g: no FL part", rnd, wsum)
                return None
            want = n / self.cap
            if abs(wsum - want) > 1e-6 * len(surv) + record["error_bound"] / c:
                log.warning("round %d: the survivors' weights sum to %.6f, their sample counts give %.6f", rnd, wsum, want)
            record["weight"] = round(wsum, 6)
            mean = [p / wsum for p in parts]
        log.info("round %d: secure sum of %d FL clients (%d dropped)", rnd, len(surv), len(members) - len(surv))
        return [np.asarray(m, np.float32) for m in mean], n

    def payloads(self, rnd: int, kinds=("samples",)):
        """Only CL samples are merged from the store: the masked vectors are not updates."""
        return super().payloads(rnd, kinds)

    @staticmethod
    def to_score(fl):
        return []   # no single update to score (the one update is the secure mean)

    def ranked_norms(self):
        raise RuntimeError("a secure round has no norms to rank")
