"""`semifl run`: broker + host + virtual fleet in one process tree, then the summary and the plot."""
from __future__ import annotations

import contextlib
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from semifl.config import RunConfig
from semifl.energy import fleet_energy
from semifl.experiments import perfit as perfit_ex
from semifl.learn import mlp, nn, perfit
from semifl.learn.har import feature_view, load_har
from semifl.learn.data import Dataset, load_idx_dataset, to_float
from semifl.learn.strategy import make_strategy
from semifl.models import get as get_model
from semifl.service.engine import RoundEngine
from semifl.service.personal_engine import PersonalEngine
from semifl.service.split_engine import GeneratorStage, SplitEngine
from semifl.service.report import plot_rounds, write_summary
from semifl.service.store import Store
from semifl.learn.partition import describe
from semifl.sim.fleet import VirtualFleet, device_indices, fleet_for, har_fleet
from semifl.transport.broker import EmbeddedBroker
from semifl.transport.mqtt import HostLink

log = logging.getLogger("semifl.run")
SPLIT = ("sl", "splitfed", "iotsl")   # split learning: the Pis keep the model's first layers
PERSONAL = ("ftl", "fedper", "fd", "perfedavg", "ditto")   # personalization (PerFit) on HAR subjects


def make_evaluator(ds: Dataset):
    x, y = to_float(ds.x_test), ds.y_test.astype(np.int64)
    return lambda params: mlp.evaluate(params, x, y)


def round_time_breakdown(rounds: list[dict], classes: dict[str, str]) -> dict:
    """Seed 001's T = T_download + T_local + T_upload + T_global per device class, mean seconds over the
    rounds a device took part in (download and local measured by the device, upload by the host from
    request to the last chunk, global = the host's aggregate phase)."""
    acc: dict[str, dict[str, list]] = {}
    for m in rounds:
        for dev, t in m.get("device_times_s", {}).items():
            for k, v in t.items():
                acc.setdefault(classes.get(dev, "?"), {}).setdefault(k, []).append(v)
    glob = [m["phases_s"]["aggregate"] for m in rounds if "aggregate" in m.get("phases_s", {})]
    out = {}
    for cls, parts in sorted(acc.items()):
        row = {k: round(sum(v) / len(v), 5) for k, v in sorted(parts.items())}
        row["global"] = round(sum(glob) / len(glob), 5) if glob else None
        out[cls] = row
    return out


def build_engine(cfg: RunConfig, ds: Dataset, store: Store, link: HostLink) -> RoundEngine:
    if cfg.strategy in SPLIT:
        spec = get_model(cfg.model)
        if not spec.cut:
            raise ValueError(f"model {spec.name} has no device part (cut); split learning needs one")
        net = spec.network()
        n = cfg.eval_n or len(ds.y_test)
        x, y = to_float(ds.x_test[:n]).reshape((-1,) + net.input_shape), ds.y_test[:n].astype(np.int64)

        def evaluate(params):
            logits = np.concatenate([net.forward(params, x[i:i + 500]) for i in range(0, len(x), 500)])
            return float((logits.argmax(1) == y).mean()), nn.softmax_xent(logits, y)[0]

        stage = GeneratorStage(cfg.gen_steps, cfg.gen_sigma, cfg.gen_batch, cfg.gen_dim, cfg.pretrain_epochs, cfg.max_epsilon)
        return SplitEngine(link, store, cfg.engine(), net, spec.cut, spec.name, net.init(cfg.seed), evaluate,
                           ds.n_classes, variant=cfg.strategy, batch=cfg.sl_batch, smashed=cfg.smashed, generators=stage)
    return RoundEngine(link, store, make_strategy(cfg.strategy, cfg.lr, cfg.rounds, cfg.prune, cfg.seed), cfg.engine(),
                       mlp.init_params(seed=cfg.seed), make_evaluator(ds), n_classes=ds.n_classes,
                       calib_x=ds.x_train[::60][:1000])   # int8 ranges until CL uploads arrive (fedavg has none)


def personal_models(cfg: RunConfig, ids: list[str]) -> dict[str, str]:
    """The model each device runs: cfg.arch for all, or (FD, model-agnostic) architectures cycled."""
    archs = [a.strip() for a in cfg.arch.split(",") if a.strip()]
    if len(archs) > 1 and cfg.strategy != "fd":
        raise ValueError(f"{cfg.strategy} shares one model; only fd lets devices run different ones ({cfg.arch})")
    return {d: perfit_ex.ARCHS[archs[i % len(archs)]] for i, d in enumerate(ids)}


def global_evaluator(har, subjects: int, net, view):
    xt = np.concatenate([s.x_test for s in har.subjects[:subjects]])
    yt = np.concatenate([s.y_test for s in har.subjects[:subjects]]).astype(np.int64)

    def evaluate(params):
        logits = net.forward(params, view(xt))
        return float((logits.argmax(1) == yt).mean()), nn.softmax_xent(logits, yt)[0]
    return evaluate


def personal_method(cfg: RunConfig, har, net: nn.Net | None = None) -> perfit.Method:
    """The run's PerFit method with its settings from cfg (FD: its public pool and class count)."""
    local = perfit.Local(epochs=cfg.epochs, batch=cfg.batch, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.strategy == "fd":
        return perfit.FD(perfit_ex.public_set(har, cfg.subjects), har.n_classes, local, seed=cfg.seed,
                         public_n=cfg.public_n)
    extra = {"ftl": {"ft_epochs": cfg.ft_epochs}, "fedper": {"head_arrays": cfg.head_arrays},
             "perfedavg": {"alpha": cfg.inner_lr, "adapt_steps": cfg.adapt_steps}, "ditto": {"lam": cfg.lam}}[cfg.strategy]
    return perfit.METHODS[cfg.strategy](net, local, cfg.seed, **extra)


def build_personal_engine(cfg: RunConfig, har, store: Store, link: HostLink, ids: list[str]) -> PersonalEngine:
    """PerFit's method over the broker: the same `semifl.learn.perfit` classes the in-process runner uses."""
    models = personal_models(cfg, ids)
    nets = {m: get_model(m).network() for m in set(models.values())}
    nf = len(har.features)
    views = {m: feature_view(get_model(m).input_shape, nf) for m in nets}
    net = next(iter(nets.values()))
    method = personal_method(cfg, har, net)
    # a global model every device could run (not FD's, not FedPer's base alone): scored on all test windows
    evaluate = None if cfg.strategy in ("fd", "fedper") else global_evaluator(har, cfg.subjects, net, views[models[ids[0]]])
    return PersonalEngine(link, store, cfg.engine(), method, models, nets, views, evaluate, har.n_classes, nf, method.cfg,
                          cfg.rounds, per_round=cfg.per_round, personal_every=cfg.personal_every)


def run_on_broker(cfg: RunConfig, out: Path, specs, ds, make_engine, on_round=None):
    """One run: the broker (embedded unless cfg.broker), the host's store and link, the engine
    `make_engine(store, link)` builds, and the virtual fleet. -> (engine, the rounds' metrics)."""
    with contextlib.ExitStack() as stack:
        url = cfg.broker or stack.enter_context(EmbeddedBroker()).url
        store = Store(str(out / "state.db"))
        stack.callback(store.close)
        link = HostLink(url).connect()
        stack.callback(link.close)
        engine = make_engine(store, link)
        fleet = stack.enter_context(VirtualFleet(out / "fleet", specs, ds, url))
        if not engine.wait_for_devices(len(specs), timeout=120):
            raise TimeoutError(f"only {len(engine.registry.online)} of {len(specs)} devices came up; see {out}/fleet/*/device.log")
        engine.run(cfg.rounds, on_round=on_round)
        engine.stop_fleet()
        fleet.stop()
        return engine, store.round_metrics()


def add_energy(summary: dict) -> None:
    """Each device's energy_j / energy_by_phase / meter in a virtual fleet's summary: no hardware meter
    there, so the virtual meter of its board profile (semifl.energy) over the summary's rounds."""
    energy = fleet_energy(summary["rounds"], {d["id"]: d["board"] for d in summary["devices"] if d.get("board")})
    for d in summary["devices"]:
        d.update(energy.get(d["id"], {}))


def fresh_out(cfg: RunConfig) -> Path:
    """The run's folder, emptied: `run` is a fresh experiment; `serve` is the one that resumes."""
    out = Path(cfg.out or f"runs/{cfg.name}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def run_experiment(cfg: RunConfig, on_round=None, ds: Dataset | None = None) -> dict:
    if cfg.strategy in PERSONAL:
        return run_personal(cfg, on_round)
    ds = ds or load_idx_dataset(cfg.data)   # before the output folder: missing data leaves nothing behind
    out = fresh_out(cfg)
    specs = fleet_for(cfg, ds)
    if cfg.strategy == "iotsl":
        for s in specs:
            s.config.setdefault("max_epsilon", cfg.max_epsilon)
    engine, rounds = run_on_broker(cfg, out, specs, ds, lambda store, link: build_engine(cfg, ds, store, link), on_round)
    pi_role = cfg.strategy if cfg.strategy in SPLIT else "fl"
    roles = {s.id: (pi_role if s.device_class == "pi" else "cl") for s in specs}
    evals = {}   # each device's latest on-device evaluation of the int8 model
    for m in rounds:
        evals.update(m.get("device_evals", {}))
    summary = {
        "strategy": cfg.strategy, "dataset": ds.name, "broker": "embedded" if not cfg.broker else cfg.broker,
        "seed": cfg.seed, "config": cfg.to_dict(),
        "partition": {"kind": cfg.partition, "seed": cfg.seed,
                      "devices": dict(zip((s.id for s in specs), describe(
                          [device_indices(ds, s) for s in specs], ds.y_train, ds.n_classes).values()))},
        "devices": [{"id": s.id, "class": s.classes[0] if len(s.classes) == 1 else s.classes,
                     "device_class": s.device_class, "role": roles[s.id],
                     # what the device itself reported: the interpreter it ran on and its board profile
                     "runtime": engine.registry.devices.get(s.id, {}).get("runtime"),
                     "board": engine.registry.devices.get(s.id, {}).get("board"),
                     "int8_eval": evals.get(s.id),
                     "bytes_up": int(engine.bytes_up[s.id]), "bytes_down": int(engine.bytes_down[s.id])} for s in specs],
        "rounds": rounds,
        "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
        "rejected": dict(sum((Counter(m["rejected"]) for m in rounds), Counter())),
        # models not given to a device that could not run them (its ops, its memory), by reason
        "refused": dict(Counter(w.split(":")[0] for m in rounds for w in m.get("refused", {}).values())),
    }
    summary["round_time_s"] = round_time_breakdown(rounds, {s.id: s.device_class for s in specs})
    add_energy(summary)
    write_summary(out, summary)
    if cfg.plot and rounds:
        plot_rounds(out, rounds, f"{cfg.strategy} on {ds.name}, {len(specs)} devices")
    np.savez(out / "final_model.npz", *engine.params)
    return summary


def personal_fleet(cfg: RunConfig, har):
    """One virtual Pi per subject; FD's public pool in every device's flash."""
    return har_fleet(cfg, har, perfit_ex.public_set(har, cfg.subjects) if cfg.strategy == "fd" else None)


def har_ids(cfg: RunConfig, har) -> list[str]:
    """The devices of a personalization run: one per subject, named as `semifl fleet` names them."""
    return [spec.id for spec in har_fleet(cfg, har)]


def run_personal(cfg: RunConfig, on_round=None) -> dict:
    """`semifl run --strategy ftl | fedper | fd | perfedavg | ditto`: one virtual Pi per HAR subject."""
    har = load_har(cfg.data, seed=cfg.seed)
    if cfg.subjects > len(har.subjects):
        raise ValueError(f"{cfg.subjects} subjects asked for, {cfg.data or 'WISDM-2019'} has {len(har.subjects)}")
    out = fresh_out(cfg)
    specs = personal_fleet(cfg, har)
    engine, rounds = run_on_broker(cfg, out, specs, None, lambda store, link: build_personal_engine(
        cfg, har, store, link, [s.id for s in specs]), on_round)
    last = next((m for m in reversed(rounds) if m.get("personal")), {})
    ups = [v["up"] for m in rounds for v in m.get("device_values", {}).values() if v["up"]]
    summary = {
        "strategy": cfg.strategy, "dataset": "wisdm-2019" if not cfg.data else cfg.data, "seed": cfg.seed,
        "broker": "embedded" if not cfg.broker else cfg.broker, "config": cfg.to_dict(),
        "partition": {"kind": "subject", "devices": {s.id: {"n": len(s.data["y"]), "classes": s.classes} for s in specs}},
        "devices": [{"id": s.id, "device_class": "pi", "role": cfg.strategy, "model": engine.models[s.id],
                     "runtime": engine.registry.devices.get(s.id, {}).get("runtime"),
                     "board": engine.registry.devices.get(s.id, {}).get("board"),
                     "personal_accuracy": last.get("personal", {}).get(s.id),
                     "bytes_up": int(engine.bytes_up[s.id]), "bytes_down": int(engine.bytes_down[s.id])} for s in specs],
        "rounds": rounds,
        "final_accuracy": last.get("personal_mean"), "final_p10_accuracy": last.get("personal_p10"),
        "global_accuracy": rounds[-1].get("global_accuracy") if rounds else None,
        # the seed's Fig. 8 measure: values one participating device sends per round
        "values_per_round": int(np.mean(ups)) if ups else 0,
        "offloaded": sorted({d for m in rounds for d in m.get("offloaded", [])}),
        "rejected": dict(sum((Counter(m["rejected"]) for m in rounds), Counter())),
        "refused": {},
    }
    add_energy(summary)
    write_summary(out, summary)
    if cfg.plot and rounds:
        plot_rounds(out, [m for m in rounds if m["accuracy"] is not None], f"{cfg.strategy} on HAR, {len(specs)} devices")
    if engine.params:   # the global model (FedPer: the shared base; FD has none)
        np.savez(out / "final_model.npz", *engine.params)
    return summary
