"""Partial aggregators (issue 20): a share of the devices' FL uploads validated, spooled and folded into a
partial sum away from the host, which merges the partial sums. One component, two placements:

- host workers (`semifl worker`, or `semifl serve/run --host-workers N`): processes that share the devices'
  upload topic through an MQTT v5 shared subscription (`$share/semifl-agg/semifl/v1/dev/+/up`,
  Mosquitto 2); the host, the coordinator, then does not subscribe to it. Mosquitto hands a shared
  subscription's messages out one by one, so the chunks of one blob scatter over the workers: each
  device has an owner (the CRC-32 of its id over the workers the round's context lists) and a worker
  passes a chunk it does not own to the owner, on agg/<owner>/relay/<device>.
- an edge aggregator (`semifl edge`): on a gateway's own Mosquitto, bridged to the core, it takes the
  uploads of the devices behind it (docs/scale.md).
The processes, their links and stores are app/aggregate.py's and app/edge.py's.

An aggregator checks an update with the host's own `check_update` (shapes, finite, mask, n, reported
norm) and its task id from the context, spools it (`Store`), reports the acceptance to the coordinator
(device, norm, bytes and the score view anomaly scoring reads) and folds it, in the plan's order over
its share, with the round's `Plan`; asked, it sends its `PartialSum` under the plan the coordinator
merges with (folded again from its spool when screening changed it). CL samples are not folded: their
chunks go on to the coordinator as received.

Topics, all under semifl/v1/agg/, which device accounts can neither read nor write (the context holds
the uploaders' task ids, the relay their updates: neither may reach another device):
  agg/ctx                  coordinator -> aggregators, retained: the round's context (a blob)
  agg/<id>/collect         coordinator -> aggregator: {round, plan, keep}: your partial sum, please
  agg/<id>/acc             aggregator -> coordinator: an acceptance (numbers + score view) or a rejection
  agg/<id>/sum             aggregator -> coordinator: its PartialSum, in chunks
  agg/<id>/up/<device>     aggregator -> coordinator: a CL samples chunk as received
  agg/<id>/relay/<device>  worker -> worker: a chunk of a blob its owner assembles
  agg/<id>/presence        retained online / offline (its last will); agg/<id>/bridge: an edge's bridge (1/0)
"""
from __future__ import annotations

import json
import logging
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from semifl.learn import robust
from semifl.learn.aggregate import global_norm
from semifl.learn.fold import PartialSum, Plan, Summand, sum_rule
from semifl.protocol import wire
from semifl.protocol.tensors import decode_arrays, encode_arrays

from .rounds.federated import Context, Expect, check_update
from .session import Rejected, Round, Session

log = logging.getLogger("semifl.aggregator")

AGG = wire.ROOT + "/agg"
CTX = AGG + "/ctx"
GROUP = "semifl-agg"          # the workers' shared-subscription group
SUM_CHUNK = 256 << 10         # a partial sum travels in chunks of this many bytes
PENDING, PENDING_BYTES = 10_000, 64 << 20   # chunks held while the round they belong to has no context yet


def agg_topic(agg_id: str, leaf: str) -> str:
    return f"{AGG}/{agg_id}/{leaf}"


def owner(dev: str, workers: list[str]) -> str:
    """The worker that assembles `dev`'s blobs: the same answer in every worker and the coordinator."""
    return workers[zlib.crc32(dev.encode()) % len(workers)]


def plan_dict(p: Plan) -> dict:
    return {"order": list(p.order), "denominator": p.denominator, "bound": p.bound, "shrink": p.shrink,
            "unit": p.unit, "dtype": np.dtype(p.dtype).name}


def plan_of(d: dict) -> Plan:
    return Plan(tuple(d["order"]), d["denominator"], d["bound"], d["shrink"], d["unit"], np.dtype(d["dtype"]).type)


def coordinator_subs(own_uploads: bool) -> list[str]:
    """What the coordinating host subscribes to: the devices' reports (their uploads only where some
    devices upload to it directly: an edge tier's core), and what aggregators send it."""
    leaves = (wire.T_CAPS, wire.T_PRESENCE, wire.T_STATUS) + ((wire.T_UP,) if own_uploads else ())
    return [wire.ROOT + "/dev/+/" + leaf for leaf in leaves] + [
        AGG + "/+/" + leaf for leaf in ("acc", "sum", "up/+", "presence", "bridge")]


class Coordinator:
    """The host's side, standing in for its link: aggregators' messages are taken here (acceptances
    count as the round's accepted uploads, partial sums are assembled) and the rest goes on to the
    session; relayed CL chunks go on as if they came from their device. `workers`: how many host
    workers fold for it (0: edge aggregators)."""

    def __init__(self, link, workers: int = 0, max_blob: int = 64 << 20):
        self.link, self.workers, self.max_blob = link, workers, max_blob
        self.live: dict[str, str] = {}   # aggregator -> the instance that said it is online
        self.rounds = None          # the FederatedRound it serves
        self.owners: list[str] = []  # the workers the open round's context lists
        self.plan: Plan | None = None  # the fold plan it gave them
        self.sums: dict[str, PartialSum] = {}
        self._asm: dict[str, wire.Assembler] = {}
        self.relayed = Counter()    # what aggregators report they relayed (bytes), for a benchmark
        self.refused = Counter()    # aggregator -> its messages that did not decode

    def __getattr__(self, name):   # publish, publish_blob, close, dropped, ...: the link's
        return getattr(self.link, name)

    def attach(self, rounds_obj) -> None:
        """Serve `rounds_obj`; only merges that are sums can be split this way."""
        from .rounds.buffered import BufferedRound
        from .rounds.federated import FederatedRound
        from .rounds.secure import SecureRound

        what = "host workers" if self.workers else "edge aggregators"
        if not isinstance(rounds_obj, FederatedRound) or isinstance(rounds_obj, (BufferedRound, SecureRound)):
            raise ValueError(f"{what} fold synchronous federated rounds only (not {type(rounds_obj).__name__})")
        if not rounds_obj.strategy.folds or sum_rule(rounds_obj.strategy.fl_merge) is None:
            raise ValueError(f"{what} fold partial sums: the merge must be a sum (trust.aggregation mean or "
                             f"norm_bound, or client DP), not {getattr(rounds_obj.strategy.fl_merge, 'name', '')!r} "
                             f"of strategy {rounds_obj.strategy.name!r} (median, trimmed mean and Krum need every update)")
        if rounds_obj.cfg.compression != "none":
            raise ValueError(f"{what}: per-device compression merges updates with their own masks, not as a sum")
        rounds_obj.coord, self.rounds = self, rounds_obj

    def wait(self, session: Session, n: int, timeout: float) -> bool:
        """Until `n` aggregators are online."""
        return session.pump(lambda: len(self.live) >= n, timeout)

    # --- inbound --------------------------------------------------------------------------------
    def get(self, timeout: float):
        msg = self.link.get(timeout)
        if msg is None or msg[0] == "_rejected" or not msg[0].startswith(AGG + "/"):
            return msg
        try:
            return self.on_message(msg[0], msg[1])
        except (wire.WireError, ValueError, KeyError, TypeError) as e:   # a broken aggregator's message: said, not fatal
            self.refused[msg[0].split("/")[3] if msg[0].count("/") >= 3 else "?"] += 1
            log.warning("refused a message on %s: %s", msg[0], e)
            return None

    def on_message(self, topic: str, payload):
        """One aggregator message. -> a device message for the session (a relayed CL chunk) or None."""
        src, leaf, *rest = topic[len(AGG) + 1:].split("/")
        if leaf == "up" and rest:
            return wire.dev_topic(rest[0], wire.T_UP), payload
        if leaf == "presence" or leaf == "bridge":
            # presence: b"online:<instance>" / b"offline:<instance>" (its will); an edge's bridge: 1 / 0
            state, _, inst = bytes(payload).decode(errors="replace").partition(":")
            if state in ("online", "1"):
                joined = src not in self.live
                self.live[src] = inst if leaf == "presence" else self.live.get(src, inst)
                if joined and self.rounds is not None:
                    self.joined(src)
            elif src in self.live and (leaf == "bridge" or self.live[src] == inst):   # not a former instance's
                del self.live[src]
                if self.rounds is not None:
                    self.lost(src)
        elif leaf == "acc" and self.rounds is not None:
            meta, view = decode_arrays(payload)
            self.relayed[src] += meta.get("relayed", 0)
            if meta.get("round") != self.rounds.session.round:
                log.info("%s's report of round %s came in round %d: ignored", src, meta.get("round"), self.rounds.session.round)
            elif "reject" in meta:
                self.rounds.remote_reject(meta["device"], meta["reject"], meta.get("detail", ""), meta.get("bytes", 0))
            else:
                self.rounds.take_remote(src, meta["device"], float(meta["norm"]), view, meta.get("bytes", 0))
        elif leaf == "sum":
            self._on_sum_chunk(src, payload)
        return None

    def _on_sum_chunk(self, src: str, payload) -> None:
        kind, blob_id, seq, count, blob_len, bcrc, data = wire.decode_chunk(payload, self.max_blob)
        asm = self._asm.get(src)
        if asm is None or (asm.blob_id, asm.count, asm.blob_len) != (blob_id, count, blob_len):
            asm = self._asm[src] = wire.Assembler(kind, blob_id, count, blob_len)
        if asm.add(kind, blob_id, seq, count, blob_len, bcrc, data):
            del self._asm[src]
            self.sums[src] = PartialSum.decode(bytes(asm.buf))

    # --- the round --------------------------------------------------------------------------------
    def open(self, rounds_obj, plan: Plan | None) -> None:
        """Publish the round's context (retained) for the aggregators: the uploaders with their task
        ids and what their updates must be, the fold plan, the model where pruning needs its masks."""
        r, s = rounds_obj, rounds_obj.session
        self.sums, self._asm, self.plan = {}, {}, plan
        self.owners = sorted(self.live) if self.workers else []
        ups = {}
        for d in r.uploaders or ():
            e = r.expect(d, r.ctx)
            ups[d] = [s.task_id(s.round, d), e.dtype, e.rate, e.sparse, e.have, e.n, e.claimed]
        meta = {"kind": "agg_ctx", "round": s.round, "workers": self.owners, "shapes": [list(x) for x in r.shapes],
                "n_classes": r.n_classes, "k": r.ingest.k, "uploaders": ups,
                "plan": plan_dict(plan) if plan is not None else None}
        params = r.ctx.params if any(e[2] > 0 for e in ups.values()) else []
        self.link.publish(CTX, encode_arrays(meta, params), retain=True)

    def lost(self, src: str) -> None:
        """An aggregator went offline in a round: what it accepted is gone with it. Its devices (and
        every uploader not yet in: chunks in flight may have gone through it) are asked again, under a
        context that lists the workers still alive."""
        r = self.rounds
        s = r.session
        if r.ingest is None or r.ingest.round != s.round:
            return
        gone = r.ingest.drop(src)
        for d in gone:
            r.accepted.discard((d, "update"))
        log.warning("round %d: aggregator %s went offline holding %d updates; asking again", s.round, src, len(gone))
        if r.train_closed:   # the context is out: again, with the workers alive
            self.open(r, self.plan)
        r.ask_again()

    def joined(self, src: str) -> None:
        """An aggregator came (back) in a round: host workers get a context that lists it, and what the
        round still waits for is asked again (chunks may have gone to its former instance)."""
        r = self.rounds
        if not self.workers or r.ingest is None or r.ingest.round != r.session.round or not r.train_closed:
            return
        log.info("round %d: aggregator %s joined; its context again", r.session.round, src)
        self.open(r, self.plan)
        r.ask_again()

    def collect(self, plan: Plan, shares: dict[str, list[str]]) -> dict[str, PartialSum]:
        """Each aggregator's partial sum over its share under `plan`; those that do not answer (gone,
        or a sum over other devices) are left out, and the caller plans again without them."""
        s = self.rounds.session
        want = {src: devs for src, devs in shares.items() if src in self.live}
        for src in want:
            self.sums.pop(src, None)
        for src, devs in want.items():
            self.link.publish(agg_topic(src, "collect"), json.dumps({"round": s.round, "plan": plan_dict(plan),
                                                                     "keep": devs}).encode())
        s.wait(lambda: all(src in self.sums or src not in self.live for src in want), s.limits.collect_timeout_s,
               "aggregators' partial sums")
        dead = [d for src, devs in shares.items() if src not in self.live for d in devs]
        if dead:   # `lost` has asked for their updates again: wait for them to come in elsewhere
            r = self.rounds
            log.warning("round %d: %d updates of the merge were lost with their aggregator; waiting for them "
                        "to come in again", s.round, len(dead))
            s.wait(lambda: all((d, "update") in r.accepted or s.gone(d) for d in dead), s.limits.collect_timeout_s,
                   "updates an aggregator lost")
        out = {}
        for src, devs in want.items():
            ps = self.sums.get(src)
            if ps is not None and ps.keys == devs:
                out[src] = ps
            elif ps is not None:
                log.warning("round %d: %s sent a partial sum over %s, not %s", s.round, src, ps.keys[:3], devs[:3])
        return out


class AggSession(Session):
    """An aggregator's session: the host's chunk assembly, limits and rejection counting, with the task
    ids of the round's context (an aggregator has no task secret)."""

    def __init__(self, link, store, limits=None, report=None):
        super().__init__(link, store, limits)
        self.tasks: dict[str, int] = {}
        self.report = report

    def task_id(self, rnd: int, dev: str):
        return self.tasks.get(dev) if rnd == self.round else None

    def reject(self, dev, reason: str, detail: str) -> None:
        super().reject(dev, reason, detail)
        if self.report is not None and dev is not None:
            self.report(dev, {"reject": reason, "detail": detail[:200]})


class Share(Round):
    """The round as an aggregator sees it: the uploads of its share, checked, spooled and folded."""
    name = "share"

    def __init__(self, agg: Aggregator):
        self.agg, self.session = agg, agg.session
        self.ctx: Context | None = None
        self.expect: dict[str, Expect] = {}
        self.shapes, self.index = [], []
        self.plan: Plan | None = None
        self.mine: list[str] = []                 # the plan's order over this aggregator's share
        self.sum: PartialSum | None = None
        self.accepted: dict[str, float] = {}      # device -> its update's norm

    def open(self, meta: dict, params: list) -> None:
        s = self.session
        rnd = meta["round"]
        same = self.ctx is not None and rnd == s.round
        s.round = rnd
        self.shapes = [tuple(x) for x in meta["shapes"]]
        self.ctx = Context(rnd, params, {}, {})
        self.expect = {d: Expect(e[1], e[2], e[3], e[4], e[5], e[6]) for d, e in meta["uploaders"].items()}
        s.tasks = {d: e[0] for d, e in meta["uploaders"].items()}
        for d, e in self.expect.items():   # the session takes chunks of devices it knows
            s.registry.devices.setdefault(d, {"n_samples": e.have})
        self.index = robust.sketch(self.shapes, meta["n_classes"], meta["k"], seed=rnd)
        if not same:
            self.accepted = {}
            s.store.spool.drop(rnd - 2)
            restored = [d for d, kind, _ in s.store.contribution_keys(rnd) if kind == "update" and d in self.expect]
        self.plan = plan_of(meta["plan"]) if meta.get("plan") else None
        self.mine = [d for d in self.plan.order if self.agg.holds(d, meta)] if self.plan else []
        self.sum = self.plan.empty(self.shapes) if self.plan else None
        if not same and restored:
            log.info("round %d: %d updates of this round in the spool (a restart): reported again", rnd, len(restored))
        for d in [] if same else restored:   # a restarted aggregator: what its spool holds of the round
            arrays = self.load(d)
            self.accepted[d] = global_norm(arrays)
            self.agg.report(d, {"norm": self.accepted[d]}, robust.view(arrays, self.index))
        self._advance(None, None)   # a context sent again (a worker gone): what is here, from the spool

    def on_blob(self, dev: str, kind: int, blob, crc: int | None = None) -> None:
        s = self.session
        if kind != wire.KIND_UPDATE:
            raise Rejected("malformed", f"aggregators take updates, not blob kind {kind}")
        meta, tensors = wire.decode_blob(blob)
        s.check_blob(dev, meta)
        if meta.get("kind") != "update":
            raise Rejected("schema", f"update chunk carrying a {meta.get('kind')!r} blob")
        if dev not in self.expect:
            raise Rejected("unexpected", f"{dev} was not asked to upload in round {s.round}")
        arrays, norm = check_update(meta, tensors, self.ctx, self.expect[dev], self.shapes)
        if dev in self.accepted:
            if bytes(blob) != s.store.contribution(s.round, dev, "update"):
                raise Rejected("replay", f"{dev} already delivered its round {s.round} update")
            # the same update again: the coordinator asked anew (a worker died) before this one's report reached it
            self.agg.report(dev, {"norm": norm}, robust.view(arrays, self.index))
            return
        s.store.accept(s.round, dev, "update", meta["n"], blob)   # durable before it counts
        self.accepted[dev] = norm
        self.agg.report(dev, {"norm": norm}, robust.view(arrays, self.index))
        self._advance(dev, arrays)

    def summand(self, d: str) -> Summand:
        return Summand(d, self.expect[d].n, self.accepted[d])

    def load(self, d: str) -> list[np.ndarray]:
        _, ts = wire.decode_blob(self.session.store.contribution(self.session.round, d, "update"))
        e = self.expect[d]
        from .rounds.federated import update_arrays
        return update_arrays(ts, self.ctx, e.rate, e.sparse)

    def _advance(self, dev, arrays) -> bool:
        """Fold what is next in the share's order while it is in. -> whether the share is all folded."""
        while self.sum is not None and self.sum.count < len(self.mine):
            d = self.mine[self.sum.count]
            if d not in self.accepted:
                return False
            self.plan.add(self.sum, self.summand(d), arrays if d == dev else self.load(d))
        return True

    def collect(self, req: dict) -> PartialSum | None:
        """The partial sum over `keep` under the coordinator's plan: the running one where it is that,
        else folded again from the spool."""
        if req["round"] != self.session.round or any(d not in self.accepted for d in req["keep"]):
            return None
        plan, keep = plan_of(req["plan"]), req["keep"]
        if self.sum is not None and self.plan.key == plan.key and self.sum.keys == keep:
            return self.sum
        ps = plan.empty(self.shapes)
        for d in plan.order:
            if d in keep:
                plan.add(ps, self.summand(d), self.load(d))
        return ps


def subscriptions(agg_id: str, shared: bool) -> list[str]:
    """What aggregator `agg_id` subscribes to: the devices' uploads (shared among the host workers, or all
    of them on an edge's broker, with the caps that say who is behind it), the round's context, what
    the coordinator and the other workers send it."""
    up = f"$share/{GROUP}/{wire.ROOT}/dev/+/{wire.T_UP}" if shared else f"{wire.ROOT}/dev/+/{wire.T_UP}"
    subs = [up, CTX, agg_topic(agg_id, "collect"), agg_topic(agg_id, "relay/+")]
    return subs + ([] if shared else [f"{wire.ROOT}/dev/+/{wire.T_CAPS}"])


class Aggregator:
    """One aggregator's state: its link (subscribed to `subscriptions`), store and session, the round's
    share, the relay. shared: a host worker (else an edge's aggregator)."""

    def __init__(self, link, store, agg_id: str, shared: bool = True, limits=None):
        self.id, self.shared, self.link, self.store = agg_id, shared, link, store
        self.session = AggSession(self.link, self.store, limits, report=self.report)
        self.share = Share(self)
        self.session.handler = self.share
        self.workers: list[str] = []
        self.local: set[str] = set()        # an edge's devices
        self.pending: list[tuple[str, bytes]] = []   # chunks that came before their round's context
        self.pending_bytes = 0
        self.reported = Counter()           # device -> bytes of its chunks already reported
        self.relayed = 0                    # bytes of chunks passed to their owner since the last report
        self.stats = Counter()              # chunks (and their bytes): own, relayed_out, relayed_in, samples

    def holds(self, dev: str, meta: dict) -> bool:
        """Whether `dev`'s update is this aggregator's to fold: its owner (workers), behind it (edges)."""
        return owner(dev, meta["workers"]) == self.id if self.shared and meta["workers"] else dev in self.local

    def report(self, dev: str, fields: dict, view=()) -> None:
        """An acceptance or a rejection to the coordinator, with the bytes of `dev`'s chunks since the last."""
        got = self.session.bytes_up[dev] - self.reported[dev]
        self.reported[dev] += got
        meta = dict(fields, round=self.session.round, device=dev, bytes=got, relayed=self.relayed)
        self.relayed = 0
        self.link.publish(agg_topic(self.id, "acc"), encode_arrays(meta, list(view)))

    def serve(self, stop=lambda: False) -> None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):   # the host's arithmetic on one BLAS thread, as Session.run
            while not stop():
                msg = self.link.get(0.2)
                if msg is not None:
                    self.on_message(*msg[:2]) if msg[0] != "_rejected" else self.session.dispatch(msg)

    def on_message(self, topic: str, payload) -> None:
        if topic == CTX:
            if payload:
                self.open(payload)
        elif topic.startswith(AGG + "/"):
            _, leaf, *rest = topic[len(AGG) + 1:].split("/")
            if leaf == "collect":
                self.collect(json.loads(payload))
            elif leaf == "relay" and rest and not self.early(topic, payload):
                self.count("relayed_in", payload)
                self.take(wire.dev_topic(rest[0], wire.T_UP), payload)
        else:
            try:
                dev, leaf = wire.parse_dev_topic(topic)
            except ValueError:
                return
            if leaf == wire.T_CAPS:
                (self.local.add if payload else self.local.discard)(dev)
            elif leaf == wire.T_UP:
                self.route(dev, topic, payload)

    def route(self, dev: str, topic: str, payload) -> None:
        """A device's chunk: CL samples on to the coordinator; an update's to its owner, or taken here."""
        if len(payload) >= wire.CHUNK_HEADER_LEN and payload[3] == wire.KIND_SAMPLES:
            self.count("samples", payload)
            self.link.publish(agg_topic(self.id, f"up/{dev}"), payload)
            return
        if self.early(topic, payload):
            return
        if self.shared:
            to = owner(dev, self.workers) if self.workers else self.id
            if to != self.id:
                self.count("relayed_out", payload)
                self.relayed += len(payload)
                self.link.publish(agg_topic(to, f"relay/{dev}"), payload)
                return
        self.count("own", payload)
        self.take(topic, payload)

    def early(self, topic: str, payload) -> bool:
        """Whether a chunk is of the next round, whose context is not here yet (or of any, before the
        first): then it waits for it (within PENDING chunks and PENDING_BYTES; beyond, it is dropped and
        counted). Others go on to the session, which takes the open round's and refuses the rest."""
        blob_id = struct.unpack_from("<I", payload, 4)[0] if len(payload) >= wire.CHUNK_HEADER_LEN else -1
        if self.share.ctx is not None and blob_id != self.session.round + 1:
            return False
        if len(self.pending) < PENDING and self.pending_bytes + len(payload) <= PENDING_BYTES:
            self.pending.append((topic, payload))
            self.pending_bytes += len(payload)
        else:
            self.stats["early_dropped"] += 1
        return True

    def count(self, what: str, payload) -> None:
        self.stats[what] += 1
        self.stats[what + "_bytes"] += len(payload)

    def take(self, topic: str, payload) -> None:
        self.session.dispatch((topic, payload))

    def open(self, blob) -> None:
        meta, params = decode_arrays(blob)
        self.workers = meta["workers"]
        self.share.open(meta, params)
        log.info("%s: round %d context, %d uploaders, workers %s", self.id, meta["round"], len(meta["uploaders"]),
                 self.workers)
        held, self.pending, self.pending_bytes = self.pending, [], 0
        for topic, payload in held:
            self.on_message(topic, payload)

    def collect(self, req: dict) -> None:
        ps = self.share.collect(req)
        if ps is None:
            log.warning("%s: asked for a partial sum over %s it does not hold", self.id, req.get("keep", [])[:3])
            ps = PartialSum(self.share.shapes or [(0,)])
        self.link.publish_blob(agg_topic(self.id, "sum"), wire.KIND_UPDATE, self.session.round,
                               ps.encode({"round": self.session.round, "aggregator": self.id}), SUM_CHUNK)
