"""`semifl run`: broker + host + virtual fleet in one process tree, then the summary and the plot; and
the pieces `semifl serve` and `semifl fleet` take from it."""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

from semifl.config import ConfigError, RunConfig
from semifl.energy import fleet_energy
from semifl.learn.data import Dataset, load_idx_dataset
from semifl.learn.har import HARData, load_har
from semifl.learn.partition import describe
from semifl.service.aggregator import Coordinator, coordinator_subs
from semifl.service.report import plot_rounds, write_summary
from semifl.service.session import Session
from semifl.service.store import Store
from semifl.sim.fleet import VirtualFleet, device_indices, fleet_for, har_fleet
from semifl.transport.broker import EmbeddedBroker
from semifl.transport.certs import Certs, fleet_credentials
from semifl.transport.mqtt import BrokerError, HostLink

from .aggregate import Workers
from .build import limits, make_round, public_set

log = logging.getLogger("semifl.run")
NO_SHARE = ("host workers share the devices' uploads through MQTT v5 shared subscriptions ($share/...): "
            "the embedded broker has none; give --broker mqtt://... of a Mosquitto 2")


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


def load_data(cfg: RunConfig) -> Dataset | HARData:
    """The run's data: HAR subjects for personalization, an IDX dataset otherwise."""
    if cfg.family == "personal":
        har = load_har(cfg.data, seed=cfg.seed)
        if cfg.personal.subjects > len(har.subjects):
            raise ValueError(f"{cfg.personal.subjects} subjects asked for, {cfg.data or 'WISDM-2019'} has "
                             f"{len(har.subjects)}")
        return har
    return load_idx_dataset(cfg.data)


def fleet_specs(cfg: RunConfig, data) -> list:
    """The virtual fleet of a run: one Pi per HAR subject (FD's public pool in each one's flash), or
    the seed's Pis and MCUs with the data split by `partition`."""
    if cfg.family == "personal":
        return har_fleet(cfg, data, public_set(data, cfg.personal.subjects) if cfg.strategy == "fd" else None)
    specs = fleet_for(cfg, data)
    if cfg.strategy == "iotsl":
        for s in specs:
            s.config.setdefault("max_epsilon", cfg.split.max_epsilon)
    return specs


def own_broker(stack: contextlib.ExitStack, folder: Path, ids: list[str], tls: bool) -> tuple[str, HostLink, Certs]:
    """A run's own embedded broker on loopback: credentials made for this run's fleet in `folder` (one
    account per device id and the host's; kept, so a resumed run finds the same ones), TLS when the
    device runtimes speak it, so no other client on the machine reads or publishes anything.
    -> (the devices' broker URL, the host's link, not connected, the credentials)."""
    certs = fleet_credentials(folder, ids)
    broker = stack.enter_context(EmbeddedBroker.secured(certs.dir, tls=tls))
    host = certs.host()
    return broker.url, HostLink(broker.url.replace("://", f"://{host.user}@"), ca=str(certs.ca), password=host.password), certs


def run_tls(fleet: VirtualFleet) -> bool:
    """Whether a run's own broker speaks TLS: $SEMIFL_RUN_TLS=1|0, else where every device runtime
    affords it (on the node, TLS keeps ~5 KB of a 110 KB esp32 heap: see docs/trust.md, Links)."""
    import os

    want = os.environ.get("SEMIFL_RUN_TLS", "auto")
    return fleet.speaks_tls if want == "auto" else want == "1"


def fleet_layout(cfg: RunConfig) -> dict:
    """How the virtual fleet spreads over processes (config [sim]): VirtualFleet's keyword arguments."""
    return {"workers": cfg.sim.workers, "mcu_processes": cfg.sim.mcu_processes, "own_processes": cfg.sim.own_processes}


def wait_for_fleet(session: Session, n: int, stall_s: float) -> bool:
    """Until n devices are online, for as long as devices keep coming: False once none more has come
    for `stall_s`. (A fixed limit would be too short for 10,000 devices or needlessly long for 10.)"""
    seen, since = -1, time.monotonic()
    while True:
        online = len(session.registry.online)
        if online >= n:
            return True
        if online != seen:
            seen, since = online, time.monotonic()
        left = since + stall_s - time.monotonic()
        if left <= 0:
            return False
        session.wait_for_devices(n, timeout=min(left, 1.0))


def run_on_broker(cfg: RunConfig, out: Path, specs, data, on_round=None, stop=None, on_progress=None,
                  certs: Path | None = None, on_session=None, workers: int = 0):
    """One run: the broker (embedded, with this run's own credentials, unless cfg.broker), the host's
    store, link and session, the round object of the strategy, and the virtual fleet; stop(metrics)
    may end it before cfg.rounds. certs: with cfg.broker, a `semifl certs` folder that gives each
    virtual device its own account (issued there if missing). on_session(session): told the session
    before the fleet starts (a live view). workers: host workers that fold the FL uploads (service/
    aggregator.py; needs cfg.broker, a Mosquitto 2). -> (session, round object, metrics)."""
    if workers and not cfg.broker:
        raise ConfigError(NO_SHARE)
    with contextlib.ExitStack() as stack:
        fleet = VirtualFleet(out / "fleet", specs, None if cfg.family == "personal" else data, cfg.broker,
                             **fleet_layout(cfg))
        if cfg.broker:
            url, link = cfg.broker, HostLink(cfg.broker, **({"subs": coordinator_subs(False)} if workers else {}))
            if certs is not None:
                fleet.certs = fleet_credentials(certs, [s.id for s in specs], init_ca=False)
        else:
            url, link, fleet.certs = own_broker(stack, out / "fleet" / "_certs", [s.id for s in specs],
                                                tls=run_tls(fleet))
            fleet.broker = url
        store = Store(str(out / "state.db"))
        stack.callback(store.close)
        link.connect()
        stack.callback(link.close)
        coord = Coordinator(link, workers) if workers else None
        session = Session(coord or link, store, limits(cfg))
        session.on_progress = on_progress
        if on_session:
            on_session(session)
        rounds_obj = make_round(cfg, session, data, [s.id for s in specs])
        if coord:
            coord.attach(rounds_obj)
            stack.enter_context(Workers(url, workers, out / "workers"))
            if not coord.wait(session, workers, cfg.host.startup_timeout_s):
                raise TimeoutError(f"{len(coord.live)} of {workers} host workers came up; see {out}/workers/*.log")
        stack.enter_context(fleet)
        if not wait_for_fleet(session, len(specs), cfg.host.startup_timeout_s):
            raise TimeoutError(f"only {len(session.registry.online)} of {len(specs)} devices came up, none more in "
                               f"the last {cfg.host.startup_timeout_s:.0f} s; see {out}/fleet/_workers/*.log and "
                               f"{out}/fleet/*/device.log")
        session.run(rounds_obj, cfg.rounds, on_round=on_round, stop=stop)
        session.stop_fleet()
        fleet.stop()
        return session, rounds_obj, store.round_metrics()


def add_energy(summary: dict) -> None:
    """Each device's energy_j / energy_by_phase / meter in a virtual fleet's summary: no hardware meter
    there, so the virtual meter of its board profile (semifl.energy) over the summary's rounds."""
    energy = fleet_energy(summary["rounds"], {d["id"]: d["board"] for d in summary["devices"] if d.get("board")})
    for d in summary["devices"]:
        d.update(energy.get(d["id"], {}))


# what a run writes into its folder; `--overwrite` replaces these and nothing else
OUTPUTS = ("summary.json", "rounds.png", "final_model.npz", "config.json", "state.db", "state.db-wal",
           "state.db-shm", "state.db-spool", "fleet", "workers")


def run_folder(cfg: RunConfig, overwrite: bool = False) -> Path:
    """A new run's folder: `cfg.out`, which must be absent or empty (or, with `overwrite`, hold only a
    previous run's outputs, which are removed; anything else in it is left alone), or else a new
    runs/<name>-<date>-<time>. Never deletes what a run did not write."""
    if cfg.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = base = Path("runs") / f"{cfg.name or cfg.strategy}-{stamp}"
        for i in itertools.count(2):   # two runs started in the same second
            if not out.exists():
                break
            out = base.with_name(f"{base.name}-{i}")
        out.mkdir(parents=True)
        return out
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} is a file, not a folder; give --out a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"out: {out} is not empty; give another --out, or --overwrite to replace a "
                              f"previous run's outputs there ({', '.join(OUTPUTS[:3])}, ...; other files are kept)")
        discard(out, new=False)
    out.mkdir(parents=True, exist_ok=True)
    return out


def discard(out: Path, new: bool) -> None:
    """Remove a run's outputs from `out` (and `out` itself if the run made it and nothing else is there)."""
    for name in OUTPUTS:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    if new and not any(out.iterdir()):
        out.rmdir()


def resume_config(folder: str, rounds: int | None = None) -> tuple[RunConfig, int]:
    """The config of the interrupted run in `folder` (its config.json), to go on from its last
    completed round; `rounds` may extend it. -> (config, the last completed round)."""
    path, db = Path(folder) / "config.json", Path(folder) / "state.db"
    if not db.exists() or not path.exists():
        raise ConfigError(f"resume: {folder} holds no interrupted run (no config.json and state.db there)")
    cfg = RunConfig.from_dict(json.loads(path.read_text()))
    store = Store(str(db))
    done = store.last_completed_round()
    store.close()
    return cfg.replace(out=str(folder), **({"rounds": rounds} if rounds is not None else {})), done


def run_experiment(cfg: RunConfig, on_round=None, ds: Dataset | None = None, stop=None, *,
                   overwrite: bool = False, resume: bool = False, on_start=None, on_progress=None,
                   certs: str | None = None, on_session=None, workers: int = 0) -> dict:
    """`semifl run`: the run `cfg` describes, its summary.json, plot and final model. stop(metrics):
    end the run after a round before cfg.rounds (e.g. at a time budget or a target accuracy).
    resume: go on in cfg.out from its last completed round (`resume_config`). on_start(folder): told
    the run's folder before the fleet starts; on_progress(round, text): what the open round is doing."""
    if workers and not cfg.broker:   # before the output folder
        raise ConfigError(NO_SHARE)
    data = ds if ds is not None and cfg.family != "personal" else load_data(cfg)   # before the output folder
    out = Path(cfg.out) if resume else run_folder(cfg, overwrite)
    if not resume:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    if on_start:
        on_start(out)
    specs = fleet_specs(cfg, data)
    try:
        session, rounds_obj, rounds = run_on_broker(cfg, out, specs, data, on_round, stop, on_progress,
                                                    certs=Path(certs) if certs else None, on_session=on_session,
                                                    workers=workers)
    except BrokerError:
        if not resume:   # the run never began: take back what it wrote
            discard(out, new=cfg.out is None)
        raise
    summary = personal_summary(cfg, specs, session, rounds_obj, rounds) if cfg.family == "personal" else \
        federated_summary(cfg, data, specs, session, rounds)
    write_outputs(cfg, out, summary, rounds, rounds_obj, len(specs))
    return summary


def write_outputs(cfg: RunConfig, out: Path, summary: dict, rounds: list[dict], rounds_obj, n_devices: int) -> None:
    """summary.json (with each device's energy), rounds.png and final_model.npz, for `run` and `serve`."""
    add_energy(summary)
    write_summary(out, summary)
    shown = [m for m in rounds if m["accuracy"] is not None]
    if cfg.plot and shown:
        plot_rounds(out, shown, f"{cfg.strategy} on {summary['dataset']}, {n_devices} devices")
    if rounds_obj.params:   # the global model (FedPer: the shared base; FD has none)
        np.savez(out / "final_model.npz", *rounds_obj.params)


def common_summary(cfg: RunConfig, session: Session, rounds: list[dict]) -> dict:
    return {"strategy": cfg.strategy, "broker": "embedded" if not cfg.broker else cfg.broker, "seed": cfg.seed,
            "config": cfg.to_dict(), "rounds": rounds,
            "rejected": dict(sum((Counter(m["rejected"]) for m in rounds), Counter())),
            "rejected_total": dict(session.rejected),   # also what came between rounds (before the first one)
            "late": dict(sum((Counter(m.get("late", {})) for m in rounds), Counter()))}


def device_role(cfg: RunConfig, device_class: str | None) -> str:
    """A device's role in a run's summary: personalization and split learning name the strategy; otherwise
    a Pi is an FL client and an MCU a CL uploader."""
    if cfg.family == "personal" or cfg.family == "split" and device_class == "pi":
        return cfg.strategy
    return "fl" if device_class == "pi" else "cl"


def device_entry(session: Session, spec, role: str, **extra) -> dict:
    caps = session.registry.devices.get(spec.id, {})
    # what the device itself reported: the interpreter it ran on and its board profile
    return {"id": spec.id, "device_class": spec.device_class, "role": role, "runtime": caps.get("runtime"),
            "board": caps.get("board"), **extra, "bytes_up": int(session.bytes_up[spec.id]),
            "bytes_down": int(session.bytes_down[spec.id])}


def federated_summary(cfg: RunConfig, ds: Dataset, specs, session: Session, rounds: list[dict],
                      partition: bool = True) -> dict:
    """partition: the run made the fleet (specs are DeviceSpecs), so its data split is known."""
    evals = {}   # each device's latest on-device evaluation of the int8 model
    for m in rounds:
        evals.update(m.get("device_evals", {}))
    summary = {
        **common_summary(cfg, session, rounds), "dataset": ds.name, "mode": cfg.federated.mode,
        "partition": {"kind": cfg.sim.partition, "seed": cfg.seed,
                      "devices": dict(zip((s.id for s in specs), describe(
                          [device_indices(ds, s) for s in specs], ds.y_train, ds.n_classes).values()))}
        if partition else None,
        "devices": [device_entry(session, s, device_role(cfg, s.device_class),
                                 **{"class": s.classes[0] if len(s.classes) == 1 else s.classes,
                                    "int8_eval": evals.get(s.id)}) for s in specs],
        "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
        # models not given to a device that could not run them (its ops, its memory), by reason
        "refused": dict(Counter(w.split(":")[0] for m in rounds for w in m.get("refused", {}).values())),
    }
    summary["round_time_s"] = round_time_breakdown(rounds, {s.id: s.device_class for s in specs})
    summary["trust"] = trust_summary(cfg, rounds)
    return summary


def trust_summary(cfg: RunConfig, rounds: list[dict]) -> dict:
    """What the run trusted and what it refused: the merge rule, who ended quarantined (and why, as the
    idle reasons say), client-level DP's epsilon, SecAgg's rounds and dropouts."""
    last = rounds[-1] if rounds else {}
    out = {"aggregation": cfg.trust.aggregation, "quarantined": last.get("quarantined", []),
           "claims_refused": sum(m.get("rejected", {}).get("claim", 0) for m in rounds)}
    dp = last.get("trust", {}).get("dp")
    if dp:
        out["dp"] = dict(dp, epsilon_run_assumes="clients sampled uniformly; the top-K planner is not: "
                                                 "epsilon_device (no amplification) is the figure that holds")
    secure = [m["secagg"] for m in rounds if isinstance(m.get("secagg"), dict)]
    if cfg.trust.secagg:
        out["secagg"] = {"rounds": sum("survivors" in x for x in secure),
                         "failed_rounds": sum("failed" in x for x in secure),
                         "dropped": sum(len(x.get("dropped", ())) for x in secure)}
    return out


def personal_summary(cfg: RunConfig, specs, session: Session, rounds_obj, rounds: list[dict]) -> dict:
    last = next((m for m in reversed(rounds) if m.get("personal")), {})
    ups = [v["up"] for m in rounds for v in m.get("device_values", {}).values() if v["up"]]
    return {
        **common_summary(cfg, session, rounds), "dataset": "wisdm-2019" if not cfg.data else cfg.data,
        "partition": {"kind": "subject", "devices": {s.id: {"n": len(s.data["y"]), "classes": s.classes} for s in specs}},
        "devices": [device_entry(session, s, device_role(cfg, s.device_class), model=rounds_obj.models[s.id],
                                 personal_accuracy=last.get("personal", {}).get(s.id)) for s in specs],
        "final_accuracy": last.get("personal_mean"), "final_p10_accuracy": last.get("personal_p10"),
        "global_accuracy": rounds[-1].get("global_accuracy") if rounds else None,
        # the seed's Fig. 8 measure: values one participating device sends per round
        "values_per_round": int(np.mean(ups)) if ups else 0,
        "offloaded": sorted({d for m in rounds for d in m.get("offloaded", [])}),
        "refused": {},
    }


def serve_folder(cfg: RunConfig, state: str | None = None) -> tuple[Path, Path]:
    """`semifl serve`'s folder and state database: --out, else the folder of --state, else
    runs/serve-<name>; the state is --state, else state.db there. A restart resumes from that state.
    Outputs (summary.json, ...) already there that no earlier serve of this state wrote are refused."""
    out = Path(cfg.out) if cfg.out else Path(state).parent if state else Path(f"runs/serve-{cfg.name or cfg.strategy}")
    db = Path(state) if state else out / "state.db"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} is a file, not a folder; give --out a folder")
    theirs = [n for n in OUTPUTS[:3] if (out / n).exists()]
    if theirs and not db.exists():
        raise ConfigError(f"out: {out} holds {', '.join(theirs)} of another run; give another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out, db


def expected_devices(cfg: RunConfig) -> int:
    """How many devices the fleet `cfg` describes (what `semifl fleet` with the same settings starts)."""
    return cfg.personal.subjects if cfg.family == "personal" else cfg.sim.fl_devices + cfg.sim.cl_devices


def reported_specs(session: Session, rounds: list[dict]) -> list:
    """The devices that answered a round, as they described themselves (capability reports): what
    `serve` knows of a fleet it did not start (the registry also remembers devices of earlier runs)."""
    from types import SimpleNamespace

    answered = {d for m in rounds for d in m.get("device_battery", {})}
    return [SimpleNamespace(id=d, device_class=c.get("class"), classes=[k for k, n in enumerate(c.get("hist") or []) if n])
            for d, c in sorted(session.registry.devices.items()) if d in answered]


def serve(cfg: RunConfig, wait_devices: int | None = None, wait_s: float = 300, on_round=None,
          on_progress=None, on_start=None, state: str | None = None, on_session=None, workers: int = 0,
          spawn: bool = True, edges: int = 0) -> dict:
    """The host service alone against cfg.broker, in `serve_folder(cfg, state)`: resumes from its state at
    the last completed round; at the end the same summary.json, plot and final model as `run`.
    Waits for `wait_devices` (default: the fleet cfg describes) before round 1. workers: host workers
    that fold the FL uploads (service/aggregator.py), started here (or, spawn False, elsewhere with
    `semifl worker`), waited for before round 1; edges: edge aggregators (`semifl edge`) to wait for, whose
    devices' updates they fold (devices on this broker upload to the host as before)."""
    if workers and not cfg.broker:
        raise ConfigError(NO_SHARE)
    data = load_data(cfg)
    out, db = serve_folder(cfg, state)
    if on_start:
        on_start(out)
    want = wait_devices or expected_devices(cfg)
    with contextlib.ExitStack() as stack:
        store = Store(str(db))
        stack.callback(store.close)
        aggs = workers or edges
        link = HostLink(cfg.broker, **({"subs": coordinator_subs(own_uploads=not workers)} if aggs else {})).connect()
        stack.callback(link.close)
        coord = Coordinator(link, workers) if aggs else None
        session = Session(coord or link, store, limits(cfg))
        session.on_progress = on_progress
        if on_session:
            on_session(session)
        specs = har_fleet(cfg, data) if cfg.family == "personal" else None
        rounds_obj = make_round(cfg, session, data, [s.id for s in specs] if specs else None)
        if coord:
            coord.attach(rounds_obj)
            if spawn and workers:
                stack.enter_context(Workers(cfg.broker, workers, out / "workers"))
            if not coord.wait(session, aggs, wait_s):
                raise TimeoutError(f"{len(coord.live)} of {aggs} {'host workers' if workers else 'edges'} came up "
                                   f"({sorted(coord.live)}); see their logs")
        if not session.wait_for_devices(want, timeout=wait_s):
            raise TimeoutError(f"{len(session.registry.online)} of {want} devices online after {wait_s:.0f} s "
                               f"(start them with `semifl fleet --broker {cfg.broker}` or give --wait-devices)")
        session.run(rounds_obj, cfg.rounds, on_round=on_round)
        session.stop_fleet()
        rounds = store.round_metrics()
        if cfg.family == "personal":
            summary = personal_summary(cfg, specs, session, rounds_obj, rounds)
        else:
            summary = federated_summary(cfg, data, reported_specs(session, rounds), session, rounds, partition=False)
    write_outputs(cfg, out, summary, rounds, rounds_obj, len(summary["devices"]))
    return summary


def start_fleet(cfg: RunConfig, root: Path, certs: str | None = None) -> VirtualFleet:
    """The virtual fleet alone (real device code as processes) against cfg.broker; certs: a `semifl
    certs` folder giving each device its own account (issued there if missing)."""
    data = load_data(cfg)
    specs = fleet_specs(cfg, data)
    own = fleet_credentials(certs, [s.id for s in specs], init_ca=False) if certs else None
    return VirtualFleet(root, specs, None if cfg.family == "personal" else data, cfg.broker, certs=own,
                        **fleet_layout(cfg)).start()
