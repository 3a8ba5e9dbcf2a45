"""The MLP in TFLite's int8 scheme, in numpy: quantize, run with TFLite's integer arithmetic, read a
converted .tflite back, and pack it for the wire.

Scheme (TFLite full-integer post-training quantization): weights int8 per output channel, symmetric;
biases int32 at scale in_scale * w_scale; activations int8 per tensor, asymmetric, ranges from a
calibration set; FULLY_CONNECTED requantizes its int32 accumulator with a fixed-point multiplier and
shift; TANH is a 256-entry table built the way TFLite's LUT kernels build it, in float32.

Requantization comes in two roundings and the runtimes differ: TFLite-Micro rounds twice (gemmlowp's
SaturatingRoundingDoublingHighMul, then RoundingDivideByPOT), LiteRT once (TFLITE_SINGLE_ROUNDING), so
they disagree by one LSB now and then. `forward(rounding=...)` reproduces either bit for bit (measured
on all 10,000 test images). The MCU node (firmware/micropython/semifl_node/int8.py) rounds twice, as
TFLite-Micro on the same board would.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from semifl.learn import mlp
from semifl.protocol import wire

TANH_SCALE, TANH_ZP = 1.0 / 128, 0     # TFLite fixes tanh's int8 output to [-1, 1)
# the int8 output quantization TFLite fixes for each table activation, and the op that computes it
ACTS = {"tanh": ((TANH_SCALE, TANH_ZP), "TANH"), "sigmoid": ((1.0 / 256, -128), "LOGISTIC")}
OPS = {op: act for act, (_, op) in ACTS.items()}


def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: m = q * 2^(shift-31), q an int32 in [2^30, 2^31)."""
    if m == 0:
        return 0, 0
    q, shift = math.frexp(m)
    q_fixed = int(round(q * (1 << 31)))
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q_fixed, shift


def multiply_by_quantized_multiplier(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier (double rounding), vectorized over int64 arrays."""
    acc, mult, shift = (np.asarray(a, np.int64) for a in (acc, mult, shift))
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    a = np.clip(acc * (np.int64(1) << left), -(1 << 31), (1 << 31) - 1)
    ab = a * mult                                  # |a|, |mult| < 2^31: fits int64
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    s = ab + nudge
    high = np.where(s >= 0, s >> 31, -((-s) >> 31))   # C division: truncate toward zero
    high = np.where((a == -(1 << 31)) & (mult == -(1 << 31)), (1 << 31) - 1, high)
    mask = (np.int64(1) << right) - 1
    rem = high & mask
    threshold = (mask >> 1) + (high < 0)
    return (high >> right) + (rem > threshold)


def multiply_by_quantized_multiplier_single(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The single-rounding variant (TFLITE_SINGLE_ROUNDING, what LiteRT runs): one rounding shift."""
    acc, mult, shift = (np.asarray(a, np.int64) for a in (acc, mult, shift))
    total = 31 - shift
    return (acc * mult + (np.int64(1) << (total - 1))) >> total


ROUNDINGS = {"double": multiply_by_quantized_multiplier, "single": multiply_by_quantized_multiplier_single}


def activation_params(lo: float, hi: float) -> tuple[float, int]:
    """Per-tensor asymmetric int8 (scale, zero point) of a float range, nudged to contain 0 as TFLite does."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zp = int(round(-128 - lo / scale))
    return float(np.float32(scale)), int(min(127, max(-128, zp)))


def act_lut(act: str, in_scale: float, in_zp: int) -> np.ndarray:
    """int8 -> int8 table of a tanh or sigmoid layer, built like TFLite's LUTPopulate (float32 all the way)."""
    (out_scale, out_zp), _ = ACTS[act]
    q = np.arange(-128, 128, dtype=np.int32)
    x = np.float32(in_scale) * (q - in_zp).astype(np.float32)
    y = np.round(mlp.activation(x, act).astype(np.float32) * np.float32(1 / out_scale)) + out_zp
    return np.clip(y, -128, 127).astype(np.int8)



@dataclass
class Int8Layer:
    w: np.ndarray            # int8 (out, in): one row per output channel, as the node streams it
    bias: np.ndarray         # int32 (out,)
    w_scale: np.ndarray      # float32 (out,)
    in_scale: float
    in_zp: int
    out_scale: float
    out_zp: int
    act: str = "none"        # "tanh", "sigmoid" or "none"
    mult: np.ndarray = field(init=False)
    shift: np.ndarray = field(init=False)
    lut: np.ndarray | None = field(init=False)

    def __post_init__(self):
        # in double from the float32 scales, as TFLite's GetQuantizedConvolutionMultipler
        ms = [quantize_multiplier(float(np.float32(self.in_scale)) * float(np.float32(s)) / float(np.float32(self.out_scale)))
              for s in self.w_scale]
        self.mult = np.array([m for m, _ in ms], np.int32)
        self.shift = np.array([s for _, s in ms], np.int32)
        self.lut = act_lut(self.act, self.out_scale, self.out_zp) if self.act != "none" else None


@dataclass
class Int8Model:
    layers: list[Int8Layer]

    @property
    def input_params(self) -> tuple[float, int]:
        return self.layers[0].in_scale, self.layers[0].in_zp

    def ops(self) -> list[str]:
        """The TFLite builtin ops this graph is, in order: what a runtime must implement."""
        out = []
        for L in self.layers:
            out += ["FULLY_CONNECTED"] + ([ACTS[L.act][1]] if L.act != "none" else [])
        return out

    def working_bytes(self) -> int:
        """RAM the MCU node's kernel holds for the largest layer (weights stay in flash, streamed a row at
        a time): input and output activations, one weight row, int32 bias/multiplier/shift per output
        channel, and a 256-entry activation table."""
        return max(2 * w.shape[1] + 13 * w.shape[0] + 256 for w in (L.w for L in self.layers))

    def quantize_float(self, x: np.ndarray) -> np.ndarray:
        """float inputs -> the int8 input tensor."""
        scale, zp = self.input_params
        return np.clip(np.round(np.asarray(x, np.float32) / np.float32(scale)) + zp, -128, 127).astype(np.int8)

    def quantize_input(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (0..255; an image model's input is pixels / 255) -> the int8 input tensor."""
        return self.quantize_float(np.asarray(pixels, np.float32) / np.float32(255.0))

    def forward(self, x_int8: np.ndarray, rounding: str = "double") -> np.ndarray:
        """int8 logits (batch, classes) exactly as TFLite-Micro ("double") or LiteRT ("single") computes them."""
        requant = ROUNDINGS[rounding]
        x = np.asarray(x_int8, np.int64)
        for L in self.layers:
            acc = (x - L.in_zp) @ L.w.T.astype(np.int64) + L.bias
            y = np.clip(requant(acc, L.mult, L.shift) + L.out_zp, -128, 127)
            if L.lut is not None:
                y = L.lut[y + 128].astype(np.int64)
            x = y
        return x.astype(np.int8)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self.forward(self.quantize_input(pixels)).argmax(axis=1)


def quantize(params: list[np.ndarray], calib_x: np.ndarray, hidden: str = "tanh") -> Int8Model:
    """Post-training full-integer quantization of the float MLP (semifl.learn.mlp layout), with
    activation ranges from `calib_x` (float inputs, e.g. pixels / 255), as TFLite's converter does it."""
    n = len(params) // 2
    in_scale, in_zp = activation_params(float(np.min(calib_x)), float(np.max(calib_x)))
    h = np.asarray(calib_x, np.float32)
    layers = []
    for i in range(n):
        w, b = params[2 * i], params[2 * i + 1]
        z = h @ w + b
        out_scale, out_zp = activation_params(float(z.min()), float(z.max()))
        w_scale = np.maximum(np.abs(w).max(axis=0), 1e-12).astype(np.float32) / np.float32(127)
        wq = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8).T.copy()
        bq = np.round(b / (np.float32(in_scale) * w_scale)).astype(np.int32)
        act = hidden if i < n - 1 else "none"
        layers.append(Int8Layer(wq, bq, w_scale, in_scale, in_zp, out_scale, out_zp, act))
        h = mlp.activation(z, act) if act != "none" else z
        in_scale, in_zp = ACTS[act][0] if act != "none" else (out_scale, out_zp)
    return Int8Model(layers)


def from_tflite(path_or_bytes) -> Int8Model:
    """Read the FULLY_CONNECTED/TANH chain of an int8 .tflite (e.g. models/export.py's) with LiteRT."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {"model_content": bytes(path_or_bytes)} if isinstance(path_or_bytes, (bytes, bytearray)) else {"model_path": str(path_or_bytes)}
    # without XNNPACK, which would fold the ops we read into one DELEGATE node
    it = Interpreter(**kw, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    det = {d["index"]: d for d in it.get_tensor_details()}
    ops = it._get_ops_details()

    def qp(i):
        q = det[i]["quantization_parameters"]
        return q["scales"].astype(np.float32), q["zero_points"].astype(np.int64)

    layers = []
    for op in ops:
        name = op["op_name"]
        if name == "FULLY_CONNECTED":
            x_i, w_i, b_i = op["inputs"][:3]
            (in_s,), (in_zp,) = qp(x_i)
            w_s, w_zp = qp(w_i)
            if np.any(w_zp != 0):
                raise ValueError("asymmetric weights are not TFLite's int8 scheme")
            (out_s,), (out_zp,) = qp(op["outputs"][0])
            w = it.get_tensor(w_i).astype(np.int8)
            w_s = np.broadcast_to(w_s, (w.shape[0],)).astype(np.float32)
            bias = it.get_tensor(b_i).astype(np.int32) if b_i >= 0 else np.zeros(w.shape[0], np.int32)
            layers.append(Int8Layer(w, bias, w_s, float(in_s), int(in_zp), float(out_s), int(out_zp)))
        elif name in OPS:
            L, act = layers[-1], OPS[name]
            (s,), (zp,) = qp(op["outputs"][0])
            if (float(s), int(zp)) != ACTS[act][0]:
                raise ValueError(f"{name} output quantized as ({s}, {zp}), not TFLite's {ACTS[act][0]}")
            L.act, L.lut = act, act_lut(act, L.out_scale, L.out_zp)
        elif name not in ("QUANTIZE", "DEQUANTIZE"):
            raise ValueError(f"op {name} is not part of the int8 MLP")
    return Int8Model(layers)


# --- on the wire: the blob an MCU downloads (docs/protocol.md, kind model_int8) ----------------------
def to_wire(model: Int8Model, meta: dict) -> tuple[dict, list[tuple]]:
    """(meta, tensors) for wire.encode_blob. Per layer: W int8 (out,in), bias int32, mult int32,
    shift int32, then the tanh table (int8, 256) when the layer has one; zero points in meta."""
    layers_meta, tensors = [], []
    for L in model.layers:
        layers_meta.append({"in_zp": L.in_zp, "out_zp": L.out_zp, "act": L.act, "out": int(L.w.shape[0]),
                            "in": int(L.w.shape[1])})
        for dtype, a in (("int8", L.w), ("int32", L.bias), ("int32", L.mult), ("int32", L.shift)):
            tensors.append((dtype, a.shape, 1.0, 0, np.ascontiguousarray(a).astype("<" + a.dtype.str[1:]).tobytes()))
        if L.lut is not None:
            tensors.append(("int8", (256,), 1.0, 0, L.lut.tobytes()))
    in_scale, in_zp = model.input_params
    return dict(meta, layers=layers_meta, input={"scale": in_scale, "zp": in_zp}), tensors


def encode(model: Int8Model, rnd: int) -> bytes:
    """The `model_int8` blob of round `rnd`."""
    return wire.encode_blob(*to_wire(model, {"kind": "model_int8", "round": rnd}))
