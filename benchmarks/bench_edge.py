"""Edge aggregators (issue 20): the same run with every device on the core broker (flat) and with the devices
split over two edge Mosquittos bridged to the core (`app/edge.py`), each edge's aggregator folding its
devices' updates: the bytes the core broker takes in per round (by kind of message), round time,
the host's CPU per round, and whether the model is the flat fleet's.

    python benchmarks/bench_edge.py [--devices 200] [--rounds 4] [--uploaders 50]

Each configuration runs in a process of its own (fresh brokers, a fresh fleet); figures per round are
over rounds 2.. (round 1 has the fleet's first connections). Writes benchmarks/results/edge.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]
OUT = REPO / "benchmarks" / "results" / "edge.json"


def core_broker(port: int, d: Path) -> subprocess.Popen:
    """Mosquitto as tests/conftest.py's, configured in `d`, no cap on a client's queue (as bench_workers)."""
    from conftest import _wait_port

    (d / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                                      "set_tcp_nodelay true\nmax_packet_size 4194304\nmax_queued_messages 0\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(d / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    _wait_port(port)
    return proc


class CoreTraffic:
    """What the core broker takes in, by kind: a process of its own (not the host's: its CPU is measured)
    subscribed to semifl/#, which sees every message published to the core once (device uploads and
    reports, what edges send up, what the host sends down); `now()` asks it for its counts."""

    def __init__(self, port: int, folder: Path):
        self.file = folder / "traffic.jsonl"
        self.proc = subprocess.Popen([sys.executable, __file__, "--spy", str(port), str(self.file)])
        time.sleep(1.0)

    def now(self) -> dict:
        import signal

        n = len(self.file.read_text().splitlines()) if self.file.exists() else 0
        time.sleep(0.5)   # what is in flight reaches the counter
        self.proc.send_signal(signal.SIGUSR1)
        while not self.file.exists() or len(self.file.read_text().splitlines()) <= n:
            time.sleep(0.05)
        return json.loads(self.file.read_text().splitlines()[-1])

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


def spy(port: int, path: str) -> None:
    """The counter's process: bytes by kind of message, a JSON line at each SIGUSR1, until SIGTERM."""
    import signal

    import paho.mqtt.client as mqtt

    counts, lock, stop = {}, threading.Lock(), threading.Event()

    def on(client, userdata, msg):
        t = msg.topic.split("/")   # semifl/v1/dev/<id>/<leaf>, semifl/v1/agg/<id>/<leaf>/..., semifl/v1/agg/ctx
        key = f"{t[2]}/{t[4]}" if len(t) > 4 else "/".join(t[2:])
        with lock:
            counts[key] = counts.get(key, 0) + len(msg.payload)

    def dump(*_):
        with lock, open(path, "a") as f:
            f.write(json.dumps(counts) + "\n")

    signal.signal(signal.SIGUSR1, dump)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-core-traffic")
    c.on_message = on
    c.connect("127.0.0.1", port)
    c.subscribe("semifl/#")
    c.loop_start()
    while not stop.wait(0.2):
        pass
    c.loop_stop()


def one(devices: int, rounds: int, uploaders: int, edges: int) -> dict:
    import numpy as np
    from semifl.app.build import limits, make_round
    from semifl.app.edge import Edge
    from semifl.app.run import fleet_layout, fleet_specs, load_data, wait_for_fleet
    from semifl.config import RunConfig
    from semifl.service.aggregator import Coordinator, coordinator_subs
    from semifl.service.session import Session
    from semifl.service.store import Store
    from semifl.sim.fleet import VirtualFleet
    from semifl.transport.broker import free_port
    from semifl.transport.mqtt import HostLink

    port = free_port()
    out = Path(tempfile.mkdtemp())
    broker = core_broker(port, out)
    core = f"mqtt://127.0.0.1:{port}"
    marks, cpu = [], []
    try:
        cfg = RunConfig.make(rounds=rounds, seed=1, out=str(out), broker=core, plot=False, int8_every=0,
                             fl_devices=devices // 2, cl_devices=devices - devices // 2, fl_uploaders=uploaders,
                             over_select=1.0, cl_uploaders=uploaders // 2)
        data = load_data(cfg)
        specs = fleet_specs(cfg, data)
        with contextlib.ExitStack() as stack:
            traffic = CoreTraffic(port, out)
            stack.callback(traffic.close)
            names = [chr(ord("a") + i) for i in range(edges)]
            urls = [stack.enter_context(Edge(n, core, free_port(), out / f"edge-{n}")).url for n in names] or [core]
            store = Store(str(out / "state.db"))
            stack.callback(store.close)
            link = HostLink(core, subs=coordinator_subs(True)) if edges else HostLink(core)
            link.connect()
            stack.callback(link.close)
            coord = Coordinator(link) if edges else None
            session = Session(coord or link, store, limits(cfg))
            rounds_obj = make_round(cfg, session, data, [s.id for s in specs])
            if coord:
                coord.attach(rounds_obj)
                assert coord.wait(session, edges, 60), coord.live
            for i, url in enumerate(urls):   # device k behind edge k % E
                stack.enter_context(VirtualFleet(out / f"fleet-{i}", specs[i::len(urls)], data, url, **fleet_layout(cfg)))
            assert wait_for_fleet(session, len(specs), 120)

            def each(m):
                cpu.append(time.process_time())
                if m["round"] in (1, rounds):
                    marks.append(traffic.now())
            session.run(rounds_obj, cfg.rounds, on_round=each)
            session.stop_fleet()
            metrics = store.round_metrics()
            final = [a.copy() for a in rounds_obj.params]
    finally:
        broker.terminate()
        broker.wait(10)
    per = metrics[1:]
    np.savez(out / "final.npz", *final)
    return {"edges": edges, "devices": devices, "fl_uploaders": uploaders, "rounds": rounds,
            "accuracy": [m["accuracy"] for m in metrics],
            "participants_fl": [len(m["participants"]["fl"]) for m in metrics],
            "round_s": round(float(np.mean([m["wall_s"] for m in per])), 3),
            "upload_s": round(float(np.mean([m["phases_s"]["upload"] for m in per])), 3),
            "host_cpu_per_round_s": round(float(np.mean(np.diff(cpu))), 3),
            "core_bytes_in_per_round": {k: int((marks[1].get(k, 0) - marks[0].get(k, 0)) / (rounds - 1))
                                        for k in sorted(marks[1]) if marks[1][k] > marks[0].get(k, 0)},
            "core_bytes_in_per_round_total": int(sum(marks[1].values()) - sum(marks[0].values())) // (rounds - 1),
            "final_model": str(out / "final.npz")}


def main() -> None:
    import variants

    ap = variants.parser(__doc__, "--edges", "0,2")
    ap.add_argument("--spy", nargs=2, help=argparse.SUPPRESS)    # a child: the core's traffic counter
    a = ap.parse_args()
    if a.spy:
        spy(int(a.spy[0]), a.spy[1])
        return
    variants.main(__file__, a, one, "edges", key="edges", diff="flat", out=OUT)


if __name__ == "__main__":
    main()
