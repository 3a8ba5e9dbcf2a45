"""A device's side of the protocol, transport-free: where every message from the host enters a device.

`Device.handle(topic, payload)` takes the round announcement (answered with `ready`), tasks and the
blobs sent on the device's own `down` topic, and hands tasks and blobs to the role that plays them
(`FLClient`, `SplitClientRole`, `PersonalRole`, `CLUploader`, ...; each keeps its own state). The
Pi agent (firmware/pi) runs a Device behind paho-mqtt; in-process runs (`semifl.sim.inprocess`) run
the very same Device behind an in-memory broker. Everything it sends goes through `publish`.
"""
from __future__ import annotations

import logging
import sys
import time
from collections import Counter

import numpy as np

from semifl.protocol import checks, report, wire
from semifl.protocol.tensors import decode_arrays

from .link import SimBattery, SimRadio

log = logging.getLogger("semifl.device")
MAX_DOWN_BLOB = 64 << 20
MAX_PENDING = 32   # tasks waiting for what they need (a model, an f_a still arriving)


class DeviceError(ValueError):
    """A task or blob the device refuses (nothing changed); reported to the host as an error status."""


class Role:
    """One role a device plays: the tasks it runs, the `down` blobs it takes, its own state."""
    name = ""                 # as listed in caps.roles
    tasks: tuple = ()         # task roles it runs
    blobs: tuple = ()         # meta kinds of the down blobs it takes

    def __init__(self, device: "Device"):
        self.dev = device

    def on_connect(self) -> None:
        """Called once the device is connected and has reported itself."""

    def on_blob(self, meta: dict, arrays: list) -> None:
        raise NotImplementedError

    def run(self, task: dict) -> bool:
        """Do `task`; False while what it needs (its blob) is still arriving."""
        raise NotImplementedError


class Device:
    def __init__(self, config: dict, x: np.ndarray, y: np.ndarray, publish, radio=None, battery=None,
                 roles: list = (), sleep=time.sleep):
        """config: the device's config.json (id, class, board, ram, max_chunk, ...); x, y: its samples;
        publish(topic, payload, retain): the transport; roles: what makes each role it plays from the
        device (a Role subclass, or e.g. a lambda that adds the role's own state); sleep: how a
        simulated slow board waits."""

        self.cfg = config
        self.id = config["id"]
        self.x, self.y = x, y
        self._publish = publish
        self.sleep = sleep
        self.radio = radio or SimRadio({})
        self.battery = battery or SimBattery({})
        self.device_class = config.get("class", "pi")
        self.max_chunk = int(config.get("max_chunk", 65536))
        self.n_classes = int(config.get("n_classes") or 10)
        self.marks = bool(config.get("phases"))   # phase statuses for a bench's power meter
        self.cur_phase, self.round = None, 0
        self.stopped = False
        self.bytes_up = self.bytes_down = 0
        self.pending: list[dict] = []
        self.ignored: Counter = Counter()          # reason -> messages from the host refused as malformed
        self._down: dict[int, tuple] = {}          # chunk kind -> (Assembler, first chunk's time)
        self.roles = [make(self) for make in roles]
        self._by_task = {t: r for r in self.roles for t in r.tasks}
        self._by_blob = {b: r for r in self.roles for b in r.blobs}

    # --- what every role uses ------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, retain: bool = False):
        self.radio.delay(len(payload))
        self.battery.transmit(len(payload))
        self.bytes_up += len(payload)
        self._publish(topic, payload, retain)

    def status(self, kind: str, rnd: int | None = None, **fields):
        self.publish(wire.dev_topic(self.id, wire.T_STATUS),
                     wire.encode_json(report.status(kind, self.round if rnd is None else rnd, **fields)))

    def phase(self, name: str):
        """A `phase` status at each change (train, infer, upload, download, idle), device time in ms."""
        if self.marks and name != self.cur_phase:
            self.cur_phase = name
            self.status("phase", phase=name, t_ms=int(time.monotonic() * 1000))

    def computed(self, seconds: float) -> float:
        """Charge `seconds` of computing to the battery. A simulated board (config sim.slowdown, a
        factor, and sim.train_s, a floor in seconds) takes longer and waits out the difference, so
        stragglers are real in time and energy. -> the seconds the work took."""
        sim = self.cfg.get("sim") or {}
        took = max(seconds, float(sim.get("train_s", 0.0))) * float(sim.get("slowdown", 1.0))
        if took > seconds:
            self.sleep(took - seconds)
        self.battery.compute(took)
        return took

    def send_chunks(self, kind: int, rnd: int, blob: bytes):
        for chunk in wire.iter_chunks(kind, rnd, blob, self.max_chunk):
            self.publish(wire.dev_topic(self.id, wire.T_UP), chunk)

    def send_blob(self, kind: int, rnd: int, blob: bytes):
        """A whole blob up as chunks, marked as the upload phase."""
        self.phase("upload")
        self.send_chunks(kind, rnd, blob)
        self.phase("idle")

    def capabilities(self) -> dict:
        """caps (docs/protocol.md §4). ram, flash and cpu_score come from config: the Pi agent fills
        them in from its board's measurements, a simulated board's config states them."""
        cfg = self.cfg
        extra = {k: cfg[k] for k in ("max_epsilon",) if k in cfg}
        extra["ops"] = cfg.get("ops", ["*"])   # LiteRT has every TFLite builtin
        return report.capabilities(
            self.id, self.device_class, cfg.get("fw", "semifl-pi/0.1"), int(cfg.get("ram", 0)),
            int(cfg.get("flash", 0)), cfg.get("cpu_score", 0), self.battery.level(), self.radio.rssi(0), int(len(self.y)),
            np.bincount(np.asarray(self.y, np.int64), minlength=self.n_classes).tolist(),
            bool(cfg.get("raw_ok", False)), self.max_chunk, [r.name for r in self.roles if r.name],
            sys.implementation.name, cfg.get("board", "rpi4" if self.device_class == "pi" else "esp32"), **extra)

    # --- inbound ---------------------------------------------------------------------------------
    def serve(self, topic: str, payload: bytes):
        """`handle` a message so that nothing the host sends stops the device: a broken message is
        logged, a task it cannot do is logged and reported as an error status, and it goes on."""
        try:
            self.handle(topic, payload)
        except wire.WireError as e:
            self.ignored[e.reason] += 1
            log.warning("%s: rejected message on %s: %s", self.id, topic, e)
        except Exception as e:
            log.warning("%s: %s on %s: %s", self.id, type(e).__name__, topic, e)
            self.status("error", error=type(e).__name__, detail=str(e)[:120])

    def handle(self, topic: str, payload: bytes):
        """Every message from the host. A broken one raises (wire.WireError, DeviceError, ...)."""
        if topic == "_connected":
            self.publish(wire.dev_topic(self.id, wire.T_PRESENCE), b"online", retain=True)
            self.publish(wire.dev_topic(self.id, wire.T_CAPS), wire.encode_json(self.capabilities()), retain=True)
            for r in self.roles:
                r.on_connect()
            return
        self.bytes_down += len(payload)
        if topic == wire.host_topic("round"):
            self._on_announce(payload)
        elif topic == wire.dev_topic(self.id, wire.T_TASK):
            self.pending.append(checks.task(wire.decode_json(payload)))   # every field checked before any is used
            if len(self.pending) > MAX_PENDING:   # tasks whose blob never comes cannot pile up without end
                log.warning("%s: dropped the task of round %s: %d tasks wait", self.id, self.pending[0].get("round"),
                            len(self.pending))
                del self.pending[0]
        elif topic == wire.dev_topic(self.id, wire.T_DOWN):
            self.radio.receive(len(payload))
            self._on_down_chunk(payload)
        self.run_tasks()

    def _on_announce(self, payload: bytes):
        if not payload:
            return   # the host cleared its retained announcement
        what, rnd = report.announcement(wire.decode_json(payload))   # stop: only the exact `true`
        if what == "stop":
            self.stopped = True
            return
        if self.radio.drops(rnd):
            return   # the simulated link lost this round: the host must cope without us
        self.round = rnd
        self.phase("idle")
        self.status("ready", rnd, rssi=self.radio.rssi(rnd), battery=self.battery.level())

    def _on_down_chunk(self, payload: bytes):
        kind, blob_id, seq, count, blob_len, bcrc, data = wire.decode_chunk(payload, MAX_DOWN_BLOB)
        held = self._down.get(kind)
        if held is None or (held[0].blob_id, held[0].count, held[0].blob_len) != (blob_id, count, blob_len):
            held = self._down[kind] = (wire.Assembler(kind, blob_id, count, blob_len), time.perf_counter())
            if kind == wire.KIND_MODEL:
                self.phase("download")
        asm, t0 = held
        if not asm.add(kind, blob_id, seq, count, blob_len, bcrc, data):
            return
        del self._down[kind]
        meta, arrays = decode_arrays(asm.buf)   # views of the assembled buffer, which is this blob's alone
        checks.blob_meta(meta)
        meta["_download_s"] = time.perf_counter() - t0
        role = self._by_blob.get(meta.get("kind"))
        if role is None:
            raise DeviceError(f"a {meta.get('kind')!r} blob, which no role of this device takes")
        role.on_blob(meta, arrays)

    def arriving(self, kind: int) -> bool:
        """Whether a blob of chunk kind `kind` is arriving on the down topic now."""
        return kind in self._down

    def run_tasks(self):
        if self.cfg.get("silent"):   # a simulated fault: it answers announcements, never does its tasks
            self.pending = []
            return
        tasks, self.pending = self.pending, []
        for i, task in enumerate(tasks):
            role = self._by_task.get(task.get("role"))
            if role is None:
                log.warning("%s: role %r is not one this device plays", self.id, task.get("role"))
                continue
            try:
                done = role.run(task)
            except Exception:
                self.pending += tasks[i + 1:]   # a task that fails is dropped (and reported); the rest wait on
                raise
            if not done:
                self.pending.append(task)
