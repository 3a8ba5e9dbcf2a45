"""Check the golden protocol vectors with the device codec (MicroPython subset; CPython runs it too).

    MICROPYPATH=host/semifl/protocol micropython -X heapsize=110000 tests/mp/check_vectors.py protocol/vectors [FILE...]

(FILE: tensors, blobs, chunks, json, sampling, invalid; all by default.)

Reads protocol/vectors/*.json one case at a time and runs every case through wire.py and sampling.py:
exact bytes out, the inputs back on decode, chunking (in memory, streamed, reassembled out of order),
sampling, and the invalid inputs' WireError reasons. Prints one line per failing case, a SKIP line per
case marked host_only, and finally `OK <cases checked>` (exit 0) or `FAILED <failed> of <checked>` (exit 1).
"""
import gc
import json
import struct
import sys

try:
    from binascii import hexlify, unhexlify, crc32
except ImportError:
    from ubinascii import hexlify, unhexlify, crc32

try:
    import wire
    import sampling
except ImportError:  # CPython with the host package installed
    from semifl.protocol import sampling, wire

FILES = ("tensors", "blobs", "chunks", "json", "sampling", "invalid")
if len(sys.argv) > 2:
    FILES = tuple(sys.argv[2:])


class Mismatch(Exception):
    pass


def h(b):
    return hexlify(bytes(b)).decode()


def eq(got, exp, what):
    if got != exp:
        g, e = repr(got), repr(exp)
        if len(g) > 120:
            g = g[:120] + "..."
        if len(e) > 120:
            e = e[:120] + "..."
        raise Mismatch(what + ": got " + g + ", expected " + e)


def fmt(dtype, n):
    return "<%d%s" % (n, wire.DTYPES[wire.DTYPE_CODE[dtype]][2])


def pack(t):
    """A tensor input's bytes: its values packed little-endian, or its "data" (hex) for big tensors."""
    if "values" not in t:
        return unhexlify(t["data"])
    return struct.pack(fmt(t["dtype"], len(t["values"])), *t["values"])


def values_of(dtype, data):
    n = len(data) // wire.DTYPES[wire.DTYPE_CODE[dtype]][1]
    return list(struct.unpack(fmt(dtype, n), bytes(data)))


def check_tensor_back(got, t, what):
    dtype, shape, scale, zp, data = got[:5]
    eq(dtype, t["dtype"], what + " dtype")
    eq(tuple(shape), tuple(t["shape"]), what + " shape")
    eq(scale, t["scale"], what + " scale")
    eq(zp, t["zero_point"], what + " zero_point")
    if "values" in t:
        eq(values_of(dtype, data), t["values"], what + " values")
    else:
        eq(h(data), t["data"], what + " data")


def check_tensors(c):
    shape = tuple(c["shape"])
    header = wire.tensor_header(c["dtype"], shape, c["scale"], c["zero_point"])
    eq(h(header), c["header"], "header")
    data = pack(c)
    eq(h(data), c["data"], "data")
    eq(wire.tensor_nbytes(c["dtype"], shape), len(data), "tensor_nbytes")
    buf = unhexlify(c["header"]) + unhexlify(c["data"])
    got = wire.read_tensor_header(buf, 0)
    eq(got[4], len(header), "data offset")
    check_tensor_back(got[:4] + (buf[got[4]:],), c, "decoded")


def check_blobs(c):
    wt = [(t["dtype"], tuple(t["shape"]), t["scale"], t["zero_point"], pack(t)) for t in c["tensors"]]
    blob = wire.encode_blob(c["meta"], wt)
    exp = unhexlify(c.pop("blob"))
    eq(blob == exp, True, "encode_blob bytes")
    eq(len(blob), c["blob_len"], "blob_len")
    eq(crc32(blob) & 0xFFFFFFFF, c["blob_crc"], "blob_crc")
    head, total = wire.blob_head(c["meta"], [t[:4] for t in wt])
    eq(total, c["blob_len"], "blob_head total")
    eq(head == exp[:len(head)], True, "blob_head bytes")
    blob = wt = head = None
    meta, ts = wire.decode_blob(exp)
    eq(meta, c["meta_decoded"], "decoded meta")
    eq(len(ts), len(c["tensors"]), "tensor count")
    for i in range(len(ts)):
        check_tensor_back(ts[i], c["tensors"][i], "tensor %d" % i)


def check_chunks(c):
    kind, bid, size, count = c["kind_code"], c["blob_id"], c["chunk_size"], c["count"]
    blob = unhexlify(c.pop("blob"))  # compare bytes, not hex, and drop what is done with: ~100 KB heap
    exp = c["chunks"]
    eq(wire.chunk_count(len(blob), size), count, "chunk_count")
    eq(len(exp), count, "count")
    n = 0
    for x in wire.iter_chunks(kind, bid, blob, size):
        eq(h(x), exp[n] if n < count else None, "iter_chunks %d" % n)
        n += 1
    eq(n, count, "iter_chunks count")
    sent = [0]

    def send(p):
        eq(h(p), exp[sent[0]] if sent[0] < count else None, "ChunkWriter chunk %d" % sent[0])
        sent[0] += 1

    cw = wire.ChunkWriter(kind, bid, len(blob), size, send)
    for i in range(0, len(blob), 7):  # odd-sized writes, as a device streams from flash
        cw.write(blob[i:i + 7])
    cw.close()
    eq(sent[0], count, "ChunkWriter count")
    # Decode every chunk, then reassemble: reversed and with a duplicate (QoS 1), and streamed to a sink
    dec = []
    for seq in range(count):
        d = wire.decode_chunk(unhexlify(exp[seq]), c["blob_len"])
        exp[seq] = None
        eq(d[:6], (kind, bid, seq, count, c["blob_len"], c["blob_crc"] if seq == count - 1 else 0),
           "decode_chunk %d header" % seq)
        eq(d[6] == blob[seq * size:(seq + 1) * size], True, "decode_chunk %d data" % seq)
        dec.append(d)
    asm = wire.Assembler(kind, bid, count, c["blob_len"])
    done = False
    for d in reversed(dec):
        eq(done, False, "Assembler done early")
        done = asm.add(*d)
    eq(asm.add(*dec[0]), True, "Assembler after a duplicate")
    eq(done, True, "Assembler done")
    eq(bytes(asm.buf) == blob, True, "Assembler bytes")
    eq(asm.missing(), [], "Assembler missing")
    asm = None
    got = []
    asm = wire.Assembler(kind, bid, count, c["blob_len"], sink=lambda off, data: got.append((off, len(data))))
    for d in dec[1:] + dec[:1]:
        done = asm.add(*d)
    eq(done, True, "streamed Assembler done")
    eq(got, [(i * size, len(dec[i][6])) for i in range(count)], "streamed Assembler sink calls")


def check_json(c):
    b = wire.encode_json(c["obj"])
    eq(h(b), c["hex"], "encode_json")
    eq(b.decode(), c["text"], "text")
    eq(wire.decode_json(unhexlify(c["hex"])), c["obj"], "decode_json")


def check_sampling(c):
    op = c["op"]
    if op == "select":
        got = list(sampling.select(c["n"], c["k"], c["seed"]))   # a memoryview on MicroPython
    elif op == "xorshift32":
        got, x = [], c["seed"]
        for _ in range(c["count"]):
            x = sampling.xorshift32(x)
            got.append(x)
    elif op == "ceil_fraction":
        got = sampling.ceil_fraction(c["n"], c["fraction"])
    else:
        raise Mismatch("unknown op " + op)
    eq(got, c["expected"], op)


def run_invalid(c):
    op = c["op"]
    if op == "decode_chunk":
        wire.decode_chunk(unhexlify(c["input"]), c["max_blob_len"])
    elif op == "decode_blob":
        wire.decode_blob(unhexlify(c["input"]))
    elif op == "decode_json":
        wire.decode_json(unhexlify(c["input"]), c["max_bytes"])
    elif op == "tensor_header":
        wire.tensor_header(c["dtype"], tuple(c["shape"]), c["scale"], c["zero_point"])
    elif op == "encode_blob":
        wire.encode_blob(c["meta"], [(t["dtype"], tuple(t["shape"]), t["scale"], t["zero_point"], unhexlify(t["data"]))
                                     for t in c["tensors"]])
    elif op == "assemble":
        asm = wire.Assembler(c["kind_code"], c["blob_id"], c["count"], c["blob_len"])
        for x in c["chunks"]:
            asm.add(*wire.decode_chunk(unhexlify(x), 1 << 25))
    elif op == "chunk_writer":
        cw = wire.ChunkWriter(c["kind_code"], c["blob_id"], c["blob_len"], c["chunk_size"], lambda p: None)
        for x in c["writes"]:
            cw.write(unhexlify(x))
        if c["close"]:
            cw.close()
    else:
        raise Mismatch("unknown op " + op)


def check_invalid(c):
    try:
        run_invalid(c)
    except wire.WireError as e:
        eq(e.reason, c["reason"], "WireError.reason")
        return
    raise Mismatch("no WireError (expected %s)" % c["reason"])


def iter_cases(path):
    """The cases of a vector file, one at a time: a whole file does not fit a 110 KB heap.

    Relies on the layout tools/make_vectors.py writes: a case starts on a line beginning with exactly
    two spaces and "{" and ends on a line "  }" or "  }," (or on its first line); "host_only" comes
    right after "name", so such a case is skipped without parsing it.
    """
    with open(path) as f:
        buf = None
        while True:
            line = f.readline()
            if not line:
                break
            if buf is None:
                if line.startswith("  {"):
                    s = line.rstrip()
                    if s.endswith("}") or s.endswith("},"):
                        yield json.loads(s.rstrip(","))
                    else:
                        buf = [line]
            elif line.startswith("  }"):  # the case's last line, "  }" or "  },"
                if isinstance(buf, dict):  # a host_only case
                    yield buf
                    buf = None
                    continue
                buf.append("}")
                line = None
                text = "".join(buf)  # no further copies: a case can be ~10 KB of text
                buf = None
                gc.collect()
                c = json.loads(text)
                text = None
                yield c
                c = None
            elif isinstance(buf, dict):
                pass
            elif line.startswith('   "host_only": true'):
                name = buf[1].split(":", 1)[1].strip().rstrip(",")
                buf = {"name": json.loads(name), "host_only": True}
            else:
                buf.append(line)
    if buf is not None:
        raise ValueError(path + ": unterminated case")


CHECKS = {"tensors": check_tensors, "blobs": check_blobs, "chunks": check_chunks, "json": check_json,
          "sampling": check_sampling, "invalid": check_invalid}


def main(vdir):
    checked, failed = 0, 0
    for name in FILES:
        check = CHECKS[name]
        for c in iter_cases(vdir + "/" + name + ".json"):
            where = name + "/" + c["name"]
            if c.get("host_only"):
                print("SKIP " + where + " (host_only)")
                continue
            checked += 1
            try:
                check(c)
            except Mismatch as e:
                failed += 1
                print("FAIL " + where + ": " + str(e))
            except Exception as e:  # a crash is a failure too (MemoryError, a codec bug, ...)
                failed += 1
                print("FAIL " + where + ": " + type(e).__name__ + ": " + str(e))
            c = None
            gc.collect()
    if failed:
        print("FAILED %d of %d" % (failed, checked))
        sys.exit(1)
    print("OK %d" % checked)


main(sys.argv[1] if len(sys.argv) > 1 else "protocol/vectors")
