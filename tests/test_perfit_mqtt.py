"""Personalization over MQTT (PerFit, seed 003; docs/protocol.md §5b): every method over the broker
ends where the same method in-process ends, device for device; what travels is what the method
sends (FedPer never the head, FD only logits); personal models go to their owner only; bad uploads
are refused; a weak device is trained for by the host when its policy allows."""
import os
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from semifl.config import RunConfig
from semifl.experiments import perfit as ex
from semifl.fleet.planner import RoundPlan
from semifl.learn import perfit
from semifl.learn.har import load_har
from semifl.models import get
from semifl.protocol import wire
from semifl.protocol.tensors import arrays_crc, decode_arrays, to_wire
from semifl.app import run as experiment
from semifl.service.rounds.personal import PersonalRound
from semifl.service.session import Session
from semifl.service.store import Store
from semifl.transport.mqtt import HostLink, parse_broker_url
from semifl.device import PersonalClient

from conftest import kill_mid_round_and_restart

from conftest import HAR_NF as NF   # noqa: E402  (WISDM-2019's 91 features; the har_dir fixture's)
NET = get("3nn-har").network()
BASE, HEAD = NET.shapes()[:-2], NET.shapes()[-2:]


def cfg(tmp_path, har_dir, broker, **kw):
    base = dict(strategy="fedper", rounds=3, subjects=4, per_round=2, epochs=1, batch=16, lr=0.05, momentum=0.5,
                public_n=40, ft_epochs=2, data=har_dir, out=str(tmp_path / "run"), broker=broker, plot=False)
    return RunConfig.make(**{**base, **kw})


@pytest.mark.parametrize("strategy", ["ftl", "fedper", "fd", "perfedavg", "ditto"])
def test_each_method_over_the_broker_is_the_method_in_process(tmp_path, har_dir, embedded, strategy):
    c = cfg(tmp_path, har_dir, embedded, strategy=strategy)
    summary = experiment.run_experiment(c)
    har = load_har(har_dir, seed=c.seed)
    ref = ex.run(c, har, log=None)
    over_mqtt = {d["id"]: d["personal_accuracy"] for d in summary["devices"]}
    assert over_mqtt == ref["per_device"]            # the same floats: same code, same data, same seeds
    assert summary["final_accuracy"] == ref["mean_acc"] and summary["final_p10_accuracy"] == ref["p10_acc"]
    assert summary["values_per_round"] == ref["values_per_round"]
    last_kept = {}
    for r in summary["rounds"]:
        assert r["rejected"] == {} and r["device_errors"] == {} and len(r["participants"]["fl"]) == 2
        for d, ch in r["personal_chain"].items():   # a device goes on from the personal state it kept
            assert ch["from"] == last_kept.get(d, 0) or strategy in ("ftl", "perfedavg")   # theirs: none while training
            last_kept[d] = ch["to"]
    if strategy == "fd":
        assert summary["values_per_round"] == 40 * 18                 # public_n x classes, nothing else
    assert all(d["energy_j"] > 0 and d["runtime"] == "cpython" for d in summary["devices"])


class Tap:
    """A client on the broker recording every chunk devices publish on their up topics."""

    def __init__(self, url):
        host, port = parse_broker_url(url)
        self.got = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"tap-{time.monotonic_ns()}")
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, bytes(m.payload)))
        self.c.connect(host, port)
        self.c.loop_start()
        self.c.subscribe(wire.dev_topic("+", wire.T_UP), 1)
        time.sleep(0.3)

    def blobs(self):
        asm, out = {}, []
        for topic, payload in self.got:
            kind, blob_id, seq, count, blob_len, bcrc, data = wire.decode_chunk(payload, 1 << 26)
            key = (topic, kind, blob_id, blob_len)
            a = asm.setdefault(key, wire.Assembler(kind, blob_id, count, blob_len))
            if a.add(kind, blob_id, seq, count, blob_len, bcrc, data):
                out.append((topic, kind) + decode_arrays(bytes(a.buf)))
                del asm[key]
        return out

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def test_fedper_never_sends_the_head_and_fd_sends_only_logits(tmp_path, har_dir, embedded):
    tap = Tap(embedded)
    experiment.run_experiment(cfg(tmp_path, har_dir, embedded, strategy="fedper", rounds=2))
    ups = tap.blobs()
    assert ups and all(k == wire.KIND_UPDATE and m["kind"] == "base" for _, k, m, _ in ups)
    assert all([a.shape for a in arrays] == [tuple(s) for s in BASE] for _, _, _, arrays in ups)
    heads = []
    for d in sorted(os.listdir(tmp_path / "run" / "fleet")):
        f = tmp_path / "run" / "fleet" / d / "data.npz.personal.npz"
        if f.exists():
            with np.load(f) as z:
                heads.append(z[f"a{int(z['n']) - 2}"])   # the head's weights, as the device last kept them
    assert len(heads) >= 2
    wire_bytes = b"".join(p for _, p in tap.got)
    for w in heads:   # not one row of any head ever went up, in any chunk
        assert all(row.tobytes() not in wire_bytes for row in w[:5])
    tap.got.clear()
    experiment.run_experiment(cfg(tmp_path, har_dir, embedded, strategy="fd", rounds=2, out=str(tmp_path / "fd")))
    ups = tap.blobs()
    tap.close()
    assert ups and all(m["kind"] == "logits" and [(a.dtype.name, a.shape) for a in arrays] == [("float32", (40, 18))]
                       for _, _, m, arrays in ups)


def test_personal_state_survives_a_restart_and_is_per_run(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, NF)).astype(np.float32), rng.integers(0, 18, 40)
    path = str(tmp_path / "personal.npz")
    task = {"round": 1, "run": 5, "method": "fedper", "model": "3nn-har", "seed": 3,
            "local": {"epochs": 1, "batch": 8, "lr": 0.05, "momentum": 0.0}, "settings": {"seed": 0, "head_arrays": 2}}
    a = PersonalClient("s1", x, y, x[:8], y[:8], path)
    up, before, after = a.local(task, NET.init(0)[:-2])
    assert before == 0 and after == arrays_crc(a.dev.personal) != 0 and len(up.arrays) == len(BASE)
    b = PersonalClient("s1", x, y, x[:8], y[:8], path)      # the process restarted: flash is all it has
    assert arrays_crc(b.device(task).personal) == after
    assert b.device(dict(task, run=6)).personal is None     # another run starts fresh


class RawDevice:
    def __init__(self, url, ids):
        host, port = parse_broker_url(url)
        self.got = {i: [] for i in ids}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"raw-{time.monotonic_ns()}")
        self.c.on_message = lambda c, u, m: self.got[wire.parse_dev_topic(m.topic)[0]].append(m.payload)
        self.c.connect(host, port)
        self.c.loop_start()
        for i in ids:
            self.c.subscribe(wire.dev_topic(i, wire.T_DOWN), 1)
        time.sleep(0.3)
        for i in ids:
            caps = {"v": 1, "id": i, "class": "pi", "proto": [1], "ram": 1 << 30, "flash": 1 << 30, "cpu_score": 1e3,
                    "battery": 1.0, "rssi": -50.0, "n_samples": 8, "hist": [8] + [0] * 17, "raw_ok": False,
                    "max_chunk": 65536, "roles": ["perfit"]}
            self.send(i, wire.T_CAPS, wire.encode_json(caps), retain=True)
            self.send(i, wire.T_PRESENCE, b"online", retain=True)

    def send(self, dev, leaf, payload, retain=False):
        self.c.publish(wire.dev_topic(dev, leaf), payload, qos=1, retain=retain).wait_for_publish(10)

    def upload(self, dev, kind, arrays, rnd=1, task=None, version=None, engine=None):
        meta = {"kind": kind, "round": rnd, "task": engine.session.task_id(rnd, dev) if task is None else task,
                "device": dev, "n": 8}
        if version is not None:
            meta["version"] = version
        for chunk in wire.iter_chunks(wire.KIND_UPDATE, rnd, wire.encode_blob(meta, [to_wire(a) for a in arrays]), 65536):
            self.send(dev, wire.T_UP, chunk)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def engine_for(tmp_path, url, method, ids):
    store = Store(str(tmp_path / "state.db"))
    link = HostLink(url, client_id=f"host-{time.monotonic_ns()}").connect()
    views = {"3nn-har": lambda a: a}
    session = Session(link, store)
    e = session.handler = PersonalRound(session, method, {i: "3nn-har" for i in ids}, {"3nn-har": NET}, views, None,
                                        18, NF, rounds=5, per_round=0)
    assert session.pump(lambda: set(ids) <= session.registry.online, 10)
    return e, store, link


def expect(engine, reason):
    rejected = engine.session.rec.rejected
    assert engine.session.pump(lambda: rejected[reason] > 0, 10), (reason, dict(rejected))
    rejected.clear()


def test_bad_uploads_are_refused_and_personal_models_go_to_their_owner_only(tmp_path, embedded):
    ids = ["s-a", "s-b"]
    dev = RawDevice(embedded, ids)
    pub = np.random.default_rng(0).normal(size=(50, NF)).astype(np.float32)
    fd = perfit.FD(pub, 18, perfit.Local(), public_n=20)
    engine, store, link = engine_for(tmp_path, embedded, fd, ids)
    engine.session.begin(1)
    engine.plan = RoundPlan(1, fl=["s-a"])
    fd.begin_round(1)
    good = np.zeros((20, 18), np.float32)
    dev.upload("s-a", "logits", [good[:10]], version=1, engine=engine)
    expect(engine, "shape")                                   # logits of the wrong shape
    dev.upload("s-a", "logits", [good], version=0, engine=engine)
    expect(engine, "stale_version")                           # for a public set version the host did not send
    dev.upload("s-a", "logits", [np.full((20, 18), np.nan, np.float32)], version=1, engine=engine)
    expect(engine, "nonfinite")
    dev.upload("s-a", "weights", [good], version=1, engine=engine)
    expect(engine, "stale_version")                           # weights are not what FD takes: no version, and
    dev.upload("s-a", "weights", [good], engine=engine)
    expect(engine, "shape")                                   # ... not logits
    dev.upload("s-b", "logits", [good], version=1, engine=engine)
    expect(engine, "unexpected")                              # s-b was not drawn
    dev.upload("s-a", "logits", [good], version=1, task=123, engine=engine)
    expect(engine, "replay")
    dev.upload("s-a", "logits", [good], version=1, engine=engine)
    assert engine.session.pump(lambda: "s-a" in engine.uploads, 10) and engine.session.rec.rejected == {}
    dev.upload("s-a", "logits", [good], version=1, engine=engine)
    expect(engine, "replay")                                  # a second delivery

    # a personal model the host keeps (edge offloading) goes to its owner, on the owner's topic only
    mine = [np.full(s, 0.25, np.float32) for s in NET.shapes()]
    engine.keep_personal("s-a", mine, 1)
    ask = lambda who, owner: dev.send(who, wire.T_STATUS, wire.encode_json(
        {"v": 1, "kind": "request", "round": 1, "what": "personal", "device": owner}))
    ask("s-b", "s-a")
    expect(engine, "forbidden")
    ask("s-b", "s-b")
    expect(engine, "unexpected")                              # the host keeps none of s-b's
    ask("s-a", "s-a")
    deadline = time.monotonic() + 10
    while not dev.got["s-a"] and time.monotonic() < deadline:
        engine.session.pump(lambda: False, 0.2)
    asm = None
    for p in dev.got["s-a"]:
        kind, blob_id, seq, count, blob_len, bcrc, data = wire.decode_chunk(p, 1 << 24)
        asm = asm or wire.Assembler(kind, blob_id, count, blob_len)
        done = asm.add(kind, blob_id, seq, count, blob_len, bcrc, data)
    meta, arrays = decode_arrays(bytes(asm.buf))
    assert done and meta["kind"] == "personal" and all(np.array_equal(a, b) for a, b in zip(arrays, mine))
    assert dev.got["s-b"] == []                               # nothing of s-a's reached s-b's topic
    assert [r[2] for r in store.rejections()].count("forbidden") == 1   # logged and stored
    for i in ids:   # the retained reports go with the devices
        dev.send(i, wire.T_CAPS, b"", retain=True)
        dev.send(i, wire.T_PRESENCE, b"", retain=True)
    dev.close()
    link.close()
    store.close()


def test_a_weak_device_is_trained_for_by_the_host_when_its_policy_allows(tmp_path, har_dir, embedded):
    # s1601 and s1603 cannot hold the 3NN's training; s1601 may share its windows, s1603 may not
    c = cfg(tmp_path, har_dir, embedded, strategy="fedper", per_round=0, rounds=2, pi_ram="4e9,1000",
            raw_ok="0,1,0,0")
    summary = experiment.run_experiment(c)
    for r in summary["rounds"]:
        assert r["rejected"] == {} and r["device_errors"] == {}
        assert r["participants"]["fl"] == ["s1600", "s1601", "s1602"] and r["offloaded"] == ["s1601"]
        assert "may not share" in r["idle"]["s1603"]
    assert summary["offloaded"] == ["s1601"]
    # every device, the offloaded one included, scored its personal model on its own test windows
    assert all(d["personal_accuracy"] is not None for d in summary["devices"])
    store = Store(str(tmp_path / "run" / "state.db"))
    assert set(store.artifacts("windows")) == {"s1601"} and set(store.artifacts("personal")) == {"s1601"}
    kept = decode_arrays(store.artifacts("personal")["s1601"]["blob"])[1]
    assert [a.shape for a in kept] == [tuple(s) for s in NET.shapes()]   # base + its own head, held for it
    store.close()


def test_host_restart_mid_round_keeps_every_personal_model(tmp_path, har_dir, mosquitto):
    """Kill the host (SIGKILL) while a round holds accepted uploads, start it again: it resumes that
    round, keeps what it accepted, a device asked again answers with the upload it already sent
    (not a second training of its head), and every device ends with the personal model of an
    uninterrupted in-process run."""
    import sqlite3
    import subprocess
    import sys

    from semifl.sim.fleet import VirtualFleet

    rounds, flags = 6, ["--strategy", "fedper", "--subjects", "4", "--per-round", "2", "--epochs", "1", "--batch", "16",
                        "--lr", "0.05", "--momentum", "0.5", "--data", har_dir, "--latency-s", "0.02"]
    state = tmp_path / "state.db"
    serve = lambda log: subprocess.Popen([sys.executable, "-m", "semifl.cli", "serve", "--broker", mosquitto, "--rounds",   # noqa: E731
                                      str(rounds), "--state", str(state), "--wait-devices", "4", "--wait-s", "60"] + flags,
                                     stdout=log, stderr=subprocess.STDOUT)
    c = cfg(tmp_path, har_dir, mosquitto, rounds=rounds, latency_s=0.02)
    har = load_har(har_dir, seed=c.seed)

    with VirtualFleet(tmp_path / "fleet", experiment.fleet_specs(c, har), None, mosquitto):
        before = kill_mid_round_and_restart(serve, state, tmp_path / "host.log", restart_timeout=120)
    store = Store(str(state))
    metrics = {m["round"]: m for m in store.round_metrics()}
    assert sorted(metrics) == list(range(1, rounds + 1))
    rows = dict(((d, t) for d, t in sqlite3.connect(str(state)).execute(
        "SELECT device, accepted FROM contributions WHERE round=?", (before[0][0],))))
    assert all(rows[d] == t for _, d, _, t in before)   # accepted before the crash: kept, not received again
    store.close()
    ref = ex.run(c, har, log=None)
    assert metrics[rounds]["personal"] == ref["per_device"]
