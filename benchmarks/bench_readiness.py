"""What a round's announcement costs the host per `ready` report, by fleet size: the registry's kept sets
(now) against the predicate Session.announce evaluated before commit 1d2cb42 (online - busy <= answered(),
with online = present & devices and answered() a pass over the online devices, rebuilt after each message).
Each report goes through Session.dispatch, as over MQTT. Writes benchmarks/results/readiness.json.

    python benchmarks/bench_readiness.py [--devices 100 1000 10000]
"""
import argparse
import json
import time
from pathlib import Path

from semifl.protocol import report, wire
from semifl.service.session import Session
from semifl.service.store import Store
from semifl.transport.memory import MemoryBroker, MemoryLink

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "readiness.json"


def fleet(n: int) -> Session:
    s = Session(MemoryLink(MemoryBroker()), Store(":memory:"))
    for i in range(n):
        d = f"pi-{i:05d}"
        caps = report.capabilities(d, "pi", "b/0", 1 << 30, 1 << 30, 1.0, 1.0, -50.0, 10, [10], False, 4096, ["fl"],
                                   "cpython", "rpi4")
        s.dispatch((wire.dev_topic(d, wire.T_CAPS), wire.encode_json(caps)))
        s.dispatch((wire.dev_topic(d, wire.T_PRESENCE), b"online"))
    return s


def old_until(reg, rnd, busy=frozenset()):
    online = reg.present & set(reg.devices)
    answered = {d for d in online if reg.link.get(d, {}).get("round") == rnd}
    return online - set(busy) <= answered


def measure(n: int, old: bool) -> float:
    """Seconds per ready report: dispatch it, then ask whether the round may go on."""
    s = fleet(n)
    s.round = 1
    reg = s.registry
    reg.expect_ready(1)
    until = (lambda: old_until(reg, 1)) if old else (lambda: not reg.unready)
    msgs = [(wire.dev_topic(d, wire.T_STATUS), wire.encode_json(report.status("ready", 1, rssi=-50.0, battery=1.0)))
            for d in sorted(reg.online)]
    t0 = time.perf_counter()
    for m in msgs:
        s.dispatch(m)
        until()
    took = time.perf_counter() - t0
    assert until()
    return took / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, nargs="+", default=[100, 1000, 10000])
    args = ap.parse_args()
    runs = []
    for n in args.devices:
        new, old = measure(n, False), measure(n, True)
        runs.append({"devices": n, "us_per_ready_kept_sets": round(new * 1e6, 2), "us_per_ready_before": round(old * 1e6, 2),
                     "announce_s_kept_sets": round(new * n, 4), "announce_s_before": round(old * n, 3),
                     "ratio": round(old / new, 1)})
        print(runs[-1], flush=True)
    OUT.write_text(json.dumps({"command": "python benchmarks/bench_readiness.py --devices " + " ".join(map(str, args.devices)),
                               "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
