"""The Pi agent: a `semifl.device.Device` behind paho-mqtt 2.x, on a board or as a virtual Pi.

The device side of the protocol (announcements, tasks, blobs on dev/<id>/down, the roles FL client,
split-learning client, personalization client) is `semifl.device`, the code in-process runs use too;
this file adds what only a real process has: the MQTT connection, the board's measurements
(`hardware.py`), LiteRT inference of an exported model (`infer.py`) and the process lifecycle.
Paho's callbacks only enqueue; the agent's own thread does the work, so keep-alives never stall
behind training.
"""
from __future__ import annotations

import functools
import json
import logging
import queue
import socket
import threading
import time
from urllib.parse import urlparse

import numpy as np
import paho.mqtt.client as mqtt

from semifl.device import Device, FLClient, PersonalClient, PersonalRole, Role, SecAggRole, SplitClientRole
from semifl.protocol import wire

from . import hardware

FIRMWARE = "semifl-pi/0.1"
log = logging.getLogger("semifl.agent")


def _no_delay(client, userdata, sock):
    # small request/answer messages: Nagle plus delayed ACKs would add ~40 ms to each
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class InferRole(Role):
    """int8 inference of the exported model (config "tflite") with LiteRT: its accuracy on up to
    `eval_n` local samples, reported once per start as an eval status of model round 0."""
    name = ""   # not a role the host plans: it comes with the board's config

    def on_connect(self):
        if self.dev.cfg.get("tflite") and not getattr(self, "done", False):
            self.evaluate()

    def evaluate(self):
        from .infer import LiteRTClassifier

        dev = self.dev
        n = min(int(dev.cfg.get("eval_n", 256)), len(dev.y))
        dev.phase("infer")
        pick = np.linspace(0, len(dev.y) - 1, n).astype(int)
        t0 = time.perf_counter()
        pred = LiteRTClassifier(dev.cfg["tflite"]).predict(dev.x[pick])
        ms = int(1000 * (time.perf_counter() - t0))
        self.done = True
        dev.status("eval", 0, accuracy=float((pred == dev.y[pick]).mean()), n=n, ms=ms)
        dev.phase("idle")


class PiAgent:
    def __init__(self, config: dict, x: np.ndarray, y: np.ndarray, radio=None, battery=None,
                 personal: PersonalClient | None = None):
        cfg = dict(config)
        cfg.setdefault("fw", FIRMWARE)
        # measured on the board; a virtual Pi's config states its simulated RAM instead
        cfg["ram"] = int(cfg.get("ram") or hardware.ram_bytes())
        cfg.setdefault("flash", hardware.flash_bytes())
        cfg.setdefault("cpu_score", hardware.cpu_score())
        roles = [FLClient, SecAggRole, SplitClientRole] + ([lambda d: PersonalRole(d, personal)] if personal else []) + [InferRole]
        self.id = cfg["id"]
        self.device = Device(cfg, x, y, self._send, radio or hardware.Radio(), battery or hardware.Battery(), roles)
        self.infer = next(r for r in self.device.roles if isinstance(r, InferRole))
        self.inbox: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.id, clean_session=True)
        self.client.max_inflight_messages_set(64)
        self.client.will_set(wire.dev_topic(self.id, wire.T_PRESENCE), b"offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_socket_open = _no_delay
        self.client.on_message = lambda c, u, m: self.inbox.put((m.topic, m.payload))

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:   # paho tries again by itself (1 s to 2 min): an account enrolled later works
            log.warning("%s: the broker refused us: %s (check the user and password in config.json's broker URL)",
                        self.id, reason_code)
            return
        client.subscribe([(wire.host_topic("round"), 1), (wire.dev_topic(self.id, wire.T_TASK), 1),
                          (wire.dev_topic(self.id, wire.T_DOWN), 1)])
        self.inbox.put(("_connected", b""))

    def _send(self, topic: str, payload: bytes, retain: bool = False):
        self.client.publish(topic, payload, qos=1, retain=retain)

    def open(self, tls_context=None):
        """Its account, TLS and the CONNECT (CONNACK and the subscriptions follow in the network loop).
        tls_context: an ssl.SSLContext to use instead of one made from config.json (a host that runs
        many virtual Pis shares one)."""
        cfg = self.device.cfg
        url = urlparse(cfg["broker"])
        if url.username:   # an authenticated broker: the device's account (its username is its id)
            self.client.username_pw_set(url.username, url.password)
        tls = url.scheme in ("mqtts", "ssl")
        if tls and tls_context is not None:
            self.client.tls_set_context(tls_context)
        elif tls:   # the fleet's CA from config.json (`semifl certs issue`), and its client certificate if given
            self.client.tls_set(ca_certs=cfg.get("ca"), certfile=cfg.get("cert"),
                                keyfile=cfg.get("key") if cfg.get("cert") else None)
        self.client.connect(url.hostname, url.port or (8883 if tls else 1883), keepalive=30)

    def offline(self):
        """Presence offline (retained) before a clean disconnect: the last will is for a link that dies."""
        return self.client.publish(wire.dev_topic(self.id, wire.T_PRESENCE), b"offline", qos=1, retain=True)

    def run(self, timeout: float | None = None):
        self.open()
        self.client.loop_start()
        deadline = time.monotonic() + timeout if timeout else None
        dev = self.device
        try:
            while not dev.stopped and (deadline is None or time.monotonic() < deadline):
                try:
                    topic, payload = self.inbox.get(timeout=0.5)
                except queue.Empty:
                    continue
                dev.serve(topic, payload)   # an error status tells the host to stop waiting for us this round
        finally:
            self.offline().wait_for_publish(5)
            self.client.disconnect()
            self.client.loop_stop()


@functools.lru_cache(maxsize=None)
def _mapped(path: str) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def local_data(cfg: dict) -> tuple[np.ndarray, np.ndarray, PersonalClient | None]:
    """(x, y, personalization client or None) from config.json: `data`, an .npz of its own (x, y, and
    with x_test, y_test its test windows, which make it a personalization client), or `x` and `y`,
    .npy files it holds rows `first`..`first + rows` of (the virtual fleet writes each shard once for
    every device that holds it: memory-mapped, they are read in place and shared)."""
    if "x" in cfg:
        first = int(cfg.get("first", 0))
        x, y = _mapped(cfg["x"]), _mapped(cfg["y"])
        end = first + int(cfg.get("rows", len(y) - first))
        return x[first:end], y[first:end], None
    data = np.load(cfg["data"])
    personal = None
    if "x_test" in data:   # its own test windows: it can personalize and score its personal model
        public = np.load(cfg["public"]) if cfg.get("public") else None
        personal = PersonalClient(cfg["id"], data["x"], data["y"], data["x_test"], data["y_test"],
                                  cfg.get("personal", cfg["data"] + ".personal.npz"), public, int(cfg.get("n_classes", 10)))
    return data["x"], data["y"], personal


def from_config(cfg: dict) -> PiAgent:
    """The agent config.json describes: its data, and a virtual Pi's simulated radio and battery."""
    x, y, personal = local_data(cfg)
    radio = battery = None
    if cfg.get("sim"):
        from semifl.device.link import SimBattery, SimRadio  # only virtual devices need the simulator
        radio, battery = SimRadio(cfg["sim"]), SimBattery(cfg["sim"])
    return PiAgent(cfg, x, y, radio, battery, personal)


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="semifl-agent", description="semifl Pi agent")
    ap.add_argument("--config", required=True, help="config.json: id, broker, data (.npz with x, y), raw_ok, sim")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with open(args.config) as f:
        cfg = json.load(f)
    from_config(cfg).run()
