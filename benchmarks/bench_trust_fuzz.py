"""A live run under fire: `semifl run` (host, Pi agents, MicroPython nodes) over a real broker while a
fuzzer client sends malformed messages on every topic: the host's inbound ones (status, up, caps,
presence of real and unknown ids) and the devices' (host/round, their task and down topics): truncated
and garbage chunks, headers declaring huge blobs, bad JSON, wrong types, NaN, unknown ids. Compared
with a clean run of the same config: host and device crashes, rejections by reason (the run's
summary), the host process's peak RSS and the accuracy. Writes key "fuzz" of
benchmarks/results/trust.json (other keys kept).

The broker is an anonymous embedded one on loopback: this harness tests the code paths behind the
broker (what a device with valid credentials, or a broker without ACL, lets through).

    python benchmarks/bench_trust_fuzz.py [--messages 10000] [--rounds 5] [--devices 10]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil

from semifl.protocol import wire
from semifl.transport.broker import EmbeddedBroker

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "trust.json"


def malformed(rng: random.Random, devs: list[str]) -> tuple[str, bytes]:
    """One malformed message on a topic of the run (or of an id nobody enrolled)."""
    dev = rng.choice(devs + ["ghost-%d" % rng.randrange(50)])
    leaf = rng.choice([wire.T_STATUS, wire.T_UP, wire.T_UP, wire.T_CAPS, wire.T_PRESENCE, wire.T_TASK, wire.T_DOWN])
    topic = rng.choice([wire.dev_topic(dev, leaf)] * 6 + [wire.host_topic("round"), wire.host_topic(wire.T_MODEL_INT8)])
    k = rng.randrange(9)
    if k == 0:     # a chunk header declaring a huge blob, a few bytes of data
        data = os.urandom(rng.randrange(64))
        p = struct.pack(wire.CHUNK_HEADER, wire.MAGIC, 1, rng.choice(wire.KINDS), rng.randrange(40), rng.randrange(4),
                        rng.randrange(1, 65535), rng.choice([32 << 20, (32 << 20) - 1, 1 << 31]), 0,
                        wire.crc32(data) & 0xFFFFFFFF) + data
    elif k == 1:   # a well-formed chunk with its data damaged or cut
        c = wire.encode_chunk(rng.choice(wire.KINDS), rng.randrange(40), 0, 3, 3000, os.urandom(1000))
        p = c[:rng.randrange(len(c))] if rng.random() < 0.5 else c[:-1] + bytes([c[-1] ^ 1])
    elif k == 2:
        p = os.urandom(rng.randrange(200))
    elif k == 3:
        p = b'{"v": 1, "round": ' + rng.choice([b"2.5", b"true", b'"3"', b"-1", b"NaN", b"1e999", b"null"]) + b"}"
    elif k == 4:
        p = rng.choice([b'{"v": 1}', b"{", b"[]", b"null", b'{"v": 9}', b'{"v": 1, "round": 1, "stop": 1}'])
    elif k == 5:   # a task or status with wrong types
        p = json.dumps({"v": 1, "round": rng.randrange(40), "kind": rng.choice(["ready", "trained", "eval", "zz"]),
                        "role": rng.choice(["fl", "cl", "sl", "upload"]), "task": rng.choice([1, "x", 2.5, None]),
                        "seed": rng.choice([1, -1, 2 ** 40]), "fraction": rng.choice([0, 7, float("nan")]),
                        "norm": float("nan"), "n": rng.choice([-1, 0, 1.5]), "lr": float("inf")}).encode()
    elif k == 6:
        p = b'{"v": 1, "id": "x", "class": "pi", "ram": "lots"}'
    elif k == 7:
        p = b"\xff\xfe" + os.urandom(30)
    else:
        p = b"SF" + bytes([1, rng.randrange(256)]) + os.urandom(rng.randrange(40))
    return topic, p


def run(folder: Path, url: str, rounds: int, devices: int, fuzz: int, seed: int) -> dict:
    out = folder / "run"
    cmd = [sys.executable, "-m", "semifl.cli", "run", "--rounds", str(rounds), "--devices", str(devices),
           "--broker", url, "--out", str(out), "--no-plot", "--int8-every", "0"]
    # the host's output goes to a file: a pipe nobody reads until the end fills up and blocks the host
    log_file = open(folder / "host.log", "w+")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    peak, seen, gone = 0, {}, {}
    state = {"sent": 0}
    if fuzz:
        threading.Thread(target=fuzzer, args=(url, fuzz, seed, state, proc), daemon=True).start()
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
            kids = {k.pid: k for k in ps.children(recursive=True)}
        except psutil.Error:
            break
        for pid, k in kids.items():
            try:
                if pid not in seen and any(w in " ".join(k.cmdline()) for w in ("semifl_agent", "micropython", "mcu_runner")):
                    seen[pid] = time.monotonic()
            except psutil.Error:
                pass
        for pid in seen:
            if pid not in kids and pid not in gone:
                gone[pid] = time.monotonic()
        time.sleep(0.2)
    end = time.monotonic()
    log_file.seek(0)
    log = log_file.read()
    log_file.close()
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    last = max(gone.values(), default=end)
    early = [p for p, t in gone.items() if last - t > 5.0]   # a device that exited while the others went on
    # every message the host refused, between rounds too (the store keeps only the first of each reason per round)
    rejected = summary.get("rejected_total", {})
    logs = [f.read_text(errors="replace") for f in (out / "fleet").glob("*/device.log")]
    # what the devices refused: the Pi agent logs "rejected message", the node "ignored" or the WireError it reports
    device_refused = sum(t.count("rejected message") + t.count("semifl-node: ignored") + t.count(" WireError ") for t in logs)
    tracebacks = sum("Traceback" in t for t in logs)
    return {"rc": proc.returncode, "peak_rss_mb": round(peak / 2 ** 20, 1), "sent": state["sent"],
            "accuracy": summary.get("final_accuracy", (summary.get("rounds") or [{}])[-1].get("accuracy")),
            "rejected": rejected, "device_refused": device_refused, "device_exits_early": len(early), "device_tracebacks": tracebacks,
            "log_tail": log[-600:]}


def fuzzer(url: str, n: int, seed: int, state: dict, proc) -> None:
    host, port = url.split("//")[1].split(":")
    devs: set[str] = set()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fuzzer")
    c.on_message = lambda cl, u, m: devs.add(m.topic.split("/")[3]) if m.payload else None
    c.connect(host, int(port))
    c.subscribe(wire.ROOT + "/dev/+/caps", 1)
    c.loop_start()
    end = time.monotonic() + 120
    while len(devs) < 2 and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.2)
    rng = random.Random(seed)
    for i in range(n):
        if proc.poll() is not None:
            break
        topic, p = malformed(rng, sorted(devs))
        c.publish(topic, p, qos=1)
        state["sent"] += 1
        if i % 100 == 99:
            time.sleep(0.02)
    c.loop_stop()
    c.disconnect()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    res = {}
    for name, n in (("clean", 0), ("attacked", a.messages)):
        with tempfile.TemporaryDirectory() as d, EmbeddedBroker() as broker:
            res[name] = run(Path(d), broker.url, a.rounds, a.devices, n, a.seed)
        print(name, json.dumps({k: v for k, v in res[name].items() if k != "log_tail"}), flush=True)
    att, clean = res["attacked"], res["clean"]
    fuzz = {"sent": att["sent"], "rounds": a.rounds, "devices": a.devices,
            "host_crashes": int(att["rc"] != 0),
            # device processes that exited while the others went on, beyond those of the clean run (short-lived
            # helpers the fleet starts), plus device logs with a traceback
            "device_crashes": max(0, att["device_exits_early"] - clean["device_exits_early"]) + att["device_tracebacks"],
            "rejected_by_reason": att["rejected"], "rejected": sum(att["rejected"].values()),
            "device_refused": att["device_refused"],
            "host_rss_mb": {"clean": clean["peak_rss_mb"], "attacked": att["peak_rss_mb"],
                            "ratio": round(att["peak_rss_mb"] / clean["peak_rss_mb"], 3) if clean["peak_rss_mb"] else None},
            "accuracy": {"clean": clean["accuracy"], "attacked": att["accuracy"]},
            "command": "python benchmarks/bench_trust_fuzz.py " + " ".join(argv or sys.argv[1:])}
    if att["rc"] != 0:
        fuzz["host_log_tail"] = att["log_tail"]
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    data["fuzz"] = fuzz
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(fuzz, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
