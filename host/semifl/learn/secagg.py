"""SecAgg+ (Bell et al. 2020, on Bonawitz et al. 2017): the host learns only the sum of the clients' vectors.

Transport-free state machines, one method per stage; every message is a JSON-able dict (bytes as
base64 text) except the masked vector, a uint32 array (a tensor blob on the wire).

  stage        client -> host                        host -> client
  setup        -                                     {idx, n, t, neighbours, dim, clip, range, round}
  keys         {pk1, pk2, commit}                    the neighbours' keys
  shares       {ct: {j: AEAD(shares for j)}}         the ciphertexts addressed to it
  masked       y_i (uint32[dim])                     {survivors, dropped}
  unmask       {b: {j: share}, sk: {j: share}}       -

Each client i makes two X25519 key pairs per round: (sk1, pk1) agrees the pairwise-mask seed s_ij
with each neighbour j, (sk2, pk2) the AES-GCM key of the shares it sends j through the host. It draws
a self-mask seed b_i and Shamir-shares b_i and sk1 (threshold t) among its neighbours and itself. Its
masked input is y_i = q(x_i) + PRG(b_i) + sum_{j>i} PRG(s_ij) - sum_{j<i} PRG(s_ij)  (mod 2^32), over
the neighbours that sent it shares. At unmask the host asks each survivor for its shares of b_j of
the other survivors and of sk1_j of the clients that dropped after sharing; an honest client never
reveals both for the same j. The host rebuilds b_j (checked against j's commitment SHA-256(b_j)) and
sk1_j (checked against j's pk1), removes those masks, and is left with sum q(x_i) over survivors.

Graph: SecAgg+'s random k-regular graph (a Harary graph on a seeded random relabelling); the complete
graph when k >= n - 1 (`choose_k` gives the complete graph up to `COMPLETE_UP_TO` clients). Threshold
t = floor((k + 1) / 2) + 1, a strict majority of the k + 1 holders of each secret: the smallest t at
which the shares honest clients reveal for b_j and sk1_j cannot both reach t. On the complete graph a
round survives any ceil(n / 2) - 1 dropouts (at least a third for n >= 3); on a k-regular graph it
survives random dropouts of a third with the failure probability `choose_k` is asked for (1e-6).

Quantization (stated bound): x in [-clip, clip] per coordinate (clipped), q(x) = rint((x + clip) R / (2 clip))
with R = floor((2^32 - 1) / n), so the sum of n clients' q(x) stays below 2^32 and never wraps. The
dequantized sum differs from the float sum of the clipped inputs by at most m clip / R per coordinate
(m survivors): 2.3e-6 clip at n = 100.

Threat model: an honest-but-curious host and clients that may drop out at any stage; malformed or
tampered shares and ciphertexts are detected (AEAD tags, commitments, pk checks) and raise
`SecAggError`. Not covered: a host that lies about who dropped to different clients (Bonawitz et al.'s
consistency round with signatures is not implemented) and a host that picks the graph adversarially.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import math
import os
import secrets
import struct

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PRIME = 2 ** 521 - 1          # Mersenne prime: a 256-bit secret is one field element
SHARE_BYTES = 66              # a share's y, big-endian (2^521 < 2^528)
MOD_BITS = 32
COMPLETE_UP_TO = 32           # choose_k: the complete graph up to this many clients
MIN_CLIENTS = 3               # with 2 the sum gives each client the other's input


class SecAggError(Exception):
    """A round that cannot or must not go on. `reason` is a short stable key for counters."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason + (": " + detail if detail else ""))
        self.reason = reason


# --- Shamir secret sharing over GF(p) --------------------------------------------------------------
def shamir_split(secret: int, xs: list[int], t: int, prime: int = PRIME, coeffs: list[int] | None = None):
    """Shares (x, f(x)) of `secret` for each x in xs, f of degree t - 1 with f(0) = secret and random
    coefficients (`coeffs` fixes them, for test vectors)."""
    if not 0 <= secret < prime or not 1 <= t <= len(xs) or len(set(xs)) != len(xs) or any(x % prime == 0 for x in xs):
        raise ValueError(f"shamir: bad split (t = {t}, {len(xs)} distinct nonzero points needed)")
    poly = [secret] + (list(coeffs) if coeffs is not None else [secrets.randbelow(prime) for _ in range(t - 1)])
    out = []
    for x in xs:
        y = 0
        for c in reversed(poly):       # Horner
            y = (y * x + c) % prime
        out.append((x, y))
    return out


def shamir_combine(shares, prime: int = PRIME) -> int:
    """f(0) by Lagrange interpolation through the given (x, y): the secret when len(shares) >= t."""
    xs = [x for x, _ in shares]
    if len(set(xs)) != len(xs) or not shares:
        raise ValueError("shamir: shares need distinct x")
    s = 0
    for j, (xj, yj) in enumerate(shares):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % prime
                den = den * (xm - xj) % prime
        s = (s + yj * num * pow(den, -1, prime)) % prime
    return s


def _b2i(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _i2b(i: int, n: int) -> bytes:
    return i.to_bytes(n, "big")


# --- primitives ------------------------------------------------------------------------------------
def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def unb64(s, what: str) -> bytes:
    try:
        return base64.b64decode(s.encode(), validate=True)
    except (AttributeError, ValueError):    # not a str, or not base64 (binascii.Error is a ValueError)
        raise SecAggError("malformed", f"{what} is not base64") from None


def prg(seed: bytes, dim: int) -> np.ndarray:
    """ChaCha20 keystream of a 32-byte seed as `dim` uint32 (every seed is used for one vector only)."""
    enc = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(enc.update(b"\0" * (4 * dim)), dtype="<u4").astype(np.uint32)


def kdf(shared: bytes, label: bytes, round_id: str) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"semifl-secagg/" + label + b"/" + round_id.encode()).derive(shared)


def raw_pub(sk: X25519PrivateKey) -> bytes:
    return sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def raw_priv(sk: X25519PrivateKey) -> bytes:
    return sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def pair_seed(sk1: bytes, pk1: bytes, round_id: str) -> bytes:
    return kdf(X25519PrivateKey.from_private_bytes(sk1).exchange(X25519PublicKey.from_public_bytes(pk1)),
               b"mask", round_id)


# --- quantization ----------------------------------------------------------------------------------
def quant_range(n: int) -> int:
    """R: each of n clients' values in [0, R] so their sum stays below 2^32."""
    return (2 ** MOD_BITS - 1) // n


def quantize(x: np.ndarray, clip: float, r: int) -> np.ndarray:
    x = np.clip(np.asarray(x, np.float64), -clip, clip)
    return np.rint((x + clip) * (r / (2 * clip))).astype(np.uint32)


def dequantize_sum(s: np.ndarray, clip: float, r: int, m: int) -> np.ndarray:
    """The sum of m clients' quantized vectors back to floats (error <= m clip / R per coordinate)."""
    return s.astype(np.float64) * (2 * clip / r) - m * clip


def error_bound(clip: float, n: int, m: int | None = None) -> float:
    return (n if m is None else m) * clip / quant_range(n)


# --- FL updates as SecAgg inputs -----------------------------------------------------------------------
def pack(delta: list[np.ndarray], weight: float, clip: float, bit: float | None = None) -> np.ndarray:
    """One client's input: w * delta flattened, then w * clip (so the host learns sum w), then, for
    adaptive DP clipping, bit * clip. w is capped to [0, 1] (the round's weight cap, e.g. samples / max
    samples) so it cannot inflate one client's share; every entry is then inside [-clip, clip] when
    the update is (clipped per coordinate by `quantize` otherwise)."""
    w = min(max(float(weight), 0.0), 1.0)
    tail = [w * clip] + ([float(bit) * clip] if bit is not None else [])
    return np.concatenate([w * np.asarray(a, np.float64).reshape(-1) for a in delta] + [np.array(tail)])


def unpack(total: np.ndarray, shapes: list[tuple], clip: float, bit: bool = False):
    """The secure sum of `pack`ed inputs -> (sum_i w_i delta_i as arrays, sum_i w_i, sum_i bit_i or None)."""
    out, off = [], 0
    for shp in shapes:
        size = int(np.prod(shp))
        out.append(total[off:off + size].reshape(shp))
        off += size
    if total.size != off + 1 + bit:
        raise SecAggError("malformed", f"sum of {total.size} entries for {off} parameters")
    return out, float(total[off]) / clip, (float(total[off + 1]) / clip if bit else None)


# --- the communication graph -----------------------------------------------------------------------
def _binom_tail_below(k: int, p: float, t: int) -> float:
    """P(Binomial(k, p) < t)."""
    return sum(math.comb(k, i) * p ** i * (1 - p) ** (k - i) for i in range(t))


def threshold(k: int) -> int:
    return (k + 1) // 2 + 1


def choose_k(n: int, dropout: float = 1 / 3, fail: float = 1e-6) -> int:
    """SecAgg+'s degree: n - 1 (complete) up to COMPLETE_UP_TO clients, else the smallest even k whose
    neighbourhoods keep t of their k + 1 holders under independent dropouts at rate `dropout` with
    probability >= 1 - fail for all n clients (union bound)."""
    if n <= COMPLETE_UP_TO:
        return n - 1
    for k in range(2, n - 1, 2):
        if n * _binom_tail_below(k + 1, 1 - dropout, threshold(k)) <= fail:
            return k
    return n - 1


def neighbours(n: int, k: int, seed: int) -> dict[int, list[int]]:
    """Clients 1..n -> their neighbours: the complete graph when k >= n - 1, else the Harary graph
    H(n, k) (each node to the k/2 nearest on each side of a ring) on a seeded random order."""
    ids = list(range(1, n + 1))
    if k >= n - 1:
        return {i: [j for j in ids if j != i] for i in ids}
    if k % 2:
        raise ValueError(f"secagg: the degree k = {k} must be even")
    order = [int(v) for v in np.random.default_rng(seed).permutation(ids)]
    pos = {v: p for p, v in enumerate(order)}
    return {i: sorted({order[(pos[i] + d) % n] for d in range(-k // 2, k // 2 + 1) if d}) for i in ids}


# --- the client ------------------------------------------------------------------------------------
class SecAggClient:
    """One client's side of one round. Stages must come in order; a wrong or tampered message raises
    SecAggError and the client then answers nothing more in this round."""

    def __init__(self):
        self.stage = "new"

    def _expect(self, stage, msg):
        if not isinstance(msg, dict) or msg.get("stage") != stage:
            raise SecAggError("bad_stage", f"expected {stage}, got {msg.get('stage') if isinstance(msg, dict) else msg!r}")

    def setup(self, msg: dict) -> dict:
        """-> keys message {pk1, pk2, commit}."""
        self._expect("setup", msg)
        try:
            self.round, self.idx, self.n, self.t = str(msg["round"]), int(msg["idx"]), int(msg["n"]), int(msg["t"])
            self.dim, self.clip, self.range = int(msg["dim"]), float(msg["clip"]), int(msg["range"])
            self.nbrs = sorted(int(j) for j in msg["neighbours"])
        except (KeyError, TypeError, ValueError) as e:
            raise SecAggError("malformed", f"setup: {e}") from None
        if not (MIN_CLIENTS <= self.n and 1 <= self.idx <= self.n and 1 < self.t <= len(self.nbrs) + 1
                and self.dim > 0 and self.clip > 0 and 0 < self.range <= quant_range(self.n)
                and self.idx not in self.nbrs and all(1 <= j <= self.n for j in self.nbrs)):
            raise SecAggError("malformed", "setup: parameters out of range")
        self.sk1, self.sk2 = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        self.b = os.urandom(32)
        self.stage = "keys"
        return {"stage": "keys", "idx": self.idx, "pk1": b64(raw_pub(self.sk1)), "pk2": b64(raw_pub(self.sk2)),
                "commit": b64(hashlib.sha256(self.b).digest())}

    def share_keys(self, msg: dict) -> dict:
        """The neighbours' keys -> {ct: {j: AES-GCM(idx, j, share of b, share of sk1)}} for each of them."""
        self._expect("keys_out", msg)
        if self.stage != "keys":
            raise SecAggError("bad_stage", f"keys after {self.stage}")
        keys = {}
        for j, v in msg.get("keys", {}).items():
            j = int(j)
            if j not in self.nbrs:
                raise SecAggError("malformed", f"keys of {j}, not a neighbour")
            keys[j] = (unb64(v[0], "pk1"), unb64(v[1], "pk2"))
        mine = (raw_pub(self.sk1), raw_pub(self.sk2))
        flat = [k for pair in list(keys.values()) + [mine] for k in pair]
        if len(set(flat)) != len(flat) or any(len(k) != 32 for k in flat):
            raise SecAggError("bad_keys", "public keys repeat or have the wrong length")
        if len(keys) + 1 < self.t:
            raise SecAggError("too_many_dropouts", f"{len(keys) + 1} holders < t = {self.t}")
        self.keys = keys
        holders = sorted(keys) + [self.idx]
        b_sh = dict(shamir_split(_b2i(self.b), holders, self.t))
        sk_sh = dict(shamir_split(_b2i(raw_priv(self.sk1)), holders, self.t))
        self.own = (b_sh[self.idx], sk_sh[self.idx])
        ct = {}
        for j in sorted(keys):
            key = self._share_key(j)
            nonce = os.urandom(12)
            plain = struct.pack(">II", self.idx, j) + _i2b(b_sh[j], SHARE_BYTES) + _i2b(sk_sh[j], SHARE_BYTES)
            ct[str(j)] = b64(nonce + AESGCM(key).encrypt(nonce, plain, self._ad(self.idx, j)))
        self.stage = "shares"
        return {"stage": "shares", "idx": self.idx, "ct": ct}

    def _share_key(self, j: int) -> bytes:
        """The AES-GCM key of the shares between this client and neighbour j: X25519 of our second key
        pairs, through the KDF, bound to the round."""
        return kdf(self.sk2.exchange(X25519PublicKey.from_public_bytes(self.keys[j][1])), b"share", self.round)

    def _ad(self, src, dst):
        return f"{self.round}/{src}->{dst}".encode()

    def masked_input(self, msg: dict, x: np.ndarray) -> np.ndarray:
        """The ciphertexts addressed to it, and its input (floats, dim, clipped to [-clip, clip]) -> y_i."""
        self._expect("shares_out", msg)
        if self.stage != "shares":
            raise SecAggError("bad_stage", f"masked input after {self.stage}")
        x = np.asarray(x).reshape(-1)
        if x.size != self.dim or not np.all(np.isfinite(x)):
            raise SecAggError("bad_input", f"input of {x.size} entries (want {self.dim}) or not finite")
        got = {}
        for j, c in msg.get("ct", {}).items():
            j = int(j)
            if j not in self.keys:
                raise SecAggError("malformed", f"ciphertext from {j}, not a neighbour that sent keys")
            raw = unb64(c, "ciphertext")
            key = self._share_key(j)
            try:
                plain = AESGCM(key).decrypt(raw[:12], raw[12:], self._ad(j, self.idx))
            except (InvalidTag, ValueError):
                raise SecAggError("bad_ciphertext", f"shares from {j} fail authentication") from None
            src, dst = struct.unpack(">II", plain[:8])
            if (src, dst) != (j, self.idx) or len(plain) != 8 + 2 * SHARE_BYTES:
                raise SecAggError("bad_ciphertext", f"shares from {j} name {src}->{dst}")
            got[j] = (_b2i(plain[8:8 + SHARE_BYTES]), _b2i(plain[8 + SHARE_BYTES:]))
        if len(got) + 1 < self.t:
            raise SecAggError("too_many_dropouts", f"{len(got) + 1} holders < t = {self.t}")
        self.shares = got
        y = quantize(x, self.clip, self.range)
        y += prg(self.b, self.dim)                       # uint32: wraps mod 2^32
        sk1 = raw_priv(self.sk1)
        for j in sorted(got):
            m = prg(pair_seed(sk1, self.keys[j][0], self.round), self.dim)
            if j > self.idx:
                y += m
            else:
                y -= m
        self.stage = "masked"
        return y

    def unmask(self, msg: dict) -> dict:
        """{survivors, dropped} -> its shares of b_j for survivors, of sk1_j for the dropped."""
        self._expect("unmask_out", msg)
        if self.stage != "masked":
            raise SecAggError("bad_stage", f"unmask after {self.stage}")
        surv, drop = {int(j) for j in msg.get("survivors", [])}, {int(j) for j in msg.get("dropped", [])}
        known = set(self.shares) | {self.idx}
        # an honest client reveals at most one of b_j and sk1_j, and only for its own neighbours
        if surv & drop or not (surv | drop) <= known or self.idx not in surv:
            raise SecAggError("bad_unmask", "survivors and dropped overlap or name clients it did not share with")
        if len(surv) < self.t:
            raise SecAggError("too_many_dropouts", f"{len(surv)} survivors < t = {self.t}")
        share = dict(self.shares)
        share[self.idx] = self.own
        self.stage = "done"
        return {"stage": "unmask", "idx": self.idx,
                "b": {str(j): b64(_i2b(share[j][0], SHARE_BYTES)) for j in sorted(surv)},
                "sk": {str(j): b64(_i2b(share[j][1], SHARE_BYTES)) for j in sorted(drop)}}


# --- the server ------------------------------------------------------------------------------------
class SecAggServer:
    """The host's side of one round over clients 1..n. It holds public keys, routed ciphertexts, masked
    vectors and, at the end, the sum: never a client's input."""

    def __init__(self, n: int, dim: int, clip: float, k: int | None = None, seed: int = 0, round_id: str = "0"):
        if n < MIN_CLIENTS:
            raise SecAggError("too_few_clients", f"{n} clients; SecAgg needs at least {MIN_CLIENTS}")
        self.n, self.dim, self.clip, self.round = n, dim, float(clip), str(round_id)
        self.k = min(choose_k(n) if k is None else k, n - 1)
        self.t = threshold(self.k)
        self.range = quant_range(n)
        self.graph = neighbours(n, self.k, seed)
        self.keys: dict[int, tuple[bytes, bytes, bytes]] = {}   # U1: pk1, pk2, commitment
        self.ct: dict[int, dict[int, str]] = {}                  # U2: sender -> recipient -> ciphertext
        self.masked: dict[int, np.ndarray] = {}                  # U3
        self.unmasked: dict[int, dict] = {}                       # U4
        self.sum: np.ndarray | None = None

    def setup(self) -> dict[int, dict]:
        return {i: {"stage": "setup", "round": self.round, "idx": i, "n": self.n, "t": self.t,
                    "neighbours": self.graph[i], "dim": self.dim, "clip": self.clip, "range": self.range}
                for i in self.graph}

    def _client(self, msg, stage):
        if not isinstance(msg, dict) or msg.get("stage") != stage:
            raise SecAggError("bad_stage", f"expected {stage}")
        i = msg.get("idx")
        if not isinstance(i, int) or i not in self.graph:
            raise SecAggError("malformed", f"unknown client {i!r}")
        return i

    def receive_keys(self, msg: dict) -> None:
        i = self._client(msg, "keys")
        if self.ct:
            raise SecAggError("bad_stage", f"keys from {i} after the keys stage")
        pk1, pk2, c = unb64(msg.get("pk1", ""), "pk1"), unb64(msg.get("pk2", ""), "pk2"), unb64(msg.get("commit", ""), "commit")
        if len(pk1) != 32 or len(pk2) != 32 or len(c) != 32:
            raise SecAggError("malformed", f"keys of {i}: wrong lengths")
        self.keys[i] = (pk1, pk2, c)

    def keys_out(self) -> dict[int, dict]:
        if len(self.keys) < self.t:
            raise SecAggError("too_many_dropouts", f"{len(self.keys)} clients sent keys < t = {self.t}")
        return {i: {"stage": "keys_out", "keys": {str(j): [b64(self.keys[j][0]), b64(self.keys[j][1])]
                                                   for j in self.graph[i] if j in self.keys}}
                for i in sorted(self.keys)}

    def receive_shares(self, msg: dict) -> None:
        i = self._client(msg, "shares")
        if i not in self.keys or self.masked:
            raise SecAggError("bad_stage", f"shares from {i} out of stage")
        ct = msg.get("ct")
        want = {j for j in self.graph[i] if j in self.keys}
        if not isinstance(ct, dict) or _ints(ct) != want or not all(isinstance(v, str) for v in ct.values()):
            raise SecAggError("malformed", f"shares of {i} are not one ciphertext per neighbour with keys")
        self.ct[i] = {int(j): v for j, v in ct.items()}

    def shares_out(self) -> dict[int, dict]:
        if len(self.ct) < self.t:
            raise SecAggError("too_many_dropouts", f"{len(self.ct)} clients sent shares < t = {self.t}")
        return {i: {"stage": "shares_out", "ct": {str(j): self.ct[j][i] for j in self.graph[i] if j in self.ct}}
                for i in sorted(self.ct)}

    def receive_masked(self, i: int, y: np.ndarray) -> None:
        if i not in self.ct or self.unmasked:
            raise SecAggError("bad_stage", f"masked vector from {i} out of stage")
        y = np.asarray(y)
        if y.dtype != np.uint32 or y.shape != (self.dim,):
            raise SecAggError("malformed", f"masked vector of {i}: {y.dtype} {y.shape}, want uint32 ({self.dim},)")
        self.masked[i] = y

    def unmask_out(self) -> dict[int, dict]:
        if len(self.masked) < self.t:
            raise SecAggError("too_many_dropouts", f"{len(self.masked)} masked inputs < t = {self.t}")
        u3, dropped = set(self.masked), set(self.ct) - set(self.masked)
        return {i: {"stage": "unmask_out",
                    "survivors": sorted((set(self.graph[i]) | {i}) & u3 & self._shared_with(i)),
                    "dropped": sorted(set(self.graph[i]) & dropped & self._shared_with(i))}
                for i in sorted(u3)}

    def _shared_with(self, i):
        """Clients whose shares i received: the neighbours in U2 (and itself)."""
        return {j for j in self.graph[i] if j in self.ct} | {i}

    def receive_unmask(self, msg: dict) -> None:
        i = self._client(msg, "unmask")
        if i not in self.masked:
            raise SecAggError("bad_stage", f"unmask from {i}, which sent no masked input")
        b, sk = msg.get("b"), msg.get("sk")
        if not isinstance(b, dict) or not isinstance(sk, dict):
            raise SecAggError("malformed", f"unmask of {i}")
        if not _ints(b) <= self._shared_with(i) or not _ints(sk) <= self._shared_with(i):
            raise SecAggError("malformed", f"unmask of {i}: shares of clients it holds none of")
        self.unmasked[i] = {"b": {int(j): _b2i(unb64(v, "share")) for j, v in b.items()},
                            "sk": {int(j): _b2i(unb64(v, "share")) for j, v in sk.items()}}

    def _rebuild(self, j: int, kind: str, check) -> bytes:
        shares = [(i, got[kind][j]) for i, got in sorted(self.unmasked.items()) if j in got[kind]]
        if len(shares) < self.t:
            raise SecAggError("too_many_dropouts", f"{len(shares)} shares of client {j}'s {kind} < t = {self.t}")
        # the first t shares almost always; when they fail the check (a tampered share), leave out the
        # fewest shares that makes it pass: one, then two, ... (at most 256 tries)
        tries = 0
        for e in range(len(shares) - self.t + 1):
            for out in itertools.combinations(range(len(shares)), e):
                rest = [sh for m, sh in enumerate(shares) if m not in out][:self.t]
                s = shamir_combine(rest)
                if s < 2 ** 256 and check(_i2b(s, 32)):
                    return _i2b(s, 32)
                tries += 1
                if tries >= 256:
                    raise SecAggError("bad_share", f"the shares of client {j}'s {kind} do not rebuild its "
                                      f"commitment ({tries} subsets tried)")
        raise SecAggError("bad_share", f"the shares of client {j}'s {kind} do not rebuild its commitment")

    def aggregate(self) -> tuple[np.ndarray, list[int]]:
        """-> (the float sum of the survivors' clipped inputs, the survivors 1..n)."""
        if len(self.unmasked) < self.t:
            raise SecAggError("too_many_dropouts", f"{len(self.unmasked)} clients answered unmask < t = {self.t}")
        u3 = sorted(self.masked)
        dropped = sorted(set(self.ct) - set(self.masked))
        s = np.zeros(self.dim, np.uint32)
        for i in u3:
            s += self.masked[i]
        for i in u3:
            b = self._rebuild(i, "b", lambda v, i=i: hashlib.sha256(v).digest() == self.keys[i][2])
            s -= prg(b, self.dim)
        for j in dropped:
            sk = self._rebuild(j, "sk", lambda v, j=j: raw_pub(X25519PrivateKey.from_private_bytes(v)) == self.keys[j][0])
            for i in self.graph[j]:
                if i in self.masked and j in self._shared_with(i):
                    m = prg(pair_seed(sk, self.keys[i][0], self.round), self.dim)
                    # i added +PRG(s_ij) if j > i, else -PRG(s_ij): take that back
                    if j > i:
                        s -= m
                    else:
                        s += m
        self.sum = s
        self.masked.clear()          # the masked inputs are no longer needed
        return dequantize_sum(s, self.clip, self.range, len(u3)), u3


def secure_sum(inputs: list[np.ndarray], clip: float, k: int | None = None, drop_before: set[int] = frozenset(),
               drop_after: set[int] = frozenset(), seed: int = 0, round_id: str = "0", tamper=None) -> dict:
    """One round in process over clients 1..len(inputs): `drop_before` go silent after sharing (no masked
    input), `drop_after` after their masked input (no unmask). -> {"sum", "survivors", "server", "bytes_up",
    "bytes_down"} (bytes per client, JSON text and 4 bytes per vector entry). `tamper(stage, msgs)` may
    change the messages in flight (tests)."""
    n, dim = len(inputs), int(np.asarray(inputs[0]).size)
    server = SecAggServer(n, dim, clip, k=k, seed=seed, round_id=round_id)
    clients = {i: SecAggClient() for i in server.graph}
    up = dict.fromkeys(clients, 0)
    down = dict.fromkeys(clients, 0)

    def size(m):
        return len(_json(m))

    def send(stage, msgs):
        if tamper:
            tamper(stage, msgs)
        for i, m in msgs.items():
            down[i] += size(m)
        return msgs

    for i, m in send("setup", server.setup()).items():
        r = clients[i].setup(m)
        up[i] += size(r)
        server.receive_keys(r)
    for i, m in send("keys_out", server.keys_out()).items():
        r = clients[i].share_keys(m)
        up[i] += size(r)
        server.receive_shares(r)
    for i, m in send("shares_out", server.shares_out()).items():
        y = clients[i].masked_input(m, inputs[i - 1])
        if i in drop_before:
            continue
        up[i] += 4 * dim
        server.receive_masked(i, y)
    for i, m in send("unmask_out", server.unmask_out()).items():
        if i in drop_after:
            continue
        r = clients[i].unmask(m)
        up[i] += size(r)
        server.receive_unmask(r)
    total, survivors = server.aggregate()
    return {"sum": total, "survivors": survivors, "server": server, "clients": clients,
            "bytes_up": up, "bytes_down": down}


def _ints(keys) -> set[int]:
    try:
        return {int(j) for j in keys}
    except (TypeError, ValueError):
        raise SecAggError("malformed", "client ids must be integers") from None


def _json(m) -> bytes:
    import json
    return json.dumps(m, sort_keys=True, separators=(",", ":")).encode()
