"""Split-learning rounds (IoTSL's SL, seed 002; docs/protocol.md §5a).

The host keeps f_b in a `SplitServer`, sends each SL client the f_a to start from, answers every
`smashed` blob with the `grad` of that batch, and takes back the client's f_a at the end of its epoch:
one client after another (`sl`, `iotsl`: the seed's order) or all at once (`splitfed`, f_a averaged).
IoTSL's generator stage is its own step (`GeneratorStage`), run once before the first epoch. The
global model changes in `SplitServer.step` (f_b, per batch) and at each hand-over (f_a).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from semifl.config import Split
from semifl.fleet.planner import RoundPlan, task_seed
from semifl.learn import compress, nn
from semifl.learn.registry import StrategySpec
from semifl.learn.split import SplitServer
from semifl.protocol import wire
from semifl.protocol.tensors import arrays_crc, encode_arrays, from_wire

from ..session import Rejected, Round, Session, expect_tensors

log = logging.getLogger("semifl.split")
SMASHED_DTYPES = ("float32", "float16", "int8")


@dataclass
class GeneratorStage:
    """IoTSL's one-off stage: devices train DP generators (Algorithm 1), the host pre-trains on their
    data and pairs them to fill each device's missing classes (Algorithm 2)."""
    steps: int = 150
    sigma: float = 1.5
    batch: int = 16
    dim: int = 32
    pretrain_epochs: int = 2
    max_epsilon: float = 10.0    # the policy a device that reports none is held to
    pretrain_n: int = 0          # generated samples the host pre-trains on (0: every device's whole histogram)
    timeout_s: float = 0.0       # how long the host waits for the generators (0: the host's collect_timeout_s)

    @classmethod
    def of(cls, cfg: Split) -> "GeneratorStage":
        return cls(cfg.gen_steps, cfg.gen_sigma, cfg.gen_batch, cfg.gen_dim, cfg.pretrain_epochs, cfg.max_epsilon,
                   cfg.pretrain_n, cfg.gen_timeout_s)


class SplitRound(Round):
    def __init__(self, session: Session, spec: StrategySpec, net: nn.Net, cut: int, model: str, init_params, evaluate,
                 *, seed: int = 0, lr: float = 0.01, batch: int = 32, smashed: str = "float32", n_classes: int = 10,
                 generators: GeneratorStage | None = None, batches: int = 0):
        if smashed not in SMASHED_DTYPES:
            raise ValueError(f"smashed dtype {smashed!r}: one of {SMASHED_DTYPES}")
        self.session, self.spec, self.name = session, spec, spec.name
        self.net, self.cut, self.model, self.evaluate = net, cut, model, evaluate
        self.seed, self.lr, self.batch, self.smashed_dtype, self.n_classes = seed, lr, batch, smashed, n_classes
        self.batches = batches              # smashed batches per client per round (0: its whole local set)
        self.stage = generators or GeneratorStage()
        params, kept = session.resume(self.name)
        params = params or [np.asarray(p, np.float32) for p in init_params]
        self.prepared, self.fills = False, {}   # IoTSL: generator stage done; device -> [[class, generator, quantity]]
        if kept is not None:
            self.prepared, self.fills = bool(kept[0].get("prepared")), dict(kept[0].get("fills", {}))
        self.f_a, self.f_b = net.split(cut)
        na = len(self.f_a.shapes())
        self.server = SplitServer(self.f_b, params[na:], params[:na], lr=lr)
        self.plan: RoundPlan | None = None
        self.active: dict[str, dict] = {}   # SL client -> {"next": the batch it must send next, "of": batches}
        self.last_heard = 0.0               # when the last smashed batch was served (a dropout is silence)
        self.done: dict[str, tuple] = {}    # client -> (its f_a, samples) once its epoch is over
        self.chain: dict[str, dict] = {}    # client -> CRC-32 of the f_a it started from and of the one it handed back
        self.generators: dict[str, tuple] = {}   # device -> (generator, info, artifact bytes, version) this round
        self.gen_wanted: set[str] = set()
        self.gen_refused: set[str] = set()       # devices whose generator came and was refused
        self.gen_late: set[str] = set()          # devices asked whose generator had not come when the stage closed
        self.gen_record: dict = {}               # what the generator stage did, for this round's metrics
        self.imputed: dict[str, int] = {}        # device -> generated samples it adds to its SL epochs

    @property
    def params(self) -> list:
        return self.server.params

    def state(self):
        return {"strategy": self.name, "state": {"prepared": self.prepared, "fills": self.fills}}, {}

    # --- inbound ----------------------------------------------------------------------------------
    def on_status(self, dev: str, msg: dict) -> bool:
        if msg.get("kind") == "request" and msg.get("what") == "generators":
            self.send_impute(dev)   # e.g. a device that restarted and lost its generated set
            return True
        return False

    def on_blob(self, dev: str, kind: int, blob: bytes, crc: int | None = None):   # (nothing of it is stored)
        meta, tensors = self.session.open_blob(dev, blob)
        if kind == wire.KIND_GENERATOR and meta.get("kind") == "generator":
            return self._on_generator(dev, meta, tensors)
        if dev not in self.active:
            raise Rejected("unexpected", f"{dev} is not training with the host now")
        if kind == wire.KIND_SMASHED and meta.get("kind") == "smashed":
            self.on_smashed(dev, meta, tensors)
        elif kind == wire.KIND_UPDATE and meta.get("kind") == "fa":
            self._on_fa(dev, meta, tensors)
        else:
            raise Rejected("malformed", f"a split client does not send blob kind {kind} ({meta.get('kind')!r})")

    def on_smashed(self, dev, meta, tensors):
        s, st = self.session, self.active[dev]
        if meta.get("batch") != st["next"]:
            raise Rejected("schema", f"smashed batch {meta.get('batch')}, expected batch {st['next']}")
        n = meta["n"]
        if n > self.batch:
            raise Rejected("shape", f"a smashed batch of {n} rows; the task's batch is {self.batch}")
        want = [(self.smashed_dtype, (n,) + tuple(self.f_b.input_shape)), ("uint8", (n,))]
        expect_tensors(tensors, want, "smashed")
        smashed = compress.decode_delta([(from_wire(tensors[0]), tensors[0][2])], [want[0][1]])[0]
        labels = from_wire(tensors[1])
        if labels.max() >= self.n_classes:
            raise Rejected("schema", f"label {int(labels.max())} outside {self.n_classes} classes")
        if not np.isfinite(smashed).all():
            raise Rejected("nonfinite", "smashed data contains NaN or Inf")
        grad, _ = self.server.step(dev, smashed, labels)
        st["next"] += 1
        self.last_heard = s.clock()
        s.progress(f"{dev}: f_a step {st['next']}/{st.get('of', '?')}")
        blob = encode_arrays({"kind": "grad", "round": s.round, "task": meta["task"], "batch": meta["batch"]}, [grad])
        s.send_down(dev, wire.KIND_GRAD, s.round, blob)

    def _on_fa(self, dev, meta, tensors):
        expect_tensors(tensors, [("float32", tuple(sh)) for sh in self.f_a.shapes()], "f_a")
        if dev in self.done:
            raise Rejected("replay", f"{dev} already handed back its f_a this round")
        params = [np.array(from_wire(t)) for t in tensors]
        if not all(np.isfinite(p).all() for p in params):
            raise Rejected("nonfinite", "f_a contains NaN or Inf")
        self.done[dev] = (params, meta["n"])
        self._took(dev, meta)
        self.session.progress(f"{dev}: f_a back ({len(self.done)} devices done)")
        self.chain.setdefault(dev, {})["end"] = arrays_crc(params)
        if self.spec.sequential:   # the next client starts from it
            self.server.hand_over(dev, params)
        else:
            self.server.take_back(dev, params)

    def _took(self, dev, meta):
        """The device's own measure of its work (seconds), for the energy meter: `t_local_s` in its blob."""
        t = meta.get("t_local_s")
        if isinstance(t, (int, float)) and t >= 0:
            times = self.session.rec.times.setdefault(dev, {})
            times["local"] = round(times.get("local", 0.0) + float(t), 4)

    def _on_generator(self, dev, meta, tensors):
        """A device's generator artifact (Algorithm 1): checked (hash, device, privacy policy), kept."""
        from semifl.learn.iotsl import artifact

        s = self.session
        if dev in self.gen_late:   # the stage closed without it: counted, not used (nobody waits for it now)
            self.gen_late.discard(dev)
            s.rec.late["generator"] += 1
            log.info("round %d: %s's generator came after the generator stage closed; not used", s.round, dev)
            return
        if dev not in self.gen_wanted:
            raise Rejected("unexpected", f"{dev} was not asked for a generator")
        if dev in self.generators:
            raise Rejected("replay", f"{dev} already delivered its generator")
        if [(t[0], len(t[1])) for t in tensors] != [("uint8", 1)]:   # one uint8 tensor of any length
            raise Rejected("shape", "a generator blob carries its artifact as one uint8 tensor")
        blob = bytes(tensors[0][4])
        caps = s.registry.devices[dev]
        policy = artifact.PrivacyPolicy(float(caps.get("max_epsilon", self.stage.max_epsilon)))
        try:
            gen, info = artifact.load(blob, policy, device=dev)
        except artifact.ArtifactRejected as e:
            self.gen_refused.add(dev)   # its answer came and was refused: nobody waits for another
            self._gens_in()
            raise Rejected(e.reason, e.detail) from None
        self._took(dev, meta)
        version = s.store.keep_artifact(dev, "generator", s.round, info.sha256, info.epsilon, info.delta, blob)
        self.generators[dev] = (gen, info, blob, version)
        self._gens_in()

    def _gens_in(self):
        n = len(self.gen_wanted & (set(self.generators) | self.gen_refused))
        self.session.progress(f"generators {n}/{len(self.gen_wanted)} in"
                              + (f" ({len(self.gen_refused)} refused)" if self.gen_refused else ""))

    # --- IoTSL's generator stage ------------------------------------------------------------------
    def prepare(self, clients: list[str]):
        """Generators in (until each device answered or the stage's deadline), pre-training (theta_pre),
        paired generators out. A device whose generator has not come by the deadline is skipped for the
        rest of the round (`device_errors`: "timeout"); with no generator at all IoTSL goes on as plain SL.
        What happened is this round's `generator_stage` metric."""
        from semifl.learn.iotsl.impute import impute
        from semifl.learn.iotsl.pretrain import generated_dataset, pretrain

        s, st, rnd = self.session, self.stage, self.session.round
        timeout = st.timeout_s or s.limits.collect_timeout_s
        self.gen_wanted, self.gen_refused, self.gen_late = set(clients), set(), set()
        for d in clients:
            # deadline_s: the device stops training at this budget and sends what it has, so it is in time
            s.send_task(d, {"round": rnd, "role": "generator", "task": s.task_id(rnd, d),
                            "seed": task_seed(self.seed, rnd, d), "steps": st.steps, "sigma": st.sigma,
                            "batch": st.batch, "dim": st.dim, "deadline_s": round(0.8 * timeout, 3)})
        s.progress(f"generators 0/{len(clients)} in ({st.steps} steps each)")
        answered = lambda d: d in self.generators or d in self.gen_refused or s.gone(d)
        s.wait(lambda: all(answered(d) for d in clients), timeout, "generators")
        missing = sorted(d for d in clients if d not in self.generators and d not in self.gen_refused)
        for d in missing:
            if not s.gone(d):   # silent (or far too slow): not waited for again this round
                s.rec.failed[d] = "timeout"
                self.gen_late.add(d)
            log.warning("round %d: %s sent no generator within %.0f s (%s); skipped this round", rnd, d, timeout,
                        s.rec.failed.get(d, "offline"))
        self.gen_wanted = set()
        gens = {d: self.generators[d] for d in clients if d in self.generators}
        self.gen_record = {"asked": sorted(clients), "arrived": sorted(gens), "refused": sorted(self.gen_refused),
                           "missing": missing, "timeout_s": timeout, "pretrained_on": 0,
                           "outcome": "pretrained" if gens else "plain_sl"}
        if not gens:
            log.warning("round %d: no generator arrived; IoTSL goes on as plain SL", rnd)
            s.progress("no generator arrived: plain SL")
            return
        hists = {d: list(info.histogram) for d, (_, info, _, _) in gens.items()}
        total = sum(sum(h) for h in hists.values())
        share = min(1.0, st.pretrain_n / total) if st.pretrain_n else 1.0   # the same share of every class
        x, y, _ = generated_dataset([(g, [int(round(c * share)) for c in hists[d]]) for d, (g, _, _, _) in gens.items()],
                                    seed=self.seed)
        steps, done = st.pretrain_epochs * -(-len(y) // 64), [0]   # pretrain's batch of 64

        def stepped():
            done[0] += 1
            if done[0] % 5 == 0 or done[0] == steps:
                s.progress(f"pre-training on {len(y)} generated samples: step {done[0]}/{steps}")
        s.progress(f"pre-training on {len(y)} generated samples ({st.pretrain_epochs} epochs)")
        theta, _ = pretrain(x, y, self.net, cut=self.cut, epochs=st.pretrain_epochs, lr=self.lr, seed=self.seed,
                            on_step=stepped)
        na = len(self.f_a.shapes())
        self.server.params_a, self.server.params_b = theta[:na], theta[na:]
        self.gen_record["pretrained_on"] = len(y)
        fills = impute(hists)
        self.fills = {d: [[f.label, f.generator, f.quantity] for f in fs] for d, fs in fills.items() if fs}
        for d in self.fills:
            self.send_impute(d)
        s.progress(f"pre-trained; paired generators sent to {len(self.fills)} devices")
        log.info("round %d: pre-trained on %d generated samples; imputation for %d devices", rnd, len(y), len(self.imputed))

    def send_impute(self, dev: str):
        """The paired generators a device needs (Algorithm 2), from the host's stored artifacts."""
        s = self.session
        fills = self.fills.get(dev)
        if not fills:
            raise Rejected("unexpected", f"{dev} has no imputation to ask for")
        kept = s.store.artifacts("generator")
        paired = sorted({j for _, j, _ in fills})
        blob = wire.encode_blob({"kind": "impute", "round": s.round, "task": s.task_id(s.round, dev), "generators": paired,
                                 "fills": fills}, [("uint8", (len(kept[j]["blob"]),), 1.0, 0, kept[j]["blob"]) for j in paired])
        s.send_down(dev, wire.KIND_GENERATOR, s.round, blob)
        self.imputed[dev] = sum(q for _, _, q in fills)

    # --- the round --------------------------------------------------------------------------------
    def start(self, dev: str):
        """Hand `dev` the f_a to start from and its task."""
        s, rnd = self.session, self.session.round
        task = {"round": rnd, "role": "sl", "task": s.task_id(rnd, dev), "seed": task_seed(self.seed, rnd, dev),
                "model": self.model, "cut": self.cut, "batch": self.batch, "batches": self.batches, "lr": self.lr,
                "smashed": self.smashed_dtype,
                "imputed": sum(q for _, _, q in self.fills.get(dev, []))}
        s.send_down(dev, wire.KIND_MODEL, rnd, encode_arrays({"kind": "fa", "round": rnd, "task": task["task"]},
                                                             self.server.params_a))
        self.server.handed(dev)
        s.progress(f"{dev}: f_a sent")
        self.chain[dev] = {"start": arrays_crc(self.server.params_a)}
        held = int(s.registry.devices[dev].get("n_samples") or 0) + task["imputed"]
        n = -(-held // self.batch)
        self.active[dev] = {"next": 0, "of": min(n, self.batches) if self.batches else n}
        s.send_task(dev, task)

    def work(self, devs: list[str]):
        """Wait until each of devs has handed back its f_a, failed or left, or no batch has come from
        any of them for collect_timeout_s (an epoch may take long; a silent client is a dropout)."""
        s = self.session
        finished = lambda: all(d in self.done or self.session.gone(d) for d in devs)
        self.last_heard = s.clock()
        while not finished() and s.clock() - self.last_heard < s.limits.collect_timeout_s:
            if not s.pump(finished, min(1.0, s.limits.collect_timeout_s)) and s.clock() - self.last_heard >= 2:
                # a client between batches (or generating its fills first): say the wait goes on
                s.still("no batch for", self.last_heard)
        for d in devs:
            st = self.active.pop(d, None)
            if d not in self.done:   # dropped out mid-epoch: whatever f_a the host holds goes on
                why = s.rec.failed.get(d) or ("offline" if d not in s.registry.online else "timeout")
                s.rec.failed.setdefault(d, why)
                log.warning("round %d: %s did not finish its epoch (%s, after %d batches); the next client continues",
                            s.round, d, why, st["next"] if st else 0)
                s.progress(f"{d}: skipped ({why})")

    def run(self, rnd: int) -> dict:
        s = self.session
        rec = s.begin(rnd)
        self.done, self.chain, self.generators = {}, {}, {}   # generators: reported in the round they arrive
        self.gen_record = {}
        v0 = {d: dict(v) for d, v in self.server.values.items()}
        ready = s.announce(rnd)
        clients = [d for d in ready if "sl" in s.registry.devices[d].get("roles", ())]
        self.plan = RoundPlan(rnd, fl=clients, idle={d: "no split learning role" for d in ready if d not in clients})
        s.store.begin_round(rnd, asdict(self.plan))
        if self.spec.generators and not self.prepared:
            self.prepare(clients)
            self.prepared = True
            rec.mark("generators")
        if self.spec.sequential:
            for d in clients:   # the seed's sequential SL: each client starts from the last one's f_a
                if self.session.gone(d):
                    why = s.rec.failed.get(d, "offline")
                    log.warning("round %d: %s is skipped (%s)", rnd, d, why)
                    s.progress(f"{d}: skipped ({why})")
                    continue
                self.start(d)
                self.work([d])
        else:
            for d in clients:
                self.start(d)
            self.work(clients)
            if self.done:
                self.server.average_a([self.done[d] for d in sorted(self.done)])
        rec.mark("train")
        s.progress("evaluating")
        acc, loss = self.evaluate(self.params)
        rec.mark("evaluate")
        values = {d: {k: v[k] - v0.get(d, {}).get(k, 0) for k in ("up", "down")} for d, v in self.server.values.items()}
        return s.finish(
            self.params, acc, loss, self.state(),
            participants={"cl": [], "fl": sorted(self.done)}, trained=sorted(self.done), idle=self.plan.idle,
            device_values={d: v for d, v in values.items() if v["up"] or v["down"]}, sl_chain=dict(self.chain),
            generators={d: {"epsilon": info.epsilon, "delta": info.delta, "sha256": info.sha256, "bytes": len(b),
                            "version": v} for d, (_, info, b, v) in self.generators.items()},
            imputed=dict(self.imputed), **({"generator_stage": self.gen_record} if self.gen_record else {}))
