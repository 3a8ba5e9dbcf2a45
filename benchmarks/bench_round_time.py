"""Seed 001's per-round time breakdown T = T_download + T_local + T_upload + T_global, per device class,
measured on the virtual fleet (Pi agents under CPython, MCU nodes under MicroPython at an ESP32 heap)
over two simulated links: loopback, and a 2 Mbit/s, 5 ms Wi-Fi-like link on every device.
Writes benchmarks/results/round_time.json.

    python benchmarks/bench_round_time.py [--rounds 10]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

from semifl.config import RunConfig
from semifl.app.run import run_experiment

HERE = Path(__file__).resolve().parent
LINKS = {"loopback": {}, "wifi_2mbps_5ms": {"bandwidth_bps": 2e6, "latency_s": 0.005}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args(argv)
    out = {"rounds": a.rounds, "machine": platform.platform(), "links": {}}
    for name, link in LINKS.items():
        with tempfile.TemporaryDirectory() as d:
            s = run_experiment(RunConfig.make(rounds=a.rounds, out=str(Path(d) / "run"), plot=False, int8_every=0, **link))
        out["links"][name] = {"link": link, "round_time_s": s["round_time_s"],
                              "mean_round_wall_s": sum(r["wall_s"] for r in s["rounds"]) / len(s["rounds"]),
                              "runtimes": sorted({(d["device_class"], d["runtime"]) for d in s["devices"]})}
        print(name, json.dumps(out["links"][name]), flush=True)
    (HERE / "results" / "round_time.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
