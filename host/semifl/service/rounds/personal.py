"""Personalization rounds (PerFit, seed 003; docs/protocol.md §5b).

The host runs one `semifl.learn.perfit` method (FTL, FedPer, FD, Per-FedAvg, Ditto): each round K
devices get the method's message for them on their own `down` topic (the global model, FedPer's shared
base, or FD's public-set indices and consensus logits) and a `perfit` task; each runs the same method's
device step on its own data and sends back what the method sends (weights, the base without the head,
or logits only). Every `personal_every` rounds and at the last one, every device personalizes and
reports its personal model's accuracy on its own test windows. A device too weak to train whose policy
lets its windows leave it is trained for by the host (edge offloading); its personal model is kept by
the host and sent to that device only. Uploads land in `on_blob`; the global state changes in
`method.aggregate`.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict

import numpy as np

from semifl.fleet.planner import RoundPlan, plan_personal, task_seed
from semifl.learn import perfit
from semifl.protocol import wire
from semifl.protocol.tensors import encode_arrays, from_wire

from ..session import Rejected, Round, Session, expect_tensors

log = logging.getLogger("semifl.perfit")
UPLOAD_KINDS = ("weights", "base", "logits")


class PersonalRound(Round):
    def __init__(self, session: Session, method: perfit.Method, models: dict[str, str], nets: dict, views: dict,
                 evaluate, n_classes: int, n_features: int, rounds: int, *, seed: int = 0, per_round: int = 5,
                 personal_every: int = 0):
        """models: device -> model name it runs (FD may mix); nets / views: model name -> nn.Net / feature
        view; evaluate(params) -> (accuracy, loss) of a global model on pooled test windows (None: no
        global model); n_features: a window's features; per_round: K devices per round (0: all)."""
        self.session, self.method, self.name = session, method, method.name
        self.models, self.nets, self.views, self.evaluate = models, nets, views, evaluate
        self.n_classes, self.n_features, self.rounds = n_classes, n_features, rounds
        self.seed, self.k, self.every = seed, per_round, personal_every
        _, kept = session.resume(method.name)   # the method's state holds its global model
        if kept is not None:
            method.load_state(*kept)
        self.plan: RoundPlan | None = None
        self.picked: list[str] = []
        self.uploads: dict[str, perfit.Upload] = {}
        self.values: dict[str, dict] = {}
        self.chain: dict[str, dict] = {}       # device -> CRC of the personal state it started from / kept
        self.personal: dict[str, float] = {}   # device -> its personal model's accuracy this round
        self.asked_personal: dict[str, int] = {}   # device -> nonce of its personalize task this round
        self.proxies: dict[str, perfit.Device] = {}   # offloaded devices the host trains for

    @property
    def params(self) -> list:
        """The global model (FedPer: the shared base; FD has none)."""
        return list(getattr(self.method, "params", []))

    # --- who trains -------------------------------------------------------------------------------
    def perfit_devices(self) -> list[str]:
        reg = self.session.registry
        return sorted(d for d, c in reg.devices.items() if "perfit" in c.get("roles", ()) and d in self.models)

    def train_bytes(self, dev: str) -> int:
        """Memory `dev` needs to train its model for a round (parameters, gradient, momentum, a batch)."""
        return self.nets[self.models[dev]].train_bytes(self.method.cfg.batch)

    def task(self, rnd: int, dev: str, role: str, nonce: int, seed: int) -> dict:
        return {"round": rnd, "role": role, "task": nonce, "seed": seed, "run": self.session.run_id,
                "method": self.method.name, "model": self.models[dev], "local": asdict(self.method.cfg),
                "settings": self.method.settings()}

    def _message(self, dev: str, task: dict, msg: perfit.Message):
        """The method's message for `dev` on its down topic, then its task. A training message's values
        count towards the round's `device_values` (the seed's measure); a personalize one's do not."""
        meta = {"kind": "message", "round": task["round"], "task": task["task"]}
        if msg.version is not None:
            meta["version"] = msg.version
        self.session.send_down(dev, wire.KIND_MODEL, task["round"], encode_arrays(meta, msg.arrays))
        self.session.send_task(dev, task)
        if task["role"] == "perfit":
            self.values.setdefault(dev, {"up": 0, "down": 0})["down"] += msg.values

    # --- inbound ----------------------------------------------------------------------------------
    def on_blob(self, dev: str, kind: int, blob: bytes, crc: int | None = None):
        s = self.session
        meta, tensors = s.open_blob(dev, blob)
        rnd = s.round
        if kind == wire.KIND_SAMPLES and meta.get("kind") == "samples":
            return self._on_windows(dev, rnd, meta, tensors, blob)
        if kind != wire.KIND_UPDATE or meta.get("kind") not in UPLOAD_KINDS:
            raise Rejected("malformed", f"a personalization client does not send blob kind {kind} ({meta.get('kind')!r})")
        if self.plan is None or dev not in self.plan.fl:
            raise Rejected("unexpected", f"{dev} was not asked to train in round {rnd}")
        if dev in self.uploads or s.store.has_contribution(rnd, dev, "upload"):
            raise Rejected("replay", f"{dev} already delivered its round {rnd} upload")
        arrays = [np.array(from_wire(t)) for t in tensors]
        if not all(a.dtype.kind == "f" for a in arrays):
            raise Rejected("shape", f"{meta['kind']} tensors must be float, got {[a.dtype.name for a in arrays]}")
        if not all(np.isfinite(a).all() for a in arrays):
            raise Rejected("nonfinite", f"{meta['kind']} contains NaN or Inf")
        want = getattr(self.method, "version", None) if meta["kind"] == "logits" else None
        if meta.get("version") != want:
            raise Rejected("stale_version", f"logits for public set version {meta.get('version')}, the host sent {want}")
        up = perfit.Upload(dev, meta["kind"], arrays, meta["n"], meta.get("version"))
        try:
            self.method.check(up)
        except ValueError as e:
            raise Rejected("shape", str(e)) from None
        s.store.accept(rnd, dev, "upload", meta["n"], blob, crc)   # durable before it counts
        self._took(dev, meta, up)

    def _took(self, dev, meta, up):
        self.uploads[dev] = up
        self.session.progress(f"{dev}'s update in ({len(self.uploads)}/{len(self.plan.fl)})")
        if meta.get("proxy"):   # trained by the host for an offloaded device: nothing went over the air
            return
        self.values.setdefault(dev, {"up": 0, "down": 0})["up"] += up.values
        self.chain[dev] = {"from": meta.get("personal_from"), "to": meta.get("personal_to")}
        t = meta.get("t_local_s")
        if isinstance(t, (int, float)) and t >= 0:
            self.session.rec.took(dev, local=t)

    def _on_windows(self, dev, rnd, meta, tensors, blob):
        """An offloaded device's training windows: kept durably (versioned, like a generator), so a
        restarted host can train for it again."""
        if self.session.registry.devices[dev].get("raw_ok") is not True:
            raise Rejected("privacy", f"{dev}'s policy keeps its data on the device")
        n, f = meta["n"], self.n_features
        expect_tensors(tensors, [("float32", (n, f)), ("uint8", (n,))], "windows")
        x, y = from_wire(tensors[0]), from_wire(tensors[1])
        if not np.isfinite(x).all():
            raise Rejected("nonfinite", "windows contain NaN or Inf")
        if int(y.max()) >= self.n_classes:
            raise Rejected("schema", f"label {int(y.max())} outside {self.n_classes} classes")
        self._keep(dev, "windows", rnd, blob)
        self._proxy(dev)

    def _proxy(self, dev: str) -> perfit.Device | None:
        """The host's stand-in for an offloaded device: its windows (from the store), its personal state
        (the latest personal model the host keeps for it)."""
        if dev in self.proxies:
            return self.proxies[dev]
        store = self.session.store
        kept = store.artifacts("windows").get(dev)
        if kept is None:
            return None
        _, ts = wire.decode_blob(kept["blob"])
        x, y = from_wire(ts[0]), from_wire(ts[1]).astype(np.int64)
        model = self.models[dev]
        v = self.views[model]
        d = perfit.Device(dev, self.nets[model], v(x), y, v(x[:0]), y[:0], view=v)
        mine = store.artifacts("personal").get(dev)
        if mine is not None:
            d.personal = [np.array(from_wire(t)) for t in wire.decode_blob(mine["blob"])[1]]
        self.proxies[dev] = d
        return d

    def on_status(self, dev: str, msg: dict) -> bool:
        kind = msg.get("kind")
        if kind == "personal":
            self.session.check_round(msg.get("round"), "personal status")
            if msg.get("task") != self.asked_personal.get(dev):
                raise Rejected("replay", f"task {msg.get('task')} is not {dev}'s personalize task")
            acc, n = msg.get("accuracy"), msg.get("n")
            if not isinstance(acc, (int, float)) or not 0 <= acc <= 1 or not isinstance(n, int) or n < 0:
                raise Rejected("schema", "personal status needs accuracy in [0, 1] and n >= 0")
            self.personal[dev] = float(acc)
            return True
        if kind == "request" and msg.get("what") == "personal":
            self.serve_personal(dev, msg.get("device", dev))
            return True
        return False

    def serve_personal(self, dev: str, owner, rnd: int | None = None):
        """A personal model the host keeps goes to its owner only, on the owner's own topic."""
        s = self.session
        if owner != dev:
            raise Rejected("forbidden", f"{dev} asked for the personal model of {owner!r}; it goes to its owner only")
        mine = s.store.artifacts("personal").get(dev)
        if mine is None:
            raise Rejected("unexpected", f"the host keeps no personal model of {dev}")
        rnd = s.round if rnd is None else rnd
        _, ts = wire.decode_blob(mine["blob"])
        nonce = self.asked_personal.get(dev) or s.task_id(rnd, dev + "#p")
        meta = {"kind": "personal", "round": rnd, "task": nonce, "run": s.run_id, "method": self.method.name,
                "model": self.models[dev], "version": mine["version"]}
        self.asked_personal[dev] = nonce
        s.send_down(dev, wire.KIND_MODEL, rnd, wire.encode_blob(meta, ts))

    def keep_personal(self, dev: str, params, rnd: int):
        self._keep(dev, "personal", rnd, encode_arrays({"kind": "personal", "device": dev, "round": rnd}, params))

    def _keep(self, dev: str, kind: str, rnd: int, blob: bytes):
        """A device's versioned artifact in the store (its windows, its personal model), by SHA-256."""
        self.session.store.keep_artifact(dev, kind, rnd, hashlib.sha256(blob).hexdigest(), None, None, blob)


    # --- the round --------------------------------------------------------------------------------
    def run(self, rnd: int) -> dict:
        s = self.session
        rec = s.begin(rnd)
        self.uploads, self.values, self.chain, self.personal, self.asked_personal = {}, {}, {}, {}, {}
        ready = set(s.announce(rnd))
        fleet = self.perfit_devices()
        # the seed's K devices per round, drawn over the whole fleet (an absent one is a dropout)
        self.picked = perfit.participants(rnd, fleet, self.k, self.seed)
        self.plan = plan_personal(rnd, {d: s.registry.devices[d] for d in fleet}, self.picked, ready, self.train_bytes)
        s.store.begin_round(rnd, asdict(self.plan))
        offload = self.plan.offload
        self.method.begin_round(rnd)
        for dev, _, n, blob in s.store.contributions(rnd):   # a restarted host keeps what it accepted
            meta, ts = wire.decode_blob(blob)
            self._took(dev, meta, perfit.Upload(dev, meta["kind"], [np.array(from_wire(t)) for t in ts], n,
                                                meta.get("version")))
        for d in offload:   # edge offloading: the windows first, once; the host trains for it from then on
            if d in ready and self._proxy(d) is None:
                s.send_task(d, {"round": rnd, "role": "offload", "task": s.task_id(rnd, d)})
        clients = [d for d in self.plan.fl if d not in self.uploads]
        for d in clients:
            self._message(d, self.task(rnd, d, "perfit", s.task_id(rnd, d), task_seed(self.seed, rnd, d)),
                          self.method.send(d))
        s.wait(lambda: all(d in self.uploads or self.session.gone(d) for d in clients)
               and all(self._proxy(d) is not None or self.session.gone(d) for d in offload if d in ready),
               s.limits.collect_timeout_s, "uploads")
        for d in self.picked:   # the host trains for offloaded devices: the method's own device step
            proxy = self._proxy(d) if d in offload else None
            if proxy is not None and d not in self.uploads:
                up = self.method.local(proxy, self.method.send(d), task_seed(self.seed, rnd, d))
                meta = {"kind": up.kind, "round": rnd, "task": s.task_id(rnd, d), "device": d, "n": up.n, "proxy": True}
                if up.version is not None:
                    meta["version"] = up.version
                # durable like a device's upload, so a restarted host does not train it a second time
                s.store.accept(rnd, d, "upload", up.n, encode_arrays(meta, up.arrays))
                self.uploads[d] = up
                if proxy.personal is not None:   # its personal state (FedPer's head, Ditto's v) lives here
                    self.keep_personal(d, proxy.personal, rnd)
        rec.mark("train")
        self.method.aggregate([self.uploads[d] for d in sorted(self.uploads)])
        rec.mark("aggregate")
        if rnd == self.rounds or (self.every and rnd % self.every == 0):
            self._personalize(rnd, [d for d in fleet if d in ready], offload)
            rec.mark("personalize")
        glob = self.evaluate(self.params) if self.evaluate else None
        accs = [self.personal[d] for d in sorted(self.personal)]
        acc = float(np.mean(accs)) if accs else (glob[0] if glob else None)
        meta, arrays = self.method.state()
        return s.finish(
            self.params, acc, glob[1] if glob else None, ({"strategy": self.name, "state": meta}, arrays),
            participants={"cl": [], "fl": sorted(self.uploads)}, trained=sorted(self.uploads), idle=self.plan.idle,
            offloaded=sorted(d for d in offload if d in self.uploads), global_accuracy=glob[0] if glob else None,
            personal=dict(sorted(self.personal.items())), personal_mean=float(np.mean(accs)) if accs else None,
            personal_p10=perfit.p10(accs) if accs else None, personal_chain=dict(sorted(self.chain.items())),
            device_values=dict(sorted(self.values.items())))

    def _personalize(self, rnd: int, devs: list[str], offload: list[str]):
        """Every device's personal model, scored by the device on its own test windows. The seed is the
        next round's, as the in-process runner's final personalization."""
        s = self.session
        for d in devs:
            seed = task_seed(self.seed, rnd + 1, d)
            nonce = self.asked_personal[d] = s.task_id(rnd, d + "#p")
            if d in offload:
                proxy = self._proxy(d)
                if proxy is None:
                    continue
                self.keep_personal(d, self.method.personalize(proxy, seed), rnd)
                self.serve_personal(d, d, rnd)
            else:
                self._message(d, self.task(rnd, d, "personalize", nonce, seed), self.method.send(d))
        s.wait(lambda: all(d in self.personal or self.session.gone(d) for d in self.asked_personal),
               s.limits.collect_timeout_s, "personal models")
