"""The bench the HIL tests drive: a broker, the host (Session and FederatedRound), a Pi-class FL client so rounds
have both roles, the device under test (a board on a serial port, or the real MicroPython node as a
process at the board's heap), a watcher on the DUT's status topic and the host's int8 model topic,
and the DUT's power meter. run() plays N rounds and returns what a test asserts on."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from semifl.protocol import wire


@dataclass
class Watch:
    """What the DUT said and what the host sent it, as the bench saw it on the broker."""
    dut: str
    presence: list = field(default_factory=list)   # (monotonic s, b"online"/b"offline")
    caps: dict | None = None
    statuses: list = field(default_factory=list)   # (monotonic s, status dict)
    int8_crc: dict = field(default_factory=dict)   # int8 blob id (round) -> blob CRC the host sent

    def marks(self) -> tuple[list, list]:
        """The DUT's phase marks as (device s, round, phase) and when the bench received each."""
        got = [(t, s) for t, s in self.statuses if s.get("kind") == "phase"]
        return [(s["t_ms"] / 1000, s["round"], s["phase"]) for _, s in got], [t for t, _ in got]

    def of_kind(self, kind: str) -> list[dict]:
        return [s for _, s in self.statuses if s.get("kind") == kind]


def watch(url: str, dut: str) -> tuple[mqtt.Client, Watch]:
    w, lock = Watch(dut), threading.Lock()
    host, _, port = url.split("//")[-1].partition(":")

    def on_message(c, u, m):
        now = time.monotonic()
        with lock:
            if m.topic == wire.dev_topic(dut, wire.T_STATUS):
                w.statuses.append((now, json.loads(m.payload)))
            elif m.topic == wire.dev_topic(dut, wire.T_PRESENCE):
                w.presence.append((now, bytes(m.payload)))
            elif m.topic == wire.dev_topic(dut, wire.T_CAPS) and m.payload:
                w.caps = json.loads(m.payload)
            elif m.topic == wire.host_topic(wire.T_MODEL_INT8):
                kind, blob_id, seq, count, blob_len, bcrc, data = wire.decode_chunk(m.payload, 1 << 24)
                if seq == count - 1:   # the blob CRC rides in the last chunk
                    w.int8_crc[blob_id] = bcrc

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hil-watch-{dut}")
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe([(wire.dev_topic(dut, "#"), 1), (wire.host_topic(wire.T_MODEL_INT8), 1)])
    c.on_message = on_message
    c.connect(host, int(port or 1883))
    c.loop_start()
    return c, w


def wait_until(pred, timeout: float, what: str, why=lambda: ""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout:.0f} s. {why()}".strip())


@dataclass
class BenchRun:
    watch: Watch
    rounds: list[dict]
    t: object = None          # meter samples: times (s, monotonic) and watts
    w: object = None
    meter_error: str | None = None
    dut_dir: Path | None = None
    summary: dict | None = None   # what the bench wrote to <root>/summary.json


def write_summary(root: Path, strategy: str, rounds: list[dict], dut, w: Watch, t, watts, meter: str,
                  meter_error: str | None, pis: dict[str, str]) -> dict:
    """<root>/summary.json of a bench run, in `semifl run`'s shape (strategy, rounds, final_accuracy,
    devices): the DUT's energy is its meter's samples aligned to the phases it marked (meters.align),
    "meter" the driver that took them; the virtual Pi's is the virtual model of its board profile."""
    from semifl.energy import fleet_energy
    from semifl.meters.align import device_energy
    from semifl.service.report import write_summary as write

    marks, received = w.marks()
    roles = {m["round"]: "cl" for m in rounds if dut.id in m.get("participants", {}).get("cl", [])}
    devices = [{"id": dut.id, "device_class": "mcu", "board": dut.board, "role": "cl",
                "runtime": (w.caps or {}).get("runtime"), "simulated": dut.simulated,
                **device_energy(t, watts, marks, received, meter, roles)}]
    model = fleet_energy(rounds, pis)
    devices += [{"id": d, "device_class": "pi", "board": b, "role": "fl", **model.get(d, {})} for d, b in pis.items()]
    summary = {"strategy": strategy, "bench": "hil", "rounds": rounds,
               "final_accuracy": rounds[-1]["accuracy"] if rounds else None, "devices": devices,
               "meter_error": meter_error}
    write(root, summary)
    return summary


class SimDUT:
    """The real MicroPython node as `semifl flash` builds it, run by the unix port at the board's heap
    inside the virtual fleet; its "serial log" is the process output."""
    simulated = True

    def __init__(self, board: str = "esp32", dev_id: str = "mcu-01"):
        self.board, self.id = board, dev_id
        self.fleet = None

    def pid(self) -> int:
        return self.fleet.procs[self.id].pid

    def log(self) -> str:
        p = self.fleet.root / self.id / "device.log" if self.fleet else None
        return p.read_text(errors="replace")[-2000:] if p and p.exists() else "(no log)"


class BoardDUT:
    """A board flashed with `semifl flash --phases` whose node connects to this bench's broker; the
    serial port is held open (exclusively) for its console log, so a busy port fails the test early."""
    simulated = False

    def __init__(self, port: str, board: str, dev_id: str):
        import serial

        self.board, self.id, self.port = board, dev_id, port
        try:
            self.ser = serial.Serial(port, 115200, timeout=0.1, exclusive=True)
        except serial.SerialException as e:
            raise RuntimeError(f"serial port {port} cannot be opened (busy or missing): {e}") from e
        self.buf = bytearray()

    def log(self) -> str:
        self.buf += self.ser.read(65536)
        return self.buf[-2000:].decode(errors="replace")

    def close(self):
        self.ser.close()


def run_bench(dut, make_meter, url: str, ds, root: Path, rounds: int = 3, join_timeout: float = 90.0,
              **run) -> BenchRun:
    """Host + one Pi-class FL client (pi-00) + one MCU CL uploader (mcu-01), int8 model every 2 rounds,
    for `rounds` rounds; the DUT is one of them (on a real bench, the board in place of the virtual
    one). Its meter samples from the moment the fleet joined until the host stops it. `run`: other
    RunConfig fields (strategy, ...)."""
    from semifl.config import RunConfig
    from semifl.meters import MeterError
    from semifl.app.build import limits, make_round
    from semifl.service.session import Session
    from semifl.service.store import Store
    from semifl.sim.fleet import VirtualFleet, fleet_for
    from semifl.transport.mqtt import HostLink

    # a board may spend seconds writing an int8 model to flash and running it: it answers the next
    # round's announcement late, so the bench waits longer for `ready` than a fleet would
    cfg = RunConfig.make(**{"rounds": rounds, "fl_devices": 1, "cl_devices": 1, "int8_every": 2, "plot": False,
                       "out": str(root), "broker": url, "ready_timeout_s": 30.0, **run})
    specs = fleet_for(cfg, ds)
    spec = next((s for s in specs if s.id == dut.id), None)
    if spec is None:
        raise ValueError(f"the bench's devices are {[s.id for s in specs]}; flash the board with one of those ids")
    if dut.simulated:
        spec.config, spec.sim["board"] = {"phases": True}, dut.board
    else:
        specs.remove(spec)   # the board plays that device
    root.mkdir(parents=True, exist_ok=True)
    store = Store(str(root / "state.db"))
    link = HostLink(url).connect()
    watcher, w = watch(url, dut.id)
    meter = None
    try:
        session = Session(link, store, limits(cfg))
        rounds_obj = make_round(cfg, session, ds)
        # every device its own process (none in a fleet worker): the DUT's meter reads its process
        with VirtualFleet(root / "fleet", specs, ds, url, mcu_runtime="micropython", own_processes=True) as fleet:
            dut.fleet = fleet
            if not session.wait_for_devices(2, timeout=join_timeout):
                raise TimeoutError(f"the DUT {dut.id} did not join within {join_timeout:.0f} s "
                                   f"(online: {sorted(session.registry.online)}); its log:\n{dut.log()}")
            meter = make_meter(dut)
            meter.start()
            error = None
            try:
                session.run(rounds_obj, rounds)
                pushed = [r for r in range(1, rounds + 1) if cfg.federated.int8_every and r % cfg.federated.int8_every == 0]
                if pushed:   # the DUT evaluates the last model it got after that round: let it report first
                    end = time.monotonic() + 60
                    while time.monotonic() < end and not any(e["round"] == pushed[-1] for e in w.of_kind("eval")):
                        time.sleep(0.1)
            finally:
                session.stop_fleet()
                try:
                    meter.stop()
                except MeterError as e:   # the run's other data is kept; the test reports the reason
                    error = str(e)
            t, watts = meter.samples()
        rounds = store.round_metrics()
        summary = write_summary(root, cfg.strategy, rounds, dut, w, t, watts, meter.name, error,
                                {s.id: s.sim.get("board", "rpi4") for s in specs if s.device_class == "pi"})
        return BenchRun(w, rounds, t, watts, error, root / "fleet" / dut.id, summary)
    finally:
        watcher.loop_stop()
        watcher.disconnect()
        link.close()
        store.close()
