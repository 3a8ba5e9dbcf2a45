"""Seed 002's energy claim on the virtual bench: total device energy of split learning against IoTSL,
to the same accuracy. `semifl run --strategy sl` and `--strategy iotsl` over the embedded broker with
5 virtual Pi 4s (the real agent processes) holding 2 classes each; joules from the virtual meter
(each device's own CPU seconds and its counted bytes at the Pi 4 profile's power), summed round by
round until a run first reaches within a point of SL's best.

    python benchmarks/bench_sl_energy.py [--per-device 200 --rounds 5 --gen-steps 60]

Writes benchmarks/results/sl_energy.json. The seed (five Pi 4s, plug-in meter): SL 2.07e5 J, IoTSL 3.17e4 J.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from semifl.config import RunConfig   # noqa: E402
from semifl.energy import fleet_energy   # noqa: E402
from semifl.learn.data import Dataset, load_idx_dataset   # noqa: E402
from semifl.app.run import run_experiment   # noqa: E402

HERE = Path(__file__).resolve().parent
MNIST = HERE.parent.parent / "shared" / "data" / "mnist"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(MNIST))
    ap.add_argument("--per-device", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gen-steps", type=int, default=60)
    a = ap.parse_args(argv)
    full = load_idx_dataset(a.data, name="mnist")
    # 5 devices x 2 classes (partition k-classes) over the first per_device * 5 images
    n = 5 * a.per_device
    ds = Dataset(full.name, full.x_train[:n], full.y_train[:n], full.x_test[:1000], full.y_test[:1000], full.classes)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in ("sl", "iotsl"):
            cfg = RunConfig.make(strategy=strategy, rounds=a.rounds, fl_devices=5, cl_devices=0, partition="k-classes",
                            k_classes=2, lr=0.05, sl_lr=0.05, sl_batch=32, sl_batches=0, eval_n=0, pretrain_n=0,
                            gen_timeout_s=0, gen_steps=a.gen_steps, max_epsilon=50.0, out=f"{tmp}/{strategy}",
                            plot=False, int8_every=0)
            s = run_experiment(cfg, ds=ds)
            boards = {d["id"]: d["board"] for d in s["devices"]}
            per_round = [sum(v["energy_j"] for v in fleet_energy(s["rounds"][:r], boards).values())
                         for r in range(1, len(s["rounds"]) + 1)]
            runs[strategy] = {"accuracy": [r["accuracy"] for r in s["rounds"]], "energy_j_cumulative": per_round,
                              "energy_j": sum(d["energy_j"] for d in s["devices"]),
                              "energy_by_phase": {ph: round(sum(d["energy_by_phase"][ph] for d in s["devices"]), 2)
                                                  for ph in ("train", "infer", "upload", "download", "idle")},
                              "bytes_up": sum(r["bytes_up"] for r in s["rounds"]),
                              "bytes_down": sum(r["bytes_down"] for r in s["rounds"])}
            print(strategy, runs[strategy]["accuracy"], round(runs[strategy]["energy_j"], 1), flush=True)
    target = max(runs["sl"]["accuracy"]) - 0.01
    for r in runs.values():
        hit = next((i for i, acc in enumerate(r["accuracy"]) if acc >= target), None)
        r["round_to_target"] = None if hit is None else hit + 1
        r["energy_j_to_target"] = None if hit is None else round(r["energy_j_cumulative"][hit], 2)
    out = {"setup": f"5 virtual Pi 4 (agent processes), MNIST, 2 classes each, {a.per_device} images per device, "
                    f"{a.rounds} rounds, IoTSL generators {a.gen_steps} steps", "target_accuracy": target, "runs": runs,
           "seed_paper": {"sl_j": 2.07e5, "iotsl_j": 3.17e4}}
    (HERE / "results" / "sl_energy.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
