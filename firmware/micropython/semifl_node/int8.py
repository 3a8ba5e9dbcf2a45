"""int8 inference of the MLP on the MCU, with TFLite's integer arithmetic.

The model is the `model_int8` blob (docs/protocol.md) as downloaded into flash. Weight rows are read
from the file one output channel at a time, so RAM holds one row (784 bytes) and the small per-layer
vectors, never a 39 KB weight matrix: the arena is explicit and tiny. The arithmetic is TFLite's
(int32 accumulate, fixed-point requantization with double rounding, tanh by table), so results match
TFLite-Micro and LiteRT to the last bit or one LSB (tests/test_int8.py).
"""
from array import array

try:
    import wire
except ImportError:  # CPython with the host package installed
    from semifl.protocol import wire

INT32_MIN = -(1 << 31)


def mbqm(acc, mult, shift):
    """TFLite's MultiplyByQuantizedMultiplier (double rounding) on Python ints."""
    if shift > 0:
        acc <<= shift
        shift = 0
    if acc > 0x7FFFFFFF:
        acc = 0x7FFFFFFF
    elif acc < INT32_MIN:
        acc = INT32_MIN
    if acc == INT32_MIN and mult == INT32_MIN:
        high = 0x7FFFFFFF
    else:
        ab = acc * mult   # up to 62 bits: a long int on the board, computed once
        s = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
        high = s >> 31 if s >= 0 else -((-s) >> 31)   # C division truncates toward zero
    right = -shift
    mask = (1 << right) - 1
    rem = high & mask
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if rem > threshold else 0)


ACT_OPS = {"tanh": "TANH", "sigmoid": "LOGISTIC"}   # the table ops this kernel implements


def _meta(f):
    head = f.read(4)
    meta_len = head[0] | head[1] << 8 | head[2] << 16 | head[3] << 24
    meta = wire.decode_json(f.read(meta_len), meta_len + 1)
    if meta.get("kind") != "model_int8":
        raise ValueError("not a model_int8 blob")
    return meta, meta_len


def check(path, ops, free):
    """Refuse, before installing it, a model this node cannot run: an op outside `ops` or more working
    memory (as `Int8Model.working_bytes` on the host) than `free` bytes. Raises ValueError(reason: ...)."""
    with open(path, "rb") as f:
        meta = _meta(f)[0]
    need = 0
    for spec in meta["layers"]:
        op = ACT_OPS.get(spec["act"], None if spec["act"] == "none" else spec["act"])
        if op is not None and op not in ops:
            raise ValueError("model_ops: this node's kernel has no %s" % op)
        need = max(need, 2 * spec["in"] + 13 * spec["out"] + 256)
    if free and need > free:
        raise ValueError("arena: the model needs %d bytes, %d free" % (need, free))


class Layer:
    def __init__(self, spec, w_off, bias, mult, shift, lut):
        self.n_in, self.n_out = spec["in"], spec["out"]
        self.in_zp, self.out_zp = spec["in_zp"], spec["out_zp"]
        self.w_off, self.bias, self.mult, self.shift, self.lut = w_off, bias, mult, shift, lut


class Int8MLP:
    """Reads the blob's header and small tensors; weights stay in the file."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            meta, meta_len = _meta(f)
            self.round = meta.get("round", 0)
            self.in_scale, self.in_zp = meta["input"]["scale"], meta["input"]["zp"]
            off = 4 + meta_len
            self.layers = []
            for spec in meta["layers"]:
                w_off, off = self._skip(f, off, "int8", (spec["out"], spec["in"]))
                bias, off = self._read(f, off, "int32", (spec["out"],))
                mult, off = self._read(f, off, "int32", (spec["out"],))
                shift, off = self._read(f, off, "int32", (spec["out"],))
                lut = None
                if spec["act"] != "none":   # tanh or sigmoid: a 256-entry table
                    lut, off = self._read(f, off, "int8", (256,))
                self.layers.append(Layer(spec, w_off, bias, mult, shift, lut))

    @staticmethod
    def _header(f, off, dtype, shape):
        f.seek(off)
        buf = f.read(2 + 4 * len(shape) + 8)
        got, got_shape, _, _, data_off = wire.read_tensor_header(buf, 0)
        if got != dtype or tuple(got_shape) != tuple(shape):
            raise ValueError("model_int8: expected %s%s, found %s%s" % (dtype, shape, got, got_shape))
        return off + data_off

    def _skip(self, f, off, dtype, shape):
        data = self._header(f, off, dtype, shape)
        return data, data + wire.tensor_nbytes(dtype, shape)

    def _read(self, f, off, dtype, shape):
        data = self._header(f, off, dtype, shape)
        n = wire.tensor_nbytes(dtype, shape)
        f.seek(data)
        a = array("i" if dtype == "int32" else "b", f.read(n))
        return a, data + n

    def forward(self, x):
        """x: array('b') int8 input (`quantize_input`). -> array('b') int8 logits."""
        row = None
        with open(self.path, "rb") as f:
            for L in self.layers:
                if row is None or len(row) != L.n_in:
                    row = bytearray(L.n_in)
                y = array("b", bytes(L.n_out))
                zp = L.in_zp
                for o in range(L.n_out):
                    f.seek(L.w_off + o * L.n_in)
                    f.readinto(row)
                    acc = L.bias[o] + _dot(x, row, L.n_in, zp)
                    v = mbqm(acc, L.mult[o], L.shift[o]) + L.out_zp
                    v = -128 if v < -128 else (127 if v > 127 else v)
                    y[o] = L.lut[v + 128] if L.lut is not None else v
                x = y
        return x

    def quantize_input(self, pixels):
        """uint8 pixels (the model's input is pixel/255) -> array('b') int8 input."""
        x = array("b", bytes(len(pixels)))
        exact = abs(self.in_scale * 255 - 1) < 1e-6   # scale 1/255: q = pixel + zp, no float math
        inv = 1 / (255 * self.in_scale)
        for i in range(len(pixels)):
            q = pixels[i] + self.in_zp if exact else round(pixels[i] * inv) + self.in_zp
            x[i] = -128 if q < -128 else (127 if q > 127 else q)
        return x

    def predict(self, pixels):
        """pixels: 784 uint8 (bytes) -> class index (argmax of the int8 logits)."""
        y = self.forward(self.quantize_input(pixels))
        best = 0
        for i in range(1, len(y)):
            if y[i] > y[best]:
                best = i
        return best


def _dot(x, row, n, zp):
    """sum((x[i] - zp) * w[i]) with w the signed bytes of `row`."""
    acc = 0
    for i in range(n):
        w = row[i]
        acc += (x[i] - zp) * (w - 256 if w > 127 else w)
    return acc
