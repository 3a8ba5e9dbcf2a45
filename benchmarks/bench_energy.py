"""Device energy against accuracy per strategy on the virtual fleet (virtual meter, board profiles in
hil_tests/profiles): FedAvg (the seed's FL baseline), SemiFL, semifl+, `semifl run` over the embedded
broker, 50 rounds each, the seed's fleet (6 Pi 4 FL clients, 4 ESP32 CL uploaders under MicroPython).
Writes benchmarks/results/energy.json and docs/img/energy_vs_accuracy.png.

    python benchmarks/bench_energy.py [--rounds 50]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from semifl.config import RunConfig
from semifl.app.run import run_experiment
from semifl.service.report import energy_table, plot_energy_vs_accuracy

HERE = Path(__file__).resolve().parent
RUNS = {"fedavg": dict(strategy="fedavg", fl_uploaders=6), "semifl": dict(strategy="semifl"),
        "semifl+": dict(strategy="semifl+", lr=0.01)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--init", help="initial model of every run (the seed's get_initial_model.mat or an .npz); "
                                   "default: Glorot-uniform from the seed")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        dirs = []
        for name, over in RUNS.items():
            out = Path(d) / name
            run_experiment(RunConfig.make(rounds=a.rounds, out=str(out), plot=False, int8_every=10, init=a.init, **over))
            dirs.append(out)
        rows = energy_table(dirs)
        for r in rows:
            r["run"] = Path(r["run"]).name
        plot_energy_vs_accuracy(rows, HERE.parent / "docs" / "img" / "energy_vs_accuracy.png")
    (HERE / "results" / "energy.json").write_text(json.dumps({"rounds": a.rounds, "init": a.init, "runs": rows}, indent=1) + "\n")
    for r in rows:
        print(r, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
