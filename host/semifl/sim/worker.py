"""A worker of the virtual fleet: many devices in one process, each the real device code with its own
MQTT connection (client id = its id, its own account, last will, keep-alive), all on one selector loop.

    python -m semifl.sim.worker --configs LIST --control FD

LIST names one device per line: its class (pi or mcu) and its config.json. A Pi is the Pi agent's `PiAgent` (firmware/pi), whose
paho client the loop drives and whose Device serves each message as on a board; an MCU is the
MicroPython node's `Node` (firmware/micropython) over `LoopMQTTClient`, its messages acted on by its
own drain(). Both are loaded by path, as the fleet's device processes run them (the host library
imports neither). The worker reconnects a lost link with the backoff each device's own loop uses
(the Pi agent's paho: 1 s doubling to 2 min; the node's run(): 1 s doubling to 30 s).

FD is a socket to the fleet: a line `kill <id>` cuts that device's connection without a DISCONNECT (its
last will fires) and is answered `killed <id>`; end of file (the fleet is gone) ends the worker. It
exits once every device has been told to stop by the host and has left cleanly (or was killed).
Output: one log for the worker, each line naming the device whose code wrote it.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import io
import logging
import os
import selectors
import socket
import ssl
import struct
import sys
import time
from collections import deque
from pathlib import Path
from urllib.parse import urlparse

from semifl.device.link import SimBattery, SimRadio

from .loop import Loop, Owner
from .umqtt_paho import LoopMQTTClient

FIRMWARE = Path(__file__).resolve().parents[3] / "firmware"
START_BATCH = 64   # devices that connect between two passes of the loop: the first ones are served meanwhile
log = logging.getLogger("semifl.worker")


class _YoungGC:
    """The node's `gc` in a worker. On a board gc.collect() frees its heap (MicroPython counts no
    references); under CPython reference counting has freed the node's garbage already, and a full
    collection would walk every device this worker hosts, at each upload: only the young objects."""

    @staticmethod
    def collect():
        return gc.collect(0)


def firmware():
    """(the Pi agent module, its hardware module, the node module), loaded from the firmware trees."""
    for sub in ("pi", "micropython"):
        if str(FIRMWARE / sub) not in sys.path:
            sys.path.insert(0, str(FIRMWARE / sub))
    node = importlib.import_module("semifl_node.node")
    node.gc = _YoungGC
    return importlib.import_module("semifl_agent.agent"), importlib.import_module("semifl_agent.hardware"), node


class Hosted(Owner):
    """A device in this worker: its state ("new", "up", "leaving", "gone") and its reconnect backoff."""
    max_backoff = 30

    def __init__(self, worker: "Worker", cfg: dict):
        self.w, self.loop, self.id = worker, worker.loop, cfg["id"]
        self.state, self.backoff, self.client = "new", 1, None

    def retry(self, why) -> None:
        if self.state == "gone":
            return
        log.warning("link lost (%s); reconnecting in %d s", why, self.backoff)
        self.loop.later(self.backoff, lambda: self.loop.run_as(self, self.start))
        self.backoff = min(2 * self.backoff, self.max_backoff)

    def start(self) -> None:
        raise NotImplementedError

    def gone(self) -> None:
        if self.state != "gone":
            self.state = "gone"
            self.loop.detach(self.client)
            self.w.alive -= 1

    def kill(self) -> None:
        """A power cut: the connection ends without a DISCONNECT, so the broker publishes the last will."""
        sock = self.client.socket()
        self.gone()
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

    def _lost(self, client, userdata, flags, reason_code, properties):
        if self.state == "leaving":
            self.gone()   # the clean disconnect it asked for
        elif self.state != "gone":
            self.retry(reason_code)


class HostedPi(Hosted):
    max_backoff = 120

    def __init__(self, worker, cfg):
        super().__init__(worker, cfg)
        self.agent = worker.agent.from_config(cfg)
        self.client = self.agent.client
        on_connect = self.client.on_connect

        def connected(client, userdata, flags, reason_code, properties):
            if not reason_code.is_failure:
                self.backoff = 1
            on_connect(client, userdata, flags, reason_code, properties)
        self.client.on_connect = connected
        self.client.on_disconnect = self._lost
        self.loop.attach(self.client, self)
        self.tls = worker.tls_context(cfg)

    def start(self):
        if self.state == "gone":
            return
        try:
            if self.state == "new":
                self.state = "up"
                self.agent.open(self.tls)
            else:
                self.client.reconnect()
        except OSError as e:
            self.retry(e)

    def has_work(self):
        return self.state in ("up", "leaving") and not self.agent.inbox.empty()

    def step(self):
        topic, payload = self.agent.inbox.get_nowait()
        dev = self.agent.device
        dev.serve(topic, payload)
        if dev.stopped and self.state == "up":
            self.state = "leaving"
            self.loop.leave(self.client, self.agent.offline())


class HostedNode(Hosted):
    def __init__(self, worker, cfg):
        super().__init__(worker, cfg)
        url = urlparse(cfg["broker"])
        tls = url.scheme in ("mqtts", "ssl")
        self.mqtt = LoopMQTTClient(cfg["id"], url.hostname, url.port or (8883 if tls else 1883), url.username,
                                   url.password, int(cfg.get("keepalive", 60)), worker.tls_context(cfg), self.loop, self)
        self.client = self.mqtt.paho
        self.client.on_connect = self._connack
        self.client.on_disconnect = self._lost
        sim = cfg.get("sim", {})
        self.node = worker.node.Node(cfg, self.mqtt, SimRadio(sim), SimBattery(sim))

    def start(self):
        """What the node's run() does at each (re)connect: connect() (the will, subscriptions, presence
        and capabilities, queued behind the CONNECT), then resume() an upload the link cut."""
        if self.state == "gone":
            return
        self.state = "up"
        self.node.queue = []
        try:
            self.node.connect()
            self.node.resume()
        except OSError as e:
            self.retry(e)

    def _connack(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:   # the broker closes the connection next: _lost retries
            print("semifl-node: broker refused the connection: %s" % reason_code)
        else:
            self.backoff = 1

    def has_work(self):
        return self.state == "up" and bool(self.node.queue)

    def step(self):
        try:
            self.node.drain()
        except OSError:   # the link, not a message (drain reports those): cut it; the loop reconnects
            self.mqtt.sock.close()
            self.node.queue = []
            return
        if self.node.stopped and self.state == "up":
            self.state = "leaving"
            self.node.close()   # presence offline, then a disconnect once it is acked


class Worker:
    def __init__(self, configs: list[str], control: socket.socket | None = None):
        self.loop = Loop()
        self.agent, self.hardware, self.node = firmware()
        self.pending = deque(configs)
        self.devices: dict[str, Hosted] = {}
        self.alive = 0
        self._contexts: dict = {}
        self._cpu_score = None
        self.control, self.ended = control, False
        self._buf = b""
        if control is not None:
            control.setblocking(False)
            self.loop.sel.register(control, selectors.EVENT_READ, self.on_control)

    def tls_context(self, cfg: dict):
        """One ssl.SSLContext per CA (and client certificate), shared by the devices that use it."""
        if urlparse(cfg["broker"]).scheme not in ("mqtts", "ssl"):
            return None
        key = (cfg.get("ca"), cfg.get("cert"), cfg.get("key"))
        if key not in self._contexts:
            ctx = ssl.create_default_context()
            if cfg.get("ca"):
                ca = Path(cfg["ca"]).read_bytes()   # PEM for a Pi, DER for a node (what each loads on a board)
                ctx.load_verify_locations(cadata=ca if cfg["ca"].endswith(".der") else ca.decode())
            if cfg.get("cert"):
                ctx.load_cert_chain(cfg["cert"], cfg.get("key"))
            self._contexts[key] = ctx
        return self._contexts[key]

    def add(self, line: str) -> None:
        """A device from a line of the list: its class ("pi" or "mcu") and its config.json."""
        import json

        kind, _, path = line.partition(" ")
        with open(path) as f:
            cfg = json.load(f)
        is_pi = kind == "pi"
        if is_pi and "cpu_score" not in cfg:   # measured once: the worker's devices share its core
            if self._cpu_score is None:
                self._cpu_score = self.hardware.cpu_score()
            cfg["cpu_score"] = self._cpu_score
        dev = (HostedPi if is_pi else HostedNode)(self, cfg)
        self.devices[dev.id] = dev
        self.alive += 1
        self.loop.run_as(dev, dev.start)

    def on_control(self) -> None:
        try:
            data = self.control.recv(4096)
        except BlockingIOError:
            return
        if not data:   # the fleet is gone: so are its devices
            self.ended = True
            return
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            what, _, dev_id = line.decode().partition(" ")
            dev = self.devices.get(dev_id)
            if what == "kill" and dev is not None:
                dev.kill()
            self.control.sendall(f"killed {dev_id}\n".encode())

    def run(self) -> None:
        while not self.ended and (self.pending or self.alive > 0):
            for _ in range(min(START_BATCH, len(self.pending))):
                line = self.pending.popleft()
                try:
                    self.add(line)
                except Exception:
                    log.exception("cannot start the device %s", line)
                if not self.pending:   # the devices' long-lived state out of the cyclic collector's walks
                    gc.freeze()
            self.loop.once(1.0)


class _Tagged(io.TextIOBase):
    """stdout for device code that prints (the node): each line stamped and named by its device."""

    def __init__(self, out, loop: Loop):
        self.out, self.loop, self.buf = out, loop, ""

    def writable(self):
        return True

    def write(self, s):
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            dev = self.loop.current.id if self.loop.current else "-"
            self.out.write(f"{time.strftime('%H:%M:%S')} {dev} {line}\n")
        self.out.flush()
        return len(s)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="semifl-worker", description="many virtual devices in one process")
    ap.add_argument("--configs", required=True, help="a file naming one device per line: pi|mcu CONFIG.JSON")
    ap.add_argument("--control", type=int, help="file descriptor of the fleet's control socket")
    args = ap.parse_args(argv)
    configs = [line for line in Path(args.configs).read_text().splitlines() if line.strip()]
    control = socket.socket(fileno=args.control) if args.control is not None else None
    worker = Worker(configs, control)
    out = sys.stdout
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(asctime)s %(device)s %(name)s %(message)s", "%H:%M:%S"))

    def name_device(record):
        record.device = worker.loop.current.id if worker.loop.current else "-"
        return True
    handler.addFilter(name_device)
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    sys.stdout = _Tagged(out, worker.loop)
    log.info("%d devices, pid %d", len(configs), os.getpid())
    try:
        worker.run()
    except KeyboardInterrupt:   # Ctrl-C on `semifl run` reaches the whole process group: the links drop, wills fire
        sys.exit(130)
    log.info("done: %d devices left", worker.alive)


if __name__ == "__main__":
    main()
