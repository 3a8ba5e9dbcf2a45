"""The round engine: the one place a round advances and the global model changes.

Per round (SemiFL's three stages, docs/protocol.md):
  1. announce the round; devices answer `ready` with link and battery; plan roles (fleet.planner)
  2. publish the global model and tasks; FL clients train and report update norms, CL uploaders send
     samples; the top-K FL clients by norm are asked to upload; collect until done or the deadline
  3. strategy.aggregate -> evaluate -> persist (store) -> next round
Every inbound message passes `_dispatch` (topic -> codec -> validation); a bad one is rejected with
a reason that is logged, stored and counted in the round's metrics, and the round goes on.
"""
from __future__ import annotations

import binascii
import logging
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np

from semifl.fleet.planner import PlannerConfig, RoundPlan, cannot_run, plan_round, select_fl_uploaders, task_seed
from semifl.fleet.registry import Registry
from semifl.learn import compress, int8, mlp, nn
from semifl.learn.data import to_float
from semifl.learn.strategy import CLBatch, FLUpdate, Strategy
from semifl.protocol import wire
from semifl.protocol.tensors import dequantize, encode_arrays, from_wire

log = logging.getLogger("semifl.engine")
ROW = 784


@dataclass
class EngineConfig:
    seed: int = 0
    lr: float = 0.1
    epochs: int = 1
    prune: float = 0.3
    fl_fraction: float = 0.3
    cl_fraction: float = 0.3
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    ready_timeout_s: float = 10.0
    collect_timeout_s: float = 120.0
    max_blob: int = 32 << 20
    max_blobs_in_flight: int = 4      # per device: bounds the memory a misbehaving device can pin
    int8_every: int = 0               # push the int8 model to inference-capable MCUs every N rounds (0: never)
    sparse_updates: bool = False      # pruned clients send only the entries their copy holds (host scatters)
    compression: str = "none"         # "none": every FL client trains the model pruned at `prune`; "auto": per
                                      # device from its capabilities (learn/compress.py, seed 001)
    calibration: int = 1000           # samples that set the int8 activation ranges


class Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class RoundEngine:
    def __init__(self, link, store, strategy: Strategy, cfg: EngineConfig, init_params, evaluate, n_classes: int = 10,
                 calib_x=None, net: nn.Net | None = None):
        """calib_x: uint8 inputs that calibrate the int8 model until CL uploads have brought enough."""
        self.link, self.store, self.strategy, self.cfg = link, store, strategy, cfg
        self.registry = Registry(store)
        self.evaluate = evaluate
        self.n_classes = n_classes
        self.run_id = store.get_meta("run_id")
        if self.run_id is None:
            self.run_id = int.from_bytes(np.random.default_rng().bytes(4), "little")
            store.set_meta("run_id", self.run_id)
        last = store.last_completed_round()
        self.params = store.checkpoint(last) if last else [np.asarray(p, np.float32) for p in init_params]
        kept = store.strategy_state() if last else None
        if kept is not None:
            meta, arrays = kept
            if meta.get("strategy") != strategy.name:
                raise ValueError(f"{store.path} holds a run of strategy {meta.get('strategy')!r}, not {strategy.name!r}")
            strategy.load_state(meta["state"], arrays)
        self.shapes = [p.shape for p in self.params]
        # the model as layers, for what training it costs a device; default: the MLP the params describe
        self.net = net or nn.Net(self.shapes[0][:1], tuple(("dense", w[1], "tanh") for w in self.shapes[::2]))
        self.round = 0
        self.plan: RoundPlan | None = None
        self.assigned: dict = {}   # FL client -> the Compression it trains with this round (None: uniform)
        self._masks: dict = {}     # (round, rate) -> keep-masks of that round's model
        self.norms: dict[str, float] = {}
        self.trained_n: dict[str, int] = {}
        self.uploaders: list[str] | None = None
        self.accepted: set[tuple[str, str]] = set()
        self.rejected: Counter = Counter()
        self.failed: dict[str, str] = {}   # device -> the error it reported this round (it is not waited for)
        self.calib_fallback = calib_x
        self.calib: list[np.ndarray] = []  # CL samples the host holds anyway: the int8 calibration set
        self.evals: dict[str, dict] = {}   # device -> its on-device int8 evaluations reported this round
        self.refused: dict[str, str] = {}  # device -> why it was not given the model this round
        self.device_refused: dict[str, str] = {}   # device -> why it refused the int8 model on arrival
        self.asked: dict[str, float] = {}  # device -> when it was asked for its upload (this round)
        self.times: dict[str, dict] = {}   # device -> seconds: download, local (device-measured), upload
        self.bytes_up: Counter = Counter()
        self.bytes_down: Counter = Counter()
        self._asm: dict[str, dict] = defaultdict(dict)   # device -> {(kind, blob_id): Assembler}

    # --- tasks --------------------------------------------------------------------------------------
    def task_id(self, rnd: int, dev: str) -> int:
        return binascii.crc32(f"{self.run_id}/{rnd}/{dev}".encode()) & 0x7FFFFFFF

    def _send(self, dev: str, obj: dict):
        payload = wire.encode_json(dict(obj, v=wire.VERSION))
        self.bytes_down[dev] += len(payload)
        self.link.publish(wire.dev_topic(dev, wire.T_TASK), payload)

    def _broadcast(self, leaf: str, payload: bytes, to: list[str], retain: bool = False, blob=None):
        if blob is None:
            self.link.publish(wire.host_topic(leaf), payload, retain=retain)
            sent = len(payload)
        else:
            sent = self.link.publish_blob(wire.host_topic(leaf), *blob)
        for d in to:
            self.bytes_down[d] += sent

    # --- inbound ------------------------------------------------------------------------------------
    def pump(self, until, timeout: float) -> bool:
        """Dispatch inbound messages until `until()` holds or `timeout` passes; returns until()."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            msg = self.link.get(min(left, 0.5))
            if msg is not None:
                self._dispatch(msg)
        return True

    def _reject(self, dev, reason, detail):
        self.rejected[reason] += 1
        self.store.reject(self.round, dev, reason, detail)
        log.warning("rejected from %s: %s (%s)", dev, reason, detail)

    def _dispatch(self, msg):
        if msg[0] == "_rejected":   # refused by the transport before decoding (oversized)
            _, topic, reason, size = msg
            try:
                dev = wire.parse_dev_topic(topic)[0]
            except ValueError:
                dev = None
            return self._reject(dev, reason, f"{size} bytes on {topic}")
        topic, payload = msg
        dev = None
        try:
            dev, leaf = wire.parse_dev_topic(topic)
            if leaf in (wire.T_STATUS, wire.T_UP):
                self.bytes_up[dev] += len(payload)
            if leaf == wire.T_CAPS:
                if payload:  # an empty retained payload clears a device's report
                    self.registry.on_caps(dev, wire.decode_json(payload))
            elif leaf == wire.T_PRESENCE:
                self.registry.on_presence(dev, bytes(payload))
            elif not self.registry.known(dev):
                raise Rejected("unknown_device", f"{dev} sent {leaf} before any capability report")
            elif leaf == wire.T_STATUS:
                self._on_status(dev, wire.decode_json(payload))
            elif leaf == wire.T_UP:
                self._on_chunk(dev, payload)
            elif leaf not in (wire.T_TASK, wire.T_DOWN):  # what we send a device echoes back through the wildcard
                raise Rejected("malformed", f"unknown topic leaf {leaf!r}")
        except wire.WireError as e:
            self._reject(dev, e.reason, str(e))
        except Rejected as e:
            self._reject(dev, e.reason, e.detail)
        except ValueError as e:
            self._reject(dev, "malformed", str(e))

    def _check_round(self, dev, rnd, what):
        if rnd != self.round:
            raise Rejected("stale_round", f"{what} for round {rnd} during round {self.round}")

    def _on_status(self, dev: str, msg: dict):
        kind, rnd = msg.get("kind"), msg.get("round")
        if not isinstance(rnd, int):
            raise Rejected("schema", "status without an integer round")
        if kind == "eval":   # asynchronous: a board may take minutes; `round` names the model it ran
            acc, n = msg.get("accuracy"), msg.get("n")
            if not isinstance(acc, (int, float)) or not 0 <= acc <= 1 or not isinstance(n, int) or n <= 0:
                raise Rejected("schema", "eval status needs accuracy in [0, 1] and a positive n")
            self.evals[dev] = {"model_round": rnd, "accuracy": float(acc), "n": n, "ms": msg.get("ms")}
            return
        if kind == "refused":   # asynchronous too: the int8 model of round `round` was refused on arrival
            self.device_refused[dev] = str(msg.get("reason", "?"))[:40]
            log.warning("%s refused the int8 model of round %d: %s %s", dev, rnd, self.device_refused[dev],
                        str(msg.get("detail", ""))[:200])
            return
        if kind == "phase":   # marks for a bench's power meter (semifl.meters.align); any round, nothing to do here
            return
        self._check_round(dev, rnd, f"status {kind!r}")
        if kind == "ready":
            self.registry.on_ready(dev, msg)
        elif kind == "trained":
            if self.plan is None or dev not in self.plan.fl:
                raise Rejected("unexpected", f"{dev} is not an FL client this round")
            if msg.get("task") != self.task_id(rnd, dev):
                raise Rejected("replay", f"task {msg.get('task')} is not this round's task")
            norm, n = msg.get("norm"), msg.get("n")
            if not isinstance(norm, (int, float)) or not np.isfinite(norm) or not isinstance(n, int) or n <= 0:
                raise Rejected("schema", "trained status needs a finite norm and a positive n")
            self.norms[dev], self.trained_n[dev] = float(norm), n
            t = {k: float(msg[f"t_{k}_s"]) for k in ("download", "local") if isinstance(msg.get(f"t_{k}_s"), (int, float))}
            self.times.setdefault(dev, {}).update(t)
        elif kind == "error":   # the device could not do its task (out of memory, bad model, ...)
            err = str(msg.get("error", "?"))[:40]
            self.failed[dev] = err
            log.warning("round %d: %s reports %s: %s", rnd, dev, err, str(msg.get("detail", ""))[:200])
        else:
            raise Rejected("schema", f"unknown status kind {kind!r}")

    def _on_chunk(self, dev: str, payload: bytes):
        try:
            kind, blob_id, seq, count, blob_len, bcrc, data = wire.decode_chunk(payload, self.cfg.max_blob)
        except wire.WireError as e:
            if e.reason == "crc":  # a corrupt chunk spoils its blob: drop it whole (docs/protocol.md §6)
                self._asm[dev].pop((payload[3], int.from_bytes(payload[4:8], "little")), None)
            raise
        if blob_id != self.round:
            raise Rejected("stale_round", f"chunk of round {blob_id} during round {self.round}")
        key = (kind, blob_id)
        asm = self._asm[dev].get(key)
        if asm is not None and (asm.count, asm.blob_len) != (count, blob_len):
            asm = None  # the device started this blob over with new content: the newer one wins
        if asm is None:
            if key not in self._asm[dev] and len(self._asm[dev]) >= self.cfg.max_blobs_in_flight:
                raise Rejected("oversized", f"{dev} has {len(self._asm[dev])} blobs in flight")
            asm = self._asm[dev][key] = wire.Assembler(kind, blob_id, count, blob_len)
        try:
            complete = asm.add(kind, blob_id, seq, count, blob_len, bcrc, data)
        except wire.WireError:
            del self._asm[dev][key]   # a broken blob is dropped whole; the device may send it again
            raise
        if complete:
            del self._asm[dev][key]
            self._on_blob(dev, kind, bytes(asm.buf))

    def _open_blob(self, dev: str, blob: bytes) -> tuple[dict, list, int]:
        """Decode a device's blob and check what every kind must hold: this round, this device, its
        task, a positive sample count n. -> (meta, tensors, round)."""
        meta, tensors = wire.decode_blob(blob)
        rnd = meta.get("round")
        self._check_round(dev, rnd, "blob")
        if meta.get("device") != dev:
            raise Rejected("schema", f"blob says device {meta.get('device')!r}, topic says {dev!r}")
        if meta.get("task") != self.task_id(rnd, dev):
            raise Rejected("replay", f"task {meta.get('task')} is not this round's task for {dev}")
        n = meta.get("n")
        if not isinstance(n, int) or n <= 0:
            raise Rejected("schema", "blob needs a positive integer n")
        return meta, tensors, rnd

    def _on_blob(self, dev: str, kind: int, blob: bytes):
        meta, tensors, rnd = self._open_blob(dev, blob)
        if kind == wire.KIND_UPDATE:
            self._accept_update(dev, rnd, meta, tensors, blob)
        elif kind == wire.KIND_SAMPLES:
            self._accept_samples(dev, rnd, meta, tensors, blob)
        else:
            raise Rejected("malformed", f"devices do not send blob kind {kind}")

    def _accept_update(self, dev, rnd, meta, tensors, blob):
        if meta.get("kind") != "update":
            raise Rejected("schema", "update chunk carrying a non-update blob")
        if not self.uploaders or dev not in self.uploaders:
            raise Rejected("unexpected", f"{dev} was not asked to upload in round {rnd}")
        if (dev, "update") in self.accepted:
            raise Rejected("replay", f"{dev} already delivered its round {rnd} update")
        got = [(t[0], tuple(t[1])) for t in tensors]
        c = self.assigned.get(dev)
        rate = self.prune_rate(dev)
        sparse = self.cfg.sparse_updates and rate > 0
        shapes = [(int(m.sum()),) for m in self.prune_mask(rate)] if sparse else self.shapes
        want = [(c.dtype if c is not None else "float32", tuple(s)) for s in shapes]
        if got != want:
            raise Rejected("shape", f"update tensors {got[:3]}... do not match the model {want[:3]}...")
        arrays = self.update_arrays(dev, tensors)
        for a in arrays:
            if not np.isfinite(a).all():
                raise Rejected("nonfinite", "update contains NaN or Inf")
        if rate > 0 and not sparse:   # a pruned copy cannot change what it does not have: not its own update
            for a, m in zip(arrays, self.prune_mask(rate)):
                if np.any(a[~m] != 0):
                    raise Rejected("mask", f"update changes entries its copy pruned at {rate} does not hold")
        if meta["n"] > self.registry.devices[dev]["n_samples"]:
            raise Rejected("schema", f"n={meta['n']} exceeds the device's {self.registry.devices[dev]['n_samples']} samples")
        self.store.accept(rnd, dev, "update", meta["n"], blob)
        self.accepted.add((dev, "update"))
        self._took_upload(dev)

    def _accept_samples(self, dev, rnd, meta, tensors, blob):
        if meta.get("kind") != "samples":
            raise Rejected("schema", "samples chunk carrying a non-samples blob")
        if self.plan is None or dev not in self.plan.cl:
            raise Rejected("unexpected", f"{dev} is not a CL uploader in round {rnd}")
        if (dev, "samples") in self.accepted:
            raise Rejected("replay", f"{dev} already delivered its round {rnd} samples")
        k = meta["n"]
        if [(t[0], tuple(t[1])) for t in tensors] != [("uint8", (k, ROW)), ("uint8", (k,))]:
            raise Rejected("shape", f"samples must be uint8 ({k}, {ROW}) and uint8 ({k},)")
        if k > self.registry.devices[dev]["n_samples"]:
            raise Rejected("schema", f"{k} samples exceed the device's {self.registry.devices[dev]['n_samples']}")
        if max(bytes(tensors[1][4]), default=0) >= self.n_classes:
            raise Rejected("schema", f"label out of range 0..{self.n_classes - 1}")
        self.store.accept(rnd, dev, "samples", k, blob)
        self.accepted.add((dev, "samples"))
        self._took_upload(dev)

    # --- the round ------------------------------------------------------------------------------------
    def update_arrays(self, dev: str, tensors) -> list[np.ndarray]:
        """An accepted update's tensors as float32 model-shaped deltas: fp16/int8 dequantized, a sparse
        update scattered back through the mask of the copy the client trained."""
        arrays = [dequantize(t) for t in tensors]
        rate = self.prune_rate(dev)
        if self.cfg.sparse_updates and rate > 0:
            arrays = compress.scatter(arrays, self.prune_mask(rate))
        return arrays

    def prune_rate(self, dev: str) -> float:
        """The rate an FL client's copy is pruned at this round: its compression's, else the uniform one."""
        c = self.assigned.get(dev)
        return c.prune if c is not None else self.cfg.prune

    def prune_mask(self, rate: float) -> list[np.ndarray]:
        """Keep-masks of this round's global model at `rate`, as every client derives them (cached)."""
        key = (self.round, rate)
        if key not in self._masks:
            self._masks = {key: mlp.prune_mask(self.params, rate)}
        return self._masks[key]

    def compression_for(self, dev: str):
        """The Compression this FL client trains with, or None for the uniform setting (`prune`)."""
        if self.cfg.compression == "none":
            return None
        return compress.for_device(self.registry.devices.get(dev, {}), sum(p.nbytes for p in self.params))

    def _took_upload(self, dev):
        """T_upload as the host sees it: from asking for the blob to holding all of it."""
        if dev in self.asked:
            self.times.setdefault(dev, {})["upload"] = round(time.monotonic() - self.asked[dev], 4)

    def wait_for_devices(self, n: int, timeout: float) -> bool:
        """Block until n devices have reported capabilities and are online (the fleet is up)."""
        return self.pump(lambda: len(self.registry.online) >= n, timeout)

    def _open_round(self, rnd: int) -> tuple[float, Counter, Counter]:
        """Forget the last round's per-device state. -> (start time, byte counters at the start)."""
        self.round, self.rejected = rnd, Counter()
        self.failed, self.evals, self.refused, self.device_refused = {}, {}, {}, {}
        self.asked, self.times = {}, {}
        return time.time(), Counter(self.bytes_up), Counter(self.bytes_down)

    def _announce(self, rnd: int) -> list[str]:
        """Announce the round (retained) and wait for the devices' link reports. -> who was online."""
        online = sorted(self.registry.online)
        self._broadcast("round", wire.encode_json({"v": wire.VERSION, "round": rnd, "run": self.run_id}), online, retain=True)
        self.pump(lambda: all(self.registry.link.get(d, {}).get("round") == rnd for d in self.registry.online),
                  self.cfg.ready_timeout_s)
        return online

    def _close_round(self, rnd, t0, up0, down0, acc, loss, phases, **fields) -> dict:
        """The round's metrics (what every round shape records, plus `fields`), stored in one transaction
        with the model and the strategy's state."""
        up, down = self.bytes_up - up0, self.bytes_down - down0
        metrics = {"round": rnd, "accuracy": acc, "loss": loss, "wall_s": round(time.time() - t0, 4), **fields,
                   "device_battery": {d: v["battery"] for d, v in sorted(self.registry.link.items()) if v["round"] == rnd},
                   "rejected": dict(self.rejected), "refused": dict(self.refused), "device_refused": dict(self.device_refused),
                   "device_errors": dict(self.failed),
                   "device_evals": dict(self.evals), "device_times_s": dict(self.times),
                   "bytes_up": sum(up.values()), "bytes_down": sum(down.values()),
                   "device_bytes": {d: [up[d], down[d]] for d in sorted(set(up) | set(down))},
                   "phases_s": {k: round(v, 4) for k, v in phases.items()}}
        meta, arrays = self.strategy.state()
        self.store.finish_round(rnd, self.params, metrics, ({"strategy": self.strategy.name, "state": meta}, arrays))
        return metrics

    def run_round(self, rnd: int) -> dict:
        t0, up0, down0 = self._open_round(rnd)
        self.norms, self.trained_n = {}, {}
        row = self.store.round_row(rnd)

        # stage 1: announce; devices answer with their link; plan
        online = self._announce(rnd)
        phases = {"ready": time.time() - t0}
        if row and row["plan"]:      # resuming after a restart: keep the plan the devices were given
            self.plan = RoundPlan(**row["plan"])
        else:
            self.plan = plan_round(rnd, self.registry.view(rnd), self.cfg.planner, use_cl=self.strategy.uses_cl,
                                   train_bytes=self.train_bytes)
            self.store.begin_round(rnd, asdict(self.plan))
        for dev, why in self.plan.refused.items():
            self._refuse(dev, why)
        self.uploaders = row["uploaders"] if row else None
        # per-device compression is a pure function of caps, so a restarted host assigns the same again
        self.assigned = {d: self.compression_for(d) for d in self.plan.fl}
        self.accepted = {(d, k) for d, k, _, _ in self.store.contributions(rnd)}

        # stage 2: model and tasks out, norms and samples in, then the top-K upload
        fl_todo = [d for d in self.plan.fl if self.uploaders is None]
        if fl_todo:
            chunk = min(self.registry.devices[d]["max_chunk"] for d in fl_todo)
            blob = encode_arrays({"kind": "model", "round": rnd}, self.params)
            pis = [d for d in online if self.registry.devices[d]["class"] == "pi"]
            self._broadcast(wire.T_MODEL, b"", pis, blob=(wire.KIND_MODEL, rnd, blob, chunk))
        common = {"round": rnd, "lr": self.cfg.lr}
        for d in fl_todo:
            c = self.assigned[d]
            task = dict(common, role="fl", task=self.task_id(rnd, d), seed=task_seed(self.cfg.seed, rnd, d),
                        prune=self.prune_rate(d), fraction=self.cfg.fl_fraction, epochs=self.cfg.epochs)
            if c is not None:
                task["compression"] = c.to_task()
            if self.cfg.sparse_updates and task["prune"] > 0:
                task["sparse"] = True
            self._send(d, task)
        for d in self.plan.cl:
            if (d, "samples") not in self.accepted:
                self.asked[d] = time.monotonic()
                self._send(d, dict(common, role="cl", task=self.task_id(rnd, d), seed=task_seed(self.cfg.seed, rnd, d),
                                   fraction=self.cfg.cl_fraction))
        deadline = time.monotonic() + self.cfg.collect_timeout_s
        cl_done = lambda: all((d, "samples") in self.accepted or d in self.failed for d in self.plan.cl)
        if self.uploaders is None:
            self.pump(lambda: all(d in self.norms or d in self.failed for d in self.plan.fl), deadline - time.monotonic())
            self.uploaders = select_fl_uploaders(self.norms, self.cfg.planner.fl_uploaders)
            self.store.set_uploaders(rnd, self.uploaders)
        phases["train"] = time.time() - t0 - sum(phases.values())
        for d in self.uploaders:
            if (d, "update") not in self.accepted:
                self.asked[d] = time.monotonic()
                self._send(d, {"round": rnd, "role": "upload", "task": self.task_id(rnd, d)})
        self.pump(lambda: cl_done() and all((d, "update") in self.accepted or d in self.failed for d in self.uploaders),
                  deadline - time.monotonic())
        self._asm.clear()   # whatever did not complete by the deadline is dropped
        phases["upload"] = time.time() - t0 - sum(phases.values())

        # stage 3: aggregate what was accepted (read back from the store: the durable copy)
        fl, cl = [], []
        for dev, kind, n, blob in self.store.contributions(rnd):
            meta, ts = wire.decode_blob(blob)
            if kind == "update":
                # mask-aware merging for per-device copies; the uniform setting keeps SemiFL's plain mean
                own = self.assigned.get(dev) is not None and self.prune_rate(dev) > 0
                mask = self.prune_mask(self.prune_rate(dev)) if own else None
                fl.append(FLUpdate(dev, self.update_arrays(dev, ts), n, mask))
            else:
                arrays = [from_wire(t) for t in ts]     # raw uint8 samples and labels
                cl.append(CLBatch(dev, arrays[0], arrays[1]))
                if sum(len(c) for c in self.calib) < self.cfg.calibration:
                    self.calib.append(np.array(arrays[0][: self.cfg.calibration]))
        self.strategy.observe_fleet({d: c["n_samples"] for d, c in self.registry.devices.items()})
        self.params = self.strategy.aggregate(self.params, fl, cl)
        phases["aggregate"] = time.time() - t0 - sum(phases.values())
        acc, loss = self.evaluate(self.params)
        phases["evaluate"] = time.time() - t0 - sum(phases.values())
        if self.cfg.int8_every and rnd % self.cfg.int8_every == 0:
            self.push_int8(rnd)   # inside the round, so its bytes count towards it
        return self._close_round(rnd, t0, up0, down0, acc, loss, phases,
                                 participants={"cl": sorted(b.device for b in cl), "fl": sorted(u.device for u in fl)},
                                 trained=sorted(self.norms), idle=self.plan.idle)

    def train_bytes(self, caps: dict) -> int:
        """Memory an FL client needs for this round's task: the model, its gradient and momentum, and
        the activations of the full batch of ceil(fl_fraction * n_samples) it trains on."""
        return self.net.train_bytes(int(np.ceil(self.cfg.fl_fraction * caps.get("n_samples", 0))))

    def _refuse(self, dev: str, why: str):
        """A model a device cannot run is not sent: said, logged and counted, before any work is done."""
        self.refused[dev] = why
        log.warning("refused %s the model: %s", dev, why)

    def push_int8(self, rnd: int) -> int:
        """Quantize the global model (TFLite's int8 scheme, calibrated on CL samples the host holds) and
        send it to every online MCU that runs inference and can run it (its ops, its free RAM); they
        store it, swap it in and report `eval`."""
        mcus = [d for d in sorted(self.registry.online) if "infer" in self.registry.devices.get(d, {}).get("roles", ())]
        calib = np.concatenate(self.calib) if self.calib else self.calib_fallback
        if not mcus or calib is None:
            return 0
        model = int8.quantize(self.params, to_float(calib[: self.cfg.calibration]))
        able = []
        for d in mcus:   # the others get it too (one broadcast) and refuse it on arrival, keeping theirs
            why = cannot_run(self.registry.devices[d], model.ops(), model.working_bytes())
            if why:
                self._refuse(d, f"{why[0]}: {why[1]}")
            else:
                able.append(d)
        if not able:
            return 0
        blob = int8.encode(model, rnd)
        chunk = min(self.registry.devices[d]["max_chunk"] for d in mcus)
        self._broadcast(wire.T_MODEL_INT8, b"", mcus, blob=(wire.KIND_MODEL_INT8, rnd, blob, chunk))
        return len(blob)

    def run(self, rounds: int, on_round=None) -> list[np.ndarray]:
        for rnd in range(self.store.last_completed_round() + 1, rounds + 1):
            m = self.run_round(rnd)
            if on_round:
                on_round(m)
        return self.params

    def stop_fleet(self):
        """Tell devices the run is over (not retained) and clear the retained announcement."""
        self.link.publish(wire.host_topic("round"), wire.encode_json({"v": wire.VERSION, "round": self.round, "stop": True}))
        self.link.publish(wire.host_topic("round"), b"", retain=True)
