"""SecAgg+ cost per round vs plain summation, and client-level DP's epsilon at the default fleet.

For the default run's model (the SemiFL MLP 784-50-100-50-10: 49,910 parameters, plus one coordinate
for the FedAvg weight) at 10, 50 and 100 clients with 0 % and 30 % dropouts (the dropped clients go
silent after sharing their keys, before their masked input: the case where the host must rebuild
their pairwise masks, its most expensive one): client and host CPU seconds, bytes per client up and
down (JSON messages as text, masked vectors at 4 bytes an entry), the largest error of the secure sum
against the float64 sum, and the ratio of each to plain summation (clients send float32 updates, the
host adds them). Writes key "secagg" of benchmarks/results/trust.json (other keys kept).

    python benchmarks/bench_trust_secagg.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import pathlib
import time

import numpy as np
from semifl.learn import dp, mlp
from semifl.learn import secagg as sa

OUT = pathlib.Path(__file__).parent / "results" / "trust.json"


def size(m) -> int:
    return len(sa._json(m))


def secure_round(xs, clip, k=None, drop=frozenset()):
    n, dim = len(xs), xs[0].size
    cpu_c = dict.fromkeys(range(1, n + 1), 0.0)
    up = dict.fromkeys(cpu_c, 0)
    down = dict.fromkeys(cpu_c, 0)
    cpu_s = 0.0

    def host(f, *a):
        nonlocal cpu_s
        t = time.process_time()
        r = f(*a)
        cpu_s += time.process_time() - t
        return r

    def client(i, f, *a):
        t = time.process_time()
        r = f(*a)
        cpu_c[i] += time.process_time() - t
        return r

    server = host(sa.SecAggServer, n, dim, clip, k, 0, "bench")
    clients = {i: sa.SecAggClient() for i in server.graph}
    for i, m in host(server.setup).items():
        down[i] += size(m)
        r = client(i, clients[i].setup, m)
        up[i] += size(r)
        host(server.receive_keys, r)
    for i, m in host(server.keys_out).items():
        down[i] += size(m)
        r = client(i, clients[i].share_keys, m)
        up[i] += size(r)
        host(server.receive_shares, r)
    for i, m in host(server.shares_out).items():
        down[i] += size(m)
        if i in drop:
            continue
        y = client(i, clients[i].masked_input, m, xs[i - 1])
        up[i] += 4 * dim
        host(server.receive_masked, i, y)
    for i, m in host(server.unmask_out).items():
        down[i] += size(m)
        r = client(i, clients[i].unmask, m)
        up[i] += size(r)
        host(server.receive_unmask, r)
    total, survivors = host(server.aggregate)
    alive = [i for i in cpu_c if i not in drop]
    return {"sum": total, "survivors": survivors, "k": server.k, "t": server.t,
            "client_cpu_s": float(np.mean([cpu_c[i] for i in alive])), "host_cpu_s": cpu_s,
            "bytes_up": float(np.mean([up[i] for i in alive])), "bytes_down": float(np.mean([down[i] for i in alive]))}


def plain_round(xs):
    t = time.process_time()
    s = np.zeros(xs[0].size, np.float32)
    for x in xs:
        s += x.astype(np.float32)
    return s, time.process_time() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="10 and 50 clients only")
    args = ap.parse_args()
    # dp-accounting warns for each fractional RDP order it cannot evaluate at q = 0.5 and drops that order
    logging.getLogger("absl").setLevel(logging.ERROR)
    d_model = sum(math.prod(s) for s in mlp.shapes())
    dim = d_model + 1                       # + the FedAvg weight
    clip = 1.0                              # per coordinate; a DP clip C = 1 (L2) keeps every entry inside
    rng = np.random.default_rng(0)
    rows = {}
    cases = [(10, 0.0), (10, 0.3), (50, 0.0), (50, 0.3), (100, 0.0), (100, 0.3)]
    if args.quick:
        cases = cases[:4]
    for n, rate in cases:
        xs = [np.concatenate([rng.normal(0, 0.01, d_model), [1.0]]).astype(np.float32) for _ in range(n)]
        drop = {int(i) for i in rng.choice(np.arange(1, n + 1), round(rate * n), replace=False)}
        variants = [("secagg", None)]
        if n == 100 and rate == 0.0:
            variants.append(("secagg+", sa.choose_k(n, dropout=0.1)))   # sparse graph sized for 10 % dropouts
        for name, k in variants:
            r = secure_round(xs, clip, k, drop)
            alive = [xs[i - 1] for i in r["survivors"]]
            want = np.sum([x.astype(np.float64) for x in alive], axis=0)
            plain_sum, plain_cpu = plain_round(alive)
            err = float(np.abs(r["sum"] - want).max())
            plain_err = float(np.abs(plain_sum - want).max())
            row = {"clients": n, "dropout": rate, "k": r["k"], "t": r["t"], "dim": dim,
                   "client_cpu_s": round(r["client_cpu_s"], 4), "host_cpu_s": round(r["host_cpu_s"], 4),
                   "bytes_up_per_client": int(r["bytes_up"]), "bytes_down_per_client": int(r["bytes_down"]),
                   "max_err": err, "err_bound": sa.error_bound(clip, n, len(alive)),
                   "plain": {"host_cpu_s": round(plain_cpu, 5), "bytes_up_per_client": 4 * dim,
                             "max_err_float32": plain_err},
                   "ratio": {"host_cpu": round(r["host_cpu_s"] / max(plain_cpu, 1e-6), 1),
                             "bytes_up": round(r["bytes_up"] / (4 * dim), 3)}}
            key = f"{name}@n={n},drop={rate}"
            rows[key] = row
            print(f"{key:28s} k={row['k']:3d} t={row['t']:3d}  client {row['client_cpu_s']:.3f} s  host "
                  f"{row['host_cpu_s']:.3f} s (x{row['ratio']['host_cpu']} plain)  up {row['bytes_up_per_client']} B "
                  f"(x{row['ratio']['bytes_up']})  down {row['bytes_down_per_client']} B  err {err:.2e} "
                  f"<= {row['err_bound']:.2e}", flush=True)
    # client-level DP at the default fleet: 6 FL devices, K = 3 per round (q = 0.5), delta 1e-5
    fleet, per_round, delta = 6, 3, 1e-5
    dps = {}
    for z in (0.5, 0.8, 1.0, 1.5, 2.0, 4.0):
        for rounds in (20, 1000):
            dps[f"z={z},rounds={rounds}"] = {
                "epsilon_run_q=0.5": dp.epsilon(z, rounds, per_round / fleet, delta),
                "epsilon_device_every_round": dp.epsilon(z, rounds, 1.0, delta)}
            print(f"DP z={z} rounds={rounds}: epsilon run {dps[f'z={z},rounds={rounds}']['epsilon_run_q=0.5']:.2f}"
                  f" (q=0.5), device in every round {dps[f'z={z},rounds={rounds}']['epsilon_device_every_round']:.2f}")
    res = json.loads(OUT.read_text()) if OUT.exists() else {}
    res["secagg"] = {
        "command": "python benchmarks/bench_trust_secagg.py" + (" --quick" if args.quick else ""),
        "model": "SemiFL MLP 784-50-100-50-10", "model_params": d_model, "clip_per_coordinate": clip,
        "dropouts": "dropped clients go silent after sharing keys, before their masked input",
        "quantization": "q(x) = rint((x + clip) R / (2 clip)), R = floor((2^32 - 1) / n); |error| <= m clip / R",
        "rounds": rows,
        "dp": {"fleet": fleet, "clients_per_round": per_round, "delta": delta, "epsilon": dps,
               "note": "epsilon_run assumes uniform sampling at q = 0.5; top-K by norm is not uniform, "
                       "so the per-device figure (no amplification) is the one that holds for it"}}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
