"""The Pi agent over MQTT (paho-mqtt 2.x): an FL client (SemiFL), a split-learning client (IoTSL) and
a personalization client (PerFit).

Message flow (docs/protocol.md): the host announces a round on host/round -> the agent answers
`ready` with its link report; a `fl` task -> train on the global model of that round and report the
update norm; an `upload` task -> send the update as chunks on dev/<id>/up. `sl` / `generator` tasks
(§5a) and `perfit` / `personalize` / `offload` tasks (§5b) bring their blobs on dev/<id>/down. Paho's
callbacks only enqueue; the agent's own thread does the work, so keep-alives never stall behind training.
"""
from __future__ import annotations

import json
import logging
import queue
import socket
import sys
import threading
import time
from urllib.parse import urlparse

import numpy as np
import paho.mqtt.client as mqtt

from semifl.protocol import wire
from semifl.protocol.tensors import decode_arrays, to_wire

from . import hardware
from .personal import PersonalClient
from .split import SplitClient, SplitError
from .train import encode_update, local_update, update_masks

log = logging.getLogger("semifl.agent")
FIRMWARE = "semifl-pi/0.1"


def _no_delay(client, userdata, sock):
    # small request/answer messages: Nagle plus delayed ACKs would add ~40 ms to each
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class PiAgent:
    def __init__(self, config: dict, x: np.ndarray, y: np.ndarray, radio=None, battery=None):
        self.cfg = config
        self.id = config["id"]
        self.x, self.y = x, y
        self.radio = radio or hardware.Radio()
        self.battery = battery or hardware.Battery()
        self.max_chunk = int(config.get("max_chunk", 65536))
        self.inbox: queue.Queue = queue.Queue()
        self.models: dict[int, list[np.ndarray]] = {}   # round -> global params (last few)
        self._assembling: dict[int, wire.Assembler] = {}
        self.download_started: dict[int, float] = {}   # model blob id -> when its first chunk came
        self.download_s: dict[int, float] = {}         # model blob id -> T_download of that model
        self.pending_tasks: list[dict] = []
        self.evaluated = False   # the exported model (config "tflite") is evaluated once per start
        self.results: dict[int, tuple] = {}              # round -> (delta, n, norm)
        self.bytes_up = self.bytes_down = 0
        self.marks = bool(config.get("phases"))   # phase statuses for a bench's power meter
        self.cur_phase, self.round = None, 0
        self.split: SplitClient | None = None   # split learning: f_a and the batch in flight
        self.fa: dict[int, list[np.ndarray]] = {}   # round -> the f_a the host handed this device
        self._down: dict[int, wire.Assembler] = {}  # kind -> blob arriving on dev/<id>/down
        self.generated = None   # IoTSL: (x float, y) the paired generators made for the classes this device lacks
        self._asked_gens = False
        self.personal: PersonalClient | None = None   # PerFit: the method's device steps, personal state in flash
        self.messages: dict[int, tuple] = {}           # PerFit: task -> (arrays, public set version) from the host
        self.answered: dict[int, bytes] = {}            # PerFit: task -> the upload blob sent for it (the last one)
        self._stop = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.id, clean_session=True)
        self.client.max_inflight_messages_set(64)
        self.client.will_set(wire.dev_topic(self.id, wire.T_PRESENCE), b"offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_socket_open = _no_delay
        self.client.on_message = lambda c, u, m: self.inbox.put((m.topic, m.payload))

    # --- paho callbacks: subscribe and enqueue, nothing else -------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe([(wire.host_topic("round"), 1), (wire.host_topic(wire.T_MODEL), 1),
                          (wire.dev_topic(self.id, wire.T_TASK), 1), (wire.dev_topic(self.id, wire.T_DOWN), 1)])
        self.inbox.put(("_connected", b""))

    # --- publishing --------------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False):
        self.radio.delay(len(payload))
        self.battery.transmit(len(payload))
        self.bytes_up += len(payload)
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def status(self, msg: dict):
        msg["v"] = wire.VERSION
        self.publish(wire.dev_topic(self.id, wire.T_STATUS), wire.encode_json(msg))

    def phase(self, name: str):
        """A `phase` status at each change (train, infer, upload, download, idle), device time in ms."""
        if self.marks and name != self.cur_phase:
            self.cur_phase = name
            self.status({"kind": "phase", "round": self.round, "phase": name, "t_ms": int(time.monotonic() * 1000)})

    def capabilities(self) -> dict:
        hist = np.bincount(self.y, minlength=int(self.cfg.get("n_classes", 10))).tolist()
        return {"v": wire.VERSION, "id": self.id, "class": "pi", "fw": FIRMWARE, "proto": [wire.VERSION],
                # "ram" in config.json: a simulated board's memory (the virtual fleet's heterogeneous Pis)
                "ram": int(self.cfg.get("ram") or hardware.ram_bytes()), "flash": hardware.flash_bytes(),
                "cpu_score": hardware.cpu_score(),
                "battery": self.battery.level(), "rssi": self.radio.rssi(0), "n_samples": int(len(self.y)),
                "hist": hist, "raw_ok": bool(self.cfg.get("raw_ok", False)), "max_chunk": self.max_chunk,
                "roles": ["fl", "sl"] + (["perfit"] if self.personal else []), "runtime": sys.implementation.name,
                "max_epsilon": float(self.cfg.get("max_epsilon", 10.0)),   # privacy policy for released generators
                "ops": ["*"], "board": self.cfg.get("board", "rpi")}   # ops: LiteRT has every TFLite builtin

    def evaluate_tflite(self):
        """Accuracy of the exported int8 model (config "tflite") on up to eval_n local samples, run by
        LiteRT, reported as an eval status of model round 0 (a fixed model, not a round's)."""
        from .infer import LiteRTClassifier

        n = min(int(self.cfg.get("eval_n", 256)), len(self.y))
        self.phase("infer")
        pick = np.linspace(0, len(self.y) - 1, n).astype(int)
        t0 = time.perf_counter()
        pred = LiteRTClassifier(self.cfg["tflite"]).predict(self.x[pick])
        ms = int(1000 * (time.perf_counter() - t0))
        self.evaluated = True
        self.status({"kind": "eval", "round": 0, "accuracy": float((pred == self.y[pick]).mean()), "n": n, "ms": ms})
        self.phase("idle")

    # --- message handling (agent thread) -----------------------------------------------------------
    def handle(self, topic: str, payload: bytes):
        if topic == "_connected":
            self.publish(wire.dev_topic(self.id, wire.T_PRESENCE), b"online", retain=True)
            self.publish(wire.dev_topic(self.id, wire.T_CAPS), wire.encode_json(self.capabilities()), retain=True)
            if self.cfg.get("tflite") and not self.evaluated:
                self.evaluate_tflite()
        elif topic == wire.host_topic("round"):
            self.bytes_down += len(payload)
            if not payload:
                return  # the host cleared its retained announcement
            ann = wire.decode_json(payload)
            rnd = ann["round"]
            if ann.get("stop"):
                self._stop.set()
                return
            if self.radio.drops(rnd):
                return  # the simulated link lost this round: the host must cope without us
            self.round = rnd
            self.phase("idle")
            self.status({"kind": "ready", "round": rnd, "rssi": self.radio.rssi(rnd), "battery": self.battery.level()})
        elif topic == wire.host_topic(wire.T_MODEL):
            self.bytes_down += len(payload)
            self._on_model_chunk(payload)
        elif topic == wire.dev_topic(self.id, wire.T_TASK):
            self.bytes_down += len(payload)
            self.pending_tasks.append(wire.decode_json(payload))
        elif topic == wire.dev_topic(self.id, wire.T_DOWN):
            self.bytes_down += len(payload)
            self._on_down_chunk(payload)
        self._run_tasks()

    # --- split learning: f_a and gradients on dev/<id>/down, smashed data and f_a back on up --------
    def _on_down_chunk(self, payload: bytes):
        kind, blob_id, seq, count, blob_len, bcrc, data = wire.decode_chunk(payload, 64 << 20)
        asm = self._down.get(kind)
        if asm is None or (asm.blob_id, asm.count, asm.blob_len) != (blob_id, count, blob_len):
            asm = self._down[kind] = wire.Assembler(kind, blob_id, count, blob_len)
        if not asm.add(kind, blob_id, seq, count, blob_len, bcrc, data):
            return
        del self._down[kind]
        meta, arrays = decode_arrays(bytes(asm.buf))
        if meta.get("kind") == "fa":
            self.fa = {meta["round"]: [a.copy() for a in arrays]}
        elif meta.get("kind") == "impute":
            self._impute(meta, arrays)
        elif meta.get("kind") == "message":   # PerFit: what the method sends this device for one task
            self.messages = {meta["task"]: ([a.copy() for a in arrays], meta.get("version"))}
        elif meta.get("kind") == "personal":  # PerFit, edge offloading: the host trained our personal model
            acc, n, crc = self.personal.adopt(meta, [a.copy() for a in arrays])
            self.status({"kind": "personal", "round": meta["round"], "task": meta["task"], "accuracy": acc, "n": n,
                         "crc": crc})
        elif meta.get("kind") == "grad":
            if self.split is None or self.split.task is None or meta.get("task") != self.split.task["task"]:
                raise SplitError(f"a gradient for task {meta.get('task')}, which this device is not running")
            self.split.gradient(meta["batch"], arrays[0])
            self._sl_next()

    def _train_generator(self, task: dict):
        """IoTSL's Algorithm 1 on this device: a DP conditional generator of its data, sent as an artifact."""
        from semifl.learn.iotsl import artifact
        from semifl.learn.iotsl.train import train_generator

        self.phase("train")
        t0 = time.perf_counter()
        tg = train_generator(self.x.reshape(-1, 28, 28), self.y, steps=task["steps"], batch=task["batch"],
                             sigma=task["sigma"], dim=task["dim"], n_critic=2, lr=2e-4, seed=task["seed"],
                             n_classes=int(self.cfg.get("n_classes", 10)))
        self.battery.compute(time.perf_counter() - t0)
        art = artifact.to_bytes(tg, self.id)
        blob = wire.encode_blob({"kind": "generator", "round": task["round"], "task": task["task"], "device": self.id,
                                 "n": len(self.y), "t_local_s": round(tg.seconds, 4)}, [("uint8", (len(art),), 1.0, 0, art)])
        self._send_blob(wire.KIND_GENERATOR, task["round"], blob)

    def _impute(self, meta: dict, arrays: list):
        """Algorithm 2 on this device: the paired generators (hash-checked) make the missing classes."""
        from semifl.learn.iotsl import artifact
        from semifl.learn.iotsl.impute import Fill, imputed_set

        open_policy = artifact.PrivacyPolicy(float("inf"), 1.0)   # the host held them to their owners' policies
        gens = {j: artifact.load(bytes(a), open_policy, device=j)[0] for j, a in zip(meta["generators"], arrays)}
        fills = [Fill(int(c), j, int(q)) for c, j, q in meta["fills"]]
        x, y = imputed_set(np.zeros((0, 28, 28, 1), np.float32), np.zeros(0, np.int64), fills, gens, seed=meta["task"])
        self.generated = (x, y)

    def _sl_begin(self, task: dict):
        from semifl.learn.data import to_float
        from semifl.models import get   # the model definitions: layers only, numpy

        spec = get(task["model"])
        f_a = spec.network().split(task["cut"])[0]
        x, y = to_float(self.x).reshape((-1,) + f_a.input_shape), self.y   # the one input scaling every side uses
        if self.generated is not None:   # IoTSL: local data plus the classes the paired generators made
            x, y = np.concatenate([x, self.generated[0]]), np.concatenate([y, self.generated[1]])
        if self.split is None or self.split.net != f_a or len(self.split.y) != len(y):
            self.split = SplitClient(f_a, x, y)
        self.split.begin(task, self.fa.pop(task["round"]))
        self.phase("train")
        self._sl_next()

    def _sl_next(self):
        """Send the next batch's smashed data or, the epoch over, f_a back to the host."""
        t = self.split.task
        if self.split.done:
            # t_local_s: the epoch's forward and backward CPU time (waiting for gradients is not computing)
            blob = wire.encode_blob({"kind": "fa", "round": t["round"], "task": t["task"], "device": self.id,
                                     "n": len(self.split.y), "t_local_s": round(self.split.compute_s, 4)},
                                    [to_wire(p) for p in self.split.params])
            kind = wire.KIND_UPDATE
            self.battery.compute(self.split.compute_s)
            self.phase("idle")
        else:
            batch, parts, labels = self.split.smashed()
            (a, scale), = parts
            blob = wire.encode_blob({"kind": "smashed", "round": t["round"], "task": t["task"], "device": self.id,
                                     "n": len(labels), "batch": batch}, [to_wire(a, scale), to_wire(labels)])
            kind = wire.KIND_SMASHED
        for chunk in wire.iter_chunks(kind, t["round"], blob, self.max_chunk):
            self.publish(wire.dev_topic(self.id, wire.T_UP), chunk)

    # --- personalization (PerFit): a message on dev/<id>/down, an upload of the method's kind back --------
    def _perfit(self, task: dict, arrays: list, version):
        self.phase("train")
        t0 = time.perf_counter()
        if task["role"] == "personalize":
            acc, n, crc = self.personal.personalize(task, arrays)
            self.battery.compute(time.perf_counter() - t0)
            self.status({"kind": "personal", "round": task["round"], "task": task["task"], "accuracy": acc, "n": n,
                         "crc": crc})
            self.phase("idle")
            return
        up, before, after = self.personal.local(task, arrays, version)
        t_local = time.perf_counter() - t0
        self.battery.compute(t_local)
        meta = {"kind": up.kind, "round": task["round"], "task": task["task"], "device": self.id, "n": up.n,
                "personal_from": before, "personal_to": after, "t_local_s": round(t_local, 4)}
        if up.version is not None:
            meta["version"] = int(up.version)
        blob = wire.encode_blob(meta, [to_wire(a) for a in up.arrays])
        self.answered = {task["task"]: blob}
        self._send_blob(wire.KIND_UPDATE, task["round"], blob)

    def _offload(self, task: dict):
        """Edge offloading: this device cannot train its personal model, its policy lets its training
        windows go to the host, which trains for it and sends the personal model back (only to us)."""
        x, y = self.personal.data[0], self.personal.data[1]
        blob = wire.encode_blob({"kind": "samples", "round": task["round"], "task": task["task"], "device": self.id,
                                 "n": len(y)}, [to_wire(x), to_wire(y.astype(np.uint8))])
        self._send_blob(wire.KIND_SAMPLES, task["round"], blob)

    def _send_blob(self, kind: int, rnd: int, blob: bytes):
        """A whole blob up as chunks, marked as the upload phase."""
        self.phase("upload")
        for chunk in wire.iter_chunks(kind, rnd, blob, self.max_chunk):
            self.publish(wire.dev_topic(self.id, wire.T_UP), chunk)
        self.phase("idle")

    def _on_model_chunk(self, payload: bytes):
        kind, blob_id, seq, count, blob_len, bcrc, data = wire.decode_chunk(payload, 64 << 20)
        if blob_id in self.models:
            return
        asm = self._assembling.get(blob_id)
        if asm is None:
            asm = self._assembling[blob_id] = wire.Assembler(kind, blob_id, count, blob_len)
            self.download_started[blob_id] = time.perf_counter()
            self.phase("download")
        if asm.add(kind, blob_id, seq, count, blob_len, bcrc, data):
            del self._assembling[blob_id]
            self.download_s[blob_id] = time.perf_counter() - self.download_started.pop(blob_id)
            meta, arrays = decode_arrays(bytes(asm.buf))
            self.models[meta["round"]] = [a.copy() for a in arrays]
            for old in [r for r in self.models if r < meta["round"] - 1]:
                del self.models[old]
            self.phase("idle")

    def _run_tasks(self):
        still = []
        for task in self.pending_tasks:
            rnd = task["round"]
            if task["role"] == "fl":
                if rnd not in self.models:
                    still.append(task)  # the model of this round is still arriving
                    continue
                self.phase("train")
                t0 = time.perf_counter()
                masks = update_masks(self.models[rnd], task)
                delta, n, norm = local_update(self.models[rnd], self.x, self.y, task, masks)
                t_local = time.perf_counter() - t0
                self.battery.compute(t_local)
                self.results = {rnd: (encode_update(delta, task, masks), n, norm)}
                self.status({"kind": "trained", "round": rnd, "task": task["task"], "n": n, "norm": norm,
                             "t_local_s": round(t_local, 5), "t_download_s": round(self.download_s.pop(rnd, 0.0), 5)})
                self.phase("idle")
            elif task["role"] == "sl":
                have = 0 if self.generated is None else len(self.generated[1])
                if have < task.get("imputed", 0) and wire.KIND_GENERATOR not in self._down and not self._asked_gens:
                    # IoTSL after a restart: the paired generators are gone and none are on the way: ask
                    self._asked_gens = True
                    self.status({"kind": "request", "round": rnd, "what": "generators"})
                if rnd not in self.fa or have < task.get("imputed", 0):
                    still.append(task)   # its f_a (or, IoTSL, its paired generators) is still arriving
                    continue
                self._sl_begin(task)
            elif task["role"] == "perfit" and task["task"] in self.answered:
                # the same task again (a restarted host asks anew): the same answer, not a second training
                self._send_blob(wire.KIND_UPDATE, rnd, self.answered[task["task"]])
                self.messages.pop(task["task"], None)
            elif task["role"] in ("perfit", "personalize"):
                if task["task"] not in self.messages:
                    still.append(task)   # its message is still arriving
                    continue
                self._perfit(task, *self.messages.pop(task["task"]))
            elif task["role"] == "offload":
                self._offload(task)
            elif task["role"] == "generator":
                self._train_generator(task)
            elif task["role"] == "upload":
                if rnd not in self.results:
                    log.warning("%s: upload asked for round %d that I did not train", self.id, rnd)
                    continue
                tensors, n, _ = self.results[rnd]
                blob = wire.encode_blob({"kind": "update", "round": rnd, "task": task["task"], "device": self.id, "n": n}, tensors)
                self._send_blob(wire.KIND_UPDATE, rnd, blob)
            else:
                log.warning("%s: role %r is not one this agent plays", self.id, task["role"])
        self.pending_tasks = still

    # --- lifecycle -----------------------------------------------------------------------------------
    def run(self, timeout: float | None = None):
        url = urlparse(self.cfg["broker"])
        if url.username:   # an authenticated broker: the device's account (its username is its id)
            self.client.username_pw_set(url.username, url.password)
        self.client.connect(url.hostname, url.port or 1883, keepalive=30)
        self.client.loop_start()
        deadline = time.monotonic() + timeout if timeout else None
        try:
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                try:
                    topic, payload = self.inbox.get(timeout=0.5)
                except queue.Empty:
                    continue
                try:
                    self.handle(topic, payload)
                except wire.WireError as e:
                    log.warning("%s: rejected message on %s: %s", self.id, topic, e)
                except SplitError as e:   # refused (nothing changed); the host stops waiting for us this round
                    log.warning("%s: %s", self.id, e)
                    self.status({"kind": "error", "round": self.round, "error": "SplitError", "detail": str(e)[:120]})
        finally:
            self.client.publish(wire.dev_topic(self.id, wire.T_PRESENCE), b"offline", qos=1, retain=True).wait_for_publish(5)
            self.client.disconnect()
            self.client.loop_stop()


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="semifl-agent", description="semifl Pi agent (FL client)")
    ap.add_argument("--config", required=True, help="config.json: id, broker, data (.npz with x, y), raw_ok, sim")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with open(args.config) as f:
        cfg = json.load(f)
    data = np.load(cfg["data"])
    radio = battery = None
    if cfg.get("sim"):
        from semifl.sim.link import SimBattery, SimRadio  # only virtual devices need the simulator
        radio, battery = SimRadio(cfg["sim"]), SimBattery(cfg["sim"])
    agent = PiAgent(cfg, data["x"], data["y"], radio, battery)
    if "x_test" in data:   # its own test windows: it can personalize and score its personal model
        public = np.load(cfg["public"]) if cfg.get("public") else None
        agent.personal = PersonalClient(cfg["id"], data["x"], data["y"], data["x_test"], data["y_test"],
                                        cfg.get("personal", cfg["data"] + ".personal.npz"), public,
                                        int(cfg.get("n_classes", 10)))
    agent.run()
