"""Seed 001 (Zhang, heterogeneous compressed local models), its Figure 4 setup: a 5-layer MLP of 10
sigmoid neurons each, binary classification of 5 Gaussian features (std 1, class means -1 and +1),
1,000 training samples, full-batch gradient descent, 1,000 validation and 1,000 test samples.

Rows: the dtype the device trains in (float64, float32, float16) and int8 (the float32 model
quantized in TFLite's scheme, as a device would run it: inference only, training in int8 is not a
thing numpy or TFLite do). Per row: time per epoch (median of the measured epochs), peak memory an
epoch allocates (tracemalloc: numpy's buffers), test accuracy after training, epochs to the best
validation accuracy. The seed's numbers (Raspberry Pi-class, its own framework): float64 31.2 ms and
1.7 MB per epoch, float32 25.3 ms and 1.2 MB, same accuracy. Writes benchmarks/results/seed001_dtypes.json.

    python benchmarks/bench_seed001.py [--epochs 300]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from semifl.learn import mlp

HERE = Path(__file__).resolve().parent
LAYERS = (5, 10, 10, 10, 10, 10, 2)   # 5 hidden layers of 10 sigmoid neurons; 2-way softmax = sigmoid output
SEED_PAPER = {"float64": {"ms_per_epoch": 31.2, "mb_per_epoch": 1.7}, "float32": {"ms_per_epoch": 25.3, "mb_per_epoch": 1.2}}


def gaussian_data(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, 5)) + np.where(y[:, None] == 1, 1.0, -1.0)
    return x, y


def train(dtype, x, y, xv, yv, epochs: int, lr: float):
    params = mlp.init_params(LAYERS, seed=0, dtype=dtype)
    x, xv = x.astype(dtype), xv.astype(dtype)
    times, peaks, best, best_epoch = [], [], 0.0, 0
    for e in range(epochs):
        tracemalloc.start()
        t = time.perf_counter()
        _, g = mlp.loss_and_grad(params, x, y, "sigmoid")
        params = [p - dtype(lr) * gi.astype(dtype) for p, gi in zip(params, g)]
        times.append(time.perf_counter() - t)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        acc = float((mlp.predict(params, xv, "sigmoid") == yv).mean())
        if acc > best:
            best, best_epoch = acc, e + 1
    return params, times, peaks, best, best_epoch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1.0)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x, y = gaussian_data(1000, rng)
    xv, yv = gaussian_data(1000, rng)
    xt, yt = gaussian_data(1000, rng)
    rows = {}
    with threadpool_limits(1):   # one core, as a device
        for name, dt in (("float64", np.float64), ("float32", np.float32), ("float16", np.float16)):
            params, times, peaks, best, best_epoch = train(dt, x, y, xv, yv, a.epochs, a.lr)
            rows[name] = {"ms_per_epoch": round(1e3 * statistics.median(times[5:]), 3),
                          "mb_per_epoch": round(max(peaks) / 1e6, 3),
                          "test_accuracy": float((mlp.predict(params, xt.astype(dt), "sigmoid") == yt).mean()),
                          "best_val_accuracy": best, "epochs_to_best": best_epoch,
                          "model_bytes": int(sum(p.nbytes for p in params))}
            if name == "float32":
                f32 = params
            print(name, rows[name], flush=True)
        # int8 row: the trained float32 model with per-tensor symmetric int8 weights (what a device stores
        # and ships), run with float activations; semifl.learn.int8 has no sigmoid table yet
        w8 = [np.clip(np.round(p / (np.abs(p).max() / 127 or 1)), -127, 127).astype(np.int8) if p.ndim == 2 else p
              for p in f32]
        scales = [float(np.abs(p).max() / 127 or 1) if p.ndim == 2 else 1.0 for p in f32]
        deq = [w.astype(np.float32) * np.float32(s) if w.dtype == np.int8 else w for w, s in zip(w8, scales)]
        t = []
        for _ in range(50):
            t0 = time.perf_counter()
            mlp.predict(deq, xt.astype(np.float32), "sigmoid")
            t.append(time.perf_counter() - t0)
        rows["int8 weights"] = {"test_accuracy": float((mlp.predict(deq, xt.astype(np.float32), "sigmoid") == yt).mean()),
                                "model_bytes": int(sum(w.nbytes for w in w8)), "infer_ms_1000": round(1e3 * statistics.median(t), 3),
                                "note": "per-tensor symmetric int8 weights, float32 biases and activations; inference only"}
    out = {"setup": "seed 001 Fig. 4: 5x10 sigmoid MLP, 5 Gaussian features, 1000 train, full-batch GD",
           "epochs": a.epochs, "lr": a.lr, "machine": platform.platform(), "numpy": np.__version__,
           "rows": rows, "seed_paper": SEED_PAPER,
           "ratios": {"float32_vs_float64_time": rows["float32"]["ms_per_epoch"] / rows["float64"]["ms_per_epoch"],
                      "float32_vs_float64_memory": rows["float32"]["mb_per_epoch"] / rows["float64"]["mb_per_epoch"],
                      "seed_float32_vs_float64_time": 25.3 / 31.2, "seed_float32_vs_float64_memory": 1.2 / 1.7}}
    (HERE / "results" / "seed001_dtypes.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["ratios"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
