"""Synchronous federated rounds: SemiFL's three stages for FedAvg, SemiFL and semifl+ (docs/protocol.md §5).

  1. announce; devices answer `ready` with link and battery; plan roles (fleet.planner): at most
     ceil(K * (1 + over_select)) FL clients train, the top-N CL uploaders by channel send samples
  2. each FL client gets the global model on its down topic and a task, trains and reports its update
     norm; the round goes on once every tasked client has answered, or its quorum has and its deadline
     has passed (docs/protocol.md §5c); the top-K by norm are asked for their update
  3. strategy.aggregate -> evaluate -> persist (store) -> next round
What arrives after its round closed is late: counted, and merged into the next round by a strategy
that carries late contributions (semifl+), dropped by the others.

Accepted payloads go to the store (its spool, durable before they count); an FL update is validated on
views of the bytes received (one norm pass also proves it finite) and folded into the round's running
sum as it comes when the merge is a sum (`ingest.Ingest`): memory O(model), not O(updates x model).

The host checks what devices claim (docs/trust.md): a reported norm must be the received update's, the
sample count the task's share of what the device's caps say; an update is weighted by the count the
host expects. Each round scores the updates it merges (`learn.robust.anomaly`) and the CL batches
(`robust.cl_check`); a device that is an outlier `trust.quarantine_after` rounds in a row is
quarantined (never planned again, kept in the round's checkpointed state), and a device that keeps
taking FL tasks without delivering is benched for a growing number of rounds (`planner.Zombies`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from semifl.config import Federated, Trust
from semifl.fleet.planner import (PlannerConfig, RoundPlan, Zombies, cannot_run, plan_round, select_fl_uploaders,
                                  task_seed)
from semifl.learn import compress, int8, mlp, nn, robust
from semifl.learn.aggregate import global_norm
from semifl.learn.data import to_float
from semifl.learn.dp import ClientDP
from semifl.learn.fold import Summand, sum_rule
from semifl.learn.strategy import CLBatch, FLUpdate, Strategy
from semifl.protocol import wire
from semifl.protocol.sampling import ceil_fraction
from semifl.protocol.tensors import dequantize, encode_arrays, from_wire

from ..session import Rejected, Round, Session, expect_tensors
from .ingest import Ingest, Taken

log = logging.getLogger("semifl.federated")


def is_update(kind: str) -> bool:
    """Whether a stored contribution of `kind` is an FL update ("update", "late_update", "update/<version>")."""
    return kind.endswith("update") or kind.startswith("update/")
ROW = 784
CALIBRATION = 1000   # samples that set the int8 activation ranges
NORM_RTOL = {"float32": 1e-4, "float16": 2e-3, "int8": 1e-4}   # a claimed norm vs the received update's
CRC_BESIDE = 1 << 20   # an update this long has its spool CRC computed in a helper thread while it is checked


def claimed_norm_differs(claimed: float, tensors, got: float) -> str | None:
    """Why a reported norm is not `got`, the norm of the update received, or None. The device computes
    it on its float32 delta before encoding: fp16 rounding moves it by < 2^-11 relatively; int8's
    per-entry error is at most scale/2, so the norms differ by at most sqrt(sum_i size_i (scale_i / 2)^2)."""
    slack = sum(float(np.prod(t[1])) * (t[2] / 2) ** 2 if t[0] == "int8" else 0.0 for t in tensors) ** 0.5
    rtol = max((NORM_RTOL.get(t[0], 1e-4) for t in tensors), default=1e-4)
    if abs(got - claimed) <= rtol * max(got, claimed) + slack + 1e-9:
        return None
    return f"reported norm {claimed:.6g}, the update received has {got:.6g}"


@dataclass
class Context:
    """What validating an update of one round needs: its model, the masks of its pruned copies and
    the compression each client trained with."""
    round: int
    params: list
    assigned: dict          # FL client -> its Compression (None: the uniform `prune`)
    masks: dict             # prune rate -> keep-masks of this round's model
    pruned: dict = field(default_factory=dict)   # prune rate -> float32 arrays, 1 where that copy has nothing

    def rate(self, dev: str, prune: float) -> float:
        c = self.assigned.get(dev)
        return c.prune if c is not None else prune

    def mask(self, rate: float) -> list[np.ndarray]:
        if rate not in self.masks:
            self.masks[rate] = mlp.prune_mask(self.params, rate)
        return self.masks[rate]

    def moves_pruned(self, arrays, rate: float) -> bool:
        """Whether a (finite) update changes an entry its copy pruned at `rate` does not hold: one
        multiply pass per layer (a boolean gather of the pruned entries costs eight)."""
        if rate not in self.pruned:
            self.pruned[rate] = [(~m).astype(np.float32) for m in self.mask(rate)]
        return any(np.multiply(a, p).any() for a, p in zip(arrays, self.pruned[rate]))


@dataclass(frozen=True)
class Expect:
    """What one FL client's update must be: what the host holds of the client (the checks' inputs).
    A host worker or an edge aggregator gets it in the round's context (service/aggregator.py)."""
    dtype: str                # the tensors' dtype: its Compression's, else float32
    rate: float               # the prune rate of the copy it trained
    sparse: bool              # it sends only the entries its copy holds
    have: int                 # the samples its caps report
    n: int                    # the samples its task's share is (expected_n)
    claimed: float | None     # the norm it reported (None: not reported to this host)


def update_arrays(tensors, ctx: Context, rate: float, sparse: bool) -> list[np.ndarray]:
    """An update's tensors as float32 model-shaped deltas: float32 as views of the bytes received
    (no copy), fp16/int8 dequantized, a sparse update scattered back through the mask of the copy
    the client trained."""
    arrays = [from_wire(t) if t[0] == "float32" else dequantize(t) for t in tensors]
    if sparse:
        arrays = compress.scatter(arrays, ctx.mask(rate))
    return arrays


def check_update(meta: dict, tensors, ctx: Context, e: Expect, shapes) -> tuple[list[np.ndarray], float]:
    """The one set of checks an FL update passes, wherever it is received (the host, a host worker, an
    edge aggregator): its tensors' dtypes and shapes, finite, nothing moved that its pruned copy does
    not hold, its sample count, its reported norm. Raises Rejected. -> (float32 arrays, L2 norm)."""
    shapes = [(int(m.sum()),) for m in ctx.mask(e.rate)] if e.sparse else shapes
    expect_tensors(tensors, [(e.dtype, tuple(sh)) for sh in shapes], "update")
    arrays = update_arrays(tensors, ctx, e.rate, e.sparse)
    norm = global_norm(arrays)   # finite iff every entry is: a float32 squared is finite in float64
    if not math.isfinite(norm):
        raise Rejected("nonfinite", "update contains NaN or Inf")
    # a pruned copy cannot change what it does not have: not its own update
    if e.rate > 0 and not e.sparse and ctx.moves_pruned(arrays, e.rate):
        raise Rejected("mask", f"update changes entries its copy pruned at {e.rate} does not hold")
    if meta["n"] > e.have:
        raise Rejected("schema", f"n={meta['n']} exceeds the device's {e.have} samples")
    if meta["n"] != e.n:
        raise Rejected("claim", f"claims n={meta['n']}; its task's fraction of its {e.have} samples is {e.n}")
    why = e.claimed is not None and claimed_norm_differs(e.claimed, tensors, norm)
    if why:
        raise Rejected("claim", why)
    return arrays, norm


class FederatedRound(Round):
    def __init__(self, session: Session, strategy: Strategy, cfg: Federated, init_params, evaluate, *, seed: int = 0,
                 lr: float = 0.1, epochs: int = 1, carries_late: bool = False, n_classes: int = 10, calib_x=None,
                 net: nn.Net | None = None, trust: Trust | None = None):
        """evaluate(params) -> (accuracy, loss); calib_x: uint8 inputs that calibrate the int8 model
        until CL uploads have brought enough; net: the model as layers (default: the MLP the params
        describe), for what training it costs a device; trust: the run's [trust] settings (quarantine,
        and whether the merge is robust: then norm outliers are not chosen to upload)."""
        self.session, self.strategy, self.cfg = session, strategy, cfg
        self.seed, self.lr, self.epochs, self.carries_late = seed, lr, epochs, carries_late
        self.evaluate, self.n_classes, self.calib_fallback = evaluate, n_classes, calib_x
        self.name = strategy.name
        self.planner = PlannerConfig(cl_uploaders=cfg.cl_uploaders, fl_uploaders=cfg.fl_uploaders,
                                     fl_min_battery=cfg.fl_min_battery)
        params, kept = session.resume(strategy.name)
        self.params = params or [np.asarray(p, np.float32) for p in init_params]
        if kept is not None:
            strategy.load_state(*kept)
        self.trust = trust or Trust()
        self.watch = robust.Quarantine(self.trust.quarantine_after)
        self.zombies = Zombies()
        self.claimed: dict[tuple[str, int], float] = {}   # (device, round) -> the norm it reported
        self.anomaly: dict[str, dict] = {}                 # this round's scores
        owner = getattr(strategy.fl_merge, "__self__", None)   # client-level DP: its clip and accountant
        self.dp = owner if isinstance(owner, ClientDP) else None
        if params is not None:   # a restarted host: quarantine and benches as the last round left them
            self.load_trust((session.store.get_meta("strategy_state") or {}).get("trust") or {})
        self.shapes = [p.shape for p in self.params]
        self.net = net or nn.Net(self.shapes[0][:1], tuple(("dense", w[1], "tanh") for w in self.shapes[::2]))
        self.plan: RoundPlan | None = None
        self.ctx = Context(0, self.params, {}, {})
        self.prev: Context | None = None      # the round before: its late uploads are still welcome
        self.missing: set[tuple[str, str]] = set()   # (device, kind) asked in the round before and never delivered
        self.busy: dict[str, tuple[int, float]] = {}   # FL client -> (round, when) of a task it has not reported on
        self.first_task: dict[str, int] = {}           # FL client -> the round of the task that made it busy
        self.norms: dict[str, float] = {}
        self.uploaders: list[str] | None = None
        self.accepted: set[tuple[str, str]] = set()
        self.blobs: dict[tuple[str, str], bytes] = {}   # (device, kind) -> CL samples this process accepted this round
        self.ingest: Ingest | None = None               # the round's FL updates: views, norms, the running sum
        self.coord = None                               # aggregator.Coordinator: host workers or edges fold the updates
        self.asked: dict[str, float] = {}
        self.train_closed = False
        self.calib: list[np.ndarray] = []     # CL samples the host holds anyway: the int8 calibration set
        # the fresh-samples rule: where the strategy keeps every CL sample it is sent, a CL uploader sends only
        # those the host does not hold; it learns which of its uploads the host holds from `got` in its tasks
        self.fresh = session.run_word("fresh") if cfg.fresh_samples and getattr(strategy, "cl_memory", False) else 0
        self.cl_got: dict[str, int] = session.store.last_samples_rounds() if self.fresh else {}

    @property
    def fl_budget(self) -> int:
        """FL clients a round tasks: the K it uses plus its over-selection."""
        return math.ceil(self.cfg.fl_uploaders * (1 + self.cfg.over_select))

    # --- inbound ----------------------------------------------------------------------------------
    def on_status(self, dev: str, msg: dict) -> bool:
        if msg.get("kind") != "trained":
            return False
        s, rnd = self.session, msg["round"]
        if self.busy.get(dev, (None,))[0] == rnd and (rnd < s.round or self.train_closed):
            del self.busy[dev]
            self.zombies.delivered(dev)   # slow, not a zombie
            s.rec.late["trained"] += 1   # it trained, but its round had already chosen its uploaders
            log.info("round %d: %s reported its round %d training after that round moved on", s.round, dev, rnd)
            return True
        s.check_round(rnd, "status 'trained'")
        if self.plan is None or dev not in self.plan.fl:
            raise Rejected("unexpected", f"{dev} is not an FL client this round")
        if msg.get("task") != s.task_id(rnd, dev):
            raise Rejected("replay", f"task {msg.get('task')} is not this round's task")
        norm, n = msg.get("norm"), msg.get("n")
        if not isinstance(norm, (int, float)) or not np.isfinite(norm) or not isinstance(n, int) or n <= 0:
            raise Rejected("schema", "trained status needs a finite norm and a positive n")
        self.zombies.delivered(dev)
        self.check_n(dev, n)
        self.norms[dev] = float(norm)
        self.claimed[(dev, rnd)] = float(norm)
        self.busy.pop(dev, None)
        s.progress(f"{dev} trained ({len(self.norms)}/{len(self.plan.fl)} FL clients)")
        s.rec.took(dev, **{k: msg[f"t_{k}_s"] for k in ("download", "local") if isinstance(msg.get(f"t_{k}_s"), (int, float))})
        return True

    def expects_late(self, dev: str, rnd: int) -> bool:
        """Whether a `ready` of an earlier round from `dev` is one the host expects: a straggler that was
        working on a task of that round or before answers the announcements it missed when it is done."""
        return self.first_task.get(dev, rnd + 1) <= rnd

    def refuse_chunk(self, dev: str, kind: int, blob_id: int, seq: int):
        if self.prev is not None and blob_id == self.prev.round and any(d == dev for d, _ in self.missing):
            return None   # a late upload of the round before: taken whole, then carried or counted
        return super().refuse_chunk(dev, kind, blob_id, seq)

    @staticmethod
    def blob_kind(kind: int) -> str:
        """What a device's blob of chunk kind `kind` is in a federated round: an update or samples."""
        what = {wire.KIND_UPDATE: "update", wire.KIND_SAMPLES: "samples"}.get(kind)
        if what is None:
            raise Rejected("malformed", f"devices do not send blob kind {kind} in federated rounds")
        return what

    def on_blob(self, dev: str, kind: int, blob: bytes, crc: int | None = None):
        """A device's whole blob (crc: its CRC-32 where the wire already computed it: the spool's)."""
        s = self.session
        what = self.blob_kind(kind)
        meta, tensors = wire.decode_blob(blob)
        if self.prev is not None and meta.get("round") == self.prev.round and (dev, what) in self.missing:
            return self._late(dev, what, meta, tensors, blob, crc)
        s.check_blob(dev, meta)
        if meta.get("kind") != what:
            raise Rejected("schema", f"{what} chunk carrying a {meta.get('kind')!r} blob")
        if what == "update":
            if not self.uploaders or dev not in self.uploaders:
                raise Rejected("unexpected", f"{dev} was not asked to upload in round {s.round}")
            crc = self.checksum(blob, crc)
            arrays, norm = self._check_update(dev, meta, tensors, self.ctx)
        else:
            if self.plan is None or dev not in self.plan.cl:
                raise Rejected("unexpected", f"{dev} is not a CL uploader in round {s.round}")
            self._check_samples(dev, meta, tensors)
        if (dev, what) in self.accepted:
            raise Rejected("replay", f"{dev} already delivered its round {s.round} {what}")
        self.keep(dev, what, meta, blob, crc)   # durable before it counts
        self.accepted.add((dev, what))
        if what == "update":
            self.take(dev, what, meta, arrays, norm, self.ctx)
        else:
            self.blobs[(dev, what)] = blob
        s.progress(f"{dev}'s {what} in ({len(self.accepted)} uploads)")
        if dev in self.asked:   # T_upload as the host sees it: from asking for the blob to holding all of it
            s.rec.took(dev, upload=s.clock() - self.asked[dev])

    def _late(self, dev: str, what: str, meta: dict, tensors, blob: bytes, crc: int | None = None):
        """An upload of the round before that came after it closed: carried into this round, or counted and dropped."""
        s = self.session
        self.missing.discard((dev, what))
        s.check_blob(dev, meta, rnd=self.prev.round)
        if what == "update":
            arrays, norm = self._check_update(dev, meta, tensors, self.prev)
        else:
            self._check_samples(dev, meta, tensors)
        s.rec.late[what] += 1
        if not self.carries_late:
            log.info("round %d: dropped %s's late %s of round %d", s.round, dev, what, self.prev.round)
            return
        self.keep(dev, "late_" + what, meta, blob, crc)
        self.accepted.add((dev, "late_" + what))
        if what == "update":
            self.take(dev, "late_update", meta, arrays, norm, self.prev)
        else:
            self.blobs[(dev, "late_" + what)] = blob

    def checksum(self, blob, crc: int | None):
        """The CRC-32 the spool keeps with an update: the wire's, or one computed beside its checks."""
        return crc if crc is not None or len(blob) < CRC_BESIDE else self.session.store.spool.checksum(blob)

    def keep(self, dev: str, kind: str, meta: dict, blob, crc) -> None:
        """A payload into the store (its spool), with its CRC where there is one (an int, or a future)."""
        s = self.session
        crc = crc.result() if hasattr(crc, "result") else crc
        s.store.accept(s.round, dev, kind, meta["n"], blob, *(() if crc is None else (crc,)))
        if self.fresh and kind.split("/")[0] in ("samples", "late_samples"):   # async: "samples/<version>"
            self.cl_got[dev] = max(self.cl_got.get(dev, 0), meta["round"])

    def take(self, dev: str, kind: str, meta: dict, arrays, norm: float, ctx: Context):
        """An accepted update into the round's ingest (its arrays may be views of the blob received)."""
        rate = ctx.rate(dev, self.cfg.prune)
        # mask-aware merging for per-device copies; the uniform setting keeps SemiFL's plain mean
        mask = ctx.mask(rate) if ctx.assigned.get(dev) is not None and rate > 0 else None
        if self.ingest is None or self.ingest.round != self.session.round:   # a round driven piece by piece
            self.open_ingest(self.session.round, self.cfg.fl_uploaders, rebuild=False)
        tau = self.session.round - meta["round"]
        self.ingest.take(Taken(dev, kind, self.expected_n(dev), norm, tau, self.staleness_weight(tau), mask), arrays)

    def _check_update(self, dev, meta, tensors, ctx: Context) -> tuple[list[np.ndarray], float]:
        """An update's checks (`check_update`), on views of what was received; a false claim is a strike.
        -> (its float32 arrays, its L2 norm)."""
        try:
            return check_update(meta, tensors, ctx, self.expect(dev, ctx), self.shapes)
        except Rejected as e:
            if e.reason == "claim":
                self.watch.strike(dev, "claim")
            raise

    def expect(self, dev: str, ctx: Context) -> Expect:
        """What `dev`'s update trained on `ctx`'s model must be, from what this host holds of it."""
        c = ctx.assigned.get(dev)
        rate = ctx.rate(dev, self.cfg.prune)
        return Expect(c.dtype if c is not None else "float32", rate, self.cfg.sparse_updates and rate > 0,
                      self.session.registry.devices[dev]["n_samples"], self.expected_n(dev),
                      self.claimed.get((dev, ctx.round)))

    def expected_n(self, dev: str) -> int:
        """The samples an FL client trains on: its task's fraction of the samples its caps report,
        computed as the device computes it (protocol/sampling.py)."""
        return ceil_fraction(self.session.registry.devices[dev]["n_samples"], self.cfg.fl_fraction)

    def check_n(self, dev: str, n: int) -> None:
        want = self.expected_n(dev)
        if n != want:
            self.watch.strike(dev, "claim")
            raise Rejected("claim", f"claims n={n}; its task's fraction of its {self.session.registry.devices[dev]['n_samples']}"
                                    f" samples is {want}")

    def _check_samples(self, dev, meta, tensors):
        k = meta["n"]
        expect_tensors(tensors, [("uint8", (k, ROW)), ("uint8", (k,))], "samples")
        have = self.session.registry.devices[dev]["n_samples"]
        if k > have:
            raise Rejected("schema", f"{k} samples exceed the device's {have}")
        if max(bytes(tensors[1][4]), default=0) >= self.n_classes:
            raise Rejected("schema", f"label out of range 0..{self.n_classes - 1}")
        x, y = (from_wire(t) for t in tensors)
        why = robust.cl_check(x, y, self.session.registry.devices[dev].get("hist"), self.n_classes)
        if why:
            self.watch.strike(dev, "samples")
            raise Rejected("samples", why)
        self.watch.clean(dev)

    def update_arrays(self, dev: str, tensors, ctx: Context) -> list[np.ndarray]:
        """An update's tensors as float32 model-shaped deltas (`update_arrays`)."""
        rate = ctx.rate(dev, self.cfg.prune)
        return update_arrays(tensors, ctx, rate, self.cfg.sparse_updates and rate > 0)

    def compression_for(self, dev: str):
        """The Compression this FL client trains with, or None for the uniform setting (`prune`)."""
        if self.cfg.compression == "none":
            return None
        return compress.for_device(self.session.registry.devices.get(dev, {}), sum(p.nbytes for p in self.params))

    def train_bytes(self, caps: dict) -> int:
        """Memory an FL client needs for this round's task: the model, its gradient and momentum, and
        the activations of the full batch of ceil(fl_fraction * n_samples) it trains on."""
        return self.net.train_bytes(int(np.ceil(self.cfg.fl_fraction * caps.get("n_samples", 0))))

    def refuse(self, dev: str, why: str):
        """A model a device cannot run is not sent: said, logged and counted, before any work is done."""
        self.session.rec.refused[dev] = why
        log.warning("refused %s the model: %s", dev, why)

    # --- the round --------------------------------------------------------------------------------
    def run(self, rnd: int) -> dict:
        s, cfg = self.session, self.cfg
        rec = s.begin(rnd)
        self.norms, self.asked, self.train_closed = {}, {}, False
        row = s.store.round_row(rnd)

        # stage 1: announce; devices answer with their link (not waited for: those still training); plan
        plan = self.announce_and_plan(rnd, row)
        self.uploaders = row["uploaders"] if row else None
        # per-device compression is a pure function of caps, so a restarted host assigns the same again
        self.ctx = Context(rnd, self.params, {d: self.compression_for(d) for d in plan.fl}, {})
        self.accepted = {(d, k) for d, k, _ in s.store.contribution_keys(rnd)}
        self.blobs = {}
        self.open_ingest(rnd, cfg.fl_uploaders)

        # stage 2: the model and tasks out, norms and samples in, then the top-K upload
        fl_todo = [d for d in plan.fl if self.uploaders is None]
        if fl_todo:
            blob = encode_arrays({"kind": "model", "round": rnd}, self.params)
            for d in fl_todo:
                s.send_down(d, wire.KIND_MODEL, rnd, blob)
        common = {"round": rnd, "lr": self.lr}
        for d in fl_todo:
            c = self.ctx.assigned[d]
            task = dict(common, role="fl", task=s.task_id(rnd, d), seed=task_seed(self.seed, rnd, d),
                        prune=self.ctx.rate(d, cfg.prune), fraction=cfg.fl_fraction, epochs=self.epochs)
            if c is not None:
                task["compression"] = c.to_task()
            if cfg.sparse_updates and task["prune"] > 0:
                task["sparse"] = True
            s.send_task(d, task)
            self.busy[d] = (rnd, s.clock())
            self.first_task[d] = rnd
        for d in plan.cl:
            if (d, "samples") not in self.accepted:
                self.asked[d] = s.clock()
                s.send_task(d, self.cl_task(rnd, d))
        if self.uploaders is None:
            self._collect_trained(plan.fl, s.clock() + s.limits.collect_timeout_s)
            for d in plan.fl:   # tasked, still online, no error, no report: one more undelivered task
                if d not in self.norms and not s.gone(d):
                    self.zombies.missed(d, rnd)
            self.uploaders = select_fl_uploaders(self.ranked_norms(), cfg.fl_uploaders)
            s.store.set_uploaders(rnd, self.uploaders)
        self.expect_uploads()
        self.train_closed = True
        rec.mark("train")
        for d in self.uploaders:
            if (d, "update") not in self.accepted:
                self.asked[d] = s.clock()
                s.send_task(d, {"round": rnd, "role": "upload", "task": s.task_id(rnd, d)})
        want = [(d, "samples") for d in plan.cl] + [(d, "update") for d in self.uploaders]
        # a wait of its own: a silent client that held the training wait to its limit costs no uploads
        s.wait(lambda: all(w in self.accepted or self.session.gone(w[0]) for w in want), s.limits.collect_timeout_s, "uploads")
        s.drop_partial()   # whatever did not complete by now is dropped; a late one may come whole later
        rec.mark("upload")

        # stage 3: aggregate what was accepted (the durable record in the store)
        fl, cl = self._contributions(rnd)
        self.claimed = {k: v for k, v in self.claimed.items() if k[1] >= rnd}   # the round before is no longer asked
        # from now on, what this round asked for and did not get is late
        self.prev, self.missing = self.ctx, {w for w in want if w not in self.accepted and not s.gone(w[0])}
        return self.merge(rnd, fl, cl, self.ingest, trained=sorted(self.norms), idle=plan.idle, tasked=list(plan.fl))

    def cl_task(self, rnd: int, dev: str) -> dict:
        task = {"round": rnd, "lr": self.lr, "role": "cl", "task": self.session.task_id(rnd, dev),
                "seed": task_seed(self.seed, rnd, dev), "fraction": self.cfg.cl_fraction}
        if self.fresh:   # docs/protocol.md §5: send only what is new since the upload of round `got`
            task.update(fresh=self.fresh, got=self.cl_got.get(dev, 0))
        return task

    def ask_again(self) -> None:
        """Ask once more for every upload the open round still waits for (an aggregator died, and chunks
        in flight with it): a device sends the same blob again, and its assembly goes on where it was."""
        s = self.session
        for d in self.uploaders if self.train_closed and self.uploaders else ():
            if (d, "update") not in self.accepted and not s.gone(d):
                s.send_task(d, {"round": s.round, "role": "upload", "task": s.task_id(s.round, d)})
        for d in self.plan.cl if self.plan else ():
            if (d, "samples") not in self.accepted and not s.gone(d):
                s.send_task(d, self.cl_task(s.round, d))

    def announce_and_plan(self, rnd: int, row) -> RoundPlan:
        """Stage 1 of every federated round: give up tasks not reported on within the hard limit, announce,
        plan the roles (or, resuming after a restart, keep the plan the devices were given: `row`)."""
        s = self.session
        now = s.clock()
        for d, (_, t) in list(self.busy.items()):
            if s.gone(d) or now - t > s.limits.collect_timeout_s:
                del self.busy[d]
        s.announce(rnd, busy=self.busy)
        if row and row["plan"]:
            self.plan = RoundPlan(**row["plan"])
        else:
            self.plan = plan_round(rnd, s.registry.view(rnd), self.planner, use_cl=self.strategy.uses_cl,
                                   train_bytes=self.train_bytes, fl_budget=self.fl_budget, seed=self.seed,
                                   exclude=self.excluded(rnd))
            s.store.begin_round(rnd, asdict(self.plan))
        for dev, why in self.plan.refused.items():
            self.refuse(dev, why)
        return self.plan

    def merge(self, rnd: int, fl: list[FLUpdate], cl: list[CLBatch], ingest: Ingest | None = None, **fields) -> dict:
        """The strategy's step on what came in, the new model evaluated, the int8 model pushed when it is
        due (inside the round, so its bytes count towards it), the round finished with `fields`.
        ingest: where `fl` are the score views of the round's `Ingest`: it merges what screening keeps."""
        s, rec = self.session, self.session.rec
        fl, cl = self.screen(rnd, fl, cl)
        self.strategy.observe_fleet({d: c["n_samples"] for d, c in s.registry.devices.items()})
        base = self.params
        if self.cfg.prune_global and self.cfg.prune > 0:   # the step starts from the model the FL clients trained
            base = [p * m for p, m in zip(base, mlp.prune_mask(base, self.cfg.prune))]
        if ingest is not None:
            self.params = ingest.merged(self.strategy, base, {u.device for u in fl}, cl)
            if ingest.merged_devices is not None:   # aggregators' sums: an update an aggregator lost for good is not in
                fl = [u for u in fl if u.device in set(ingest.merged_devices)]
        else:
            self.params = self.strategy.aggregate(base, fl, cl)
        self.ingest = None
        rec.mark("aggregate")
        s.progress(f"merged {len(fl)} updates and {len(cl)} sample batches; evaluating")
        acc, loss = self.evaluate(self.params)
        rec.mark("evaluate")
        if self.cfg.int8_every and rnd % self.cfg.int8_every == 0:
            self.push_int8(rnd)
        meta, arrays = self.strategy.state()
        kept = {"strategy": self.strategy.name, "state": meta}
        trust_state = self.trust_state()
        if trust_state:
            kept["trust"] = trust_state
        trust = {"quarantined": sorted(self.watch.quarantined), "anomaly": self.anomaly}
        merge = getattr(self.strategy.fl_merge, "last", None)
        if merge:
            trust["merge"] = merge
        if self.dp is not None:   # what this round spent: the accountant over the rounds so far
            trust["dp"] = {k: v for k, v in self.dp.summary().items() if k != "epsilon_run_assumes"}
        return s.finish(self.params, acc, loss, (kept, arrays),
                        participants={"cl": sorted(b.device for b in cl), "fl": sorted(u.device for u in fl)},
                        quarantined=trust["quarantined"], trust=trust, **fields)

    # --- trust ------------------------------------------------------------------------------------
    @property
    def robust_merge(self) -> bool:
        return self.trust.aggregation != "mean"

    def excluded(self, rnd: int) -> dict[str, str]:
        """Devices not planned in round `rnd`: quarantined ones, and zombies on the bench."""
        out = self.zombies.benched(rnd)
        out.update({d: f"quarantined in round {q['round']} ({q['why']})" for d, q in self.watch.quarantined.items()})
        return out

    def ranked_norms(self) -> dict[str, float]:
        """The reported norms the top-K is chosen by. A norm over 3x the round's median report is a
        strike; under a robust merge it is also not chosen (an x100 update never gets an upload slot)."""
        out = robust.norm_outliers(self.norms)
        for d in sorted(out):
            self.watch.strike(d, "norm")
        if not self.robust_merge or len(out) == len(self.norms):
            return self.norms
        return {d: v for d, v in self.norms.items() if d not in out}

    def screen(self, rnd: int, fl: list[FLUpdate], cl: list[CLBatch]):
        """Score this round's fresh updates, close the round's strikes, quarantine who has earned it
        (the strategy forgets it) and leave quarantined devices' contributions out of the merge."""
        devs = self.session.registry.devices   # the label histograms devices reported: the class score's key
        self.anomaly = robust.anomaly(self.to_score(sorted(fl, key=lambda u: u.device)),
                                      hists={d: (devs.get(d) or {}).get("hist") for d in {u.device for u in fl}},
                                      n_classes=self.n_classes)
        for d, a in self.anomaly.items():
            (self.watch.strike(d, "update") if a["outlier"] else self.watch.clean(d))
        # an update that provably did not train on its own labels (robust.bias_raised) is not merged at all
        lowered = {d for d, a in self.anomaly.items() if a.get("bias_raised") is False}
        if lowered:
            log.warning("round %d: %s lowered the output bias of the class it holds: not merged", rnd, sorted(lowered))
            fl = [u for u in fl if u.device not in lowered]
        for d in self.watch.close(rnd):
            self.strategy.forget(d)
            log.warning("round %d: %s quarantined after %d outlier rounds in a row (%s)", rnd, d, self.watch.after,
                        self.watch.quarantined[d]["why"])
        q = self.watch.quarantined
        if q:
            fl, cl = [u for u in fl if u.device not in q], [b for b in cl if b.device not in q]
        return fl, cl

    @staticmethod
    def to_score(fl: list[FLUpdate]) -> list[FLUpdate]:
        """The updates a round scores: its own (a late one carried in was its round's)."""
        return [u for u in fl if u.staleness == 0]

    def trust_state(self) -> dict:
        """What a restart must keep of quarantine and benches ({} while there is nothing)."""
        out = {}
        if self.watch.streak and any(self.watch.streak.values()) or self.watch.quarantined:
            out["quarantine"] = self.watch.state()
        if self.zombies.misses:
            out["zombies"] = self.zombies.state()
        if self.dp is not None and self.dp.steps:
            out["dp"] = self.dp.state()[0]
        return out

    def load_trust(self, meta: dict) -> None:
        self.watch.load_state(meta.get("quarantine", {}))
        self.zombies.load_state(meta.get("zombies", {}))
        if self.dp is not None:
            self.dp.load_state(meta.get("dp", {}))

    def _collect_trained(self, tasked: list[str], hard: float, reported: dict | None = None):
        """Wait for the tasked clients' `trained` reports (into `reported`, default the norms): all of
        them, or, once `deadline_s` has passed, the quorum; never past the hard limit."""
        s, cfg = self.session, self.cfg
        reported = self.norms if reported is None else reported
        need = cfg.quorum if 0 < cfg.quorum < len(tasked) else len(tasked)
        everyone = lambda: all(d in reported or self.session.gone(d) for d in tasked)
        if not s.pump(everyone, min(cfg.deadline_s, hard - s.clock())):
            if not s.wait(lambda: everyone() or len(reported) >= need, hard - s.clock(), "FL clients' training"):
                return
            if not everyone():
                log.info("round %d: quorum %d of %d tasked FL clients in; %s go on without the rest", s.round,
                         len(reported), len(tasked), "the deadline passed, rounds" if cfg.deadline_s else "rounds")

    def payloads(self, rnd: int, kinds: tuple | None = None):
        """(device, kind, n, meta, tensors) of what round `rnd` accepted (of `kinds`, default all but
        the FL updates, which the round's `Ingest` has): the durable record in the store, the payloads
        from memory where this process holds them."""
        store = self.session.store
        for dev, kind, n in store.contribution_keys(rnd):
            if kinds is not None and kind not in kinds or kinds is None and is_update(kind):
                continue
            blob = self.blobs.pop((dev, kind), None) or store.contribution(rnd, dev, kind)
            yield (dev, kind, n) + wire.decode_blob(blob)

    # --- FL updates: the round's ingest -----------------------------------------------------------
    def context(self, rnd: int) -> Context | None:
        """What validating an update trained on round `rnd`'s model needs (None: a restart lost it)."""
        return {c.round: c for c in (self.prev, self.ctx) if c is not None}.get(rnd)

    def load_update(self, t: Taken) -> list[np.ndarray]:
        """An accepted update's float32 arrays, read back from the store's spool."""
        meta, ts = wire.decode_blob(self.session.store.contribution(self.ingest.round, t.device, t.kind))
        return self.update_arrays(t.device, ts, self.context(meta["round"]))

    def open_ingest(self, rnd: int, expected: int, rebuild: bool = True) -> Ingest:
        """Round `rnd`'s ingest, folding when the strategy merges through a sum rule; a restarted host
        takes into it the updates the store holds for the round (each read back from the spool once)."""
        rule = sum_rule(self.strategy.fl_merge) if self.strategy.folds else None
        self.ingest = Ingest(rnd, self.shapes, self.n_classes, expected, rule, self.load_update)
        if self.coord is not None:
            self.ingest.collect = self.coord.collect
        store = self.session.store
        for dev, kind, _ in store.contribution_keys(rnd) if rebuild else ():
            if not is_update(kind):
                continue
            meta, ts = wire.decode_blob(store.contribution(rnd, dev, kind))
            ctx = self.context(meta["round"])
            if ctx is None:
                continue   # a carried update whose round's context a restart lost: not merged
            arrays = self.update_arrays(dev, ts, ctx)
            self.take(dev, kind, meta, arrays, global_norm(arrays), ctx)
        return self.ingest

    @staticmethod
    def staleness_weight(tau: int) -> float:
        """The weight of an update `tau` models old: 1 here (a carried update counts whole); FedBuff's in buffered rounds."""
        return 1.0

    def expect_uploads(self) -> None:
        """The uploaders are known: plan the fold on them (their sample counts and reported norms), so
        each update folds as it comes. Not with per-device masks (those merge from the list) nor when a
        restart lost the reports."""
        ups = self.uploaders or []
        masked = any(self.ctx.assigned.get(d) is not None and self.ctx.rate(d, self.cfg.prune) > 0 for d in ups)
        known = not masked and all(d in self.norms for d in ups)
        summands = [Summand(d, self.expected_n(d), self.norms[d]) for d in ups] if known else []
        if self.coord is not None:   # aggregators fold: they get the plan and the uploaders in the round's context
            self.coord.open(self, self.ingest.rule.plan(summands) if summands else None)
        elif summands:
            self.ingest.expect(summands)

    def take_remote(self, src: str, dev: str, norm: float, view: list, nbytes: int) -> None:
        """An update aggregator `src` accepted (its checks are `check_update`) and folds: counted as
        accepted here, with the score view it sent."""
        s = self.session
        s.bytes_up[dev] += nbytes
        if not self.uploaders or dev not in self.uploaders or (dev, "update") in self.accepted:
            log.info("round %d: %s reported %s's update, which is not outstanding", s.round, src, dev)
            return
        self.accepted.add((dev, "update"))
        self.ingest.take_remote(Taken(dev, "update", self.expected_n(dev), norm, view=view, source=src))
        s.progress(f"{dev}'s update in at {src} ({len(self.accepted)} uploads)")
        if dev in self.asked:
            s.rec.took(dev, upload=s.clock() - self.asked[dev])

    def remote_reject(self, dev: str, reason: str, detail: str, nbytes: int) -> None:
        """An aggregator refused `dev`'s message: counted here as the host counts its own; a false
        claim is a strike."""
        self.session.bytes_up[dev] += nbytes
        if reason == "claim":
            self.watch.strike(dev, "claim")
        self.session.reject(dev, reason, detail)

    def cl_batch(self, dev: str, tensors) -> CLBatch:
        """A CL upload's raw uint8 samples and labels; the first CALIBRATION samples the host holds also
        set the int8 model's activation ranges."""
        x, y = (from_wire(t) for t in tensors)
        if sum(len(c) for c in self.calib) < CALIBRATION:
            self.calib.append(np.array(x[:CALIBRATION]))
        return CLBatch(dev, x, y)

    def _contributions(self, rnd: int) -> tuple[list[FLUpdate], list[CLBatch]]:
        """Round `rnd`'s FL updates as scoring sees them (the ingest's views) and its CL batches."""
        cl = [self.cl_batch(dev, ts) for dev, _, _, _, ts in self.payloads(rnd)]
        ingest = self.ingest if self.ingest is not None and self.ingest.round == rnd else None
        return (ingest.score() if ingest is not None else []), cl

    def push_int8(self, rnd: int) -> int:
        """Quantize the global model (TFLite's int8 scheme, calibrated on CL samples the host holds) and
        send it to every online MCU that runs inference and can run it (its ops, its free RAM); they
        store it, swap it in and report `eval`."""
        s = self.session
        mcus = [d for d in sorted(s.registry.online) if "infer" in s.registry.devices.get(d, {}).get("roles", ())]
        calib = np.concatenate(self.calib) if self.calib else self.calib_fallback
        if not mcus or calib is None:
            return 0
        model = int8.quantize(self.params, to_float(calib[:CALIBRATION]))
        able = []
        for d in mcus:   # the others get it too (one broadcast) and refuse it on arrival, keeping theirs
            why = cannot_run(s.registry.devices[d], model.ops(), model.working_bytes())
            if why:
                self.refuse(d, f"{why[0]}: {why[1]}")
            else:
                able.append(d)
        if not able:
            return 0
        blob = int8.encode(model, rnd)
        chunk = min(s.registry.devices[d]["max_chunk"] for d in mcus)
        s.broadcast(wire.T_MODEL_INT8, mcus, blob=(wire.KIND_MODEL_INT8, rnd, blob, chunk))
        return len(blob)
