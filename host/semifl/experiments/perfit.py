"""PerFit's case study (seed 003, Section V) in-process, on WISDM-2019: one subject = one device.

`run` is a personalization run as `semifl run --strategy ftl|fedper|fd|perfedavg|ditto` makes it, with
the same round object over an in-memory broker (`semifl.app.inprocess`): each round K devices (the
seed: 5) or all of them take part, every device keeps its personal state between rounds, and at the
end each device personalizes and is scored on its own test windows. Values are counted from the arrays
each participant receives and sends.
"""
from __future__ import annotations

import time

import numpy as np

from semifl.app.build import ARCHS, public_set   # noqa: F401  (re-exported for the benchmarks)
from semifl.app.inprocess import run_inprocess
from semifl.config import RunConfig
from semifl.device import PersonalRole
from semifl.fleet.planner import task_seed
from semifl.learn import perfit
from semifl.learn.har import HARData, feature_view
from semifl.learn.perfit import p10, participants   # noqa: F401  (the runner's, re-exported)
from semifl.models import MODELS


def view(arch: str, n_features: int):
    """The net's view of a feature vector: the 3NN takes it as is, the CNN as a zero-padded grid."""
    return feature_view(MODELS[ARCHS[arch]].input_shape, n_features)


def network(arch: str):
    return MODELS[ARCHS[arch]].network()


def make_devices(data: HARData, n: int, archs: list[str] | str) -> list[perfit.Device]:
    """The first n subjects as the method sees them; archs is one architecture for all or one per device (FD)."""
    archs = [archs] * n if isinstance(archs, str) else list(archs)
    nf = len(data.features)
    out = []
    for s, arch in zip(data.subjects[:n], archs):
        v = view(arch, nf)
        out.append(perfit.Device(f"s{s.id}", network(arch), v(s.x_train), s.y_train, v(s.x_test), s.y_test, view=v))
    return out


def run(cfg: RunConfig, data: HARData, method: perfit.Method | None = None, log=print, log_every: int = 50) -> dict:
    """`cfg`'s personalization run in-process (method: instead of the one cfg describes, e.g. with
    settings the configuration does not carry), then every device's personal model on its own test
    windows; also the global model on every device where the method has one of the devices' architecture."""
    t0 = time.perf_counter()
    rounds = []

    def each(m):
        rounds.append(m)
        if log and (m["round"] % log_every == 0 or m["round"] == cfg.rounds):
            log(f"  {cfg.strategy} round {m['round']}/{cfg.rounds} ({time.perf_counter() - t0:.0f} s)")
    r = run_inprocess(cfg, data, each, strategy=method)
    last = rounds[-1]["personal"] if rounds else {}
    ups = [v["up"] for m in rounds for v in m["device_values"].values() if v["up"]]
    downs = [v["down"] for m in rounds for d, v in m["device_values"].items() if v["up"]]
    ids = sorted(r.models)
    out = {"rounds": cfg.rounds, "k": cfg.personal.per_round or len(ids), "mean_acc": float(np.mean(list(last.values()))),
           "p10_acc": p10(list(last.values())), "per_device": dict(last),
           # the seed's Fig. 8 measure: values one participating device sends per round
           "values_per_round": int(np.mean(ups)) if ups else 0,
           "values_down_per_round": int(np.mean(downs)) if downs else 0,
           "participation": {d: sum(d in m["trained"] for m in rounds) for d in ids},
           "seconds": round(time.perf_counter() - t0, 1),
           # each device's personal model as it keeps it (inside the in-process device)
           "personal_models": {d: role.client.dev.personal for d, dev in r.fleet.devices.items()
                               for role in dev.roles if isinstance(role, PersonalRole)}}
    if r.method.kind == "weights":
        archs = cfg.personal.arch
        devs = make_devices(data, len(ids), [archs[i % len(archs)] for i in range(len(ids))])
        g = {d.id: d.accuracy(r.method.params) for d in devs}
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
