"""Every kind of bad input, sent over a real broker: each is rejected with its reason, logged, stored
and counted, and the good contributions around it are still accepted."""
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from semifl.config import Federated
from semifl.fleet.planner import RoundPlan
from semifl.learn import mlp
from semifl.learn.strategy import FedAvg
from semifl.protocol import wire
from semifl.protocol.sampling import ceil_fraction
from semifl.protocol.tensors import encode_arrays
from semifl.service.rounds.federated import Context, FederatedRound
from semifl.service.session import Session
from semifl.service.store import Store
from semifl.transport.mqtt import HostLink, parse_broker_url

RND = 5
LAYERS = (784, 8, 10)


def caps(dev, cls):
    return {"v": 1, "id": dev, "class": cls, "proto": [1], "ram": 1 << 30, "flash": 1 << 30, "cpu_score": 1e3,
            "battery": 1.0, "rssi": -50.0, "n_samples": 6000, "hist": [6000] + [0] * 9, "raw_ok": cls == "mcu",
            "max_chunk": 4096}


@pytest.fixture
def rig(tmp_path, broker_url):
    store = Store(str(tmp_path / "state.db"))
    link = HostLink(broker_url, client_id=f"host-{time.monotonic_ns()}", max_payload=256 * 1024).connect()
    session = Session(link, store)
    engine = FederatedRound(session, FedAvg(), Federated(), mlp.init_params(LAYERS), lambda p: (0.0, 0.0))
    session.handler = engine
    host, port = parse_broker_url(broker_url)
    dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{time.monotonic_ns()}")
    dev.connect(host, port)
    dev.loop_start()

    def send(device, leaf, payload):
        dev.publish(wire.dev_topic(device, leaf), payload, qos=1).wait_for_publish(10)

    for d, cls in (("pi-x", "pi"), ("mcu-y", "mcu")):
        send(d, wire.T_CAPS, wire.encode_json(caps(d, cls)))
    assert session.pump(lambda: {"pi-x", "mcu-y"} <= set(session.registry.devices), 10)
    session.begin(RND)
    engine.ctx = Context(RND, engine.params, {}, {})
    engine.plan = RoundPlan(RND, cl=["mcu-y"], fl=["pi-x"])
    engine.uploaders = ["pi-x"]
    yield engine, send, store
    dev.disconnect()
    dev.loop_stop()
    link.client.publish(wire.dev_topic("pi-x", wire.T_CAPS), b"", retain=True)
    link.client.publish(wire.dev_topic("mcu-y", wire.T_CAPS), b"", retain=True)
    link.close()
    store.close()


def update_chunks(engine, arrays=None, rnd=RND, device="pi-x", task=None, chunk=4096, **meta):
    # a good update changes only what the client's copy holds (the model pruned at cfg.prune)
    arrays = arrays if arrays is not None else [np.where(m, 0.01, 0.0).astype(np.float32)
                                                for m in engine.ctx.mask(engine.cfg.prune)]
    m = {"kind": "update", "round": rnd, "task": engine.session.task_id(rnd, device) if task is None else task,
         "device": device, "n": ceil_fraction(6000, engine.cfg.fl_fraction)}   # what its task's fraction makes
    m.update(meta)
    return list(wire.iter_chunks(wire.KIND_UPDATE, rnd, encode_arrays(m, arrays), chunk))


def samples_chunks(engine, k=3, device="mcu-y", **meta):
    x = np.arange(k * 784, dtype=np.uint32).astype(np.uint8).reshape(k, 784)
    y = np.array([0, 1, 2][:k], np.uint8)
    m = {"kind": "samples", "round": RND, "task": engine.session.task_id(RND, device), "device": device, "n": k, **meta}
    return list(wire.iter_chunks(wire.KIND_SAMPLES, RND, encode_arrays(m, [x, y]), 4096))


def expect(engine, reason, before):
    rejected = engine.session.rec.rejected
    assert engine.session.pump(lambda: rejected[reason] > before.get(reason, 0), 10), \
        f"no {reason!r} rejection; got {dict(rejected)}"


def test_each_bad_input_is_rejected_and_nothing_else_is_lost(rig):
    engine, send, store = rig

    def bad(reason, device, leaf, payloads):
        before = dict(engine.session.rec.rejected)
        for p in payloads:
            send(device, leaf, p)
        expect(engine, reason, before)

    bad("malformed", "pi-x", wire.T_STATUS, [b"{not json"])
    bad("malformed", "pi-x", wire.T_UP, [b"XX" + bytes(40)])
    bad("truncated", "pi-x", wire.T_UP, [update_chunks(engine)[0][:10]])
    chunks = update_chunks(engine)
    corrupt = bytearray(chunks[1])
    corrupt[-1] ^= 0xFF
    bad("crc", "pi-x", wire.T_UP, [bytes(corrupt)])   # refused alone: the blob it claims to be part of goes on
    bad("version", "pi-x", wire.T_STATUS, [b'{"v": 9, "kind": "ready", "round": 5}'])
    bad("shape", "pi-x", wire.T_UP, update_chunks(engine, [np.zeros((3, 3), np.float32)]))
    bad("shape", "pi-x", wire.T_UP, update_chunks(engine, [np.zeros(s, np.float64) for s in engine.shapes]))
    nan = [np.zeros(s, np.float32) for s in engine.shapes]
    nan[2][0, 0] = np.nan
    bad("nonfinite", "pi-x", wire.T_UP, update_chunks(engine, nan))
    sneaky = [np.full(s, 0.01, np.float32) for s in engine.shapes]   # also moves entries it pruned away
    bad("mask", "pi-x", wire.T_UP, update_chunks(engine, sneaky))
    inf = [np.zeros(s, np.float32) for s in engine.shapes]
    inf[1][3] = np.inf
    bad("nonfinite", "pi-x", wire.T_UP, update_chunks(engine, inf))
    bad("stale_round", "pi-x", wire.T_UP, update_chunks(engine, rnd=RND - 1))
    bad("stale_round", "pi-x", wire.T_STATUS, [wire.encode_json({"v": 1, "kind": "ready", "round": RND - 2})])
    bad("replay", "pi-x", wire.T_UP, update_chunks(engine, task=12345))
    bad("unknown_device", "ghost", wire.T_STATUS, [wire.encode_json({"v": 1, "kind": "ready", "round": RND})])
    bad("unknown_device", "ghost", wire.T_UP, update_chunks(engine, device="ghost"))
    bad("schema", "pi-x", wire.T_UP, update_chunks(engine, device="mcu-y"))  # blob claims another device
    bad("schema", "pi-x", wire.T_UP, update_chunks(engine, n=0))            # an update trained on nothing
    bad("schema", "mcu-y", wire.T_UP, samples_chunks(engine, k=0, n=-1))    # samples: none is the least
    bad("oversized", "pi-x", wire.T_UP, [bytes(300 * 1024)])               # over the host's payload limit
    big = bytearray(update_chunks(engine)[0])
    big[12:16] = (1 << 30).to_bytes(4, "little")                            # declares a 1 GiB blob
    bad("oversized", "pi-x", wire.T_UP, [bytes(big)])
    bad("unexpected", "mcu-y", wire.T_UP, update_chunks(engine, device="mcu-y"))  # not asked to upload

    # the good contributions still go through, chunks shuffled and one duplicated (QoS 1 may do both)
    good = update_chunks(engine, chunk=1024)
    good = good[::-1] + good[:1]
    for p in good:
        send("pi-x", wire.T_UP, p)
    for p in samples_chunks(engine):
        send("mcu-y", wire.T_UP, p)
    assert engine.session.pump(lambda: {("pi-x", "update"), ("mcu-y", "samples")} <= engine.accepted, 10), \
        dict(engine.session.rec.rejected)
    bad("replay", "pi-x", wire.T_UP, update_chunks(engine))                 # a second delivery of the same update

    stored = {(d, k) for d, k, _, _ in store.contributions(RND)}
    assert stored == {("pi-x", "update"), ("mcu-y", "samples")}
    reasons = {r[2] for r in store.rejections()}
    assert reasons == {"malformed", "truncated", "crc", "version", "shape", "nonfinite", "mask", "stale_round", "replay",
                       "unknown_device", "schema", "oversized", "unexpected"}
    assert sum(engine.session.rec.rejected.values()) == len(store.rejections())


@pytest.mark.parametrize("carries", [False, True])
def test_a_late_upload_is_counted_and_merged_only_by_a_strategy_that_carries_it(rig, carries):
    """pi-x was asked for its round-5 update and the round closed without it: in round 6 it comes whole.
    Not a rejection: counted as late; semifl+ (carries_late) merges it with staleness 1, FedAvg drops it."""
    engine, send, store = rig
    engine.carries_late = carries
    engine.prev, engine.missing = engine.ctx, {("pi-x", "update")}
    engine.session.begin(RND + 1)
    engine.ctx = Context(RND + 1, engine.params, {}, {})
    chunks = update_chunks(engine)                       # its round-5 update, the task it was given then
    stray = update_chunks(engine, device="mcu-y")        # mcu-y was not missing anything: its round-5 chunks are stale
    for p in chunks:
        send("pi-x", wire.T_UP, p)
    for p in stray[:1]:
        send("mcu-y", wire.T_UP, p)
    session = engine.session
    assert session.pump(lambda: session.rec.late["update"] == 1 and session.rec.rejected["stale_round"] == 1, 10), \
        (dict(session.rec.late), dict(session.rec.rejected))
    kept = {(d, k) for d, k, _ in store.contribution_keys(RND + 1)}
    assert kept == ({("pi-x", "late_update")} if carries else set())
    fl, _ = engine._contributions(RND + 1)
    assert [(u.device, u.staleness) for u in fl] == ([("pi-x", 1)] if carries else [])
