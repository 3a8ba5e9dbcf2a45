"""The SecAgg+ client role (docs/protocol.md §5d): an FL client whose update reaches the host only
inside a secure sum (learn/secagg.py).

It trains as `FLClient` does (the same `local_update` on the same task fields and the model blob the
device's FL role received), clips the update to the task's L2 bound C (with SecAgg the host cannot
look at one update, so the bound is the device's to keep), packs it as w * delta plus its weight
(`secagg.pack`) and then answers the stages the host drives:

  host -> device                                         device -> host
  task  {role: secagg, stage: train, ...}                status {kind: secagg, stage: trained, n}
  task  {role: secagg, stage: setup, setup: {...}}       status {kind: secagg, stage: keys, msg: {pk1, pk2, commit}}
  blob  (down) {kind: secagg, stage: keys, msg}          blob (up) {kind: shares, msg: {ct}}
  blob  (down) {kind: secagg, stage: shares, msg}        blob (up) {kind: masked} + y_i (uint32 bits as int32)
  task  {role: secagg, stage: unmask, unmask: {...}}     blob (up) {kind: unmask, msg: {b, sk}}

Everything the host sends is checked (round, nonce, types, the stage order, the crypto checks of
`SecAggClient`); what fails is refused with a `DeviceError` (the device reports an error status and
the host counts it as a dropout) and the round's secrets are forgotten, so nothing more is answered in
that round. The device never reports its update's norm (it would leak), and it keeps nothing of a
round once it is unmasked.
"""
from __future__ import annotations

import math
import time

import numpy as np

from semifl.learn import dp
from semifl.learn.secagg import SecAggClient, SecAggError, pack
from semifl.protocol import wire
from semifl.protocol.tensors import to_wire

from .device import DeviceError, Role
from .fl import FLClient, local_update, update_masks

STAGES = ("train", "setup", "unmask")      # stages that come as tasks
BLOB_STAGES = ("keys", "shares")            # stages that come as down blobs (their size grows with n)


def _number(task: dict, key: str) -> float:
    x = task.get(key)
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
        raise DeviceError(f"secagg: {key} must be a positive finite number, got {x!r}")
    return float(x)


def _str_map(d, what: str, pair: bool = False) -> dict:
    """A {client id: base64 text} map (pair: {id: [text, text]}) as the host must send it."""
    if not isinstance(d, dict) or len(d) > 100_000:
        raise DeviceError(f"secagg: {what} must be an object")
    for k, v in d.items():
        ok = isinstance(v, str) if not pair else (isinstance(v, list) and len(v) == 2 and all(isinstance(s, str) for s in v))
        if not (isinstance(k, str) and k.isdigit() and ok):
            raise DeviceError(f"secagg: {what} has a malformed entry {k!r}")
    return d


def _int_list(x, what: str) -> list:
    if not isinstance(x, list) or not all(isinstance(j, int) and not isinstance(j, bool) for j in x):
        raise DeviceError(f"secagg: {what} must be a list of client indices")
    return x


class SecAggRole(Role):
    """SecAgg+ client of the device's FL role: needs `FLClient` on the same device (its model blobs)."""
    name = "secagg"
    tasks = ("secagg",)
    blobs = ("secagg",)

    def __init__(self, device):
        super().__init__(device)
        self._forget()

    def _forget(self):
        """Drop the round's secrets and input (after unmask, or when the round cannot go on)."""
        self.rnd = self.nonce = None
        self.client: SecAggClient | None = None
        self.x: np.ndarray | None = None
        self.n = 0
        self.clip = 0.0

    def _fl(self) -> FLClient:
        for r in self.dev.roles:
            if isinstance(r, FLClient):
                return r
        raise DeviceError("secagg needs the device's fl role (its model)")

    # --- host -> device ----------------------------------------------------------------------------
    def run(self, task: dict) -> bool:
        stage = task.get("stage")
        if stage not in STAGES:
            raise DeviceError(f"secagg: unknown task stage {stage!r}")
        if stage == "train":
            return self._train(task)
        self._mine(task["round"], task["task"], stage)
        if stage == "setup":
            self._step(self._setup, task.get("setup"))
        else:
            self._step(self._unmask, task.get("unmask"))
        return True

    def on_blob(self, meta: dict, arrays: list) -> None:
        stage = meta.get("stage")
        if stage not in BLOB_STAGES or arrays:
            raise DeviceError(f"secagg: a down blob of stage {stage!r} with {len(arrays)} tensors")
        self._mine(meta["round"], meta.get("task"), stage)
        self._step(self._share_keys if stage == "keys" else self._masked, meta.get("msg"))

    def _mine(self, rnd, nonce, stage):
        if self.client is None or rnd != self.rnd or nonce != self.nonce:
            raise DeviceError(f"secagg: stage {stage} for round {rnd}, which is not the round in progress")

    def _step(self, fn, msg):
        """One stage; whatever it refuses ends this device's part in the round (the host sees a dropout)."""
        if not isinstance(msg, dict):
            self._forget()
            raise DeviceError("secagg: the stage's message must be an object")
        try:
            fn(msg)
        except (SecAggError, DeviceError, KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            self._forget()
            why = e.reason if isinstance(e, SecAggError) else type(e).__name__
            raise DeviceError(f"secagg refused ({why}): {e}"[:200]) from None

    def _train(self, task: dict) -> bool:
        fl, rnd, dev = self._fl(), task["round"], self.dev
        if "seed" not in task:
            raise DeviceError("secagg: a train task needs a seed")
        c = _number(task, "clip")
        cap = task.get("cap", 0)
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0 or not isinstance(task.get("bit", False), bool):
            raise DeviceError("secagg: cap must be a non-negative int and bit a bool")
        if rnd not in fl.models:
            return False   # the model it trains on is still arriving
        self._forget()
        dev.phase("train")
        t0 = time.perf_counter()
        masks = update_masks(fl.models[rnd], task)
        delta, n, _ = local_update(fl.models[rnd], dev.x, dev.y, task, masks)
        delta, norm = dp.clip(delta, c)   # the device keeps the bound: the host never sees this update
        w = min(1.0, n / cap) if cap else 1.0   # cap 0: every client counts once (client-level DP)
        self.x = pack(delta, w, c, (1.0 if norm <= c else 0.0) if task.get("bit") else None)
        t_local = dev.computed(time.perf_counter() - t0)
        self.rnd, self.nonce, self.n, self.clip = rnd, task["task"], n, c
        self.client = SecAggClient()
        dev.phase("idle")
        dev.status("secagg", rnd, stage="trained", task=self.nonce, n=n, t_local_s=round(t_local, 5),
                   t_download_s=round(fl.download_s.pop(rnd, 0.0), 5))
        return True

    def _setup(self, msg):
        if msg.get("clip") != self.clip or msg.get("dim") != self.x.size:
            raise DeviceError(f"secagg: setup for clip {msg.get('clip')!r}, dim {msg.get('dim')!r}; this round's input "
                              f"has clip {self.clip}, dim {self.x.size}")
        if not isinstance(msg.get("round"), str) or msg["round"].rsplit("/", 1)[-1] != str(self.rnd):
            raise DeviceError(f"secagg: setup for round id {msg.get('round')!r} during round {self.rnd}")
        _int_list(msg.get("neighbours"), "neighbours")
        keys = self.client.setup(dict(msg, stage="setup"))
        self.dev.status("secagg", self.rnd, stage="keys", task=self.nonce, msg=keys)

    def _share_keys(self, msg):
        _str_map(msg.get("keys"), "keys", pair=True)
        self._send("shares", self.client.share_keys(dict(msg, stage="keys_out")))

    def _masked(self, msg):
        _str_map(msg.get("ct"), "ciphertexts")
        y = self.client.masked_input(dict(msg, stage="shares_out"), self.x)
        self.x = None   # only the masked vector leaves; the input is no longer needed
        self._send("masked", None, [to_wire(y.view(np.int32))])   # the codec has no uint32: same bits as int32

    def _unmask(self, msg):
        _int_list(msg.get("survivors"), "survivors")
        _int_list(msg.get("dropped"), "dropped")
        out = self.client.unmask(dict(msg, stage="unmask_out"))
        self._send("unmask", out)
        self._forget()

    def _send(self, kind: str, msg: dict | None, tensors=()):
        meta = {"kind": kind, "round": self.rnd, "task": self.nonce, "device": self.dev.id, "n": self.n}
        if msg is not None:
            meta["msg"] = msg
        self.dev.send_blob(wire.KIND_UPDATE, self.rnd, wire.encode_blob(meta, list(tensors)))
