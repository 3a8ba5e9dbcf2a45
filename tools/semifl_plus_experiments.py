"""semifl+ experiments: the in-process SemiFL round loop with an injected strategy, uplink accounting,
and named configurations for the ablation. One process, one core (set OPENBLAS_NUM_THREADS=1).

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=host:firmware/pi python tools/semifl_plus_experiments.py \
        --rounds 1000 --runs ablation          # or a comma list of RUNS names; --seed N for other seeds
        [--init get_initial_model.mat] [--out DIR]

Each run writes DIR/<run>_r<rounds>.json (per-round accuracy, loss, uplink bytes, device joules; the
command) and with --models its final model; a table of all finished runs in DIR is printed at the end (`--table` prints it without running
anything, `--summary PATH` writes its rows as JSON). DIR: /tmp/splus unless --out.
Uplink: FL bytes as they crossed the in-memory broker (updates in chunks, statuses); CL bytes as the
wire size of the samples blobs sent (blob + 24-byte chunk headers: 785 bytes a sample plus a header per
upload), so that the fresh-samples-only rule can be costed for SemiFL too (semifl+'s devices keep it
themselves, docs/protocol.md §5: for its runs the cost is what they send). CL baseline: 60000 x 785 bytes each round.
Joules: the virtual meter's active energy (semifl.energy: training seconds the device measured, bytes
at its board's radio rate and power; Pis as rpi4, MCUs as esp32), the MCUs' uploads under the run's rule;
no idle energy, since in-process rounds take no simulated time.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "host"), str(REPO / "firmware" / "pi")]

from semifl.app.inprocess import run_inprocess  # noqa: E402
from semifl.config import RunConfig  # noqa: E402
from semifl.energy import VirtualMeter, load_profile  # noqa: E402
from semifl.experiments.baselines import SEED_FLEET  # noqa: E402
from semifl.learn import initial  # noqa: E402
from semifl.fleet.planner import task_seed  # noqa: E402
from semifl.learn.data import load_idx_dataset  # noqa: E402
from semifl.learn.registry import SEMIFL_PLUS  # noqa: E402
from semifl.learn.semifl_plus import SemiFLPlus  # noqa: E402
from semifl.learn.strategy import SemiFL  # noqa: E402
from semifl.protocol import wire  # noqa: E402
from semifl.protocol.sampling import ceil_fraction, select  # noqa: E402
from semifl.sim.fleet import fleet_for, shard  # noqa: E402

OUT = Path("/tmp/splus")   # --out
SAMPLE_BYTES = 785   # the CL baseline's cost of one sample (784 pixels + label)
MCU_CHUNK = 4096     # an MCU's max_chunk


def wire_bytes(meta: dict, headers: list, chunk: int) -> int:
    """Bytes a blob occupies on the wire: meta, tensor headers and data, plus one header per chunk."""
    _, total = wire.blob_head(meta, headers)
    return total + wire.CHUNK_HEADER_LEN * wire.chunk_count(total, chunk)


# name -> (RunConfig overrides, SemiFLPlus kwargs or None for SemiFL, fresh-only CL uploads).
# prune="task": consistent with the FL clients' pruned copy at the task's P: the masked host step (cfg.prune), or
# nothing where the host prunes its own model each round (prune_global), as `semifl.app.build.make_round` does.
PLUS = dict(SEMIFL_PLUS, prune="task")   # what `--strategy semifl+` runs
HOST = {"prune_global": True}             # the host's model pruned like its clients' copy
# semifl+ from the seed's weights, as `semifl reproduce` runs it: the host prunes its own model, and its server
# Adam takes smaller, smoother steps (--server-lr 0.003 --server-beta2 0.999; the seed's tiny first layer)
SEED_PLUS = dict(PLUS, server_lr=0.003, beta2=0.999)
RUNS = {
    "semifl": ({}, None, False),
    "semifl-pruned-host": (HOST, None, False),
    "semifl-fresh": ({}, None, True),     # same training; the host keeps samples, devices send only new ones
    "plus": (HOST, SEED_PLUS, True),
    "plus-shipped": ({}, PLUS, True),     # `--strategy semifl+` with its defaults: masked step, Adam 0.005 / 0.99
    "plus-masked": ({}, SEED_PLUS, True),  # the masked prune-consistent step instead of pruning the host's model
    "plus-no-prune": ({}, dict(SEED_PLUS, prune=0.0), True),
    "plus-sgd": (HOST, dict(SEED_PLUS, server_opt="sgd", server_lr=None, schedule="constant"), True),  # SemiFL's step
    "plus-avgm": (HOST, dict(SEED_PLUS, server_opt="avgm", server_lr=0.1), True),
    "plus-yogi": (HOST, dict(SEED_PLUS, server_opt="yogi"), True),
    "plus-constlr": (HOST, dict(SEED_PLUS, schedule="constant"), True),
    "plus-no-clmem": (HOST, dict(SEED_PLUS, cl_memory=False), False),
    "plus-no-flmem": (HOST, dict(SEED_PLUS, fl_memory=False), True),
    "plus-no-decay": (HOST, dict(SEED_PLUS, fl_decay=1.0), True),
    "plus-no-floor": (HOST, dict(SEED_PLUS, fl_floor=0.0), True),
    "plus-unbalanced": (HOST, dict(SEED_PLUS, balanced=False), True),
    "plus-epochs3": ({"epochs": 3, **HOST}, SEED_PLUS, True),
}
ABLATION = ["semifl", "semifl-pruned-host", "semifl-fresh", "plus", "plus-shipped", "plus-masked", "plus-no-prune",
            "plus-sgd", "plus-constlr", "plus-no-clmem", "plus-no-flmem", "plus-no-decay", "plus-no-floor",
            "plus-unbalanced"]
CODE = ["host/semifl/learn/semifl_plus.py", "host/semifl/learn/strategy.py", "host/semifl/learn/mlp.py",
        "host/semifl/service/rounds/federated.py", "host/semifl/sim/fleet.py", "host/semifl/fleet/planner.py",
        "host/semifl/device/fl.py", "tools/semifl_plus_experiments.py"]


def code_digest() -> dict:
    """sha256 (first 12 hex) of the sources a result depends on: the tree is shared and changes."""
    return {f: hashlib.sha256((REPO / f).read_bytes()).hexdigest()[:12] for f in CODE}


def make(cfg: RunConfig, kwargs, sizes):
    if kwargs is None:
        return SemiFL(lr=cfg.lr)
    if kwargs.get("prune") == "task":
        kwargs = dict(kwargs, prune=0.0 if cfg.federated.prune_global else cfg.federated.prune)
    return SemiFLPlus(lr=cfg.lr, dataset_sizes=sizes, rounds=cfg.rounds, seed=cfg.seed, **kwargs)


def run(cfg: RunConfig, ds, kwargs, fresh_only: bool, log_every: int = 50) -> dict:
    """run_inprocess with the strategy injected; uplink from its per-round byte counts, except that
    under the fresh-samples-only rule a CL device sends only the samples of its (seed-reproducible)
    selection that it has not sent before."""
    specs = fleet_for(cfg, ds)
    data = {s.id: shard(ds, s) for s in specs}
    sizes = {d: len(v[1]) for d, v in data.items()}
    strategy = make(cfg, kwargs, sizes)
    sent = {d: set() for d in data}
    meters = {s.id: VirtualMeter(load_profile(s.sim.get("board", "rpi4" if s.device_class == "pi" else "esp32")))
              for s in specs}
    classes = {s.id: s.device_class for s in specs}
    rec = {"accuracy": [], "loss": [], "fl_bytes": [], "cl_bytes": [], "cl_new_samples": [], "fl": [], "cl": [],
           "joules": {"pi": [], "mcu": []}}
    t0 = time.time()

    def on_round(r):
        rnd, new, cl_bytes, up = r["round"], 0, 0, {}
        for d in r["participants"]["cl"]:
            n = len(data[d][1])
            idx = select(n, ceil_fraction(n, cfg.federated.cl_fraction), task_seed(cfg.seed, rnd, d))
            k = sum(i not in sent[d] for i in idx) if fresh_only else len(idx)
            sent[d].update(idx)
            new += k
            up[d] = wire_bytes({"kind": "samples", "round": rnd, "task": 10 ** 9, "device": d, "n": k},
                               [("uint8", (k, 784), 1.0, 0), ("uint8", (k,), 1.0, 0)], MCU_CHUNK) if k else 0
            cl_bytes += up[d]
        joules = {"pi": 0.0, "mcu": 0.0}
        for d, (b_up, b_down) in r["device_bytes"].items():
            if d not in meters:
                continue
            # a Pi's every byte as it crossed the broker; an MCU's samples as the run's rule sends them
            j = meters[d].round_joules(0.0, train_s=r.get("device_times_s", {}).get(d, {}).get("local", 0.0),
                                       bytes_up=b_up if classes[d] == "pi" else up.get(d, 0), bytes_down=b_down)
            joules[classes[d]] += sum(j.values())
        rec["joules"]["pi"].append(joules["pi"])
        rec["joules"]["mcu"].append(joules["mcu"])
        rec["accuracy"].append(r["accuracy"])
        rec["loss"].append(r["loss"])
        rec["fl_bytes"].append(r["bytes_by_class"].get("pi", [0, 0])[0])
        rec["cl_bytes"].append(cl_bytes)
        rec["cl_new_samples"].append(new)
        rec["fl"].append(r["participants"]["fl"])
        rec["cl"].append(r["participants"]["cl"])
        if log_every and (rnd % log_every == 0 or rnd == cfg.rounds):
            print(f"  round {rnd:4d}  acc {r['accuracy']:.4f}  loss {r['loss']:.4f}  {time.time() - t0:6.1f}s", flush=True)

    rec["params"] = run_inprocess(cfg, ds, on_round, strategy=strategy).params
    rec["seconds"] = time.time() - t0
    rec["n_train"] = int(sum(sizes.values()))
    return rec


def summary(res: dict) -> dict:
    acc, rounds = res["accuracy"], len(res["accuracy"])
    up = sum(res["fl_bytes"]) + sum(res["cl_bytes"])
    cl_round = res["n_train"] * SAMPLE_BYTES
    first = next((i + 1 for i, a in enumerate(acc) if a >= 0.82), None)
    out = {"run": res["run"], "rounds": rounds, "acc@300": acc[min(300, rounds) - 1], f"acc@{rounds}": acc[-1],
           "best": max(acc), "last50": sum(acc[-50:]) / len(acc[-50:]), "uplink_bytes": up,
           "fl_bytes": sum(res["fl_bytes"]), "cl_bytes": sum(res["cl_bytes"]),
           "pct_cl_per_round": 100.0 * up / (cl_round * rounds), "pct_cl_once": 100.0 * up / cl_round,
           "first_round_82": first, "init": res.get("init", initial.describe(None, res.get("config", {}).get("seed", 0))),
           "command": res.get("command")}
    if "joules" in res:
        j = res["joules"]
        out["joules"] = sum(j["pi"]) + sum(j["mcu"])
        if first:   # what it took to get there: uplink under the run's rule, and the devices' active joules
            out["to_82"] = {"round": first, "uplink_bytes": sum(res["fl_bytes"][:first]) + sum(res["cl_bytes"][:first]),
                            "cl_uplink_bytes": cl_round * first, "joules": sum(j["pi"][:first]) + sum(j["mcu"][:first]),
                            "joules_pi": sum(j["pi"][:first]), "joules_mcu": sum(j["mcu"][:first])}
    return out


def table(rounds: int, out: str | None = None, command: str | None = None) -> None:
    rows = []
    for f in sorted(glob.glob(str(OUT / f"*_r{rounds}.json"))):
        rows.append(summary(json.load(open(f))))
    if out:   # the summaries docs/results.md renders (tools/results_md.py --ablation)
        Path(out).write_text(json.dumps({"rounds": rounds, "command": command, "folder": str(OUT),
                                         "runs": rows}, indent=1) + "\n")
    print(f"{'run':22s} {'acc@300':>8s} {'acc@end':>8s} {'last50':>7s} {'best':>7s} {'r>=82%':>7s} {'uplink GB':>10s} "
          f"{'FL GB':>7s} {'CL MB':>8s} {'%CL/rnd':>8s} {'%CL once':>9s}")
    for s in rows:
        end = s[f"acc@{s['rounds']}"]
        print(f"{s['run']:22s} {100 * s['acc@300']:8.2f} {100 * end:8.2f} {100 * s['last50']:7.2f} {100 * s['best']:7.2f} "
              f"{str(s['first_round_82']):>7s} {s['uplink_bytes'] / 1e9:10.3f} {s['fl_bytes'] / 1e9:7.3f} "
              f"{s['cl_bytes'] / 1e6:8.1f} {s['pct_cl_per_round']:8.2f} {s['pct_cl_once']:9.1f}")


def main(argv=None):
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="semifl,plus", help=f"comma list of {sorted(RUNS)}, or 'ablation'")
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.01, help="devices' local step (seed's 0.1 with MATLAB's CE)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="override a SemiFLPlus flag: key=value (JSON value)")
    ap.add_argument("--cfg", action="append", default=[], help="override a RunConfig field: key=value (JSON value)")
    ap.add_argument("--tag", default="", help="suffix for the result name (with --set)")
    ap.add_argument("--table", action="store_true", help="print the table for --rounds and exit")
    ap.add_argument("--summary", help="with --table: also write the rows as JSON to this path")
    ap.add_argument("--init", help="initial global model (the seed's get_initial_model.mat or an .npz); default: "
                                   "Glorot-uniform from --seed")
    ap.add_argument("--out", help=f"folder of the runs' JSON (default {OUT})")
    ap.add_argument("--models", action="store_true", help="also write each run's final model (<run>_r<rounds>.npz)")
    a = ap.parse_args(argv)
    OUT = Path(a.out) if a.out else OUT
    OUT.mkdir(parents=True, exist_ok=True)
    command = "python tools/semifl_plus_experiments.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if a.table:
        return table(a.rounds, a.summary, command)
    digest = code_digest()   # the sources as this process imported them
    if a.init:
        initial.load(a.init)   # refused before any run
    ds = load_idx_dataset()
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    for name in (ABLATION if a.runs == "ablation" else a.runs.split(",")):
        cfg_over, kwargs, fresh = RUNS[name]
        if kwargs is not None and overrides:
            kwargs = dict(kwargs, **overrides)
        cfg_over = dict(cfg_over, **{k: json.loads(v) for k, v in (c.split("=", 1) for c in a.cfg)})
        # the seed's fleet and merge (no robust rule, no quarantine, no batteries), as `semifl reproduce` runs
        cfg = RunConfig.make(**{"rounds": a.rounds, "lr": a.lr, "epochs": a.epochs, "seed": a.seed, "init": a.init,
                                **SEED_FLEET, **cfg_over})
        label = name + a.tag + (f".s{a.seed}" if a.seed else "")
        print(f"{label}: lr {cfg.lr} epochs {cfg.epochs} {kwargs}", flush=True)
        res = run(cfg, ds, kwargs, fresh)
        res.update(run=label, config=cfg.to_dict(), strategy=kwargs, fresh_only=fresh, code=digest, command=command,
                   init=initial.describe(a.init, a.seed))
        params = res.pop("params")
        if a.models:
            np.savez(OUT / f"{label}_r{a.rounds}.npz", *params)
        (OUT / f"{label}_r{a.rounds}.json").write_text(json.dumps(res))
        s = summary(res)
        print(f"{label}: acc@300 {s['acc@300']:.4f} final {res['accuracy'][-1]:.4f} uplink {s['uplink_bytes'] / 1e9:.3f} GB "
              f"({s['pct_cl_per_round']:.2f} % of CL per round, {s['pct_cl_once']:.0f} % of CL once) {res['seconds']:.0f}s", flush=True)
    table(a.rounds)


if __name__ == "__main__":
    main()
