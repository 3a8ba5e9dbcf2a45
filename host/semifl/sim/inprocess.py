"""The same experiment without a broker: planner, device computations and strategy called directly.

It runs the code the devices run (semifl_agent.train, the node's sample selection) and the strategy
the service runs, so a run here and a run over MQTT with the same seed end in the same model
(tests/test_e2e.py checks it). Reproductions and sweeps (semifl.experiments) use this path for speed.
Bytes are counted as the protocol would send them: blobs plus their chunk headers (control messages,
a few hundred bytes per device and round, are left out).
"""
from __future__ import annotations

import numpy as np
from threadpoolctl import ThreadpoolController

from semifl.config import RunConfig
from semifl.fleet.planner import plan_round, select_fl_uploaders, task_seed
from semifl.learn import compress, mlp
from semifl.learn.data import Dataset, to_float
from semifl.learn.strategy import CLBatch, FLUpdate, Strategy, make_strategy
from semifl.protocol import wire
from semifl.protocol.sampling import ceil_fraction, select
from semifl.protocol.tensors import dequantize
from semifl.sim.fleet import fleet_for, shard
from semifl.sim.link import SimRadio
from semifl_agent.train import encode_update, local_update, update_masks

PI_CHUNK, MCU_CHUNK = 65536, 4096   # the virtual fleet's max_chunk per device class
TASK_DIGITS = 10                    # task nonces are up to 10 decimal digits


def wire_bytes(meta: dict, headers: list, chunk: int) -> int:
    """Bytes a blob occupies on the wire: meta, tensor headers and data, plus one header per chunk."""
    _, total = wire.blob_head(meta, headers)
    return total + wire.CHUNK_HEADER_LEN * wire.chunk_count(total, chunk)


def run_inprocess(cfg: RunConfig, ds: Dataset, on_round=None, strategy: Strategy | None = None) -> list[np.ndarray]:
    specs = fleet_for(cfg, ds)
    data = {s.id: shard(ds, s) for s in specs}
    radios = {s.id: SimRadio(s.sim) for s in specs}
    caps = {s.id: {"class": s.device_class, "raw_ok": s.raw_ok, "n_samples": len(data[s.id][1]),
                   "cpu_score": 1e4 if s.device_class == "pi" else 1.0,
                   "ram": s.sim.get("ram", 1 << 30) if s.device_class == "pi" else 110_000}
            for s in specs}
    ecfg = cfg.engine()
    strategy = strategy or make_strategy(cfg.strategy, cfg.lr, cfg.rounds, cfg.prune, cfg.seed)
    strategy.observe_fleet({d: c["n_samples"] for d, c in caps.items()})
    params = mlp.init_params(seed=cfg.seed)
    param_headers = [("float32", p.shape, 1.0, 0) for p in params]
    task = 10 ** (TASK_DIGITS - 1)
    x_test, y_test = to_float(ds.x_test), ds.y_test.astype(np.int64)
    blas = ThreadpoolController()   # inspected once: limiting it per call is then ~10 us
    for rnd in range(1, cfg.rounds + 1):
        view = {d: dict(c, rssi=radios[d].rssi(rnd), battery=1.0) for d, c in caps.items() if not radios[d].drops(rnd)}
        plan = plan_round(rnd, view, ecfg.planner, use_cl=strategy.uses_cl)
        results = {}
        masks_at = {}   # prune rate -> keep-masks of this round's model: one argsort per rate, shared by devices
        comp = {d: compress.for_device(caps[d], sum(p.nbytes for p in params)) if cfg.compression == "auto" else None
                for d in plan.fl}   # as RoundEngine.compression_for
        for d in plan.fl:
            t = {"round": rnd, "seed": task_seed(cfg.seed, rnd, d), "prune": cfg.prune, "lr": cfg.lr,
                 "fraction": cfg.fl_fraction, "epochs": cfg.epochs}
            if comp[d] is not None:
                t.update(prune=comp[d].prune, compression=comp[d].to_task())
            if cfg.sparse_updates and t["prune"] > 0:
                t["sparse"] = True
            if t["prune"] not in masks_at:
                masks_at[t["prune"]] = update_masks(params, t)
            m = masks_at[t["prune"]]
            with blas.limit(limits=1):  # as the device processes run (VirtualFleet): same BLAS sums, same bits
                delta, n, norm = local_update(params, *data[d], t, m)
            # what the host gets back from the wire: the delta in the dtype the device sent
            tensors = encode_update(delta, t, m)
            back = [dequantize(w) for w in tensors]
            if t.get("sparse"):
                back = compress.scatter(back, m)
            results[d] = (back, n, norm, tensors, m)
        uploaders = select_fl_uploaders({d: r[2] for d, r in results.items()}, ecfg.planner.fl_uploaders)
        fl = [FLUpdate(d, results[d][0], results[d][1], results[d][4] if comp[d] is not None else None)
              for d in uploaders]
        cl = []
        for d in plan.cl:
            x, y = data[d]
            idx = select(len(y), ceil_fraction(len(y), cfg.cl_fraction), task_seed(cfg.seed, rnd, d))
            cl.append(CLBatch(d, x[idx], y[idx]))
        model_bytes = wire_bytes({"kind": "model", "round": rnd}, param_headers, PI_CHUNK) if plan.fl else 0
        up_fl = sum(wire_bytes({"kind": "update", "round": rnd, "task": task, "device": u.device, "n": u.n},
                               [(w[0], w[1], w[2], w[3]) for w in results[u.device][3]], PI_CHUNK) for u in fl)
        up_cl = sum(wire_bytes({"kind": "samples", "round": rnd, "task": task, "device": b.device, "n": len(b.y)},
                               [("uint8", b.x.shape, 1.0, 0), ("uint8", b.y.shape, 1.0, 0)], MCU_CHUNK) for b in cl)
        params = strategy.aggregate(params, fl, cl)
        if on_round:
            acc, loss = mlp.evaluate(params, x_test, y_test)
            on_round({"round": rnd, "accuracy": acc, "loss": loss, "participants": {"cl": plan.cl, "fl": uploaders},
                      "bytes_up": {"fl": up_fl, "cl": up_cl},
                      "bytes_down": {"fl": model_bytes * sum(s.device_class == "pi" for s in specs), "cl": 0}})
    return params
