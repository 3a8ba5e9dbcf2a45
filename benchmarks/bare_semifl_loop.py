"""The SemiFL seed setup as a bare numpy loop: the same arithmetic as `semifl reproduce semifl
--baselines semifl` (same MLP functions, sample selection, channel ranking, pruning, mix), without
the planner, strategies, fleet specs or byte accounting. The yardstick for what those cost.

    python benchmarks/bare_semifl_loop.py --rounds 1000 --out JSON [--init get_initial_model.mat]
"""
from __future__ import annotations

import argparse
import binascii
import json
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
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    ds = load_idx_dataset()
    lr, prune, frac_fl, frac_cl, k_fl, n_cl = a.lr, 0.3, 0.3, 0.3, 3, 2
    fl_ids = [f"pi-{i:02d}" for i in range(6)]
    cl_ids = [f"mcu-{i:02d}" for i in range(6, 10)]
    data = {d: (ds.x_train[ds.y_train == c], ds.y_train[ds.y_train == c]) for c, d in enumerate(fl_ids + cl_ids)}
    channel = ChannelModel(10, a.seed)
    params = initial.load(a.init) if a.init else mlp.init_params(seed=a.seed)
    xt, yt = to_float(ds.x_test), ds.y_test.astype(np.int64)
    acc = []
    t1 = time.perf_counter()
    for rnd in range(1, a.rounds + 1):
        masks = mlp.prune_mask(params, prune)
        start = [p * m for p, m in zip(params, masks)]
        deltas, ns, norms = {}, {}, {}
        for d in fl_ids:
            x, y = data[d]
            idx = select(len(y), ceil_fraction(len(y), frac_fl), seed_of(a.seed, rnd, d))
            _, g = mlp.loss_and_grad(start, to_float(x[idx]), y[idx].astype(np.int64))
            deltas[d] = [np.float32(-lr) * gi * m for gi, m in zip(g, masks)]
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
        _, gc = mlp.loss_and_grad(params, to_float(np.concatenate(xs)), np.concatenate(ys).astype(np.int64))
        n_f, n_c = sum(ns[d] for d in up), sum(len(y) for y in ys)
        fl_avg = [sum(np.float32(ns[d] / n_f) * deltas[d][i] for d in up) for i in range(len(params))]
        params = [p + np.float32(n_f / (n_f + n_c)) * f + np.float32(n_c / (n_f + n_c)) * (np.float32(-lr) * g)
                  for p, f, g in zip(params, fl_avg, gc)]
        acc.append(mlp.evaluate(params, xt, yt)[0])
    t2 = time.perf_counter()
    r = {"rounds": a.rounds, "loop_s": t2 - t1, "setup_s": t1 - t0, "final_accuracy": acc[-1], "accuracy": acc}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(r, f)
    print(f"bare loop: {t2 - t1:.1f} s for {a.rounds} rounds, final accuracy {acc[-1]:.4f}")


if __name__ == "__main__":
    main()
