"""PerFit's case study (seed 003, Section V) in-process, on WISDM-2019: one subject = one device.

Each round K devices (the seed: 5) or all of them take part; the methods of `semifl.learn.perfit` run
their host and device steps directly, without a broker. Every device keeps its personal state between
rounds; at the end each device personalizes (FTL fine-tunes, Per-FedAvg adapts) and is scored on its
own test windows. Values are counted from the arrays each participant receives and sends.
"""
from __future__ import annotations

import time

import numpy as np

from semifl.fleet.planner import task_seed
from semifl.learn import perfit
from semifl.learn.perfit import p10, participants   # noqa: F401  (the runner's, re-exported)
from semifl.learn.har import HARData, feature_view
from semifl.models import MODELS

ARCHS = {"3nn": "3nn-har", "cnn": "cnn-har"}


def view(arch: str, n_features: int):
    """The net's view of a feature vector: the 3NN takes it as is, the CNN as a zero-padded grid."""
    return feature_view(MODELS[ARCHS[arch]].input_shape, n_features)


def network(arch: str):
    return MODELS[ARCHS[arch]].network()


def public_set(data: HARData, n: int) -> np.ndarray:
    """FD's globally shared pool: the training windows of the subjects outside the federation (30 of
    50: the other 20), or, when every subject is a client, 10 % of every client's training windows
    (drawn seeded, used unlabeled: only logits on them ever travel)."""
    if n < len(data.subjects):
        return np.concatenate([s.x_train for s in data.subjects[n:]])
    rng = np.random.default_rng(0)
    return np.concatenate([s.x_train[rng.choice(len(s.x_train), len(s.x_train) // 10, replace=False)]
                           for s in data.subjects[:n]])


def make_devices(data: HARData, n: int, archs: list[str] | str) -> list[perfit.Device]:
    """The first n subjects as devices; archs is one architecture for all or one per device (FD)."""
    archs = [archs] * n if isinstance(archs, str) else list(archs)
    nf = len(data.features)
    out = []
    for s, arch in zip(data.subjects[:n], archs):
        v = view(arch, nf)
        out.append(perfit.Device(f"s{s.id}", network(arch), v(s.x_train), s.y_train, v(s.x_test), s.y_test, view=v))
    return out


def run(method, devices: list[perfit.Device], rounds: int, k: int = 5, seed: int = 0, log=print,
        log_every: int = 50) -> dict:
    """Rounds of `method` over the devices, then every device's personal model on its own test set.
    Also the global model on every device where the method has one of the devices' architecture."""
    by_id = {d.id: d for d in devices}
    ids = sorted(by_id)
    up_vals, down_vals = [], []
    t0 = time.perf_counter()
    for r in range(1, rounds + 1):
        method.begin_round(r)
        ups = []
        for d in participants(r, ids, k, seed):
            msg = method.send(d)
            up = method.local(by_id[d], msg, task_seed(seed, r, d))
            by_id[d].rounds.append(r)
            up_vals.append(up.values)
            down_vals.append(msg.values)
            ups.append(up)
        method.aggregate(ups)
        if log and (r % log_every == 0 or r == rounds):
            log(f"  {method.name} round {r}/{rounds} ({time.perf_counter() - t0:.0f} s)")
    train_s = time.perf_counter() - t0
    acc = {d.id: d.accuracy(method.personalize(d, task_seed(seed, rounds + 1, d.id))) for d in devices}
    out = {"rounds": rounds, "k": k or len(devices), "mean_acc": float(np.mean(list(acc.values()))),
           "p10_acc": p10(list(acc.values())), "per_device": acc,
           # the seed's Fig. 8 measure: values one participating device sends per round
           "values_per_round": int(np.mean(up_vals)) if up_vals else 0,
           "values_down_per_round": int(np.mean(down_vals)) if down_vals else 0,
           "participation": {d.id: len(d.rounds) for d in devices},
           "seconds": round(time.perf_counter() - t0, 1), "train_seconds": round(train_s, 1)}
    if method.kind == "weights":
        g = {d.id: d.accuracy(method.params) for d in devices}
        out["global"] = {"mean_acc": float(np.mean(list(g.values()))), "p10_acc": p10(list(g.values())), "per_device": g}
    return out


def local_only(devices: list[perfit.Device], cfg: perfit.Local, epochs: int, seed: int = 0) -> dict:
    """No federation: every device trains its own model on its own data alone (nothing is sent)."""
    t0 = time.perf_counter()
    acc = {}
    for d in devices:
        p = perfit.train(d.net, d.net.init(perfit.hash_id(d.id) ^ seed), d.x, d.y, cfg, task_seed(seed, 0, d.id),
                         epochs=epochs)
        acc[d.id] = d.accuracy(p)
    return {"epochs": epochs, "mean_acc": float(np.mean(list(acc.values()))), "p10_acc": p10(list(acc.values())),
            "per_device": acc, "values_per_round": 0, "values_down_per_round": 0,
            "seconds": round(time.perf_counter() - t0, 1)}
