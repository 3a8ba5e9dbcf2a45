"""Split learning over MQTT (IoTSL's SL, seed 002; docs/protocol.md §5a).

The same engine as SemiFL's (`RoundEngine`: link, store, registry, codec, rejections, byte counts);
what differs is the round. The host keeps f_b in a `SplitServer`, sends each SL client the f_a to
start from, answers every `smashed` blob with the `grad` of that batch, and takes back the client's
f_a at the end of its epoch: one client after another (`sl`, the seed's order) or all at once
(`splitfed`, f_a averaged). Every message a device sends lands in `_on_blob`; the global model
changes in `SplitServer.step` (f_b, per batch) and at each hand-over (f_a).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from semifl.fleet.planner import RoundPlan, task_seed
from semifl.learn import compress, nn
from semifl.learn.split import SplitServer
from semifl.learn.strategy import Strategy
from semifl.protocol import wire
from semifl.protocol.tensors import arrays_crc, encode_arrays, from_wire

from .engine import EngineConfig, Rejected, RoundEngine

log = logging.getLogger("semifl.split")
SMASHED_DTYPES = ("float32", "float16", "int8")


class SplitLearning(Strategy):
    """The strategy record a split run keeps in its store: f_a and f_b are its checkpoint; IoTSL adds
    whether its generator stage (Algorithms 1 and 2) is done."""
    uses_cl = False

    def __init__(self, variant: str):
        if variant not in ("sl", "splitfed", "iotsl"):
            raise ValueError(f"split learning variant {variant!r}: sl, splitfed or iotsl")
        self.name = variant
        self.prepared = False
        self.fills: dict[str, list] = {}   # IoTSL: device -> [[class, generator device, quantity], ...]

    def state(self):
        return {"prepared": self.prepared, "fills": self.fills}, {}

    def load_state(self, meta, arrays):
        self.prepared = bool(meta.get("prepared"))
        self.fills = dict(meta.get("fills", {}))


@dataclass
class GeneratorStage:
    """IoTSL's one-off stage: devices train DP generators, the host pre-trains on their data and pairs
    them to fill each device's missing classes. Generator settings travel in the `generator` task."""
    steps: int = 150
    sigma: float = 1.5
    batch: int = 16
    dim: int = 32
    pretrain_epochs: int = 2
    max_epsilon: float = 10.0    # the policy a device that reports none is held to


class SplitEngine(RoundEngine):
    def __init__(self, link, store, cfg: EngineConfig, net: nn.Net, cut: int, model: str, init_params, evaluate,
                 n_classes: int = 10, variant: str = "sl", batch: int = 32, smashed: str = "float32",
                 generators: GeneratorStage | None = None):
        if smashed not in SMASHED_DTYPES:
            raise ValueError(f"smashed dtype {smashed!r}: one of {SMASHED_DTYPES}")
        super().__init__(link, store, SplitLearning(variant), cfg, init_params, evaluate, n_classes, net=net)
        self.f_a, self.f_b = net.split(cut)
        self.cut, self.model, self.batch, self.smashed_dtype = cut, model, batch, smashed
        na = len(self.f_a.shapes())
        self.server = SplitServer(self.f_b, self.params[na:], self.params[:na], lr=cfg.lr)
        self.active: dict[str, dict] = {}   # SL client -> {"next": the batch it must send next}
        self.progress = 0.0                 # when the last smashed batch was served (a dropout is silence)
        self.done: dict[str, tuple] = {}    # client -> (its f_a, samples) once its epoch is over
        self.chain: dict[str, dict] = {}    # client -> CRC-32 of the f_a it started from and of the one it handed back
        self.stage = generators or GeneratorStage()
        self.generators: dict[str, tuple] = {}   # device -> (generator, info, artifact bytes, version) this round
        self.gen_wanted: set[str] = set()
        self.imputed: dict[str, int] = {}        # device -> generated samples it adds to its SL epochs

    # --- inbound: smashed data and the f_a a client hands back -----------------------------------
    def _on_blob(self, dev: str, kind: int, blob: bytes):
        meta, tensors, rnd = self._open_blob(dev, blob)
        if kind == wire.KIND_GENERATOR and meta.get("kind") == "generator":
            return self._on_generator(dev, rnd, meta, tensors)
        if dev not in self.active:
            raise Rejected("unexpected", f"{dev} is not training with the host now")
        if kind == wire.KIND_SMASHED and meta.get("kind") == "smashed":
            self._on_smashed(dev, rnd, meta, tensors)
        elif kind == wire.KIND_UPDATE and meta.get("kind") == "fa":
            self._on_fa(dev, meta, tensors)
        else:
            raise Rejected("malformed", f"a split client does not send blob kind {kind} ({meta.get('kind')!r})")

    def _on_smashed(self, dev, rnd, meta, tensors):
        st = self.active[dev]
        if meta.get("batch") != st["next"]:
            raise Rejected("schema", f"smashed batch {meta.get('batch')}, expected batch {st['next']}")
        n = meta["n"]
        want = [(self.smashed_dtype, (n,) + tuple(self.f_b.input_shape)), ("uint8", (n,))]
        if n > self.batch or [(t[0], tuple(t[1])) for t in tensors] != want:
            raise Rejected("shape", f"smashed tensors {[(t[0], tuple(t[1])) for t in tensors]}, expected {want} "
                                    f"(n <= {self.batch})")
        smashed = compress.decode_delta([(from_wire(tensors[0]), tensors[0][2])], [want[0][1]])[0]
        labels = from_wire(tensors[1])
        if labels.max() >= self.n_classes:
            raise Rejected("schema", f"label {int(labels.max())} outside {self.n_classes} classes")
        if not np.isfinite(smashed).all():
            raise Rejected("nonfinite", "smashed data contains NaN or Inf")
        grad, _ = self.server.step(dev, smashed, labels)
        st["next"] += 1
        self.progress = time.monotonic()
        blob = encode_arrays({"kind": "grad", "round": rnd, "task": meta["task"], "batch": meta["batch"]}, [grad])
        self.bytes_down[dev] += self.link.publish_blob(wire.dev_topic(dev, wire.T_DOWN), wire.KIND_GRAD, rnd, blob,
                                                       self.registry.devices[dev]["max_chunk"])

    def _on_fa(self, dev, meta, tensors):
        want = [("float32", tuple(s)) for s in self.f_a.shapes()]
        if [(t[0], tuple(t[1])) for t in tensors] != want:
            raise Rejected("shape", f"f_a tensors {[(t[0], tuple(t[1])) for t in tensors]} are not the device part's")
        if dev in self.done:
            raise Rejected("replay", f"{dev} already handed back its f_a this round")
        params = [np.array(from_wire(t)) for t in tensors]
        if not all(np.isfinite(p).all() for p in params):
            raise Rejected("nonfinite", "f_a contains NaN or Inf")
        self.done[dev] = (params, meta["n"])
        self._took(dev, meta)
        self.chain.setdefault(dev, {})["end"] = arrays_crc(params)
        if self.strategy.name != "splitfed":   # sequential (sl, iotsl): the next client starts from it
            self.server.hand_over(dev, params)
        else:
            self.server.take_back(dev, params)

    def _took(self, dev, meta):
        """The device's own measure of its work (seconds), for the energy meter: `t_local_s` in its blob."""
        t = meta.get("t_local_s")
        if isinstance(t, (int, float)) and t >= 0:
            tt = self.times.setdefault(dev, {})
            tt["local"] = round(tt.get("local", 0.0) + float(t), 4)

    def _on_generator(self, dev, rnd, meta, tensors):
        """A device's generator artifact (Algorithm 1): checked (hash, device, privacy policy), kept."""
        from semifl.learn.iotsl import artifact

        if dev not in self.gen_wanted:
            raise Rejected("unexpected", f"{dev} was not asked for a generator")
        if dev in self.generators:
            raise Rejected("replay", f"{dev} already delivered its generator")
        if [(t[0], len(t[1])) for t in tensors] != [("uint8", 1)]:
            raise Rejected("shape", "a generator blob carries its artifact as one uint8 tensor")
        blob = bytes(tensors[0][4])
        caps = self.registry.devices[dev]
        policy = artifact.PrivacyPolicy(float(caps.get("max_epsilon", self.stage.max_epsilon)))
        try:
            gen, info = artifact.load(blob, policy, device=dev)
        except artifact.ArtifactRejected as e:
            raise Rejected(e.reason, e.detail) from None
        self._took(dev, meta)
        version = self.store.keep_artifact(dev, "generator", rnd, info.sha256, info.epsilon, info.delta, blob)
        self.generators[dev] = (gen, info, blob, version)

    def _prepare(self, rnd: int, clients: list[str]):
        """IoTSL's generator stage: generators in, pre-training (theta_pre), paired generators out."""
        from semifl.learn.iotsl.impute import impute
        from semifl.learn.iotsl.pretrain import generated_dataset, pretrain

        st = self.stage
        self.gen_wanted = set(clients)
        for d in clients:
            self._send(d, {"round": rnd, "role": "generator", "task": self.task_id(rnd, d),
                           "seed": task_seed(self.cfg.seed, rnd, d), "steps": st.steps, "sigma": st.sigma,
                           "batch": st.batch, "dim": st.dim})
        self.pump(lambda: all(d in self.generators or self._gone(d) for d in clients),
                  self.cfg.collect_timeout_s)
        gens = {d: self.generators[d] for d in clients if d in self.generators}
        if not gens:
            log.warning("round %d: no generator arrived; IoTSL goes on as plain SL", rnd)
            return
        x, y, _ = generated_dataset([(g, list(info.histogram)) for g, info, _, _ in gens.values()], seed=self.cfg.seed)
        theta, _ = pretrain(x, y, self.net, cut=self.cut, epochs=st.pretrain_epochs, lr=self.cfg.lr, seed=self.cfg.seed)
        na = len(self.f_a.shapes())
        self.server.params_a, self.server.params_b = theta[:na], theta[na:]
        fills = impute({d: list(info.histogram) for d, (_, info, _, _) in gens.items()})
        self.strategy.fills = {d: [[f.label, f.generator, f.quantity] for f in fs] for d, fs in fills.items() if fs}
        for d in self.strategy.fills:
            self._send_impute(rnd, d)
        log.info("round %d: pre-trained on %d generated samples; imputation for %d devices", rnd, len(y), len(self.imputed))

    def _send_impute(self, rnd: int, dev: str):
        """The paired generators a device needs (Algorithm 2), from the host's stored artifacts."""
        fills = self.strategy.fills.get(dev)
        if not fills:
            raise Rejected("unexpected", f"{dev} has no imputation to ask for")
        kept = self.store.artifacts("generator")
        paired = sorted({j for _, j, _ in fills})
        blob = wire.encode_blob({"kind": "impute", "round": rnd, "task": self.task_id(rnd, dev), "generators": paired,
                                 "fills": fills}, [("uint8", (len(kept[j]["blob"]),), 1.0, 0, kept[j]["blob"]) for j in paired])
        self.bytes_down[dev] += self.link.publish_blob(wire.dev_topic(dev, wire.T_DOWN), wire.KIND_GENERATOR, rnd, blob,
                                                       self.registry.devices[dev]["max_chunk"])
        self.imputed[dev] = sum(q for _, _, q in fills)

    def _on_status(self, dev: str, msg: dict):
        if msg.get("kind") == "request" and msg.get("what") == "generators":
            if not isinstance(msg.get("round"), int):
                raise Rejected("schema", "status without an integer round")
            return self._send_impute(self.round, dev)   # e.g. a device that restarted and lost its generated set
        return super()._on_status(dev, msg)

    # --- the round ------------------------------------------------------------------------------------
    def _start(self, rnd: int, dev: str):
        """Hand `dev` the f_a to start from and its task."""
        task = {"round": rnd, "role": "sl", "task": self.task_id(rnd, dev), "seed": task_seed(self.cfg.seed, rnd, dev),
                "model": self.model, "cut": self.cut, "batch": self.batch, "lr": self.cfg.lr, "smashed": self.smashed_dtype,
                "imputed": sum(q for _, _, q in self.strategy.fills.get(dev, []))}
        blob = encode_arrays({"kind": "fa", "round": rnd, "task": task["task"]}, self.server.params_a)
        self.bytes_down[dev] += self.link.publish_blob(wire.dev_topic(dev, wire.T_DOWN), wire.KIND_MODEL, rnd, blob,
                                                       self.registry.devices[dev]["max_chunk"])
        self.server.handed(dev)
        self.chain[dev] = {"start": arrays_crc(self.server.params_a)}
        self.active[dev] = {"next": 0}
        self._send(dev, task)

    def _gone(self, dev: str) -> bool:
        return dev in self.failed or dev not in self.registry.online

    def _work(self, devs: list[str]):
        """Wait until each of devs has handed back its f_a, failed or left, or no batch has come from
        any of them for collect_timeout_s (an epoch may take long; a silent client is a dropout)."""
        finished = lambda: all(d in self.done or self._gone(d) for d in devs)
        self.progress = time.monotonic()
        while not finished() and time.monotonic() - self.progress < self.cfg.collect_timeout_s:
            self.pump(finished, min(1.0, self.cfg.collect_timeout_s))
        for d in devs:
            self.active.pop(d, None)
            if d not in self.done:   # dropped out mid-epoch: whatever f_a the host holds goes on
                why = self.failed.get(d) or ("offline" if d not in self.registry.online else "timeout")
                self.failed.setdefault(d, why)
                log.warning("round %d: %s did not finish its epoch (%s); the next client continues", self.round, d, why)

    def run_round(self, rnd: int) -> dict:
        t0, up0, down0 = self._open_round(rnd)
        self.done, self.chain = {}, {}
        self.generators = {}   # reported in the round they arrive (the store keeps them)
        v0 = {d: dict(v) for d, v in self.server.values.items()}
        online = self._announce(rnd)
        ready = [d for d in online if self.registry.link.get(d, {}).get("round") == rnd]
        clients = [d for d in ready if "sl" in self.registry.devices[d].get("roles", ())]
        self.plan = RoundPlan(rnd, fl=clients, idle={d: "no split learning role" for d in ready if d not in clients})
        self.store.begin_round(rnd, asdict(self.plan))
        phases = {"ready": time.time() - t0}
        if self.strategy.name == "iotsl" and not self.strategy.prepared:
            self._prepare(rnd, clients)
            self.strategy.prepared = True
            phases["generators"] = time.time() - t0 - sum(phases.values())
        if self.strategy.name in ("sl", "iotsl"):
            for d in clients:   # the seed's sequential SL: each client starts from the last one's f_a
                if not self._gone(d):
                    self._start(rnd, d)
                    self._work([d])
        else:
            for d in clients:
                self._start(rnd, d)
            self._work(clients)
            if self.done:
                self.server.average_a([self.done[d] for d in sorted(self.done)])
        phases["train"] = time.time() - t0 - sum(phases.values())
        self.params = self.server.params
        acc, loss = self.evaluate(self.params)
        phases["evaluate"] = time.time() - t0 - sum(phases.values())
        values = {d: {k: v[k] - v0.get(d, {}).get(k, 0) for k in ("up", "down")} for d, v in self.server.values.items()}
        return self._close_round(
            rnd, t0, up0, down0, acc, loss, phases,
            participants={"cl": [], "fl": sorted(self.done)}, trained=sorted(self.done), idle=self.plan.idle,
            device_values={d: v for d, v in values.items() if v["up"] or v["down"]}, sl_chain=dict(self.chain),
            generators={d: {"epsilon": info.epsilon, "delta": info.delta, "sha256": info.sha256, "bytes": len(b),
                            "version": v} for d, (_, info, b, v) in self.generators.items()},
            imputed=dict(self.imputed))
