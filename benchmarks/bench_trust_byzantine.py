"""Byzantine FL devices against the robust merge rules: accuracy and quarantine per attack, fraction
and rule, in-process (the real round object and device code over MemoryBroker; deterministic).
Writes the "byzantine" key of benchmarks/results/trust.json (the other keys are left as they are).

Workloads (30 rounds each, Fashion-MNIST, seed 0):
  seed         the default run: semifl, 6 FL (Pi) + 4 CL (MCU) devices, one class each; K = 3 of
               6 tasked FL clients upload per round
  dirichlet20  fedavg, 20 FL devices, Dirichlet(0.5) split, K = 10 of 20 tasked upload per round
Attacks (semifl.sim.attacks): sign_flip, scale100, label_flip, free_rider at 10/20/30 % of the FL
devices (at least one; the last ids), each under plain mean and every robust rule (learn/robust.py).

Per "<attack>@<fraction>": {"rule": the rule with the highest attacked accuracy, "acc_drop": the
clean plain-mean accuracy minus that one (a fraction), "byzantine": the attacking ids, "by_rule":
{rule: {"accuracy", "acc_drop", "quarantined": [...], "attackers_quarantined": bool}}}. "clean" holds
each rule's accuracy with no attacker (what a robust default would cost).

    python benchmarks/bench_trust_byzantine.py [--quick] [--only sign_flip@0.2,...] [--workloads seed]
        [--rules mean,median] [--rounds 30]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "trust.json"

from semifl.app.inprocess import run_inprocess  # noqa: E402
from semifl.app.run import fleet_specs, load_data  # noqa: E402
from semifl.config import RunConfig  # noqa: E402
from semifl.learn.robust import RULES  # noqa: E402
from semifl.sim import attacks  # noqa: E402

WORKLOADS = {
    "seed": dict(),
    "dirichlet20": dict(strategy="fedavg", fl_devices=20, cl_devices=0, partition="dirichlet", alpha=0.5,
                        fl_uploaders=10),
}
ATTACKS = ("sign_flip", "scale100", "label_flip", "free_rider")
FRACTIONS = (0.1, 0.2, 0.3)


def one(workload: str, rule: str, rounds: int, attack: str | None = None, fraction: float = 0.0, data=None,
        init: str | None = None):
    cfg = RunConfig.make(rounds=rounds, int8_every=0, aggregation=rule, init=init, **WORKLOADS[workload])
    data = data if data is not None else load_data(cfg)
    specs = fleet_specs(cfg, data)
    bad = attacks.pick([s.id for s in specs if s.device_class == "pi"], fraction) if attack else []
    ms = []
    t = time.time()
    run_inprocess(cfg, data, on_round=ms.append, specs=specs, attackers={d: attack for d in bad})
    q = ms[-1]["quarantined"]
    rejected = {}
    for m in ms:
        for k, v in m["rejected"].items():
            rejected[k] = rejected.get(k, 0) + v
    return {"accuracy": ms[-1]["accuracy"], "quarantined": q, "byzantine": bad,
            "attackers_quarantined": bool(bad) and set(bad) <= set(q), "rejected": rejected,
            "wall_s": round(time.time() - t, 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="seed workload, 20 %% only, 15 rounds")
    ap.add_argument("--only", default="", help="comma-separated attack@fraction cells (default: all)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    ap.add_argument("--rules", default=",".join(RULES), help="comma-separated rules (mean always runs)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--init", help="initial model of every run (the seed's get_initial_model.mat or an .npz); "
                                   "default: Glorot-uniform from the seed")
    ap.add_argument("--dry", action="store_true", help="print, do not write trust.json")
    ap.add_argument("--save", default="", help="also write the results to this file (trust.json is shared)")
    a = ap.parse_args(argv)
    rounds = 15 if a.quick else a.rounds
    workloads = ["seed"] if a.quick else [w for w in a.workloads.split(",") if w]
    rules = ["mean"] + [r for r in a.rules.split(",") if r and r != "mean"]
    cells = [c for c in a.only.split(",") if c] or [f"{x}@{f}" for x in ATTACKS for f in FRACTIONS
                                                   if not a.quick or f == 0.2]
    out = {"setup": {"rounds": rounds, "init": a.init, "rules": rules, "workloads": {w: WORKLOADS[w] for w in workloads},
                     "acc_drop": "clean plain-mean accuracy minus attacked accuracy (fraction)",
                     "machine": platform.platform(), "python": sys.version.split()[0]}, "clean": {}}
    t0 = time.time()
    for w in workloads:
        data = load_data(RunConfig.make(**WORKLOADS[w]))
        clean = {r: one(w, r, rounds, data=data, init=a.init)["accuracy"] for r in rules}
        out["clean"][w] = clean
        print(f"{w}: clean {clean}", flush=True)
        res = out[w] = {}
        for cell in cells:
            attack, frac = cell.split("@")
            by = {}
            for r in rules:
                x = one(w, r, rounds, attack, float(frac), data, a.init)
                x["acc_drop"] = round(clean["mean"] - x["accuracy"], 4)
                by[r] = x
            best = max(rules, key=lambda r: (by[r]["accuracy"], -rules.index(r)))
            res[cell] = {"rule": best, "acc_drop": by[best]["acc_drop"], "byzantine": by[best]["byzantine"],
                         "by_rule": {r: {k: by[r][k] for k in ("accuracy", "acc_drop", "quarantined",
                                                               "attackers_quarantined", "rejected")} for r in rules}}
            print(f"{w} {cell}: best {best} drop {by[best]['acc_drop']:+.4f} | " +
                  " ".join(f"{r} {by[r]['accuracy']:.4f}{'Q' if by[r]['attackers_quarantined'] else ''}" for r in rules)
                  + f"  [{time.time() - t0:.0f} s]", flush=True)
    out["setup"]["wall_s"] = round(time.time() - t0, 1)
    if a.save:
        Path(a.save).write_text(json.dumps(out, indent=1) + "\n")
    if a.dry:
        print(json.dumps(out, indent=1))
        return out
    doc = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if a.quick or a.only or a.workloads != ",".join(WORKLOADS) or a.rules != ",".join(RULES):
        out["setup"]["partial"] = True
    doc["byzantine"] = out
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {RESULTS} (byzantine) in {out['setup']['wall_s']} s")
    return out


if __name__ == "__main__":
    main()
