"""IoTSL against split learning (seed 002, Section V-F and Table II): 5 devices holding 2/4/6/8 classes
in blocks of distinct images, best test accuracy of each, values moved until IoTSL reaches what SL
reaches at best (within a point), epsilon of every generator. In-process, on this machine's CPU, so
at a scale the seed's GPU runs dwarf: `--block` images per class and device (seed: 1200), `--epochs`
SL epochs, `--gen-steps` generator steps; all recorded in the JSON.

    python benchmarks/bench_iotsl.py --dataset mnist    # then --dataset fashion; each merges into iotsl.json

Writes benchmarks/results/iotsl_<dataset>.json (everything) and merges the summary into
benchmarks/results/iotsl.json: {"mnist" | "fashion": {"classes_per_device", "sl", "iotsl", "comm_params":
{"sl", "iotsl"}, "comm_reduction"}, "epsilon", "delta"}.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from semifl.experiments import iotsl   # noqa: E402
from semifl.learn.data import load_idx_dataset   # noqa: E402

HERE = Path(__file__).resolve().parent
MNIST = HERE.parent.parent / "shared" / "data" / "mnist"
SEED = {"mnist": {"sl": [0.1592, 0.4834, 0.965, 0.9911], "iotsl": [0.9727, 0.9813, 0.9902, 0.9939], "comm_reduction": 0.845},
        "fashion": {"sl": [0.1497, 0.4599, 0.6404, 0.8682], "iotsl": [0.7842, 0.82, 0.8599, 0.8996], "comm_reduction": 0.703}}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=["mnist", "fashion"], default="mnist")
    ap.add_argument("--data", help="IDX folder (default: ../shared/data/mnist or Debian's Fashion-MNIST)")
    ap.add_argument("--k", default="2,4,6,8")
    ap.add_argument("--block", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--gen-steps", type=int, default=150)
    ap.add_argument("--gen-dim", type=int, default=32)
    ap.add_argument("--sigma", type=float, default=1.5)
    ap.add_argument("--gen-batch", type=int, default=16, help="generator batch: q = batch / n sets epsilon")
    ap.add_argument("--max-epsilon", type=float, default=10.0, help="the devices' privacy policy")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--test-n", type=int, default=2000)
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    data = a.data or (str(MNIST) if a.dataset == "mnist" else None)
    ds = load_idx_dataset(data, name=a.dataset)
    t0 = time.perf_counter()
    cells = [iotsl.run(ds, int(k), a.block, a.epochs, a.gen_steps, a.gen_dim, a.sigma, a.gen_batch, lr=a.lr,
                       test_n=a.test_n, max_epsilon=a.max_epsilon,
                       log=lambda s: print(s, flush=True)) for k in a.k.split(",")]
    full = {"dataset": a.dataset, "settings": vars(a), "seconds": round(time.perf_counter() - t0, 1),
            "seed_paper": SEED[a.dataset], "cells": cells}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"iotsl_{a.dataset}.json").write_text(json.dumps(full, indent=1) + "\n")
    merged_path = out / "iotsl.json"
    merged = json.loads(merged_path.read_text()) if merged_path.exists() else {}
    merged[a.dataset] = {
        "classes_per_device": [c["k"] for c in cells], "sl": [c["sl"]["best"] for c in cells],
        "iotsl": [c["iotsl"]["best"] for c in cells],
        "comm_params": {"sl": [c["comm_params_to_target"]["sl"] for c in cells],
                        "iotsl": [c["comm_params_to_target"]["iotsl"] for c in cells]},
        "comm_reduction": [c["comm_reduction"] for c in cells], "seed_paper": SEED[a.dataset],
        "pretrain_accuracy": [c["pretrain_accuracy"] for c in cells],
        "epoch_to_target": {"sl": [c["sl"]["epoch_to_target"] for c in cells],
                            "iotsl": [c["iotsl"]["epoch_to_target"] for c in cells]},
        "scale": {k: vars(a)[k] for k in ("block", "epochs", "gen_steps", "gen_dim", "gen_batch", "sigma", "test_n")}}
    eps = {f"{d}/{c['k']}/{g['device']}": g["epsilon"] for d, v in [(a.dataset, cells)] for c in v for g in c["generators"]}
    merged.setdefault("epsilon_by_generator", {}).update(eps)
    merged["epsilon"] = list(merged["epsilon_by_generator"].values())
    merged["delta"] = cells[0]["generators"][0]["delta"]
    merged_path.write_text(json.dumps(merged, indent=1) + "\n")
    print(json.dumps(merged[a.dataset], indent=1))


if __name__ == "__main__":
    main()
