"""1,000 rounds of the SemiFL seed setup in-process: semifl's in-process run (the round object an MQTT run
uses, over the in-memory broker, every message through the protocol's codec) vs a bare numpy loop of the
same arithmetic, both on one BLAS thread (the host's default, `host.threads`), and the FL baseline vs
Flower 1.41's simulation of it. Writes benchmarks/results/semifl_repro.json. Target: in-process <= 1.2x
the bare loop's time. --init starts every run from that model (the seed's get_initial_model.mat); with
--seed-curves each run's mean over its last 50 rounds is set against the seed's curve over the same rounds.

    python benchmarks/bench_semifl_repro.py [--rounds 1000] [--skip-flower] \
        [--init ../shared/data/semifl-seed/get_initial_model.mat --seed-curves ../shared/data/semifl-seed/published_curves.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from proctree import measure  # noqa: E402

OURS = """
import json, sys, time
from semifl.experiments.reproduce import run_baseline
from semifl.learn.data import load_idx_dataset
name, rounds, out, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
ds = load_idx_dataset()
t = time.perf_counter()
c = run_baseline(name, rounds, ds, **extra)
json.dump({"loop_s": time.perf_counter() - t, "final_accuracy": c["accuracy"][-1], "accuracy": c["accuracy"]}, open(out, "w"))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--skip-flower", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "semifl_repro.json"))
    ap.add_argument("--init", help="initial model file for every run (default: Glorot-uniform, seed 0)")
    ap.add_argument("--seed-curves", help="the seed's published curves (JSON): last-50-round means beside ours")
    a = ap.parse_args(argv)
    init = str(Path(a.init).resolve()) if a.init else None
    curves = json.loads(Path(a.seed_curves).read_text()) if a.seed_curves else {}
    tmp = Path(tempfile.mkdtemp(prefix="semifl-repro-"))
    res = {}

    def run(name, cmd, out, env=None):
        print(f"[bench] {name} ...", flush=True)
        m = measure(cmd, env=env, cwd=str(REPO))
        if m["rc"] != 0:
            raise SystemExit(f"{name} failed (rc {m['rc']})")
        m.update(json.loads(Path(out).read_text()))
        acc = m.pop("accuracy", None)
        m.pop("accuracy_per_round", None)
        if acc:
            m["last50_accuracy"] = sum(acc[-50:]) / len(acc[-50:])
            seed = curves.get({"semifl_inprocess": "semifl", "bare_numpy_loop": "semifl"}.get(name, ""), {}).get("accuracy")
            if seed and len(seed) >= len(acc):
                m["seed_last50_accuracy"] = sum(seed[len(acc) - 50:len(acc)]) / 50
        res[name] = m
        print(f"[bench] {name}: wall {m['wall_s']:.1f} s, loop {m.get('loop_s', float('nan')):.1f} s, "
              f"peak RSS {m['peak_rss_bytes'] / 2**20:.0f} MiB, accuracy {m['final_accuracy']:.4f}", flush=True)

    py = sys.executable
    one = dict(os.environ, OPENBLAS_NUM_THREADS="1")   # the same arithmetic on the same threads, side by side
    start = {"init": init} if init else {}
    run("semifl_inprocess", [py, "-c", OURS, "semifl", str(a.rounds), str(tmp / "s.json"), json.dumps(start)],
        tmp / "s.json", one)
    run("bare_numpy_loop", [py, str(HERE / "bare_semifl_loop.py"), "--rounds", str(a.rounds), "--out", str(tmp / "b.json")]
        + (["--init", init] if init else []), tmp / "b.json", one)
    # the FL baseline as Flower's script runs it: FedAvg of all 6, lr 0.1, no pruning
    fl = {"prune": 0.0, "lr": 0.1, **start}
    run("fl_inprocess", [py, "-c", OURS, "fl", str(a.rounds), str(tmp / "f.json"), json.dumps(fl)], tmp / "f.json", one)
    ratios = {"semifl_vs_bare_loop_time": res["semifl_inprocess"]["loop_s"] / res["bare_numpy_loop"]["loop_s"],
              "semifl_vs_bare_wall": res["semifl_inprocess"]["wall_s"] / res["bare_numpy_loop"]["wall_s"]}
    if not a.skip_flower:
        subprocess.run(["bash", str(HERE / "setup_flower.sh")], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        extra = []
        if init:   # the venv has no h5py: the model goes as the .npz of what semifl read
            from semifl.learn import initial
            np.savez(tmp / "init.npz", *initial.load(init))
            extra = ["--init-npz", str(tmp / "init.npz")]
        run("flower_fl", [str(REPO / ".venv-flwr" / "bin" / "python"), str(HERE / "flower_fl_baseline.py"),
                          "--rounds", str(a.rounds), "--out", str(tmp / "fl.json")] + extra, tmp / "fl.json")
        ratios["fl_inprocess_vs_flower_wall"] = res["fl_inprocess"]["wall_s"] / res["flower_fl"]["wall_s"]
        ratios["fl_inprocess_vs_flower_rss"] = res["fl_inprocess"]["peak_rss_bytes"] / res["flower_fl"]["peak_rss_bytes"]
    doc = {"benchmark": "semifl_repro", "command": "python benchmarks/bench_semifl_repro.py " + " ".join(
               sys.argv[1:] if argv is None else argv), "rounds": a.rounds, "init": a.init,
           "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
           "target": "in-process <= 1.2x the bare loop's time", "blas_threads": 1, "ratios": ratios, "results": res}
    Path(a.out).write_text(json.dumps(doc, indent=1))
    for k, v in ratios.items():
        print(f"[bench] {k}: {v:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
