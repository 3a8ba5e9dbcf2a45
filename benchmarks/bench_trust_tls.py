"""Links: who the brokers refuse, what TLS costs the MicroPython node's heap, and what it costs a run.
Writes the key "tls" of benchmarks/results/trust.json (other keys kept).

    python benchmarks/bench_trust_tls.py [--rounds 20]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def refusals(port, c, other) -> dict:
    from test_tls import connect   # the test's own client: paho over TLS

    a, b = c.device("s-a"), c.device("s-b")
    out = {"anonymous_refused": connect(port, c.ca)[1] != "ok",
           "wrong_password_refused": connect(port, c.ca, a.user, "wrong")[1] != "ok",
           "wrong_cert_refused": connect(port, other.ca, a.user, a.password)[1] != "ok"}
    dev, why, got = connect(port, c.ca, b.user, b.password)
    host, _, _ = connect(port, c.ca, c.host().user, c.host().password)
    dev.subscribe("semifl/v1/dev/s-a/down", 1)
    time.sleep(0.3)
    host.publish("semifl/v1/dev/s-a/down", b"x", 1).wait_for_publish(5)
    time.sleep(0.5)
    out["cross_device_read_refused"] = got == []
    for cl in (dev, host):
        cl.loop_stop()
        cl.disconnect()
    return out


def mcu_heap(port, c, heap: int) -> dict:
    from semifl.flash.build import build_app
    from semifl.sim.fleet import micropython_env

    app = Path(tempfile.mkdtemp()) / "app"
    build_app(app, "unix")
    d = c.device("mcu-01")
    held = {}
    for mode, extra in (("tls", []), ("plain", ["plain"])):
        r = subprocess.run(["micropython", "-X", f"heapsize={heap}", str(REPO / "benchmarks" / "tls_probe_mp.py"),
                            "127.0.0.1", str(port[mode]), d.user, d.password, str(c.ca_der)] + extra,
                           env=micropython_env(dict(os.environ), app), capture_output=True, text=True, timeout=60)
        held[mode] = int(r.stdout.split("RESULT")[1].split()[0])
    return held


def run_time(rounds: int, tls: str) -> tuple[float, float]:
    out = Path(tempfile.mkdtemp()) / "run"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "semifl.cli", "run", "--rounds", str(rounds), "--out", str(out)],
                   check=True, capture_output=True, env=dict(os.environ, SEMIFL_RUN_TLS=tls))
    return time.perf_counter() - t, json.loads((out / "summary.json").read_text())["final_accuracy"]


def main():
    from semifl.sim.fleet import BOARD_HEAP
    from semifl.transport import certs
    from semifl.transport.broker import EmbeddedBroker
    from conftest import start_shipped_mosquitto

    from semifl.transport.broker import free_port

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp())
    c = certs.fleet_credentials(d / "fleet", ["s-a", "s-b", "mcu-01"])
    other = certs.init(d / "other")
    for f in d.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)
    d.chmod(0o755)
    result = {}
    with EmbeddedBroker.secured(c.dir) as tls_b, EmbeddedBroker.secured(c.dir, tls=False) as plain_b:
        result["embedded"] = refusals(tls_b.port, c, other)
        result["mcu_tls_heap_bytes"] = {"board": "esp32", "heapsize": BOARD_HEAP["esp32"],
                                        **mcu_heap({"tls": tls_b.port, "plain": plain_b.port}, c, BOARD_HEAP["esp32"])}
    result["mcu_tls_heap_bytes"]["tls_extra"] = result["mcu_tls_heap_bytes"]["tls"] - result["mcu_tls_heap_bytes"]["plain"]
    mosq = d / "mosq"
    mosq.mkdir(mode=0o755)
    port = free_port()   # the shipped config's TLS listener
    proc = start_shipped_mosquitto(mosq, c.passwd, c.dir, free_port(), port)
    try:
        result["mosquitto"] = refusals(port, c, other)
    finally:
        proc.terminate()
        proc.wait(10)
    plain_s, plain_acc = run_time(args.rounds, "0")
    tls_s, tls_acc = run_time(args.rounds, "1")
    result["run"] = {"rounds": args.rounds, "accounts_plain_s": round(plain_s, 2), "accounts_tls_s": round(tls_s, 2),
                     "run_overhead_s": round(tls_s - plain_s, 2), "accuracy_plain": plain_acc, "accuracy_tls": tls_acc,
                     "note": "accounts in clear (SEMIFL_RUN_TLS=0) vs TLS on every link incl. the esp32 nodes, "
                             "semifl run's default"}
    path = REPO / "benchmarks" / "results" / "trust.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data["tls"] = result
    path.write_text(json.dumps(data, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
