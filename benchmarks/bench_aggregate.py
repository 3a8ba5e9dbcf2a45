"""Host ingest (docs/scale.md, "Host ingest"): U FL updates from the bytes a device sends to the merged
model, through the real round object, beside the bare fold of the same bytes in the same process.

Host path: each update's assembled blob (what `Session._on_chunk` hands over) through
`FederatedRound.on_blob` (decode, checks on views of the bytes, one norm pass, the store's spool, the
running sum), then the round's close (`merge`: anomaly scores, the sum rule's result, the strategy's
step, the checkpoint, the spool's fdatasync). Bare: `acc += np.frombuffer(blob, float32, count, offset)`
per tensor of the same blob. The round is the default one (FedAvg's step with the default rule,
norm_bound adaptive; prune 0.3: updates keep the pruned copy's zeros), one BLAS thread as the host runs.
Arrival order: shuffled (as over MQTT: an update folds once those sorted before it are in) or sorted.

Durability: `spool` (the store's append-only spool: a record per update, synced in the background every
64 MiB and at the round's close; the record's CRC-32 computed in a helper thread while the update is
checked), `spool_wire_crc` (the same, given
the CRC-32 the wire's assembly already computed, as `Session._on_chunk` could pass it on), against the
payloads in SQLite's contributions table: `sqlite_batched` (64 per transaction, the batch written when
full or at the close; an accepted update is not durable until its batch is) and `sqlite_each` (one
INSERT per update, durable as accepted: the store before the spool).

  python benchmarks/bench_aggregate.py              # all runs -> benchmarks/results/aggregate.json
  python benchmarks/bench_aggregate.py --quick      # U = 10, 100 of each model; prints, writes nothing
  python benchmarks/bench_aggregate.py --only 1m:1000   # those cases again, replaced in the JSON

Each spool case runs --repeat times (3) and keeps its fastest run (a machine shared with other work
moves single runs by half); SQLite's cases run once.

Each run is a process of its own, so its peak RSS (`peak_rss_mib`, ru_maxrss) is its own; `base_rss_mib`
is the same process before the first update (Python, numpy, the model, the pool of 8 distinct deltas the
devices' blobs are made from: one blob is made at a time, outside the timing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np

MODELS = {"mlp": None, "1m": (784, 1024, 192, 10)}   # the default MLP (49,910 parameters) and one of 1,002,570
POOL = 8


def run_one(model: str, updates: int, durability: str, order: str, folder: str) -> dict:
    from semifl.config import Federated, Trust
    from semifl.fleet.planner import RoundPlan
    from semifl.learn import aggregate, mlp, robust
    from semifl.learn.strategy import FedAvg, FLUpdate
    from semifl.protocol import wire
    from semifl.protocol.tensors import encode_arrays
    from semifl.service.rounds.federated import Context, FederatedRound
    from semifl.service.session import Session
    from semifl.service.store import Store
    from semifl.transport.memory import MemoryBroker, MemoryLink
    from threadpoolctl import threadpool_limits

    class SQLiteBlobs(Store):
        """The payloads in SQLite's contributions table instead of the spool, `batch` per transaction."""
        batch = 64

        def __init__(self, path, batch):
            super().__init__(path)
            self.batch, self.pending = batch, []

        def accept(self, rnd, device, kind, n, blob, crc=None):
            self.pending.append((rnd, device, kind, n, bytes(blob), time.time()))
            if len(self.pending) >= self.batch:
                self.flush()

        def flush(self):
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany("INSERT INTO contributions VALUES (?, ?, ?, ?, ?, ?)", self.pending)
            self.pending = []

        def contribution(self, rnd, device, kind):
            for r, d, k, _, b, _ in self.pending:
                if (r, d, k) == (rnd, device, kind):
                    return b
            return self.db.execute("SELECT blob FROM contributions WHERE round=? AND device=? AND kind=?",
                                   (rnd, device, kind)).fetchone()[0]

        def contribution_keys(self, rnd):
            self.flush()
            return super().contribution_keys(rnd)

        def finish_round(self, *a, **kw):
            self.flush()
            return super().finish_round(*a, **kw)

    path = os.path.join(folder, "state.db")
    store = (Store(path) if durability.startswith("spool") else
             SQLiteBlobs(path, 64 if durability == "sqlite_batched" else 1))
    wire_crc = durability == "spool_wire_crc"
    timers = {"spool_write": 0.0, "sync": 0.0}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                timers[name] += time.perf_counter() - t
        return wrapper
    store.spool.append = timed("spool_write", store.spool.append)
    store.spool.sync = timed("sync", store.spool.sync)
    timers["anomaly"] = 0.0
    robust.anomaly = timed("anomaly", robust.anomaly)

    session = Session(MemoryLink(MemoryBroker()), store)
    devs = [f"pi-{i:04d}" for i in range(updates)]
    for d in devs:
        session.registry.on_caps(d, {"v": 1, "id": d, "class": "pi", "proto": [1], "ram": 1 << 30, "flash": 1 << 30,
                                     "cpu_score": 1e3, "battery": 1.0, "rssi": -50.0, "n_samples": 600,
                                     "hist": [60] * 10, "raw_ok": False, "max_chunk": 4096})
        session.registry.on_presence(d, b"online")
    params = mlp.init_params(MODELS[model], seed=0) if MODELS[model] else mlp.init_params(seed=0)
    cfg, trust = Federated(fl_uploaders=updates, int8_every=0), Trust()
    strategy = FedAvg()
    strategy.fl_merge = robust.from_trust(trust)
    rounds = FederatedRound(session, strategy, cfg, params, lambda p: (0.0, 0.0), trust=trust)
    session.handler = rounds
    rnd = 1
    session.begin(rnd)
    rounds.plan = RoundPlan(rnd, cl=[], fl=devs)
    store.begin_round(rnd, {"round": rnd, "fl": devs, "cl": []})
    rounds.ctx = Context(rnd, rounds.params, {}, {})
    rounds.open_ingest(rnd, updates)
    # honest-looking updates: a shared direction plus each one's own, zero where the pruned copy has nothing
    rng = np.random.default_rng(1)
    keep = rounds.ctx.mask(cfg.prune)
    base = [rng.standard_normal(p.shape).astype(np.float32) * 0.01 for p in params]
    pool = [[((b + rng.standard_normal(b.shape).astype(np.float32) * 0.01) * m).astype(np.float32)
             for b, m in zip(base, keep)] for _ in range(POOL)]
    norms = [aggregate.global_norm(d) for d in pool]
    rounds.uploaders = devs
    rounds.norms = {d: norms[i % POOL] for i, d in enumerate(devs)}
    rounds.claimed = {(d, rnd): norms[i % POOL] for i, d in enumerate(devs)}
    n = rounds.expected_n(devs[0])
    rounds.expect_uploads()
    arrival = list(range(updates))
    if order == "shuffled":
        np.random.default_rng(2).shuffle(arrival)
    acc = [np.zeros(p.size, np.float32) for p in params]
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    host = bare = 0.0
    hosts, bares = [], []
    nbytes = 0
    def fold_bare(blob, views):
        for a, (off, cnt) in zip(acc, views):
            a += np.frombuffer(blob, np.float32, cnt, off)

    with threadpool_limits(limits=1):
        for j, i in enumerate(arrival):
            d = devs[i]
            blob = bytearray(encode_arrays({"kind": "update", "round": rnd, "task": session.task_id(rnd, d), "device": d,
                                            "n": n}, pool[i % POOL]))
            nbytes += len(blob)
            _, ts = wire.decode_blob(blob)   # where each tensor's data is in the blob
            start = np.frombuffer(blob, np.uint8).ctypes.data
            views = [(np.frombuffer(t[4], np.uint8).ctypes.data - start, t[4].nbytes // 4) for t in ts]
            del ts
            crc = zlib.crc32(blob) if wire_crc else None   # computed while the chunks came in
            # one then the other, the first one alternating: neither always finds the blob in cache first
            t0 = time.perf_counter()
            if j % 2:
                fold_bare(blob, views)
            else:
                rounds.on_blob(d, wire.KIND_UPDATE, blob, crc)
            t1 = time.perf_counter()
            if j % 2:
                rounds.on_blob(d, wire.KIND_UPDATE, blob, crc)
            else:
                fold_bare(blob, views)
            t2 = time.perf_counter()
            hosts.append((t2 - t1) if j % 2 else (t1 - t0))
            bares.append((t1 - t0) if j % 2 else (t2 - t1))
            host += hosts[-1]
            bare += bares[-1]
        rejected = dict(session.rec.rejected)
        assert not rejected and len(rounds.accepted) == updates, rejected
        ingest_s = host
        ing = rounds.ingest
        t0 = time.perf_counter()
        fl, cl = rounds._contributions(rnd)
        rounds.merge(rnd, fl, cl, ing, trained=devs, idle={}, tasked=devs)
        close_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    host = ingest_s + close_s
    # the merge as the list path computes it from every update at once (the pool's arrays: no copies)
    ref_strategy = FedAvg()
    ref_strategy.fl_merge = robust.from_trust(trust)
    with threadpool_limits(limits=1):
        ref = ref_strategy.aggregate(params, [FLUpdate(d, pool[i % POOL], n) for i, d in enumerate(devs)], [])
    same = all(np.array_equal(a, b) for a, b in zip(rounds.params, ref))
    store.close()
    size = sum(p.size for p in params)
    return {"model": model, "updates": updates, "params": int(size), "durability": durability, "order": order,
            "host_seconds": round(host, 4), "bare_seconds": round(bare, 4), "ratio_to_bare": round(host / bare, 2),
            "peak_rss_mib": round(peak, 1), "base_rss_mib": round(base_rss, 1),
            "ingest_seconds": round(ingest_s, 4), "ingest_ratio_to_bare": round(ingest_s / bare, 2),
            "close_seconds": round(close_s, 4), "spool_write_seconds": round(timers["spool_write"], 4),
            "sync_seconds": round(timers["sync"], 4),
            "spool_write_gib_s": round(nbytes / 2 ** 30 / timers["spool_write"], 2) if timers["spool_write"] else None,
            "per_update_host_ms": round(1e3 * ingest_s / updates, 3), "per_update_bare_ms": round(1e3 * bare / updates, 3),
            "median_update_host_ms": round(1e3 * float(np.median(hosts)), 3),
            "median_update_bare_ms": round(1e3 * float(np.median(bares)), 3),
            "median_update_ratio": round(float(np.median(np.array(hosts) / np.array(bares))), 2),
            "anomaly_seconds": round(timers["anomaly"], 4),
            "blob_mib": round(nbytes / updates / 2 ** 20, 3), "merged": ing.how, "bits_equal_list_merge": bool(same),
            "load_avg": round(os.getloadavg()[0], 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="U = 10 and 100 only; print, write nothing")
    ap.add_argument("--dir", default=None, help="where each run's state.db and spool go (default: the temp folder)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each spool case, the fastest kept (default 3)")
    ap.add_argument("--only", help="MODEL:U (e.g. 1m:1000): measure those cases again and replace them in the JSON")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        spec = json.loads(args.one)
        folder = tempfile.mkdtemp(prefix="bench-aggregate-", dir=args.dir)
        try:
            print(json.dumps(run_one(**spec, folder=folder)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    sizes = (10, 100) if args.quick else (10, 100, 1000)
    only = tuple(args.only.split(":")) if args.only else None
    runs = []
    for model in MODELS:
        for u in sizes:
            if only and (model, str(u)) != only:
                continue
            for durability, order in (("spool", "shuffled"), ("spool", "sorted"), ("spool_wire_crc", "shuffled"),
                                      ("sqlite_batched", "shuffled"), ("sqlite_each", "shuffled")):
                spec = {"model": model, "updates": u, "durability": durability, "order": order}
                cmd = [sys.executable, __file__, "--one", json.dumps(spec)] + (["--dir", args.dir] if args.dir else [])
                tries = []
                for _ in range(args.repeat if durability.startswith("spool") else 1):
                    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                    if out.returncode:
                        sys.exit(f"{spec}: {out.stderr[-2000:]}")
                    tries.append(json.loads(out.stdout.strip().splitlines()[-1]))
                run = min(tries, key=lambda r: r["host_seconds"])
                run["host_seconds_tries"] = [r["host_seconds"] for r in tries]
                run["measured"] = time.strftime("%Y-%m-%d %H:%M")
                runs.append(run)
                print(f"{model:>4} U={u:<5} {durability:<15} {order:<9} host {run['host_seconds']:8.3f} s  bare "
                      f"{run['bare_seconds']:7.3f} s  x{run['ratio_to_bare']:<6} (ingest x{run['ingest_ratio_to_bare']}, "
                      f"median update {run['median_update_host_ms']} / {run['median_update_bare_ms']} ms "
                      f"x{run['median_update_ratio']}) "
                      f"close {run['close_seconds']:.3f} s (sync {run['sync_seconds']:.3f})  peak {run['peak_rss_mib']} MiB "
                      f"(base {run['base_rss_mib']})  {run['merged']}, same bits: {run['bits_equal_list_merge']}",
                      flush=True)
    if args.quick:
        return
    out = {"command": "python benchmarks/bench_aggregate.py" + (f" --repeat {args.repeat}" if args.repeat != 3 else ""),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                       "numpy": np.__version__},
           "note": "each spool case run --repeat times (3), the run with the least host time kept (all in "
                   "host_seconds_tries: the machine's other work makes single runs vary); "
                   "host = on_blob of every update + the round's close; bare = acc += np.frombuffer of the same "
                   "bytes; ratio_to_bare = host / bare; ingest_ratio_to_bare: the per-update path alone; median_update_*: "
                   "per update, the median (robust to a run's preempted updates); load_avg: "
                   "the machine's 1-minute load average when the run ended (other work shares its cores)",
           "runs": runs}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "aggregate.json")
    if only:   # the other cases as the last full run measured them
        with open(path) as f:
            old = json.load(f)
        key = lambda r: (r["model"], r["updates"], r["durability"], r["order"])
        new = {key(r): r for r in runs}
        runs = [new.pop(key(r), r) for r in old["runs"]] + list(new.values())
        out["runs"] = runs
        out["command"] = old["command"] + f"; then python benchmarks/bench_aggregate.py --only {args.only}"
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
