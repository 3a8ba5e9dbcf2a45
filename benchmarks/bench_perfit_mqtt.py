"""PerFit's methods over the broker (`semifl run --strategy ftl | fedper | fd | perfedavg | ditto`) at the
case study's scale, side by side with the same methods in-process (`bench_perfit.py`'s settings):
30 WISDM-2019 subjects as 30 virtual Pi agents (real processes, embedded broker), K = 5 per round,
300 rounds. Records each method's mean and worst-decile personal accuracy as the devices report it,
whether every device's accuracy equals the in-process run's, values and bytes one participant moves
per round, and wall time of both.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_perfit_mqtt.py    # -> benchmarks/results/perfit_mqtt.json
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np   # noqa: E402

from semifl.config import RunConfig   # noqa: E402
from semifl.experiments import perfit as ex   # noqa: E402
from semifl.learn.har import load_har   # noqa: E402
from semifl.app import run as experiment   # noqa: E402

HERE = Path(__file__).resolve().parent
RUNS = {"FTL-3NN": ("ftl", "3nn"), "FedPer": ("fedper", "3nn"), "FD-CNN": ("fd", "cnn"),
        "Per-FedAvg": ("perfedavg", "3nn"), "Ditto": ("ditto", "3nn")}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", help="folder of WISDM-2019 ARFF files (default: ../shared/data/wisdm-2019/watch_accel)")
    ap.add_argument("--subjects", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--methods", default=",".join(RUNS))
    ap.add_argument("--out", default=str(HERE / "results" / "perfit_mqtt.json"))
    a = ap.parse_args(argv)
    # bench_perfit.py's settings: SGD lr 0.01 momentum 0.9, 2 epochs of 32, FTL 10 fine-tuning epochs,
    # Per-FedAvg 80 adaptation steps of 0.01, Ditto lambda 0.1, FD 500 public windows per round
    common = dict(subjects=a.subjects, per_round=a.k, rounds=a.rounds, epochs=2, batch=32, lr=0.01, momentum=0.9,
                  ft_epochs=10, adapt_steps=80, inner_lr=0.01, lam=0.1, public_n=500, seed=0, data=a.data, plot=False)
    har = load_har(a.data, seed=0)
    out = {"settings": dict(common, k=a.k), "methods": {}}
    path = Path(a.out)
    for name in a.methods.split(","):
        strategy, arch = RUNS[name]
        cfg = RunConfig.make(strategy=strategy, arch=arch, **common)
        with tempfile.TemporaryDirectory() as d:
            cfg.out = d
            t0 = time.perf_counter()
            s = experiment.run_experiment(cfg)
            mqtt_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = ex.run(cfg, har, log=None)
        inproc_s = time.perf_counter() - t0
        got = {d["id"]: d["personal_accuracy"] for d in s["devices"]}
        diff = max(abs(got[d] - ref["per_device"][d]) for d in got)
        ups = [m["device_bytes"][d][0] for m in s["rounds"] for d in m["participants"]["fl"]]
        downs = [m["device_bytes"][d][1] for m in s["rounds"] for d in m["participants"]["fl"]]
        out["methods"][name] = {
            "strategy": strategy, "model": arch, "mean_acc": s["final_accuracy"], "p10_acc": s["final_p10_accuracy"],
            "in_process": {"mean_acc": ref["mean_acc"], "p10_acc": ref["p10_acc"], "seconds": round(inproc_s, 1)},
            "same_as_in_process": got == ref["per_device"], "max_abs_diff": diff,
            "values_per_round": s["values_per_round"], "bytes_up_per_round": int(np.mean(ups)),
            "bytes_down_per_round": int(np.mean(downs)), "rejected": s["rejected"],
            "seconds": round(mqtt_s, 1), "per_device": got}
        print(f"{name:11s} mean {100 * s['final_accuracy']:.2f} % (in-process {100 * ref['mean_acc']:.2f} %), "
              f"p10 {100 * s['final_p10_accuracy']:.2f} %, same: {got == ref['per_device']}, "
              f"{int(np.mean(ups))} B up / participant / round, {mqtt_s:.0f} s over MQTT, {inproc_s:.0f} s in-process",
              flush=True)
        path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
