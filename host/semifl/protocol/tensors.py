"""numpy views of wire tensors (host and Pi only; the MCU uses `array` over the same bytes)."""
from __future__ import annotations

import binascii

import numpy as np

from . import wire


def to_wire(a: np.ndarray, scale: float = 1.0, zero_point: int = 0):
    a = np.require(a, requirements="C")  # unlike ascontiguousarray, keeps 0-d arrays 0-d
    little = a.dtype.newbyteorder("<")
    return (little.name, tuple(int(d) for d in a.shape), scale, zero_point, a.astype(little, copy=False).tobytes())


def from_wire(t) -> np.ndarray:
    dtype, shape, _scale, _zp, data = t
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def arrays_crc(arrays) -> int:
    """CRC-32 of arrays as float32 wire bytes, one after another (0: none): which model or state a
    device started from and which it kept (split learning's `sl_chain`, PerFit's `personal_chain`)."""
    crc = 0
    for a in arrays or ():
        crc = binascii.crc32(np.ascontiguousarray(a, np.float32).tobytes(), crc)
    return crc


def encode_arrays(meta: dict, arrays: list[np.ndarray]) -> bytes:
    return wire.encode_blob(meta, [to_wire(a) for a in arrays])


def decode_arrays(blob) -> tuple[dict, list[np.ndarray]]:
    meta, ts = wire.decode_blob(blob)
    return meta, [from_wire(t) for t in ts]


def dequantize(t) -> np.ndarray:
    """int8/uint8 tensor -> float32 with its scale and zero point (TFLite convention)."""
    a = from_wire(t).astype(np.float32)
    return (a - t[3]) * t[2] if t[0] in ("int8", "uint8") else a
