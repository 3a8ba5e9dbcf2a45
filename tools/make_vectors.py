#!/usr/bin/env python3
"""Generate the golden protocol vectors in protocol/vectors/*.json (docs/protocol.md, v1).

    python tools/make_vectors.py            # writes protocol/vectors/
    python tools/make_vectors.py --out DIR  # writes elsewhere (tests compare that with the committed files)

The expected bytes come from a reference encoder written here from docs/protocol.md alone (struct,
zlib.crc32, json.dumps(sort_keys=True)), not from the codec; the codec (host/semifl/protocol/wire.py,
sampling.py) is then checked against every vector before anything is written, so the vectors pin the
spec. Output is deterministic: no randomness, no timestamps, stable key order and layout.

Every file is {"file": ..., "version": 1, "about": ..., "cases": [...]}; a case has a "name", its
human-readable inputs, and the expected output as lowercase hex (or, for sampling, the index list).
Tensor values are flat lists in row-major (C) order and are exactly representable in their dtype;
a big tensor gives its bytes as "data" (hex) instead, with a "fill" rule saying what they are.
A case with "host_only": true is skipped by the MicroPython check (it needs more memory than an MCU
has, or it pins a MicroPython json leniency). Layout: each case of "cases" starts on a line beginning
with exactly two spaces and "{" and ends on a line "  }" / "  }," (or on the same line), so a 110 KB
heap can parse one case at a time (tests/mp/check_vectors.py does).
"""
import argparse
import json
import math
import os
import struct
import sys
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "host"))

from semifl.protocol import sampling, wire  # noqa: E402  (only to assert agreement)

# --- reference implementation, from docs/protocol.md ---------------------------------------------
VERSION = 1
CHUNK_FMT = "<2sBBIHHIII"  # magic, version, kind, blob_id, seq, count, blob_len, blob_crc, chunk_crc
KIND = {"model": 1, "update": 2, "samples": 3, "model_int8": 4}
# dtype name -> (code, struct code, itemsize)   (sec. 7)
DT = {"float32": (1, "f", 4), "int8": (2, "b", 1), "uint8": (3, "B", 1), "int32": (4, "i", 4),
      "float16": (5, "e", 2), "float64": (6, "d", 8)}


def crc(b):
    return zlib.crc32(b) & 0xFFFFFFFF


def ref_json(obj):
    # Canonical JSON: sorted keys, CPython's default separators (", ", ": "), ASCII.
    return json.dumps(obj, sort_keys=True).encode("ascii")


def prod(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def ref_data(dtype, values):
    return struct.pack("<%d%s" % (len(values), DT[dtype][1]), *values)


def ref_tensor_header(dtype, shape, scale, zero_point):
    out = bytes([DT[dtype][0], len(shape)])
    for d in shape:
        out += struct.pack("<I", d)
    return out + struct.pack("<f", scale) + struct.pack("<i", zero_point)


def ref_blob(meta, tensors):
    m = dict(meta)
    m["v"] = VERSION
    m["tensors"] = len(tensors)
    mj = ref_json(m)
    out = struct.pack("<I", len(mj)) + mj
    for t in tensors:
        data = tensor_bytes(t)
        assert len(data) == prod(t["shape"]) * DT[t["dtype"]][2]
        out += ref_tensor_header(t["dtype"], t["shape"], t["scale"], t["zero_point"]) + data
    return out


def ref_chunk(kind, blob_id, seq, count, blob_len, blob_crc, data, magic=b"SF", version=VERSION, chunk_crc=None):
    return struct.pack(CHUNK_FMT, magic, version, kind, blob_id, seq, count, blob_len, blob_crc,
                       crc(data) if chunk_crc is None else chunk_crc) + data


def ref_chunks(kind, blob_id, blob, size):
    count = max(1, -(-len(blob) // size))
    return [ref_chunk(kind, blob_id, s, count, len(blob), crc(blob) if s == count - 1 else 0,
                      blob[s * size:(s + 1) * size]) for s in range(count)]


def ref_xorshift32(x):
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    return x


def ref_select(n, k, seed):
    # §8, a full list and a plain loop: first k of a Fisher-Yates shuffle, sorted.
    x = seed % (1 << 32)
    if x == 0:
        x = 0x9E3779B9
    a = list(range(n))
    for i in range(min(k, n)):
        x = ref_xorshift32(x)
        j = i + x % (n - i)
        a[i], a[j] = a[j], a[i]
    return sorted(a[:max(0, min(k, n))])


def tensor(dtype, shape, values, scale=1.0, zero_point=0, fill=None):
    """A tensor input. Big ones (fill given) carry "data" (hex) instead of a long "values" list."""
    t = {"dtype": dtype, "shape": list(shape), "scale": scale, "zero_point": zero_point}
    if fill is None:
        t["values"] = list(values)
    else:
        t["fill"] = fill
        t["data"] = ref_data(dtype, list(values)).hex()
    return t


def tensor_bytes(t):
    return ref_data(t["dtype"], t["values"]) if "values" in t else bytes.fromhex(t["data"])


# --- cases -----------------------------------------------------------------------------------------
def tensor_cases():
    cases = [
        ("float32_0d", tensor("float32", [], [1.5])),
        ("float32_1d", tensor("float32", [4], [0.5, -1.25, 3.0, 100.0])),
        ("float32_4d", tensor("float32", [1, 2, 2, 3], [0.25 * i - 1.0 for i in range(12)])),
        ("float32_empty", tensor("float32", [0], [])),
        ("float32_zero_size_wide_dim", tensor("float32", [0, 70000], [])),
        ("int8_quantized", tensor("int8", [2, 3], [-128, -3, 0, 5, 127, -1], scale=0.0078125, zero_point=-3)),
        ("int8_4d", tensor("int8", [2, 1, 1, 2], [1, -2, 3, -4], scale=0.5, zero_point=0)),
        ("uint8_quantized", tensor("uint8", [5], [0, 1, 128, 200, 255], scale=0.00390625, zero_point=128)),
        ("uint8_plain_0d", tensor("uint8", [], [7])),
        ("int32_1d", tensor("int32", [3], [-2147483648, 0, 2147483647])),
        ("int32_4d", tensor("int32", [2, 1, 1, 2], [1, -1, 65536, -65536])),
        ("float16_2d", tensor("float16", [2, 3], [0.5, -2.0, 65504.0, 0.25, -0.125, 1024.0])),
        ("float64_1d", tensor("float64", [3], [0.1, -2.5, 3.141592653589793])),
        ("float64_0d", tensor("float64", [], [-0.0])),
    ]
    out = []
    for name, t in cases:
        header = ref_tensor_header(t["dtype"], t["shape"], t["scale"], t["zero_point"])
        data = ref_data(t["dtype"], t["values"])
        assert len(data) == prod(t["shape"]) * DT[t["dtype"]][2]
        # the codec agrees
        assert wire.tensor_header(t["dtype"], tuple(t["shape"]), t["scale"], t["zero_point"]) == header, name
        assert wire.tensor_nbytes(t["dtype"], tuple(t["shape"])) == len(data), name
        assert wire.read_tensor_header(header + data, 0) == (t["dtype"], tuple(t["shape"]), t["scale"],
                                                              t["zero_point"], len(header)), name
        out.append(dict({"name": name}, **t, header=header.hex(), data=data.hex()))
    return out


def blob_cases():
    w = [0.5, -0.25, 1.0, 0.125, -2.0, 0.0]          # (3, 2)
    b = [0.0625, -0.5]                                 # (2,)
    pixels = [(i * 37 + 11) % 256 for i in range(3 * 784)]
    cases = [
        ("model_small", {"kind": "model", "round": 3},
         [tensor("float32", [3, 2], w), tensor("float32", [2], b)]),
        ("update_small", {"kind": "update", "round": 3, "task": 123456789, "device": "pi-01", "n": 1800},
         [tensor("float32", [3, 2], [-x / 8 for x in w]), tensor("float32", [2], [0.25, 0.0])]),
        ("samples_small", {"kind": "samples", "round": 2, "task": 42, "device": "mcu-06", "n": 3},
         [tensor("uint8", [3, 4], [0, 17, 255, 128, 1, 2, 3, 4, 250, 251, 252, 253]), tensor("uint8", [3], [9, 0, 4])]),
        ("samples_784", {"kind": "samples", "round": 7, "task": 4294967295, "device": "mcu-06", "n": 3},
         [tensor("uint8", [3, 784], pixels, fill="pixel i = (37 * i + 11) % 256"), tensor("uint8", [3], [6, 6, 2])]),
        ("samples_none", {"kind": "samples", "round": 9, "task": 77, "device": "mcu-06", "n": 0},   # nothing new
         [tensor("uint8", [0, 784], []), tensor("uint8", [0], [])]),
        ("no_tensors", {"kind": "model", "round": 0}, []),
        ("message_fd", {"kind": "message", "round": 4, "task": 918273645, "version": 4},
         [tensor("int32", [3], [2, 17, 499]), tensor("int32", [2], [5, 9]), tensor("float32", [2, 3], [0.5, -1.0, 2.0, 0.0, 0.25, -0.125])]),
        ("logits_small", {"kind": "logits", "round": 4, "task": 918273645, "device": "s1600", "n": 60, "version": 4,
                          "personal_from": 0, "personal_to": 3735928559, "t_local_s": 0.0421},
         [tensor("float32", [3, 2], [1.0, -1.0, 0.5, 0.0, -2.5, 3.25])]),
        ("model_int8_one_layer", {"kind": "model_int8", "round": 10, "input": {"scale": 0.00390625, "zp": -128},
                                  "layers": [{"in": 3, "out": 2, "in_zp": -128, "out_zp": 5, "act": "tanh"}]},
         [tensor("int8", [2, 3], [127, -127, 0, 1, -1, 64]), tensor("int32", [2], [1000, -1000]),
          tensor("int32", [2], [1518500250, 1073741824]), tensor("int32", [2], [-7, 0]),
          tensor("int8", [256], [max(-128, min(127, i - 128)) for i in range(256)], fill="table[i] = i - 128")]),
        ("mixed_dtypes", {"kind": "model", "round": 1},
         [tensor("int8", [2, 2], [-128, 0, 1, 127], scale=0.5, zero_point=1),
          tensor("float16", [3], [1.5, -0.25, 2048.0]),
          tensor("int32", [2], [-7, 123456]),
          tensor("float64", [1, 1, 1, 2], [0.1, -1e+20])]),
    ]
    out = []
    for name, meta, ts in cases:
        blob = ref_blob(meta, ts)
        decoded = dict(meta, v=VERSION, tensors=len(ts))
        # the codec agrees
        wt = [(t["dtype"], tuple(t["shape"]), t["scale"], t["zero_point"], tensor_bytes(t)) for t in ts]
        assert wire.encode_blob(meta, wt) == blob, name
        head, total = wire.blob_head(meta, [x[:4] for x in wt])
        assert total == len(blob) and blob.startswith(head), name
        m, got = wire.decode_blob(blob)
        assert m == decoded, name
        assert [(g[0], g[1], g[2], g[3], bytes(g[4])) for g in got] == wt, name
        out.append({"name": name, "meta": meta, "tensors": ts, "meta_decoded": decoded,
                    "blob_len": len(blob), "blob_crc": crc(blob), "blob": blob.hex()})
    return out


def chunk_cases(blobs):
    by_name = {c["name"]: bytes.fromhex(c["blob"]) for c in blobs}
    cases = [
        ("single_chunk", "model", 3, by_name["model_small"], 4096),
        ("model_several_with_remainder", "model", 3, by_name["model_small"], 32),
        ("exact_multiple", "update", 9, bytes(range(96)), 32),
        ("exactly_one_full_chunk", "update", 9, bytes(range(64)), 64),
        ("empty_blob", "update", 1, b"", 256),
        ("one_byte_chunks", "samples", 5, b"semifl", 1),
        ("samples_784_at_1024", "samples", 7, by_name["samples_784"], 1024),
        ("max_blob_id", "update", 0xFFFFFFFF, by_name["update_small"], 100),
        ("model_int8_at_64", "model_int8", 10, by_name["model_int8_one_layer"], 64),
    ]
    out = []
    for name, kind, blob_id, blob, size in cases:
        chunks = ref_chunks(KIND[kind], blob_id, blob, size)
        # the codec agrees: in-memory chunking, streaming writer (odd-sized writes), decode, reassembly
        assert list(wire.iter_chunks(KIND[kind], blob_id, blob, size)) == chunks, name
        assert wire.chunk_count(len(blob), size) == len(chunks), name
        sent = []
        cw = wire.ChunkWriter(KIND[kind], blob_id, len(blob), size, sent.append)
        for i in range(0, len(blob), 7):
            cw.write(blob[i:i + 7])
        cw.close()
        assert sent == chunks, name
        asm = wire.Assembler(KIND[kind], blob_id, len(chunks), len(blob))
        for c in list(reversed(chunks)) + chunks[:1]:
            done = asm.add(*wire.decode_chunk(c, len(blob)))
        assert done and bytes(asm.buf) == blob, name
        out.append({"name": name, "kind": kind, "kind_code": KIND[kind], "blob_id": blob_id, "chunk_size": size,
                    "blob_len": len(blob), "blob_crc": crc(blob), "count": len(chunks), "blob": blob.hex(),
                    "chunks": [c.hex() for c in chunks]})
    return out


def json_cases():
    cases = [
        ("caps_mcu", {"v": 1, "id": "mcu-06", "class": "mcu", "fw": "semifl-mcu/0.1", "proto": [1],
                      "ram": 110000, "flash": 1441792, "cpu_score": 3.2, "battery": 0.97, "rssi": -61.5,
                      "n_samples": 6000, "hist": [0, 0, 0, 0, 0, 0, 6000, 0, 0, 0], "raw_ok": True,
                      "max_chunk": 4096, "roles": ["cl"]}),
        ("caps_pi_no_rssi", {"v": 1, "id": "pi-01", "class": "pi", "fw": "semifl-pi/0.1", "proto": [1],
                             "ram": 512000000, "flash": 8000000000, "cpu_score": 250.0, "battery": 1.0,
                             "rssi": None, "n_samples": 600, "hist": [60] * 10, "raw_ok": False,
                             "max_chunk": 1048576, "roles": ["cl", "fl"]}),
        ("round", {"v": 1, "round": 4, "run": "run-20240601-a"}),
        ("ready", {"v": 1, "kind": "ready", "round": 4, "rssi": -58.2, "battery": 0.97}),
        ("task_fl", {"v": 1, "round": 4, "role": "fl", "task": 918273645, "seed": 305419896, "prune": 0.3,
                     "fraction": 0.3, "epochs": 1, "lr": 0.1}),
        ("task_cl", {"v": 1, "round": 4, "role": "cl", "task": 77, "seed": 0, "fraction": 0.3, "lr": 0.1}),
        ("task_cl_fresh", {"v": 1, "round": 9, "role": "cl", "task": 77, "seed": 12345, "fraction": 0.3, "lr": 0.1,
                           "fresh": 4294967295, "got": 4}),
        ("task_upload", {"v": 1, "round": 4, "role": "upload", "task": 918273645}),
        ("trained", {"v": 1, "kind": "trained", "round": 4, "task": 918273645, "n": 1800, "norm": 0.52}),
        ("phase", {"v": 1, "kind": "phase", "round": 4, "phase": "upload", "t_ms": 81234}),
        ("refused", {"v": 1, "kind": "refused", "round": 10, "reason": "model_ops", "detail": "this node's kernel has no TANH"}),
        ("stop", {"v": 1, "round": 10, "stop": True}),
        ("task_perfit", {"v": 1, "round": 4, "role": "perfit", "task": 918273645, "seed": 305419896, "run": 7,
                         "method": "fedper", "model": "3nn-har", "local": {"epochs": 2, "batch": 32, "lr": 0.01, "momentum": 0.9},
                         "settings": {"seed": 0, "head_arrays": 2}}),
        ("personal", {"v": 1, "kind": "personal", "round": 4, "task": 1234, "accuracy": 0.9375, "n": 48, "crc": 3735928559}),
        ("request_personal", {"v": 1, "kind": "request", "round": 4, "what": "personal", "device": "s1600"}),
        ("escapes", {"v": 1, "detail": "a \"quoted\" \\ back/slash\nnewline\ttab", "empty": {}, "nested": {"b": [], "a": [1, {"z": None, "y": -1}]}}),
    ]
    out = []
    for name, obj in cases:
        b = ref_json(obj)
        assert wire.encode_json(obj) == b, name
        assert wire.decode_json(b) == obj, name
        out.append({"name": name, "obj": obj, "text": b.decode("ascii"), "hex": b.hex()})
    return out


def sampling_cases():
    sel = [
        ("seed0_maps_to_golden", 10, 3, 0),
        ("seed1", 10, 3, 1),
        ("k_greater_than_n", 5, 9, 1),
        ("k_equals_n", 6, 6, 12345),
        ("k_zero", 100, 0, 7),
        ("n_zero", 0, 3, 7),
        ("n_one", 1, 1, 99),
        ("seed_max", 1000, 10, 0xFFFFFFFF),
        ("seed_wraps_2pow32_plus_5", 50, 5, (1 << 32) + 5),
        ("seed_2pow32_is_zero", 50, 5, 1 << 32),
        ("mcu_1800_fraction_0_3", 1800, 540, 305419896),
        ("pi_6000_fraction_0_3", 6000, 1800, 305419896),
        ("n_over_65536", 70000, 8, 2024),
    ]
    xs = [
        ("marsaglia_2463534242", 2463534242, 8),
        ("one", 1, 8),
        ("golden", 0x9E3779B9, 8),
        ("all_ones", 0xFFFFFFFF, 8),
    ]
    cf = [(6000, 0.3, 1800), (10, 0.3, 3), (100, 0.07, 8), (100, 0.29, 29), (10, 0.5, 5), (3, 0.5, 2), (100, 0.01, 1), (7, 1.0, 7), (0, 0.5, 0), (600, 0.0, 0)]
    out = []
    for name, n, k, seed in sel:
        exp = ref_select(n, k, seed)
        assert sampling.select(n, k, seed) == exp, name
        assert len(exp) == min(k, n) and len(set(exp)) == len(exp)
        case = {"name": "select_" + name}
        if k > 1000 or n > 0x10000:
            # The check holds the expected and the computed k-entry lists and select's n-entry index
            # array: more than a 110 KB heap on the 64-bit unix port (an ESP32 storing ~1800 samples
            # in 1.4 MB of flash needs k <= 540).
            case["host_only"] = True
        case.update({"op": "select", "n": n, "k": k, "seed": seed, "expected": exp})
        out.append(case)
    for name, seed, count in xs:
        seq, x = [], seed
        for _ in range(count):
            x = ref_xorshift32(x)
            seq.append(x)
        got, y = [], seed
        for _ in range(count):
            y = sampling.xorshift32(y)
            got.append(y)
        assert got == seq, name
        out.append({"name": "xorshift32_" + name, "op": "xorshift32", "seed": seed, "count": count, "expected": seq})
    # Marsaglia (2003), "Xorshift RNGs", p. 4: y=2463534242 -> 723471715, 2497366906, 2064144800, ...
    assert out[len(sel)]["expected"][:3] == [723471715, 2497366906, 2064144800]
    for n, f, exp in cf:
        # §8: k = ceil(fraction * n) in binary64, so 0.07 * 100 = 7.000000000000001 -> 8
        assert math.ceil(f * n) == exp and sampling.ceil_fraction(n, f) == exp, (n, f)
        out.append({"name": "ceil_fraction_%d_%s" % (n, f), "op": "ceil_fraction", "n": n, "fraction": f, "expected": exp})
    return out


def invalid_cases(blobs):
    model = bytes.fromhex([c for c in blobs if c["name"] == "model_small"][0]["blob"])
    data = b"hello, chunk"
    good = ref_chunk(1, 3, 0, 1, len(data), crc(data), data)
    cases = []

    def chunk(name, payload, reason, max_blob_len=1 << 25):
        cases.append({"name": name, "op": "decode_chunk", "max_blob_len": max_blob_len, "input": payload.hex(), "reason": reason})

    chunk("chunk_bad_magic", ref_chunk(1, 3, 0, 1, len(data), crc(data), data, magic=b"SG"), "malformed")
    chunk("chunk_bad_version", ref_chunk(1, 3, 0, 1, len(data), crc(data), data, version=2), "version")
    chunk("chunk_unknown_kind", ref_chunk(9, 3, 0, 1, len(data), crc(data), data), "malformed")
    chunk("chunk_kind_zero", ref_chunk(0, 3, 0, 1, len(data), crc(data), data), "malformed")
    chunk("chunk_bad_crc", ref_chunk(1, 3, 0, 1, len(data), crc(data), data, chunk_crc=crc(data) ^ 1), "crc")
    chunk("chunk_data_flipped", good[:-1] + bytes([good[-1] ^ 0x80]), "crc")
    chunk("chunk_truncated_header", good[:23], "truncated")
    chunk("chunk_empty_payload", b"", "truncated")
    chunk("chunk_seq_eq_count", ref_chunk(1, 3, 2, 2, 100, 0, data), "malformed")
    chunk("chunk_seq_gt_count", ref_chunk(1, 3, 9, 2, 100, 0, data), "malformed")
    chunk("chunk_count_zero", ref_chunk(1, 3, 0, 0, 100, 0, data), "malformed")
    chunk("chunk_oversized_blob_len", ref_chunk(2, 3, 0, 1, 1000, 0, data), "oversized", max_blob_len=999)
    chunk("chunk_oversized_default_limit", ref_chunk(2, 3, 0, 1000, (32 << 20) + 1, 0, data), "oversized", max_blob_len=32 << 20)

    def blob(name, payload, reason):
        cases.append({"name": name, "op": "decode_blob", "input": payload.hex(), "reason": reason})

    def meta(obj):
        mj = ref_json(obj)
        return struct.pack("<I", len(mj)) + mj

    m1 = meta({"kind": "model", "round": 1, "tensors": 1, "v": 1})
    t_ok = ref_tensor_header("float32", [2], 1.0, 0) + ref_data("float32", [1.0, 2.0])
    blob("blob_shorter_than_meta_len", b"\x05\x00\x00", "truncated")
    blob("blob_empty", b"", "truncated")
    blob("blob_meta_past_end", struct.pack("<I", 100) + b'{"v": 1}', "truncated")
    blob("blob_meta_bad_json", struct.pack("<I", 7) + b'{"v": 1', "malformed")
    blob("blob_meta_not_object", meta([1, 2]), "malformed")
    blob("blob_meta_version_2", meta({"kind": "model", "round": 1, "tensors": 0, "v": 2}), "version")
    blob("blob_meta_no_tensors_field", meta({"kind": "model", "round": 1, "v": 1}), "malformed")
    blob("blob_meta_65_tensors", meta({"kind": "model", "round": 1, "tensors": 65, "v": 1}), "malformed")
    blob("blob_meta_negative_tensors", meta({"kind": "model", "round": 1, "tensors": -1, "v": 1}), "malformed")
    blob("blob_unknown_dtype_7", m1 + bytes([7]) + t_ok[1:], "malformed")
    blob("blob_unknown_dtype_0", m1 + bytes([0]) + t_ok[1:], "malformed")
    blob("blob_ndim_5", m1 + bytes([1, 5]) + struct.pack("<5I", 1, 1, 1, 1, 2) + struct.pack("<fi", 1.0, 0)
         + ref_data("float32", [1.0, 2.0]), "shape")
    blob("blob_truncated_tensor_header_1_byte", m1 + t_ok[:1], "truncated")
    blob("blob_truncated_tensor_header_dims", m1 + t_ok[:5], "truncated")
    blob("blob_truncated_tensor_header_scale", m1 + t_ok[:12], "truncated")
    blob("blob_missing_tensor", m1, "truncated")
    blob("blob_truncated_tensor_data", m1 + t_ok[:-1], "truncated")
    blob("blob_trailing_byte", model + b"\x00", "malformed")
    blob("blob_trailing_tensor", m1 + t_ok + t_ok, "malformed")

    def js(name, payload, reason, max_bytes=16384):
        cases.append({"name": name, "op": "decode_json", "max_bytes": max_bytes, "input": payload.hex(), "reason": reason})

    js("json_truncated", b'{"v": 1, "round": 4', "malformed")
    js("json_garbage", b"round=4", "malformed")
    cases.append({"name": "json_trailing_comma", "host_only": True,
                  "note": "MicroPython's json.loads is lenient (accepts trailing commas, a missing value or colon): "
                          "only CPython rejects this",
                  "op": "decode_json", "max_bytes": 16384, "input": b'{"v": 1, "round": 4,}'.hex(), "reason": "malformed"})
    js("json_invalid_utf8", b'{"v": 1, "id": "\xc3\x28"}', "malformed")
    js("json_empty", b"", "malformed")
    js("json_not_object", b"[1, 2, 3]", "malformed")
    js("json_string", b'"ready"', "malformed")
    js("json_version_2", b'{"v": 2, "kind": "ready", "round": 1}', "version")
    js("json_oversized", ref_json({"v": 1, "detail": "x" * 40}), "oversized", max_bytes=32)

    cases.append({"name": "encode_tensor_unknown_dtype", "op": "tensor_header", "dtype": "bfloat16", "shape": [2],
                  "scale": 1.0, "zero_point": 0, "reason": "malformed"})
    cases.append({"name": "encode_tensor_ndim_5", "op": "tensor_header", "dtype": "float32", "shape": [1, 1, 1, 1, 2],
                  "scale": 1.0, "zero_point": 0, "reason": "shape"})
    cases.append({"name": "encode_blob_data_length_mismatch", "op": "encode_blob", "meta": {"kind": "model", "round": 1},
                  "tensors": [{"dtype": "float32", "shape": [2], "scale": 1.0, "zero_point": 0, "data": "0000803f"}],
                  "reason": "shape"})

    def asm(name, count, blob_len, chunks, reason, kind=2, blob_id=5):
        cases.append({"name": name, "op": "assemble", "kind_code": kind, "blob_id": blob_id, "count": count,
                      "blob_len": blob_len, "chunks": [c.hex() for c in chunks], "reason": reason})

    a, b = b"abcdef", b"ghij"
    asm("assemble_bad_blob_crc", 2, 10, [ref_chunk(2, 5, 0, 2, 10, 0, a), ref_chunk(2, 5, 1, 2, 10, crc(a + b) ^ 1, b)], "crc")
    asm("assemble_bad_blob_crc_out_of_order", 2, 10, [ref_chunk(2, 5, 1, 2, 10, crc(a + b) ^ 1, b), ref_chunk(2, 5, 0, 2, 10, 0, a)], "crc")
    asm("assemble_other_blob_id", 2, 10, [ref_chunk(2, 6, 0, 2, 10, 0, a)], "malformed")
    asm("assemble_other_kind", 2, 10, [ref_chunk(3, 5, 0, 2, 10, 0, a)], "malformed")
    asm("assemble_other_count", 2, 10, [ref_chunk(2, 5, 0, 3, 10, 0, a)], "malformed")
    asm("assemble_past_blob_len", 2, 8, [ref_chunk(2, 5, 0, 2, 8, 0, a), ref_chunk(2, 5, 1, 2, 8, crc(a + b), b)], "oversized")
    asm("assemble_short_of_blob_len", 2, 12, [ref_chunk(2, 5, 0, 2, 12, 0, a), ref_chunk(2, 5, 1, 2, 12, crc(a + b), b)], "truncated")

    cases.append({"name": "writer_past_blob_len", "op": "chunk_writer", "kind_code": 2, "blob_id": 5, "blob_len": 10,
                  "chunk_size": 4, "writes": [a.hex(), b.hex(), "00"], "close": False, "reason": "oversized"})
    cases.append({"name": "writer_closed_short", "op": "chunk_writer", "kind_code": 2, "blob_id": 5, "blob_len": 10,
                  "chunk_size": 4, "writes": [a.hex()], "close": True, "reason": "truncated"})

    # the codec agrees: every case raises WireError with the expected reason
    for c in cases:
        try:
            run_invalid(c)
        except wire.WireError as e:
            assert e.reason == c["reason"], (c["name"], e.reason, c["reason"])
        else:
            raise AssertionError(c["name"] + ": no WireError")
    return cases


def run_invalid(c):
    """Apply the codec to an invalid case (the same steps tests/test_vectors.py and tests/mp take)."""
    op = c["op"]
    if op == "decode_chunk":
        wire.decode_chunk(bytes.fromhex(c["input"]), c["max_blob_len"])
    elif op == "decode_blob":
        wire.decode_blob(bytes.fromhex(c["input"]))
    elif op == "decode_json":
        wire.decode_json(bytes.fromhex(c["input"]), c["max_bytes"])
    elif op == "tensor_header":
        wire.tensor_header(c["dtype"], tuple(c["shape"]), c["scale"], c["zero_point"])
    elif op == "encode_blob":
        wire.encode_blob(c["meta"], [(t["dtype"], tuple(t["shape"]), t["scale"], t["zero_point"], bytes.fromhex(t["data"]))
                                     for t in c["tensors"]])
    elif op == "assemble":
        asm = wire.Assembler(c["kind_code"], c["blob_id"], c["count"], c["blob_len"])
        for h in c["chunks"]:
            asm.add(*wire.decode_chunk(bytes.fromhex(h), 1 << 25))
    elif op == "chunk_writer":
        cw = wire.ChunkWriter(c["kind_code"], c["blob_id"], c["blob_len"], c["chunk_size"], lambda p: None)
        for h in c["writes"]:
            cw.write(bytes.fromhex(h))
        if c["close"]:
            cw.close()
    else:
        raise ValueError(op)


# --- output ----------------------------------------------------------------------------------------
ABOUT = {
    "tensors": "Tensor headers <B dtype><B ndim><I dim>*ndim<f scale><i zero_point> and their data (sec. 7); "
               "values are flat, row-major.",
    "blobs": "Blobs <I meta_len> meta_json tensor* (sec. 7). meta is the input; the codec adds \"v\" and \"tensors\" "
             "(meta_decoded) and writes JSON with sorted keys.",
    "chunks": "A blob cut into chunks of chunk_size data bytes, 24-byte header <2sBBIHHIII each (sec. 6); "
              "blob_crc only in the last chunk.",
    "json": "JSON control messages as encode_json bytes: sorted keys, separators ', ' and ': ', ASCII (sec. 4, §5).",
    "sampling": "xorshift32 sequences (successive states from seed), select(n, k, seed) and ceil_fraction(n, f) (sec. 8). "
                "host_only cases need more memory than an MCU has; the MicroPython check skips them.",
    "invalid": "Inputs every codec must reject with WireError(reason) (sec. 9). op says which codec call gets the input. "
               "host_only cases are rejected by CPython only.",
}


def _fmt(obj, ind=0, expand=False):
    """Stable, diff-friendly JSON: containers inline when short; long lists of numbers wrapped."""
    flat = json.dumps(obj)
    if not isinstance(obj, (dict, list)) or (len(flat) <= 100 and not expand):
        return flat
    pad = " " * (ind + 1)
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in obj):
        lines, cur = [], []
        for x in obj:
            cur.append(json.dumps(x))
            if len(", ".join(cur)) > 96:
                lines.append(", ".join(cur))
                cur = []
        if cur:
            lines.append(", ".join(cur))
        return "[\n" + ",\n".join(pad + x for x in lines) + "\n" + " " * ind + "]"
    if isinstance(obj, dict):
        # the list of cases: one case per block, never inline (tests/mp/check_vectors.py reads them so)
        items = [pad + json.dumps(k) + ": " + _fmt(v, ind + 1, expand=(ind == 0 and k == "cases")) for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * ind + "}"
    return "[\n" + ",\n".join(pad + _fmt(v, ind + 1, expand=expand) for v in obj) + "\n" + " " * ind + "]"


def build():
    blobs = blob_cases()
    return {"tensors": tensor_cases(), "blobs": blobs, "chunks": chunk_cases(blobs), "json": json_cases(),
            "sampling": sampling_cases(), "invalid": invalid_cases(blobs)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "protocol", "vectors"))
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    files = build()
    total = 0
    for name, cases in files.items():
        names = [c["name"] for c in cases]
        assert len(set(names)) == len(names), name + ": duplicate case names"
        doc = {"file": name, "version": VERSION, "about": ABOUT[name], "cases": cases}
        with open(os.path.join(args.out, name + ".json"), "w", encoding="ascii", newline="\n") as f:
            f.write(_fmt(doc) + "\n")
        total += len(cases)
        print("%-9s %3d cases" % (name, len(cases)))
    print("%d cases in %s" % (total, args.out))


if __name__ == "__main__":
    main()
