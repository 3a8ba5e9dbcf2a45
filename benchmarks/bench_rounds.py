"""Rounds end to end: the seed's FL baseline workload on semifl (embedded broker, Mosquitto) and on
Flower 1.41's simulation, measured in the same run. Writes benchmarks/results/fl_baseline_rounds.json.

Workload: 6 Pi-class devices, one Fashion-MNIST class each, the MLP 784-50-100-50-10, one full-batch
gradient step on a random 30 % per round, FedAvg of all 6, central evaluation on the 10,000 test images
every round, 200 rounds. Measured per system: wall time of the whole command (start-up included), mean
round time, peak RSS summed over the whole process tree (broker and devices included), final accuracy.

    python benchmarks/bench_rounds.py [--rounds 200] [--skip-flower]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from proctree import measure  # noqa: E402

from semifl.transport.broker import free_port  # noqa: E402

WORKLOAD = ["--strategy", "fedavg", "--fl-devices", "6", "--cl-devices", "0", "--fl-uploaders", "6",
            "--prune", "0", "--fl-fraction", "0.3", "--lr", "0.1", "--seed", "0", "--no-plot"]


def semifl_cmd(rounds: int, out: Path, broker: str | None, init: str | None = None) -> list[str]:
    cmd = [shutil.which("semifl") or "semifl", "run", "--rounds", str(rounds), "--out", str(out)] + WORKLOAD
    return cmd + (["--broker", broker] if broker else []) + (["--init", init] if init else [])


def with_mosquitto(cmd: list[str], tmp: Path) -> tuple[list[str], str]:
    """Wrap cmd so that a Mosquitto it starts is part of the measured process tree."""
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n")
    url = f"mqtt://127.0.0.1:{port}"
    script = (f"mosquitto -c {conf} & M=$!; sleep 0.3; {' '.join(cmd)} --broker {url}; rc=$?; "
              f"kill $M; wait $M 2>/dev/null; exit $rc")
    return ["bash", "-c", script], url


def summarize_semifl(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    walls = [r["wall_s"] for r in s["rounds"]]
    return {"final_accuracy": s["final_accuracy"], "s_per_round": sum(walls) / len(walls),
            "s_per_round_steady": sum(walls[10:]) / max(1, len(walls[10:])),
            "accuracy_per_round": [r["accuracy"] for r in s["rounds"]]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--skip-flower", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "fl_baseline_rounds.json"))
    ap.add_argument("--init", help="initial model of every run (the seed's get_initial_model.mat or an .npz); "
                                   "default: Glorot-uniform from seed 0")
    args = ap.parse_args(argv)
    init = str(Path(args.init).resolve()) if args.init else None
    tmp = Path(tempfile.mkdtemp(prefix="semifl-bench-"))
    results: dict[str, dict] = {}

    def record(name, cmd, summarize):
        print(f"[bench] {name}: {' '.join(cmd)[:160]}", flush=True)
        m = measure(cmd, cwd=str(REPO))
        if m["rc"] != 0:
            raise SystemExit(f"{name} failed with rc {m['rc']}")
        m.update(summarize())
        results[name] = m
        print(f"[bench] {name}: wall {m['wall_s']:.1f} s, {m['s_per_round']:.4f} s/round, "
              f"peak RSS {m['peak_rss_bytes'] / 2**20:.0f} MiB, accuracy {m['final_accuracy']:.4f}", flush=True)

    out = tmp / "semifl-embedded"
    record("semifl_embedded", semifl_cmd(args.rounds, out, None, init), lambda: summarize_semifl(out))
    out_m = tmp / "semifl-mosquitto"
    cmd, _ = with_mosquitto(semifl_cmd(args.rounds, out_m, None, init), tmp)
    record("semifl_mosquitto", cmd, lambda: summarize_semifl(out_m))
    if not args.skip_flower:
        subprocess.run(["bash", str(HERE / "setup_flower.sh")], check=True, cwd=REPO)
        fjson = tmp / "flower.json"
        fcmd = [str(REPO / ".venv-flwr" / "bin" / "python"), str(HERE / "flower_fl_baseline.py"),
                "--rounds", str(args.rounds), "--out", str(fjson)]
        if init:   # the Flower venv has no h5py: the model goes as the .npz of what semifl read
            from semifl.learn import initial
            np.savez(tmp / "init.npz", *initial.load(init))
            fcmd += ["--init-npz", str(tmp / "init.npz")]

        def summarize_flower():
            f = json.loads(fjson.read_text())
            return {"final_accuracy": f["final_accuracy"], "s_per_round": f["s_per_round"],
                    "s_per_round_steady": f.get("s_per_round_steady"), "flwr_version": f["flwr_version"],
                    "accuracy_per_round": f["accuracy_per_round"]}
        record("flower", fcmd, summarize_flower)
        for name in ("semifl_embedded", "semifl_mosquitto"):
            results[name]["vs_flower"] = {
                "wall_ratio": results[name]["wall_s"] / results["flower"]["wall_s"],
                "s_per_round_ratio": results[name]["s_per_round"] / results["flower"]["s_per_round"],
                "peak_rss_ratio": results[name]["peak_rss_bytes"] / results["flower"]["peak_rss_bytes"]}
    doc = {"benchmark": "fl_baseline_rounds", "rounds": args.rounds, "init": args.init, "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.processor()},
           "target": "wall time and peak RSS each <= 0.5x Flower's", "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"[bench] wrote {args.out}")
    for name, r in results.items():
        if "vs_flower" in r:
            v = r["vs_flower"]
            print(f"[bench] {name}/flower: wall {v['wall_ratio']:.2f}x, s/round {v['s_per_round_ratio']:.2f}x, "
                  f"peak RSS {v['peak_rss_ratio']:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
