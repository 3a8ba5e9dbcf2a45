"""Stragglers: synchronous rounds that wait for everyone (sync-all) against synchronous rounds with a
quorum and a deadline, and against buffered asynchronous rounds (FedBuff), on the same uneven fleet
with the same seed. Writes benchmarks/results/async.json.

Fleet: 30 Pi-class devices, each the real Pi agent as its own process, over Mosquitto (the embedded
broker when Mosquitto is not installed), Fashion-MNIST split over them by Dirichlet(0.5). Simulated
compute and link: a training task takes at least `--train-s` seconds on a device, every link has
`--bandwidth-bps` and `--latency-s`; every third device is 10x slower in both (pi-02, pi-05, ...);
pi-00 answers every announcement and never does its task. FedAvg, one local step on 30 % of a
device's data per task.

Modes, each for the same wall-time budget of rounds (`--budget-s`; a round is a merge in async):
  sync-all   every device is tasked every round, and a round waits for all of them, up to the hard
             limit `--deadline-all-s` (the old behaviour: the silent device holds every round that long)
  quorum     K = 10 of 20 tasked devices report; a round closes once 10 have and `--deadline-s` passed
  async      FedBuff: devices train on the model version they hold, every 10 updates are merged with
             the weight 1/sqrt(1 + staleness); an update more than `--max-staleness` versions old is dropped
Per mode: wall time and device-joules (the virtual meter of the rpi4 profile, every device, idle time
included) until the global model first reaches the target accuracy, and the accuracy at the end of the
budget. The target is `--target` or, by default, a point under what sync-all ends at: what waiting
for everyone gets.

    python benchmarks/bench_async.py [--budget-s 300] [--modes sync-all,quorum,async]
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from semifl.app.run import run_experiment   # noqa: E402
from semifl.config import RunConfig   # noqa: E402
from semifl.energy import VirtualMeter, load_profile   # noqa: E402
from semifl.learn.data import load_idx_dataset   # noqa: E402
from semifl.transport.broker import free_port   # noqa: E402

DEVICES, SLOW, SILENT = 30, [1.0, 1.0, 10.0], "pi-00"


def mosquitto(tmp: Path):
    """A Mosquitto for the benchmark, or None (then the embedded broker)."""
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if exe is None:
        return None, None
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
                    "max_packet_size 4194304\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(0.5)
    return proc, f"mqtt://127.0.0.1:{port}"


def modes(a) -> dict[str, dict]:
    k, tasked, most = 10, 20, 10_000   # rounds: the time budget ends each run
    return {
        "sync-all": dict(fl_uploaders=DEVICES, over_select=0.0, rounds=most, collect_timeout_s=a.deadline_all_s),
        "quorum": dict(fl_uploaders=k, over_select=tasked / k - 1, quorum=k, deadline_s=a.deadline_s, rounds=most,
                       collect_timeout_s=a.deadline_all_s),
        "async": dict(mode="async", buffer=k, max_staleness=a.max_staleness, rounds=most,
                      collect_timeout_s=a.deadline_all_s),
    }


def joules(rounds: list[dict], devices: list[str], meter: VirtualMeter) -> list[float]:
    """Device-joules of each round, summed over the fleet: radio time of the bytes each device moved,
    its compute seconds, and idle power for the rest of the round's wall time."""
    out = []
    for m in rounds:
        total = 0.0
        for d in devices:
            up, down = m["device_bytes"].get(d, (0, 0))
            t = m["device_times_s"].get(d, {})
            total += sum(meter.round_joules(m["wall_s"], train_s=t.get("local", 0.0), bytes_up=up,
                                            bytes_down=down).values())
        out.append(total)
    return out


def to_target(rounds: list[dict], energy: list[float], target: float):
    t = e = 0.0
    for m, j in zip(rounds, energy):
        t, e = t + m["wall_s"], e + j
        if m["accuracy"] >= target:
            return {"round": m["round"], "time_to_target_s": round(t, 2), "joules_to_target": round(e, 1)}
    return {"round": None, "time_to_target_s": None, "joules_to_target": None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=300.0, help="wall time of rounds each mode gets")
    ap.add_argument("--train-s", type=float, default=1.0, help="a training task's floor on a fast device")
    ap.add_argument("--bandwidth-bps", type=float, default=4e6)
    ap.add_argument("--latency-s", type=float, default=0.02)
    ap.add_argument("--deadline-s", type=float, default=4.0, help="quorum mode's deadline")
    ap.add_argument("--deadline-all-s", type=float, default=30.0,
                    help="the hard limit of every wait (sync-all's fixed deadline; async's task expiry)")
    ap.add_argument("--max-staleness", type=int, default=8)
    ap.add_argument("--target", type=float, help="target accuracy (default: a point under sync-all's final one)")
    ap.add_argument("--modes", default="sync-all,quorum,async")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", help="initial model of every run (the seed's get_initial_model.mat or an .npz); "
                                   "default: Glorot-uniform from the seed")
    ap.add_argument("--out", default=str(HERE / "results" / "async.json"))
    a = ap.parse_args(argv)
    ds = load_idx_dataset()
    meter = VirtualMeter(load_profile("rpi4"))
    tmp = Path(tempfile.mkdtemp(prefix="semifl-async-"))
    broker, url = mosquitto(tmp)
    common = dict(strategy="fedavg", fl_devices=DEVICES, cl_devices=0, partition="dirichlet", alpha=0.5, prune=0.0,
                  fl_fraction=0.3, lr=0.1, seed=a.seed, init=a.init, int8_every=0, plot=False, latency_s=a.latency_s,
                  bandwidth_bps=a.bandwidth_bps, pi_train_s=a.train_s, pi_slowdown=SLOW, silent=[SILENT],
                  ready_timeout_s=5.0, broker=url)
    runs = {}
    try:
        for name, over in modes(a).items():
            if name not in a.modes.split(","):
                continue
            cfg = RunConfig.make(**{**common, **over, "out": str(tmp / name)})
            print(f"[bench] {name}: {a.budget_s:.0f} s of rounds with {over}", flush=True)
            t0, spent = time.perf_counter(), [0.0]

            def budget(m, spent=spent):
                spent[0] += m["wall_s"]
                return spent[0] >= a.budget_s
            s = run_experiment(cfg, ds=ds, stop=budget)
            rounds = s["rounds"]
            runs[name] = {"wall_s": round(time.perf_counter() - t0, 1), "rounds": rounds, "settings": over,
                          "energy": joules(rounds, [d["id"] for d in s["devices"]], meter), "late": s["late"]}
            print(f"[bench] {name}: final {rounds[-1]['accuracy']:.4f} in {sum(m['wall_s'] for m in rounds):.1f} s "
                  f"of rounds ({runs[name]['wall_s']} s with start-up)", flush=True)
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)
    ref = runs["sync-all"] if "sync-all" in runs else min(runs.values(), key=lambda r: r["rounds"][-1]["accuracy"])
    target = a.target or round(ref["rounds"][-1]["accuracy"] - 0.01, 4)
    doc = {"benchmark": "async", "init": a.init, "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
           "broker": "mosquitto" if url else "embedded", "fleet": {"devices": DEVICES, "slowdown_cycle": SLOW,
                                                                  "silent": SILENT, "partition": "dirichlet 0.5"},
           "settings": vars(a), "target_accuracy": target, "modes": {}}
    for name, r in runs.items():
        reached = to_target(r["rounds"], r["energy"], target)
        train = [m["phases_s"].get("train", 0.0) for m in r["rounds"]]
        doc["modes"][name] = {
            **reached, "final_accuracy": r["rounds"][-1]["accuracy"], "target_accuracy": target,
            "rounds": len(r["rounds"]), "updates": sum(len(m["participants"]["fl"]) for m in r["rounds"]),
            "round_s_mean": round(sum(m["wall_s"] for m in r["rounds"]) / len(r["rounds"]), 3),
            "longest_train_phase_s": round(max(train), 2), "total_s": round(sum(m["wall_s"] for m in r["rounds"]), 1),
            "joules": round(sum(r["energy"]), 1), "late": r["late"], "settings": r["settings"],
            "accuracy": [m["accuracy"] for m in r["rounds"]], "round_wall_s": [m["wall_s"] for m in r["rounds"]]}
    base = doc["modes"].get("sync-all", {}).get("time_to_target_s")
    if base:
        doc["speedup_vs_sync_all"] = {n: round(base / m["time_to_target_s"], 2)
                                      for n, m in doc["modes"].items() if m["time_to_target_s"]}
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    for n, m in doc["modes"].items():
        print(f"[bench] {n}: target {target:.4f} at {m['time_to_target_s']} s, {m['joules_to_target']} J; "
              f"final {m['final_accuracy']:.4f}; longest train phase {m['longest_train_phase_s']} s", flush=True)
    print(f"[bench] wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
