"""Energy-aware planning, the trade-off: accuracy against device energy against fleet lifetime.

The seed's fleet (6 Pi 4 FL clients, 4 ESP32 CL uploaders, SemiFL, `semifl run` over the embedded
broker) with the Pis on batteries at different initial charge, for fl_min_battery 0, 0.3, 0.5, 0.7
(a Pi below it does not train; the Pi agent cannot upload samples and its data is private, so it sits
out). Each Pi's SimBattery drains by its board profile's numbers, the ones the virtual meter charges
(sim.fleet.pi_battery), under two battery models:
  idle:  the battery also pays the Pi 4's idle power (it has no sleep), the realistic case;
  sleep: only work drains it (a board that sleeps between tasks at no cost), the best case for planning.
A device "runs flat" when the battery it reports is below min_battery (5 %); the planner then sits it
out for good. Lifetime = the first round a device reports a flat battery.

Writes benchmarks/results/energy_planning.json.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_energy_planning.py [--rounds 100]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from semifl.config import RunConfig
from semifl.energy import load_profile
from semifl.fleet.planner import PlannerConfig
from semifl.learn.data import load_idx_dataset
from semifl.app.run import run_experiment

HERE = Path(__file__).resolve().parent
THRESHOLDS = (0.0, 0.3, 0.5, 0.7)
CHARGES = "1.0,0.8,0.6,0.45,0.35,0.25"      # pi-00 .. pi-05 at the start
# capacity per battery model, chosen so that with no threshold the emptiest Pi runs flat about a
# third of the way into 100 rounds (about 1.4 J a round with idle, 0.35 J a round without)
CAPACITY_J = {"idle": 210.0, "sleep": 50.0}


def analyse(s: dict, min_battery: float) -> dict:
    rounds = s["rounds"]
    pis = [d for d in s["devices"] if d["device_class"] == "pi"]
    flat = {}   # device -> first round it reported a battery below min_battery
    for m in rounds:
        for d, lvl in m.get("device_battery", {}).items():
            if lvl < min_battery and d not in flat:
                flat[d] = m["round"]
    first, last = rounds[0].get("device_battery", {}), rounds[-1].get("device_battery", {})
    cap = {d["id"]: v for d, v in zip(pis, [float(c) for c in s["config"]["pi_battery_j"].split(",")] * len(pis))}
    by_class: dict[str, float] = {}
    for d in s["devices"]:
        by_class[d["device_class"]] = by_class.get(d["device_class"], 0.0) + d.get("energy_j", 0.0)
    return {
        "fl_min_battery": s["config"]["fl_min_battery"],
        "final_accuracy": s["final_accuracy"],
        "best_accuracy": max(m["accuracy"] for m in rounds),
        "energy_j": round(sum(by_class.values()), 2),
        "energy_j_by_class": {k: round(v, 2) for k, v in sorted(by_class.items())},
        # what the Pis' batteries actually gave (the meter above keeps charging a flat Pi's idle)
        "pi_battery_j_drawn": round(sum((first[d["id"]] - last[d["id"]]) * cap[d["id"]] for d in pis), 2),
        "rounds_trained": {d["id"]: sum(d["id"] in m["trained"] for m in rounds) for d in pis},
        "pi_battery_start": {d["id"]: first[d["id"]] for d in pis},
        "pi_battery_end": {d["id"]: last[d["id"]] for d in pis},
        "ran_flat": len(flat), "flat_at_round": dict(sorted(flat.items(), key=lambda kv: kv[1])),
        "lifetime_rounds": min(flat.values()) if flat else None,   # None: nobody ran flat within the run
        "fl_clients_per_round": round(sum(len(m["trained"]) for m in rounds) / len(rounds), 2),
        "mean_round_wall_s": round(sum(m["wall_s"] for m in rounds) / len(rounds), 4),
    }


def role_joules(s: dict) -> dict:
    """What a round in each role costs a Pi 4 beyond idle, from the run's own measurements: FL = its
    measured training seconds at cpu_active power plus its measured upload bytes at the Wi-Fi TX rate;
    CL = the bytes a CL upload of the same fleet took (the MCUs' samples, S = 0.3) at the Pi's TX rate.
    A Pi that took CL instead of FL would spend more, so the planner's only cheaper choice is to sit out."""
    p = load_profile("rpi4")
    j_per_byte = p.watts("wifi_tx") * 8 / p.throughput_bps
    fl, cl = [], []
    for m in s["rounds"]:
        for d in m["trained"]:
            t = m["device_times_s"].get(d, {})
            up = m["device_bytes"].get(d, [0, 0])[0]
            fl.append(t.get("local", 0.0) * p.watts("cpu_active") + up * j_per_byte)
        for d in m["participants"]["cl"]:
            cl.append(m["device_bytes"].get(d, [0, 0])[0] * j_per_byte)
    mean = lambda v: round(sum(v) / len(v), 4) if v else None
    return {"fl_round_j": mean(fl), "cl_upload_j": mean(cl), "idle_w": round(p.watts("idle"), 3),
            "cpu_active_w": round(p.watts("cpu_active"), 3), "tx_j_per_byte": j_per_byte}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--init", help="initial model of every run (the seed's get_initial_model.mat or an .npz); "
                                   "default: Glorot-uniform from the seed")
    a = ap.parse_args(argv)
    ds = load_idx_dataset()
    t0 = time.time()
    out = {"rounds": a.rounds, "init": a.init, "fleet": "6 Pi 4 (battery) + 4 ESP32 (CL), one Fashion-MNIST class each, semifl",
           "pi_charge_start": CHARGES, "capacity_j": CAPACITY_J, "min_battery": PlannerConfig().min_battery,
           "thresholds": list(THRESHOLDS), "int8_every": 0,
           "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "models": {}}
    with tempfile.TemporaryDirectory() as d:
        for model, cap in CAPACITY_J.items():
            rows = []
            for th in THRESHOLDS:
                cfg = RunConfig.make(rounds=a.rounds, out=str(Path(d) / f"{model}-{th}"), plot=False, int8_every=0,
                                pi_battery_j=str(cap), pi_charge=CHARGES, pi_battery_idle=model == "idle",
                                fl_min_battery=th, init=a.init)
                s = run_experiment(cfg, ds=ds)
                row = analyse(s, PlannerConfig().min_battery)
                if th == 0.0:
                    out["models"].setdefault(model, {})["role_joules"] = role_joules(s)
                rows.append(row)
                print(model, json.dumps(row), flush=True)
            out["models"][model]["runs"] = rows
    out["wall_s"] = round(time.time() - t0, 1)
    (HERE / "results" / "energy_planning.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
