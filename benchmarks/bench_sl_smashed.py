"""Split learning with compressed smashed data: float32 against float16 and int8 (a per-tensor
symmetric scale) on the wire, same devices, same seed. Accuracy per epoch and the bytes a device's
smashed data take; gradients stay float32. In-process (the device's SplitClient, the host's
SplitServer), the seed's sequential SL, Fashion-MNIST.

    python benchmarks/bench_sl_smashed.py [--devices 5 --per-device 400 --epochs 5]

Writes benchmarks/results/sl_smashed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np   # noqa: E402

from semifl.config import RunConfig   # noqa: E402
from semifl.learn.data import Dataset, load_idx_dataset   # noqa: E402
from semifl.models import get   # noqa: E402
from semifl.app.inprocess import run_inprocess   # noqa: E402

HERE = Path(__file__).resolve().parent
WIDTH = {"float32": 4, "float16": 2, "int8": 1}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=5)
    ap.add_argument("--per-device", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--test-n", type=int, default=2000)
    a = ap.parse_args(argv)
    full = load_idx_dataset(None)
    n = a.devices * a.per_device
    ds = Dataset(full.name, full.x_train[:n], full.y_train[:n], full.x_test[:a.test_n], full.y_test[:a.test_n], full.classes)
    net = get("splitcnn-mnist").network()
    f_a = net.split(get("splitcnn-mnist").cut)[0]
    F = int(np.prod(f_a.out_shapes[-1]))
    runs = {}
    for dtype in ("float32", "float16", "int8"):
        cfg = RunConfig.make(strategy="sl", rounds=a.epochs, fl_devices=a.devices, cl_devices=0, partition="iid", lr=0.05,
                        sl_lr=0.05, sl_batch=32, sl_batches=0, eval_n=0, smashed=dtype)
        acc, t0 = [], time.perf_counter()
        run_inprocess(cfg, ds, on_round=lambda m: acc.append(m["accuracy"]))   # on all of ds.x_test (eval_n 0)
        runs[dtype] = {"accuracy": acc, "final": acc[-1], "best": max(acc), "seconds": round(time.perf_counter() - t0, 1),
                       "smashed_bytes_per_device_epoch": a.per_device * F * WIDTH[dtype],
                       "gradient_bytes_per_device_epoch": a.per_device * F * 4}
        print(dtype, acc, flush=True)
    base = runs["float32"]
    out = {"dataset": ds.name, "devices": a.devices, "per_device": a.per_device, "epochs": a.epochs, "partition": "iid",
           "model": "splitcnn-mnist", "runs": runs,
           "accuracy_cost_points": {k: round(100 * (base["final"] - r["final"]), 2) for k, r in runs.items()},
           "uplink_saving": {k: 1 - r["smashed_bytes_per_device_epoch"] / base["smashed_bytes_per_device_epoch"] for k, r in runs.items()}}
    (HERE / "results" / "sl_smashed.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
