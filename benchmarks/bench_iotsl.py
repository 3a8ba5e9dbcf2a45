"""IoTSL against split learning (seed 002, Section V-F and Table II): 5 devices holding 2/4/6/8 classes
in blocks of distinct images, best test accuracy of each, values moved until IoTSL reaches what SL
reaches at best (within a point), epsilon of every generator. In-process, on this machine's CPU, so
at a scale the seed's GPU runs dwarf: `--block` images per class and device (seed: 1200), `--epochs`
SL epochs, `--gen-steps` generator steps; all recorded in the JSON.

    python benchmarks/bench_iotsl.py --dataset mnist    # then --dataset fashion; each merges into iotsl.json

Writes benchmarks/results/iotsl_<dataset>.json (everything) and merges the summary into
benchmarks/results/iotsl.json: {"mnist" | "fashion": {"classes_per_device", "sl", "iotsl", "comm_params":
{"sl", "iotsl"}, "comm_reduction"}, "epsilon", "delta"}.

A cell at a larger scale is an hour of one core, so the table at that scale is run a cell at a time
(`--k 4 --block 300 --gen-steps 3000 --out DIR`, on as many cores as there are) and then assembled,
unchanged, from the cells' full JSON:

    python benchmarks/bench_iotsl.py --cells DIR [DIR ...]    # -> --out's iotsl.json and iotsl_<dataset>.json
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
    ap.add_argument("--cells", nargs="+", metavar="DIR", help="assemble the table from these runs' iotsl_<dataset>.json "
                    "instead of running (every dataset found; one cell per classes-per-device)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.cells:
        for dataset, full in assemble([Path(d) for d in a.cells]).items():
            write(out, full)
        return
    data = a.data or (str(MNIST) if a.dataset == "mnist" else None)
    ds = load_idx_dataset(data, name=a.dataset)
    t0 = time.perf_counter()
    cells = [iotsl.run(ds, int(k), a.block, a.epochs, a.gen_steps, a.gen_dim, a.sigma, a.gen_batch, lr=a.lr,
                       test_n=a.test_n, max_epsilon=a.max_epsilon,
                       log=lambda s: print(s, flush=True)) for k in a.k.split(",")]
    cells = [{**c, "settings": {key: vars(a)[key] for key in SETTINGS}} for c in cells]
    write(out, {"dataset": a.dataset, "settings": vars(a), "seconds": round(time.perf_counter() - t0, 1),
                "seed_paper": SEED[a.dataset], "cells": cells})


SCALE = ("block", "epochs", "gen_steps", "gen_dim", "gen_batch", "sigma", "test_n")
SETTINGS = SCALE + ("lr", "max_epsilon")


def assemble(dirs: list[Path]) -> dict:
    """{dataset: full JSON} from the cells of several runs, sorted by classes per device; each cell keeps
    the settings it ran with. Two runs of one cell are an error: which one is the table's must be chosen."""
    by, seconds = {}, {}
    for d in dirs:
        for p in sorted(d.glob("iotsl_*.json")):
            run = json.loads(p.read_text())
            for c in run["cells"]:
                key = (run["dataset"], c["k"])
                if key in by:
                    raise SystemExit(f"{key[0]} with {key[1]} classes per device is in both {by[key]['from']} and {p}")
                settings = c.get("settings") or {s: run["settings"][s] for s in SETTINGS}
                by[key] = {**c, "settings": settings, "from": str(p)}
            seconds[str(p)] = run["seconds"]
    full = {}
    for (dataset, _), c in sorted(by.items()):
        full.setdefault(dataset, {"dataset": dataset, "settings": None, "seconds": None, "seed_paper": SEED[dataset],
                                  "cells": []})["cells"].append(c)
    for f in full.values():
        runs = sorted({c["from"] for c in f["cells"]})
        f.update(settings={"assembled_from": runs}, seconds=round(sum(seconds[r] for r in runs), 1))
    return full


def write(out: Path, full: dict):
    """Write the run's full JSON and merge its summary (the output contract) into out/iotsl.json."""
    dataset, cells = full["dataset"], full["cells"]
    (out / f"iotsl_{dataset}.json").write_text(json.dumps(full, indent=1) + "\n")
    merged_path = out / "iotsl.json"
    merged = json.loads(merged_path.read_text()) if merged_path.exists() else {}
    scale = {key: [c["settings"][key] for c in cells] for key in SCALE}
    merged[dataset] = {
        "classes_per_device": [c["k"] for c in cells], "sl": [c["sl"]["best"] for c in cells],
        "iotsl": [c["iotsl"]["best"] for c in cells],
        "comm_params": {"sl": [c["comm_params_to_target"]["sl"] for c in cells],
                        "iotsl": [c["comm_params_to_target"]["iotsl"] for c in cells]},
        "comm_reduction": [c["comm_reduction"] for c in cells], "seed_paper": SEED[dataset],
        "pretrain_accuracy": [c["pretrain_accuracy"] for c in cells],
        "epoch_to_target": {"sl": [c["sl"]["epoch_to_target"] for c in cells],
                            "iotsl": [c["iotsl"]["epoch_to_target"] for c in cells]},
        # one value where every cell ran alike, else one per cell
        "scale": {key: v[0] if len(set(v)) == 1 else v for key, v in scale.items()}}
    # a dataset's generators are replaced as a whole: none of an older run's cells may linger
    eps = {g: e for g, e in merged.get("epsilon_by_generator", {}).items() if not g.startswith(f"{dataset}/")}
    eps.update({f"{dataset}/{c['k']}/{g['device']}": g["epsilon"] for c in cells for g in c["generators"]})
    merged["epsilon_by_generator"] = eps
    merged["epsilon"] = list(eps.values())
    merged["delta"] = cells[0]["generators"][0]["delta"]
    merged_path.write_text(json.dumps(merged, indent=1) + "\n")
    print(json.dumps(merged[dataset], indent=1))


if __name__ == "__main__":
    main()
