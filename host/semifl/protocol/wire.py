"""The semifl wire codec (protocol v1), as specified in docs/protocol.md.

Written in the subset of Python that MicroPython runs (struct, json, binascii only): this one file is
the codec of the host, the Pi agent and the MicroPython node. No numpy here; `tensors.py` adds numpy
views on the host and the Pi.
"""
import json
import struct

try:
    from binascii import crc32
except ImportError:  # some MicroPython builds name it ubinascii
    from ubinascii import crc32

VERSION = 1
ROOT = "semifl/v1"
MAGIC = b"SF"

# --- topics -------------------------------------------------------------------------------------
# Device -> host (the host subscribes to ROOT + "/dev/+/#")
T_CAPS = "caps"        # JSON capability report, retained, QoS 1
T_PRESENCE = "presence"  # b"online" retained on connect; b"offline" as last will
T_STATUS = "status"    # JSON per-round report (ack, update norm, link), QoS 1
T_UP = "up"            # binary chunks of an uploaded blob (update, samples), QoS 1
# Host -> device
T_TASK = "task"        # JSON task for this device and round, QoS 1
T_MODEL_INT8 = "model_int8"  # binary chunks of the int8 model for MCU inference (on ROOT/host/model_int8)
T_DOWN = "down"        # binary chunks of a blob for this device only (split learning: f_a, gradients), QoS 1


def dev_topic(device_id, leaf):
    return ROOT + "/dev/" + device_id + "/" + leaf


def host_topic(leaf):
    return ROOT + "/host/" + leaf


def parse_dev_topic(topic):
    """'semifl/v1/dev/<id>/<leaf>' -> (id, leaf); raises ValueError on anything else."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] + "/" + parts[1] != ROOT or parts[2] != "dev" or not parts[3]:
        raise ValueError("not a device topic: " + topic)
    return parts[3], parts[4]


# --- errors -------------------------------------------------------------------------------------
class WireError(ValueError):
    """A message that breaks the protocol. `reason` is a short stable key used in counters."""

    def __init__(self, reason, detail=""):
        super().__init__(reason + (": " + detail if detail else ""))  # MicroPython has no ValueError.__init__
        self.reason = reason


# --- JSON control messages --------------------------------------------------------------------
def dumps(obj):
    """json.dumps with sorted keys: the same bytes on every runtime.

    MicroPython's dicts do not keep insertion order and its json.dumps has no sort_keys, so the codec
    sorts object keys itself (CPython's json.dumps(obj, sort_keys=True) gives the same text).
    """
    if isinstance(obj, dict):
        return "{" + ", ".join([json.dumps(str(k)) + ": " + dumps(obj[k]) for k in sorted(obj)]) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join([dumps(x) for x in obj]) + "]"
    return json.dumps(obj)


def encode_json(obj):
    return dumps(obj).encode()


def decode_json(payload, max_bytes=16384):
    if len(payload) > max_bytes:
        raise WireError("oversized", "%d > %d bytes" % (len(payload), max_bytes))
    try:
        obj = json.loads(payload)
    except Exception as e:  # ValueError on CPython and MicroPython alike
        raise WireError("malformed", "bad JSON: %s" % e)
    if not isinstance(obj, dict):
        raise WireError("malformed", "JSON message must be an object")
    if obj.get("v", VERSION) != VERSION:
        raise WireError("version", "protocol v%s, expected v%d" % (obj.get("v"), VERSION))
    return obj


# --- tensors ------------------------------------------------------------------------------------
# dtype code -> (name, itemsize, struct/array typecode). Byte order is little-endian throughout.
DTYPES = {1: ("float32", 4, "f"), 2: ("int8", 1, "b"), 3: ("uint8", 1, "B"), 4: ("int32", 4, "i"),
          5: ("float16", 2, "e"), 6: ("float64", 8, "d")}
DTYPE_CODE = {}
for _code in DTYPES:
    DTYPE_CODE[DTYPES[_code][0]] = _code
MAX_NDIM = 4


def tensor_header(dtype, shape, scale=1.0, zero_point=0):
    """Header of one tensor: <B dtype><B ndim><I dim>*ndim<f scale><i zero_point>."""
    if dtype not in DTYPE_CODE:
        raise WireError("malformed", "unknown dtype " + str(dtype))
    if len(shape) > MAX_NDIM:
        raise WireError("shape", "ndim %d > %d" % (len(shape), MAX_NDIM))
    return (struct.pack("<BB", DTYPE_CODE[dtype], len(shape))
            + struct.pack("<" + "I" * len(shape), *shape) + struct.pack("<fi", scale, zero_point))


def tensor_nbytes(dtype, shape):
    n = DTYPES[DTYPE_CODE[dtype]][1]
    for d in shape:
        n *= d
    return n


def read_tensor_header(buf, off):
    """-> (dtype, shape, scale, zero_point, data_offset). Raises WireError on a bad header."""
    if off + 2 > len(buf):
        raise WireError("truncated", "tensor header")
    code, ndim = struct.unpack_from("<BB", buf, off)
    if code not in DTYPES:
        raise WireError("malformed", "unknown dtype code %d" % code)
    if ndim > MAX_NDIM:
        raise WireError("shape", "ndim %d > %d" % (ndim, MAX_NDIM))
    off += 2
    if off + 4 * ndim + 8 > len(buf):
        raise WireError("truncated", "tensor header")
    shape = struct.unpack_from("<" + "I" * ndim, buf, off)
    off += 4 * ndim
    scale, zp = struct.unpack_from("<fi", buf, off)
    return DTYPES[code][0], tuple(shape), scale, zp, off + 8


# --- blobs: meta JSON + tensors -----------------------------------------------------------------
def blob_head(meta, headers):
    """Start of a blob: <I meta_len><meta JSON>. Tensor headers and data follow in order.

    `headers` is a list of (dtype, shape, scale, zero_point); meta gets "tensors": their count.
    Returns (head_bytes, total_blob_len) so a device can stream the data after the head.
    """
    meta = dict(meta)
    meta["v"] = VERSION
    meta["tensors"] = len(headers)
    mj = dumps(meta).encode()
    head = struct.pack("<I", len(mj)) + mj
    total = len(head)
    for h in headers:
        total += len(tensor_header(*h)) + tensor_nbytes(h[0], h[1])
    return head, total


def encode_blob(meta, tensors):
    """tensors: list of (dtype, shape, scale, zero_point, data_bytes). -> bytes."""
    head, _ = blob_head(meta, [t[:4] for t in tensors])
    parts = [head]
    for dtype, shape, scale, zp, data in tensors:
        if len(data) != tensor_nbytes(dtype, shape):
            raise WireError("shape", "data is %d bytes, shape needs %d" % (len(data), tensor_nbytes(dtype, shape)))
        parts.append(tensor_header(dtype, shape, scale, zp))
        parts.append(data)
    return b"".join(parts)


def decode_blob(buf):
    """-> (meta, [(dtype, shape, scale, zero_point, memoryview_of_data)]). Validates every length."""
    if len(buf) < 4:
        raise WireError("truncated", "blob shorter than its meta length")
    (mlen,) = struct.unpack_from("<I", buf, 0)
    if 4 + mlen > len(buf):
        raise WireError("truncated", "meta")
    meta = decode_json(bytes(buf[4:4 + mlen]), max_bytes=mlen)
    n = meta.get("tensors")
    if not isinstance(n, int) or n < 0 or n > 64:
        raise WireError("malformed", "meta.tensors must be an int in 0..64")
    mv = memoryview(buf)
    off = 4 + mlen
    out = []
    for _ in range(n):
        dtype, shape, scale, zp, off = read_tensor_header(buf, off)
        nb = tensor_nbytes(dtype, shape)
        if off + nb > len(buf):
            raise WireError("truncated", "tensor data")
        out.append((dtype, shape, scale, zp, mv[off:off + nb]))
        off += nb
    if off != len(buf):
        raise WireError("malformed", "%d trailing bytes after the last tensor" % (len(buf) - off))
    return meta, out


# --- chunking -------------------------------------------------------------------------------------
# Every binary MQTT payload is one chunk: a 24-byte header then data.
# <2s magic "SF"><B version><B kind><I blob_id><H seq><H count><I blob_len><I blob_crc><I chunk_crc>
# blob_crc is the CRC32 of the whole blob in the last chunk (seq == count-1) and 0 elsewhere, so a
# device can stream a blob from flash in one pass. chunk_crc covers this chunk's data.
CHUNK_HEADER = "<2sBBIHHIII"
CHUNK_HEADER_LEN = 24
KIND_MODEL, KIND_UPDATE, KIND_SAMPLES, KIND_MODEL_INT8, KIND_SMASHED, KIND_GRAD, KIND_GENERATOR = 1, 2, 3, 4, 5, 6, 7
KINDS = (KIND_MODEL, KIND_UPDATE, KIND_SAMPLES, KIND_MODEL_INT8, KIND_SMASHED, KIND_GRAD, KIND_GENERATOR)


def chunk_count(blob_len, chunk_size):
    return max(1, (blob_len + chunk_size - 1) // chunk_size)


def encode_chunk(kind, blob_id, seq, count, blob_len, data, blob_crc=0):
    return struct.pack(CHUNK_HEADER, MAGIC, VERSION, kind, blob_id, seq, count, blob_len,
                       blob_crc if seq == count - 1 else 0, crc32(data) & 0xFFFFFFFF) + bytes(data)


def iter_chunks(kind, blob_id, blob, chunk_size):
    """Chunk a blob held in memory (the host, the Pi). MCUs stream with `ChunkWriter` instead."""
    count = chunk_count(len(blob), chunk_size)
    bcrc = crc32(blob) & 0xFFFFFFFF
    mv = memoryview(blob)
    for seq in range(count):
        yield encode_chunk(kind, blob_id, seq, count, len(blob), bytes(mv[seq * chunk_size:(seq + 1) * chunk_size]), bcrc)


class ChunkWriter:
    """Streams a blob of known length as chunks through `send(payload)`, CRC computed on the way.

    One chunk-sized buffer, header space first, is filled in place and reused: on an MCU, a new bytes
    object per chunk (the data, then header + data) fragments the heap until a 4 KB allocation fails.
    With `reuse` the payload sent is a view of that buffer, valid only until `send` returns (umqtt's
    publish writes it out before it returns); without, `send` gets a copy of its own.
    """

    def __init__(self, kind, blob_id, blob_len, chunk_size, send, reuse=False):
        self.kind, self.blob_id, self.blob_len, self.size, self.send = kind, blob_id, blob_len, chunk_size, send
        self.count = chunk_count(blob_len, chunk_size)
        self.seq, self.crc, self.written = 0, 0, 0
        self.reuse = reuse
        self.buf = bytearray(CHUNK_HEADER_LEN + min(chunk_size, blob_len))
        self.fill = 0

    def write(self, data):
        self.written += len(data)
        if self.written > self.blob_len:
            raise WireError("oversized", "wrote past the declared blob length")
        self.crc = crc32(data, self.crc) & 0xFFFFFFFF
        mv, off, h = memoryview(data), 0, CHUNK_HEADER_LEN
        while off < len(mv):
            n = min(self.size - self.fill, len(mv) - off)
            self.buf[h + self.fill:h + self.fill + n] = mv[off:off + n]
            self.fill += n
            off += n
            if self.fill == self.size and self.seq < self.count - 1:
                self._emit()
                self.fill = 0

    def close(self):
        if self.written != self.blob_len:
            raise WireError("truncated", "wrote %d of %d bytes" % (self.written, self.blob_len))
        self._emit()

    def _emit(self):
        mv = memoryview(self.buf)
        data = mv[CHUNK_HEADER_LEN:CHUNK_HEADER_LEN + self.fill]
        struct.pack_into(CHUNK_HEADER, self.buf, 0, MAGIC, VERSION, self.kind, self.blob_id, self.seq, self.count,
                         self.blob_len, self.crc if self.seq == self.count - 1 else 0, crc32(data) & 0xFFFFFFFF)
        payload = mv[:CHUNK_HEADER_LEN + self.fill]
        self.send(payload if self.reuse else bytes(payload))
        self.seq += 1


def decode_chunk(payload, max_blob_len):
    """-> (kind, blob_id, seq, count, blob_len, blob_crc, data). Checks magic, version, CRC, bounds."""
    if len(payload) < CHUNK_HEADER_LEN:
        raise WireError("truncated", "chunk shorter than its header")
    magic, ver, kind, blob_id, seq, count, blob_len, bcrc, ccrc = struct.unpack_from(CHUNK_HEADER, payload, 0)
    if magic != MAGIC:
        raise WireError("malformed", "bad magic")
    if ver != VERSION:
        raise WireError("version", "chunk v%d, expected v%d" % (ver, VERSION))
    if kind not in KINDS:
        raise WireError("malformed", "unknown blob kind %d" % kind)
    if blob_len > max_blob_len:
        raise WireError("oversized", "blob of %d bytes > limit %d" % (blob_len, max_blob_len))
    if count == 0 or seq >= count:
        raise WireError("malformed", "chunk %d of %d" % (seq, count))
    data = payload[CHUNK_HEADER_LEN:]
    if crc32(data) & 0xFFFFFFFF != ccrc:
        raise WireError("crc", "chunk %d of blob %d" % (seq, blob_id))
    return kind, blob_id, seq, count, blob_len, bcrc, data


class Assembler:
    """Reassembles one blob from chunks that may arrive in any order (QoS 1 may also duplicate).

    `sink(offset, data)` receives data in order, so an MCU can write it straight to flash; on the
    host the default sink appends to a bytearray that grows with what arrived (a header's claim of
    blob_len reserves nothing). `add` returns True once the blob is complete and its CRC checks out.
    `held` is what the blob holds in memory now, out-of-order chunks included.
    """
    OVERHEAD = 64   # what one waiting chunk costs beyond its data: empty chunks are not free

    def __init__(self, kind, blob_id, count, blob_len, sink=None):
        self.kind, self.blob_id, self.count, self.blob_len = kind, blob_id, count, blob_len
        self.buf = None
        if sink is None:
            self.buf = bytearray()
            sink = self._fill
        self.sink = sink
        self.pending = {}  # out-of-order chunks waiting for their turn
        self.pending_bytes = 0
        self.next_seq, self.offset, self.crc, self.blob_crc = 0, 0, 0, None
        self.broken = None   # the WireError that spoilt this blob: it stays spoilt (a duplicate is no fix)

    def _fill(self, off, data):
        self.buf.extend(data)   # in order: off is always len(buf)

    @property
    def held(self):
        return (len(self.buf) if self.buf is not None else 0) + self.pending_bytes

    def add(self, kind, blob_id, seq, count, blob_len, bcrc, data):
        if (kind, blob_id, count, blob_len) != (self.kind, self.blob_id, self.count, self.blob_len):
            raise WireError("malformed", "chunk does not belong to blob %d" % self.blob_id)
        if self.broken is not None:
            raise self.broken
        if seq < self.next_seq or seq in self.pending:
            return self.done()  # a duplicate: QoS 1 delivers at least once
        if len(data) > blob_len:
            raise WireError("oversized", "a chunk of %d bytes in a blob of %d" % (len(data), blob_len))
        if seq == count - 1:
            self.blob_crc = bcrc
        if seq != self.next_seq:
            self.pending[seq] = data   # out of order: it waits for its turn
            self.pending_bytes += len(data) + self.OVERHEAD
            return False
        self._take(data)   # in order (the usual case): straight through
        while self.next_seq in self.pending:
            d = self.pending.pop(self.next_seq)
            self.pending_bytes -= len(d) + self.OVERHEAD
            self._take(d)
        if self.next_seq == self.count:
            if self.offset != self.blob_len:
                self.broken = WireError("truncated", "blob %d: %d of %d bytes" % (self.blob_id, self.offset, self.blob_len))
            elif self.crc != self.blob_crc:
                self.broken = WireError("crc", "blob %d" % self.blob_id)
            if self.broken is not None:
                raise self.broken
        return self.done()

    def _take(self, d):
        if self.offset + len(d) > self.blob_len:
            raise WireError("oversized", "chunks exceed the declared blob length")
        self.sink(self.offset, d)
        self.crc = crc32(d, self.crc) & 0xFFFFFFFF
        self.offset += len(d)
        self.next_seq += 1

    def done(self):
        return self.next_seq == self.count and self.broken is None

    def missing(self):
        return [s for s in range(self.next_seq, self.count) if s not in self.pending]
