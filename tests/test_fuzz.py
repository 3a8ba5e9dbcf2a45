"""Property-based fuzzing of every entry point that decodes what another party sent: the wire codec
(JSON, blobs, chunks, reassembly, tensors), the host's Session.dispatch, a device's Device.handle and
the MCU node's on_message/handle under CPython. The only exceptions allowed are the documented ones
(wire.WireError, a counted rejection, a device's DeviceError); nothing else escapes, nothing stops."""
import json
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_trust_attacks import make_node

from semifl.config import Federated
from semifl.device.device import DeviceError
from semifl.fleet.planner import RoundPlan
from semifl.learn import mlp
from semifl.learn.strategy import FedAvg
from semifl.protocol import wire
from semifl.protocol.tensors import decode_arrays, encode_arrays
from semifl.service.rounds.federated import Context, FederatedRound
from semifl.service.session import Session
from semifl.service.store import Store

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
RND = 3

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=12)
KEYS = ["v", "round", "task", "role", "seed", "fraction", "lr", "epochs", "prune", "stop", "kind", "n", "norm",
        "accuracy", "compression", "local", "settings", "model", "cut", "batch", "run", "method", "sparse", "upload"]
messages = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8).map(lambda d: dict(d, v=1))


def dumps(obj) -> bytes:
    return json.dumps(obj).encode()


json_payloads = st.one_of(messages.map(dumps), json_values.map(dumps), st.binary(max_size=64))
headers = st.tuples(st.sampled_from(list(wire.KINDS) + [0, 9]), st.integers(0, 8), st.integers(0, 5),
                    st.integers(0, 6), st.integers(0, 1 << 26), st.integers(0, 2 ** 32 - 1), st.binary(max_size=48))


def chunk(h) -> bytes:
    kind, blob_id, seq, count, blob_len, bcrc, data = h
    return struct.pack(wire.CHUNK_HEADER, wire.MAGIC, wire.VERSION, kind, blob_id, seq, count, blob_len, bcrc,
                       wire.crc32(data) & 0xFFFFFFFF) + data


chunks = st.one_of(headers.map(chunk), st.binary(max_size=80),
                   st.tuples(headers.map(chunk), st.integers(0, 40), st.integers(0, 255))
                   .map(lambda t: t[0][:t[1]] + bytes([t[2]]) + t[0][t[1] + 1:]))


def good_blob():
    return encode_arrays({"kind": "update", "round": 1, "task": 5, "device": "d", "n": 3},
                         [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.int8)])


blobs = st.one_of(st.binary(max_size=120),
                  st.tuples(st.integers(0, 200), st.integers(0, 255)).map(
                      lambda t: bytes(good_blob()[:t[0]]) + bytes([t[1]]) + bytes(good_blob()[t[0] + 1:])))


@FUZZ
@given(json_payloads)
def test_decode_json(p):
    try:
        assert isinstance(wire.decode_json(p), dict)
    except wire.WireError:
        pass


@FUZZ
@given(blobs)
def test_decode_blob_and_tensors(b):
    try:
        wire.decode_blob(b)
        decode_arrays(b)
    except wire.WireError:
        pass


@FUZZ
@given(st.lists(chunks, max_size=6))
def test_decode_chunk_and_assembler(ps):
    asm = None
    for p in ps:
        try:
            parts = wire.decode_chunk(p, 1 << 25)
            asm = asm or wire.Assembler(parts[0], parts[1], parts[3], parts[4])
            if asm.add(*parts):
                assert len(asm.buf) == asm.blob_len
            assert asm.held <= sum(len(x) + 64 for x in ps)   # never what a header claims
        except wire.WireError:
            pass


# --- the host ---------------------------------------------------------------------------------------
def _session():
    d = tempfile.mkdtemp()
    store = Store(d + "/state.db")
    s = Session(None, store)
    engine = FederatedRound(s, FedAvg(), Federated(), mlp.init_params((784, 8, 10)), lambda p: (0.0, 0.0))
    s.handler = engine
    for dev, cls in (("pi-x", "pi"), ("mcu-y", "mcu")):
        s.dispatch((wire.dev_topic(dev, wire.T_CAPS), wire.encode_json(
            {"v": 1, "id": dev, "class": cls, "proto": [1], "ram": 1 << 30, "flash": 1 << 30, "cpu_score": 1e3,
             "battery": 1.0, "rssi": -50.0, "n_samples": 6000, "hist": [6000] + [0] * 9, "raw_ok": cls == "mcu",
             "max_chunk": 4096})))
        s.dispatch((wire.dev_topic(dev, wire.T_PRESENCE), b"online"))
    s.begin(RND)
    engine.ctx = Context(RND, engine.params, {}, {})
    engine.plan = RoundPlan(RND, cl=["mcu-y"], fl=["pi-x"])
    engine.uploaders = ["pi-x"]
    return s


SESSION = None
topics = st.sampled_from([wire.dev_topic(d, leaf) for d in ("pi-x", "mcu-y", "ghost")
                          for leaf in (wire.T_STATUS, wire.T_UP, wire.T_CAPS, wire.T_PRESENCE, wire.T_TASK, "zz")]
                         + ["semifl/v1/dev//up", "semifl/v1/host/round", "x"])


@FUZZ
@given(st.lists(st.tuples(topics, st.one_of(json_payloads, chunks)), max_size=8))
def test_session_dispatch(msgs):
    global SESSION
    SESSION = SESSION or _session()
    s = SESSION
    before = sum(s.rec.rejected.values())
    for topic, payload in msgs:
        s.dispatch((topic, payload))   # WireError and Rejected are caught, counted, stored: nothing escapes
    assert sum(s.rec.rejected.values()) >= before
    assert s.bytes_in_flight <= s.limits.max_bytes_in_flight
    assert s.bytes_in_flight == sum(a.held for held in s._asm.values() for a in held.values())


# --- devices ----------------------------------------------------------------------------------------
DEVICE = None
dev_topics = st.sampled_from([wire.host_topic("round"), wire.dev_topic("pi-t", wire.T_TASK),
                              wire.dev_topic("pi-t", wire.T_DOWN), wire.dev_topic("other", wire.T_TASK)])


@FUZZ
@given(st.lists(st.tuples(dev_topics, st.one_of(json_payloads, chunks)), max_size=6))
def test_device_handle(msgs):
    global DEVICE
    if DEVICE is None:
        from test_device import rig as device_rig
        DEVICE = device_rig()[1]
    dev = DEVICE
    for topic, payload in msgs:
        try:
            dev.handle(topic, payload)
        except (wire.WireError, DeviceError):
            pass
        stop = topic == wire.host_topic("round") and payload.startswith(b"{") and b'"stop": true' in payload
        assert dev.stopped == stop or stop, payload
        dev.stopped = False
    assert len(dev.pending) <= 32


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([wire.host_topic("round"), "semifl/v1/dev/mcu-t/task",
                                           wire.host_topic(wire.T_MODEL_INT8)]),
                          st.one_of(json_payloads, chunks)), max_size=6))
def test_node_on_message(msgs):
    with tempfile.TemporaryDirectory() as d:
        import pathlib
        node = make_node(pathlib.Path(d))
        for topic, payload in msgs:
            node.on_message(topic.encode(), payload)
            node.drain()   # raises only OSError (the link), which nothing here can cause
            if node.stopped:
                assert json.loads(payload).get("stop") is True
                node.stopped = False


def test_a_spoilt_blob_stays_spoilt():
    """Found by the fuzzer: a blob whose last chunk left it short raised `truncated`, and a duplicate of
    that chunk then returned "complete" with the short buffer."""
    asm = wire.Assembler(wire.KIND_UPDATE, 1, 1, 1)
    for _ in range(2):
        with pytest.raises(wire.WireError, match="truncated"):
            asm.add(wire.KIND_UPDATE, 1, 0, 1, 1, 0, b"")
    assert not asm.done()
