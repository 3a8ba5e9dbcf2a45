"""The SemiFL seed setup as a bare numpy loop: the same arithmetic as `semifl reproduce semifl
--baselines semifl` (same MLP functions, sample selection, channel ranking, pruning, mix), without
the planner, strategies, fleet specs or byte accounting. The yardstick for what those cost.

--matlab runs it as the seed's MATLAB would: float64, and each device's step as MATLAB's `train` takes it
(patternnet's default `dividerand`: the gradient on a random 70 % of the batch, and the step kept only if the
loss on another 15 % fell, else no change: `train` returns the network at its best validation epoch). It
checks that neither float32 nor MATLAB's data division explains a gap to the seed's curve.

    python benchmarks/bare_semifl_loop.py --rounds 1000 --out JSON [--init get_initial_model.mat] [--matlab]
"""
from __future__ import annotations

import argparse
import binascii
import json
import sys
import time

import numpy as np

from semifl.fleet.channel import ChannelModel
from semifl.learn import initial, mlp
from semifl.learn.data import load_idx_dataset, to_float
from semifl.protocol.sampling import ceil_fraction, select


def seed_of(seed, rnd, dev):  # the planner's task_seed, inlined
    return (binascii.crc32(dev.encode()) ^ (seed * 1000003 + rnd * 7919)) & 0xFFFFFFFF


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--init", help="initial model file (semifl.learn.initial); default: Glorot-uniform from --seed")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--matlab", action="store_true", help="float64 and MATLAB train's dividerand / best-validation step")
    a = ap.parse_args(argv)
    dt = np.float64 if a.matlab else np.float32
    division = np.random.default_rng(a.seed)   # MATLAB's dividerand draws
    kept = {"steps": 0, "undone": 0}

    def grad(p, x, y):
        """The gradient a device's step uses; with --matlab, zeros where MATLAB's train would return the
        network unchanged (its validation loss did not fall)."""
        if not a.matlab:
            return mlp.loss_and_grad(p, x, y)[1]
        perm = division.permutation(len(y))
        tr, va = perm[:int(round(0.7 * len(y)))], perm[int(round(0.7 * len(y))):int(round(0.85 * len(y)))]
        g = mlp.loss_and_grad(p, x[tr], y[tr])[1]
        kept["steps"] += 1
        if mlp.evaluate([q - lr * gi for q, gi in zip(p, g)], x[va], y[va])[1] >= mlp.evaluate(p, x[va], y[va])[1]:
            kept["undone"] += 1
            return [np.zeros_like(q) for q in p]
        return g
    t0 = time.perf_counter()
    ds = load_idx_dataset()
    lr, prune, frac_fl, frac_cl, k_fl, n_cl = a.lr, 0.3, 0.3, 0.3, 3, 2
    fl_ids = [f"pi-{i:02d}" for i in range(6)]
    cl_ids = [f"mcu-{i:02d}" for i in range(6, 10)]
    data = {d: (ds.x_train[ds.y_train == c], ds.y_train[ds.y_train == c]) for c, d in enumerate(fl_ids + cl_ids)}
    channel = ChannelModel(10, a.seed)
    params = [p.astype(dt) for p in (initial.load(a.init) if a.init else mlp.init_params(seed=a.seed))]
    xt, yt = to_float(ds.x_test).astype(dt), ds.y_test.astype(np.int64)
    acc = []
    t1 = time.perf_counter()
    for rnd in range(1, a.rounds + 1):
        masks = mlp.prune_mask(params, prune)
        start = [p * m for p, m in zip(params, masks)]
        deltas, ns, norms = {}, {}, {}
        for d in fl_ids:
            x, y = data[d]
            idx = select(len(y), ceil_fraction(len(y), frac_fl), seed_of(a.seed, rnd, d))
            g = grad(start, to_float(x[idx]).astype(dt), y[idx].astype(np.int64))
            deltas[d] = [dt(-lr) * gi * m for gi, m in zip(g, masks)]
            ns[d] = len(idx)
            norms[d] = np.sqrt(sum(float(np.square(v, dtype=np.float64).sum()) for v in deltas[d]))
        up = sorted(sorted(norms, key=lambda d: -norms[d])[:k_fl])
        rssi = np.round(channel.rssi_dbm(rnd), 2)
        cl = sorted(sorted(cl_ids, key=lambda d: -rssi[6 + cl_ids.index(d)])[:n_cl])
        xs, ys = [], []
        for d in cl:
            x, y = data[d]
            idx = select(len(y), ceil_fraction(len(y), frac_cl), seed_of(a.seed, rnd, d))
            xs.append(x[idx])
            ys.append(y[idx])
        gc = grad(params, to_float(np.concatenate(xs)).astype(dt), np.concatenate(ys).astype(np.int64))
        n_f, n_c = sum(ns[d] for d in up), sum(len(y) for y in ys)
        fl_avg = [sum(dt(ns[d] / n_f) * deltas[d][i] for d in up) for i in range(len(params))]
        params = [p + dt(n_f / (n_f + n_c)) * f + dt(n_c / (n_f + n_c)) * (dt(-lr) * g)
                  for p, f, g in zip(params, fl_avg, gc)]
        acc.append(mlp.evaluate(params, xt, yt)[0])
    t2 = time.perf_counter()
    r = {"rounds": a.rounds, "loop_s": t2 - t1, "setup_s": t1 - t0, "final_accuracy": acc[-1], "accuracy": acc,
         "last50_accuracy": float(np.mean(acc[-50:])), "matlab": a.matlab, "steps_undone": kept if a.matlab else None,
         "init": a.init, "command": "python benchmarks/bare_semifl_loop.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(r, f)
    print(f"bare loop: {t2 - t1:.1f} s for {a.rounds} rounds, final accuracy {acc[-1]:.4f}, "
          f"mean of the last 50 rounds {np.mean(acc[-50:]):.4f}" + (f", steps undone {kept}" if a.matlab else ""))


if __name__ == "__main__":
    main()
