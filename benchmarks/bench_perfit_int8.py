"""PerFit's goal that a personalised model also runs int8 on the device: FTL-3NN on WISDM-2019 (30
subjects, K = 5, the settings of bench_perfit.py), then every device's personal model converted to a
full-integer .tflite (TensorFlow's converter, calibrated on that device's own training windows, as the
device would) and run in LiteRT and TFLite-Micro on the device's test windows, beside its float accuracy.

Needs TensorFlow (the export venv): `.venv-export/bin/python benchmarks/bench_perfit_int8.py`.
Writes benchmarks/results/perfit_int8.json.
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
from semifl.experiments import perfit as ex   # noqa: E402
from semifl.learn import perfit   # noqa: E402
from semifl.learn.har import load_har   # noqa: E402
from semifl.models import get   # noqa: E402
from semifl.models.export import convert, quantize_input, run_litert, run_tflm, tflm_arena   # noqa: E402

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--ft-epochs", type=int, default=10)
    a = ap.parse_args(argv)
    data = load_har()
    devices = ex.make_devices(data, a.clients, "3nn")
    cfg = perfit.Local(epochs=2, batch=32, lr=0.01, momentum=0.9)
    method = perfit.FTL(ex.network("3nn"), cfg, 0, ft_epochs=a.ft_epochs)
    t0 = time.perf_counter()
    res = ex.run(RunConfig.make(strategy="ftl", subjects=a.clients, per_round=5, rounds=a.rounds, seed=0), data, method,
                 log=None)
    spec = get("3nn-har")
    rows, arena_max = {}, 0
    for d in devices:
        tfl, _ = convert(spec, res["personal_models"][d.id], d.x[:500], d.x_test[:8])
        xq = quantize_input(tfl, d.x_test)
        lite = run_litert(tfl, xq)
        arena = tflm_arena(tfl) if not rows else arena_max   # same graph shape for every device
        arena_max = max(arena_max, arena)
        micro = run_tflm(tfl, xq, arena)
        rows[d.id] = {"fp32": res["per_device"][d.id], "int8_litert": float((lite.argmax(1) == d.y_test).mean()),
                      "int8_tflm": float((micro.argmax(1) == d.y_test).mean()), "n_test": int(len(d.y_test)),
                      "size_bytes": len(tfl)}
        print(d.id, rows[d.id], flush=True)
    drop = [r["fp32"] - r["int8_litert"] for r in rows.values()]
    out = {"method": "FTL-3NN", "clients": a.clients, "rounds": a.rounds, "k": 5, "ft_epochs": a.ft_epochs,
           "calibration": "each device's own first 500 training windows", "arena_bytes": arena_max,
           "mean_fp32": float(np.mean([r["fp32"] for r in rows.values()])),
           "mean_int8": float(np.mean([r["int8_litert"] for r in rows.values()])),
           "mean_int8_tflm": float(np.mean([r["int8_tflm"] for r in rows.values()])),
           "p10_fp32": ex.p10([r["fp32"] for r in rows.values()]),
           "p10_int8": ex.p10([r["int8_litert"] for r in rows.values()]),
           "max_drop_points": round(100 * max(drop), 2), "mean_drop_points": round(100 * float(np.mean(drop)), 2),
           "seconds": round(time.perf_counter() - t0, 1), "per_device": rows}
    (HERE / "results" / "perfit_int8.json").write_text(json.dumps(out, indent=1) + "\n")
    print({k: v for k, v in out.items() if k != "per_device"})


if __name__ == "__main__":
    main()
