"""The default experiment on a three-node RabbitMQ cluster (tools/rabbitmq/cluster.py; devices on node
i % 3 with their own accounts, the host on rabbit3), on one RabbitMQ node and on one Mosquitto, same seed:
the time a cluster takes to start, to take the fleet's accounts and to stop, each broker's round time
(and its phases) and accuracy, and its QoS 1 PUBLISH-to-PUBACK time (three medians of 500) for a device
on the host's node and on another. Writes benchmarks/results/rabbitmq.json.

    python benchmarks/bench_rabbitmq.py [--rounds 10] [--starts 2]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from semifl.app.run import fleet_specs, load_data, run_on_broker
from semifl.config import RunConfig
from semifl.protocol import wire
from semifl.transport.broker import free_port
from semifl.transport.certs import HOST_USER
from semifl.transport.mqtt import HostLink, no_delay

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("rabbitmq_cluster", HERE.parent / "tools" / "rabbitmq" / "cluster.py")
cluster = sys.modules["rabbitmq_cluster"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster)


def run(cfg: RunConfig, data, urls: list[str] | None, host_node: int, passwords: dict | None) -> dict:
    """One run; urls: each node's mqtt://127.0.0.1:port (device i on node i % len), None: cfg.broker for all."""
    specs = fleet_specs(cfg, data)
    if urls:
        host = urls[host_node].replace("://", f"://{HOST_USER}@")
        os.environ["SEMIFL_BROKER_PASSWORD"] = passwords[HOST_USER]
        cfg = cfg.replace(broker=host)
        for i, s in enumerate(specs):
            s.config["broker"] = urls[i % len(urls)].replace("://", f"://{s.id}:{passwords[s.id]}@")
    Path(cfg.out).mkdir()
    t0 = time.perf_counter()
    _, _, rounds = run_on_broker(cfg, Path(cfg.out), specs, data)
    walls = [m["wall_s"] for m in rounds]
    return {"run_s": round(time.perf_counter() - t0, 2), "rounds": len(rounds),
            "round_wall_s_mean": round(statistics.mean(walls), 3), "round_wall_s_median": round(statistics.median(walls), 3),
            "phases_s_mean": {k: round(statistics.mean(m["phases_s"].get(k, 0.0) for m in rounds), 3)
                              for k in sorted({k for m in rounds for k in m["phases_s"]})},
            "accuracy": [m["accuracy"] for m in rounds],
            "participants": [len(m["participants"]["fl"]) + len(m["participants"]["cl"]) for m in rounds]}


def puback_ms(device: str, user: str | None, password: str | None, host: HostLink, n: int = 500) -> float:
    """Median milliseconds from a 4 KB QoS 1 PUBLISH to its PUBACK, one at a time, as umqtt.simple sends
    an MCU's chunks, to a topic the connected `host` subscribes to."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user or "bench-dev", clean_session=True)
    if user:
        c.username_pw_set(user, password)
    c.on_socket_open = no_delay
    port = int(device.rsplit(":", 1)[1])
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    try:
        topic, chunk, took = wire.dev_topic(user or "bench-dev", wire.T_STATUS), bytes(4096), []
        for _ in range(n):
            t0 = time.perf_counter()
            c.publish(topic, chunk, qos=1).wait_for_publish(5)
            took.append(time.perf_counter() - t0)
        while host.get(0.2) is not None:   # what reached the host: let it go
            pass
        return round(1000 * statistics.median(took), 3)
    finally:
        c.disconnect()
        c.loop_stop()


def on_rabbitmq(n_nodes: int, cfg: RunConfig, data, work: Path) -> tuple[dict, dict]:
    c = cluster.start(work / f"rabbitmq{n_nodes}", n_nodes)
    try:
        ids = [s.id for s in fleet_specs(cfg, data)]
        passwords = {HOST_USER: secrets.token_hex(16), **{i: secrets.token_hex(16) for i in ids}}
        t0 = time.perf_counter()
        c.accounts(passwords)
        timing = {"start_s": c.start_s, "accounts_s": round(time.perf_counter() - t0, 2)}
        os.environ["SEMIFL_BROKER_PASSWORD"] = passwords[HOST_USER]
        host = HostLink(c.nodes[-1].url.replace("://", f"://{HOST_USER}@")).connect()
        try:   # a device on the host's node, and (with more nodes) on another
            pubacks = {f"puback_ms_{where}": [puback_ms(c.nodes[k].url, ids[0], passwords[ids[0]], host) for _ in range(3)]
                       for where, k in (("same_node", n_nodes - 1), ("other_node", 0))[:n_nodes]}
        finally:
            host.close()
        result = run(cfg.replace(out=str(work / f"run-rabbitmq{n_nodes}")), data, [n.url for n in c.nodes],
                     n_nodes - 1, passwords)
        result.update(pubacks)
    finally:
        t0 = time.perf_counter()
        c.stop()
        timing_stop = round(time.perf_counter() - t0, 2)
    return result, dict(timing, stop_s=timing_stop)


def on_mosquitto(cfg: RunConfig, data, work: Path) -> dict:
    port, d = free_port(), work / "mosquitto"
    d.mkdir()
    (d / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                              "set_tcp_nodelay true\nmax_packet_size 4194304\n")
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", str(d / "m.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.5)
        host = HostLink(f"mqtt://127.0.0.1:{port}").connect()
        try:
            ack = [puback_ms(f"mqtt://127.0.0.1:{port}", None, None, host) for _ in range(3)]
        finally:
            host.close()
        return dict(run(cfg.replace(out=str(work / "run-mosquitto"), broker=f"mqtt://127.0.0.1:{port}"), data, None, 0, None),
                    puback_ms_same_node=ack)
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--starts", type=int, default=2, help="extra cluster starts timed (start, accounts, stop only)")
    a = ap.parse_args(argv)
    if cluster.missing():
        sys.exit(cluster.missing())
    cfg = RunConfig.make(rounds=a.rounds, plot=False)
    data = load_data(cfg)
    out = {"command": " ".join(["python benchmarks/bench_rabbitmq.py", *(argv if argv is not None else sys.argv[1:])]),
           "machine": platform.platform(), "cpus": len(os.sched_getaffinity(0)),
           "rabbitmq": subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"], capture_output=True,
                                      text=True, check=False).stdout, "rounds": a.rounds, "brokers": {}, "cluster_starts": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, go in (("mosquitto", lambda: (on_mosquitto(cfg, data, work), None)),
                         ("rabbitmq_1_node", lambda: on_rabbitmq(1, cfg, data, work)),
                         ("rabbitmq_3_nodes", lambda: on_rabbitmq(3, cfg, data, work))):
            result, timing = go()
            out["brokers"][name] = result
            if timing and name == "rabbitmq_3_nodes":
                out["cluster_starts"].append(timing)
            elif timing:
                out["brokers"][name]["node_start"] = timing
            print(name, json.dumps(result), timing or "", flush=True)
        for k in range(a.starts):
            c = cluster.start(work / f"start{k}")
            t0 = time.perf_counter()
            c.accounts({HOST_USER: secrets.token_hex(16), **{f"dev-{i}": secrets.token_hex(16) for i in range(10)}})
            acc = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            c.stop()
            out["cluster_starts"].append({"start_s": c.start_s, "accounts_s": acc, "stop_s": round(time.perf_counter() - t0, 2)})
            print("start", out["cluster_starts"][-1], flush=True)
    (HERE / "results" / "rabbitmq.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
