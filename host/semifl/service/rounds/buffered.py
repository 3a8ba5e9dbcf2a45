"""Buffered asynchronous rounds (FedBuff, Nguyen et al., AISTATS 2022) for FedAvg, SemiFL and semifl+.

No round waits for the slowest device. FL clients train on the model version they were given and upload
at once; the host keeps up to `concurrency` of them busy, giving an idle capable device the current model
as soon as it is seen (devices join and leave at any time). Every accepted update goes into a buffer;
once `buffer` updates are in, the strategy merges them, each weighted by 1/sqrt(1 + staleness), into the
next model version: one "round" of the run. An update trained on a model more than `max_staleness`
versions old is dropped and counted as late. CL uploaders stream too: the top-N by channel are asked for
samples each version, and whatever samples arrived go into the next merge (docs/protocol.md §5c).
"""
from __future__ import annotations

import logging
import math

from semifl.fleet.planner import cannot_run, drawn_order, is_capable, task_seed
from semifl.protocol import wire
from semifl.protocol.tensors import encode_arrays

from ..session import Rejected
from .federated import Context, FederatedRound

log = logging.getLogger("semifl.buffered")


def staleness_weight(tau: int) -> float:
    """FedBuff's s(tau) = 1 / sqrt(1 + tau)."""
    return 1.0 / math.sqrt(1.0 + tau)


class BufferedRound(FederatedRound):
    """Shares the federated round's update checks and int8 push; replaces the round itself."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.busy: dict[str, tuple[int, float]] = {}     # FL client -> (version it trains on, when it was asked)
        self.expired: set[tuple[str, int]] = set()       # (device, version) of tasks given up on: still welcome
        self.contexts: dict[int, Context] = {}           # version -> what validating its updates needs
        self.done_for: set[tuple[str, int]] = set()      # (device, version) already delivered (not asked twice)
        self.cl_asked: dict[str, int] = {}               # CL uploader -> version of its open samples task

    # --- inbound ----------------------------------------------------------------------------------
    def on_status(self, dev, msg):
        return False   # no status of its own (no "trained"): updates come at once

    def expects_late(self, dev, rnd):
        return True   # versions move on without waiting: an earlier version's ready is no error

    def refuse_chunk(self, dev, kind, blob_id, seq):
        v = self.session.round
        if blob_id in self.contexts:
            return None
        if blob_id < v and kind in (wire.KIND_UPDATE, wire.KIND_SAMPLES):   # too stale: late, dropped
            if seq == 0:
                self.session.rec.late["update" if kind == wire.KIND_UPDATE else "samples"] += 1
                self.busy.pop(dev, None)
                self.cl_asked.pop(dev, None)
            return "drop"
        return f"chunk of version {blob_id} during version {v}"

    def on_blob(self, dev: str, kind: int, blob: bytes, crc: int | None = None):
        s = self.session
        what = self.blob_kind(kind)
        meta, tensors = wire.decode_blob(blob)
        u = meta.get("round")
        ctx = self.contexts.get(u) if isinstance(u, int) else None
        if ctx is None:
            raise Rejected("stale_round", f"{what} for version {u}, which the host no longer holds")
        s.check_blob(dev, meta, rnd=u)
        if meta.get("kind") != what:
            raise Rejected("schema", f"{what} chunk carrying a {meta.get('kind')!r} blob")
        if (dev, u) in self.done_for or (dev, f"{what}/{u}") in self.accepted:
            raise Rejected("replay", f"{dev} already delivered its {what} of version {u}")
        if what == "update":
            if self.busy.get(dev, (None,))[0] != u and (dev, u) not in self.expired:
                raise Rejected("unexpected", f"{dev} was not asked to train on version {u}")
            crc = self.checksum(blob, crc)
            arrays, norm = self._check_update(dev, meta, tensors, ctx)
            if self.busy.get(dev, (None,))[0] == u:
                del self.busy[dev]
            self.expired.discard((dev, u))
            self.done_for.add((dev, u))
            self.zombies.delivered(dev)
            t = {k: meta[f"t_{k}_s"] for k in ("download", "local") if isinstance(meta.get(f"t_{k}_s"), (int, float))}
            s.rec.took(dev, **t)
        else:
            if self.cl_asked.get(dev) != u:
                raise Rejected("unexpected", f"{dev} was not asked for samples of version {u}")
            self._check_samples(dev, meta, tensors)
            del self.cl_asked[dev]
        self.keep(dev, f"{what}/{u}", meta, blob, crc)   # durable before it counts
        self.accepted.add((dev, f"{what}/{u}"))
        if what == "update":
            self.take(dev, f"update/{u}", meta, arrays, norm, ctx)
        else:
            self.blobs[(dev, f"{what}/{u}")] = blob

    def context(self, rnd: int) -> Context:
        return self.contexts.get(rnd, Context(rnd, self.params, {}, {}))

    @staticmethod
    def staleness_weight(tau: int) -> float:
        return staleness_weight(tau)

    # --- scheduling -------------------------------------------------------------------------------
    def eligible(self) -> list[str]:
        """Online capable devices that may train now: battery, memory, role."""
        reg, p = self.session.registry, self.planner
        out = []
        out_of_play = self.excluded(self.session.round)   # quarantined, or a zombie on the bench
        for d in sorted(reg.online):
            if d in out_of_play:
                continue
            caps = dict(reg.devices[d], **{k: v for k, v in reg.link.get(d, {}).items() if v is not None})
            if "fl" not in caps.get("roles", ["fl"]) or not is_capable(caps, p):
                continue
            if caps.get("battery", 1.0) < max(p.min_battery, p.fl_min_battery):
                continue
            why = cannot_run(caps, [], self.train_bytes(caps))
            if why:
                if d not in self.session.rec.refused:
                    self.refuse(d, f"{why[0]}: {why[1]}")
                continue
            out.append(d)
        return out

    def _task_fl(self, v: int, blob: bytes):
        """The current model and a task to idle eligible devices that have not trained on it yet, in a
        seeded order of their own each version (so buffers mix devices instead of cycling through the
        same groups), up to `concurrency` busy at once."""
        s, cfg = self.session, self.cfg
        room = (cfg.concurrency or 1 << 30) - len(self.busy)
        for d in drawn_order(self.eligible(), self.seed, v):
            if room <= 0:
                break
            if d in self.busy or (d, v) in self.done_for:
                continue
            s.send_down(d, wire.KIND_MODEL, v, blob)
            s.send_task(d, {"round": v, "role": "fl", "task": s.task_id(v, d), "seed": task_seed(self.seed, v, d),
                            "prune": cfg.prune, "fraction": cfg.fl_fraction, "epochs": self.epochs, "lr": self.lr,
                            "upload": True})
            self.busy[d] = (v, s.clock())
            room -= 1

    def _task_cl(self, v: int):
        """SemiFL's CL uploaders of this version: the top-N by their latest channel report."""
        s, reg = self.session, self.session.registry
        if not self.strategy.uses_cl or not self.cfg.cl_uploaders:
            return
        cands = [d for d in sorted(reg.online) if reg.devices[d].get("raw_ok") and not is_capable(reg.devices[d], self.planner)
                 and "cl" in reg.devices[d].get("roles", ["cl"]) and d not in self.cl_asked]
        rssi = lambda d: reg.link.get(d, {}).get("rssi") or reg.devices[d].get("rssi") or -200.0
        for d in sorted(sorted(cands, key=lambda d: (-rssi(d), d))[:self.cfg.cl_uploaders]):
            s.send_task(d, self.cl_task(v, d))
            self.cl_asked[d] = v

    def _expire(self):
        """A task not answered within collect_timeout_s frees its slot: the device may get work again, and
        the update of the task given up on is still welcome if it comes (within max_staleness)."""
        s = self.session
        limit = s.limits.collect_timeout_s
        for d, (v, t) in list(self.busy.items()):
            if d not in s.registry.online or s.clock() - t > limit:
                del self.busy[d]
                self.expired.add((d, v))
                s.rec.failed[d] = "offline" if d not in s.registry.online else "timeout"
                if d in s.registry.online:   # taken and never delivered: a zombie's mark
                    self.zombies.missed(d, s.round)
                log.info("version %d: %s's task on version %d %s", s.round, d, v,
                         "ended: it went offline" if d not in s.registry.online else f"expired after {limit:.1f} s")
        for d in [d for d in self.cl_asked if d not in s.registry.online]:
            del self.cl_asked[d]

    @staticmethod
    def to_score(fl):
        return fl   # every update of a buffer arrived for this merge, whatever model it trained on

    # --- one merge --------------------------------------------------------------------------------
    def run(self, v: int) -> dict:
        s, cfg = self.session, self.cfg
        rec = s.begin(v)
        s.store.begin_round(v, {})
        s.broadcast("round", sorted(s.registry.online), wire.encode_json({"v": wire.VERSION, "round": v, "run": s.run_id}),
                    retain=True)
        self.contexts[v] = Context(v, self.params, {}, {})
        for old in [u for u in self.contexts if u < v - cfg.max_staleness]:
            del self.contexts[old]
        self.expired = {(d, u) for d, u in self.expired if u in self.contexts}
        self.done_for = {(d, u) for d, u in self.done_for if u >= v - cfg.max_staleness}
        self.accepted = {(d, k) for d, k, _ in s.store.contribution_keys(v)}   # a restarted host keeps its buffer
        self.blobs = {}
        self.open_ingest(v, cfg.buffer)
        blob = encode_arrays({"kind": "model", "round": v}, self.params)
        self._task_cl(v)
        fl_in = lambda: sum(k.startswith("update/") for _, k in self.accepted)   # noqa: E731
        last = s.clock()   # when the buffer last grew: a buffer that stops filling is merged as it is
        while fl_in() < cfg.buffer:
            self._expire()
            self._task_fl(v, blob)
            if s.clock() - last > s.limits.collect_timeout_s:
                log.warning("version %d: %d of %d updates and nothing more for %.0f s; merging what there is", v,
                            fl_in(), cfg.buffer, s.limits.collect_timeout_s)
                break
            before = len(self.accepted)
            if s.pump(lambda: len(self.accepted) > before, 0.5):
                last = s.clock()
                s.progress(f"{fl_in()}/{cfg.buffer} updates buffered")
        rec.mark("train")

        fl, cl = self._contributions(v)   # the updates merge from the ingest: in the buffer's device order
        return self.merge(v, fl, cl, self.ingest, trained=sorted(u.device for u in fl),
                          staleness={u.device: u.staleness for u in fl}, busy=sorted(self.busy), idle={})
