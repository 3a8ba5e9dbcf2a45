"""A generator as a versioned artifact: what a device sends the host (Algorithm 1, line 7) and what the
host stores and hands to paired devices (Algorithm 2).

Bytes: one protocol blob (docs/protocol.md section 7: meta JSON + float32 tensors, the generator's
state dict in `names` order). meta carries the format and its version, the device id, the generator's
version, its label histogram, its privacy spent (epsilon, delta; epsilon null when infinite), how it
was trained (sigma, steps, q) and its architecture (z_dim, n_classes, dim), plus `sha256`: the SHA-256
of the canonical meta without `sha256` (wire.dumps, sorted keys) followed by every tensor's header
and data. The hash protects integrity (a flipped weight, an edited epsilon), not authenticity: anyone
can recompute it; authenticity is the transport's business.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from ...protocol import tensors, wire
from .gan import Generator
from .train import TrainedGenerator

FORMAT, FORMAT_VERSION = "iotsl-generator", 1
_UNHASHED = ("sha256", "v", "tensors")   # v and tensors are added by the blob codec itself


class ArtifactRejected(Exception):
    """A generator artifact the host or a device must not use. `reason`: a short stable key
    (malformed, format, hash, privacy, device) like the session's rejections; `detail` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class PrivacyPolicy:
    """The most a device lets a released generator spend on its data."""
    max_epsilon: float
    max_delta: float = 1e-5


@dataclass(frozen=True)
class GeneratorInfo:
    device: str
    version: int
    histogram: tuple[int, ...]
    epsilon: float
    delta: float
    sigma: float
    steps: int
    q: float
    sha256: str


def _digest(meta: dict, ts: list) -> str:
    h = hashlib.sha256(wire.dumps({k: v for k, v in meta.items() if k not in _UNHASHED}).encode())
    for dtype, shape, scale, zp, data in ts:
        h.update(wire.tensor_header(dtype, shape, scale, zp))
        h.update(bytes(data))
    return h.hexdigest()


def to_bytes(trained: TrainedGenerator, device: str, version: int = 1) -> bytes:
    """Serialize a trained generator with its histogram, privacy spent and device id."""
    gen = trained.generator
    state = gen.state_dict()
    ts = [tensors.to_wire(state[k].detach().cpu().numpy().astype(np.float32)) for k in state]
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "device": device, "version": int(version),
            "histogram": [int(c) for c in trained.histogram],
            "epsilon": None if math.isinf(trained.epsilon) else float(trained.epsilon),
            "delta": float(trained.delta), "sigma": float(trained.sigma), "steps": int(trained.steps),
            "q": float(trained.q), "z_dim": gen.z_dim, "n_classes": gen.n_classes, "dim": gen.dim,
            "names": list(state)}
    meta["sha256"] = _digest(meta, ts)
    return wire.encode_blob(meta, ts)


def load(blob: bytes, policy: PrivacyPolicy, device: str | None = None) -> tuple[Generator, GeneratorInfo]:
    """-> (generator in eval mode, its info). Raises ArtifactRejected when the blob is malformed, its
    hash fails, it is not from `device` (when given), or it spent more privacy than `policy` allows."""
    try:
        meta, ts = wire.decode_blob(blob)
    except wire.WireError as e:
        raise ArtifactRejected("malformed", str(e)) from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactRejected("format", f"not an {FORMAT} v{FORMAT_VERSION} artifact: "
                                         f"{meta.get('format')!r} v{meta.get('format_version')!r}")
    digest = _digest(meta, ts)
    if meta.get("sha256") != digest:
        raise ArtifactRejected("hash", f"SHA-256 {digest} does not match the artifact's {meta.get('sha256')!r}")
    try:
        return _build(meta, ts, digest, policy, device)
    except (KeyError, TypeError, ValueError) as e:   # hashed, but not what to_bytes writes
        raise ArtifactRejected("malformed", f"bad meta: {e!r}") from None


def _build(meta, ts, digest, policy, device):
    if device is not None and meta["device"] != device:
        raise ArtifactRejected("device", f"artifact of {meta['device']!r}, expected {device!r}")
    eps = math.inf if meta["epsilon"] is None else float(meta["epsilon"])
    if eps > policy.max_epsilon or meta["delta"] > policy.max_delta:
        raise ArtifactRejected("privacy", f"(epsilon {eps:.3g}, delta {meta['delta']:.3g}) exceeds the policy "
                                          f"(epsilon {policy.max_epsilon:.3g}, delta {policy.max_delta:.3g})")
    gen = Generator(meta["z_dim"], meta["n_classes"], meta["dim"])
    names = meta["names"]
    if len(names) != len(ts):
        raise ArtifactRejected("malformed", f"{len(names)} names for {len(ts)} tensors")
    try:
        gen.load_state_dict({k: torch.from_numpy(tensors.from_wire(t).copy()) for k, t in zip(names, ts)})
    except RuntimeError as e:   # missing keys or wrong shapes
        raise ArtifactRejected("malformed", str(e).splitlines()[0]) from None
    info = GeneratorInfo(meta["device"], meta["version"], tuple(meta["histogram"]), eps, meta["delta"],
                         meta["sigma"], meta["steps"], meta["q"], digest)
    return gen.eval(), info
