"""Personalization on the device (PerFit, seed 003): the host's method, rebuilt from the task, runs its
device steps here, and the device's personal state (FedPer's head, Ditto's v, FD's own model, FTL's
fine-tuned copy) is kept in flash, never sent.

`PersonalClient` is transport-free (a task and the message's arrays in, an upload out);
`PersonalRole` is the role a `Device` plays with it (docs/protocol.md §5b).
"""
from __future__ import annotations

import os
import time

import numpy as np

from semifl.learn import perfit
from semifl.learn.har import feature_view
from semifl.protocol import wire
from semifl.protocol.tensors import arrays_crc, to_wire

from .device import Role


class PersonalClient:
    def __init__(self, dev_id: str, x, y, x_test, y_test, path: str, public_x=None, classes: int = 0):
        """x, y: training windows (features, float32); x_test, y_test: the device's own test windows;
        path: the flash file its personal state lives in (None: memory only); public_x: FD's shared pool (unlabelled)."""
        self.id, self.path = dev_id, path
        self.data = (np.asarray(x, np.float32), np.asarray(y, np.int64), np.asarray(x_test, np.float32),
                     np.asarray(y_test, np.int64))
        self.public_x, self.classes = public_x, classes
        self.dev: perfit.Device | None = None
        self.key: tuple | None = None   # (run, method, model) the personal state belongs to

    def device(self, task: dict) -> perfit.Device:
        """This device as the method sees it, with the personal state it kept for this run and method."""
        from semifl.models import get

        key = (task["run"], task["method"], task["model"])
        if self.key != key:
            x, y, xt, yt = self.data
            spec = get(task["model"])
            v = feature_view(spec.input_shape, x.shape[1])
            self.dev = perfit.Device(self.id, spec.network(), v(x), y, v(xt), yt, view=v)
            self.dev.personal = self._load(key)
            self.key = key
        return self.dev

    def method(self, task: dict) -> perfit.Method:
        return perfit.make(task["method"], self.device(task).net, perfit.Local(**task["local"]), task["settings"],
                           self.public_x, self.classes)

    def local(self, task: dict, arrays: list[np.ndarray], version=None) -> tuple[perfit.Upload, int, int]:
        """The method's device step on the host's message. -> (upload, CRC of the personal state it
        started from, CRC of the one it kept)."""
        dev = self.device(task)
        before = arrays_crc(dev.personal)
        up = self.method(task).local(dev, perfit.Message(task["round"], arrays, version), task["seed"])
        self._save()
        return up, before, arrays_crc(dev.personal)

    def personalize(self, task: dict, arrays: list[np.ndarray]) -> tuple[float, int, int]:
        """The personal model this device runs (FTL fine-tunes, Per-FedAvg adapts, from the global model
        in `arrays`), scored on its own test windows. -> (accuracy, test windows, CRC of the model)."""
        dev = self.device(task)
        m = self.method(task)
        if task["method"] != "fd":
            m.params = [np.array(a, np.float32) for a in arrays]
        p = m.personalize(dev, task["seed"])
        self._save()
        return dev.accuracy(p), len(dev.y_test), arrays_crc(p)

    def adopt(self, task: dict, arrays: list[np.ndarray]) -> tuple[float, int, int]:
        """A personal model the host trained for this device (edge offloading): kept and scored here."""
        dev = self.device(task)
        dev.personal = [np.array(a, np.float32) for a in arrays]
        self._save()
        return dev.accuracy(dev.personal), len(dev.y_test), arrays_crc(dev.personal)

    # --- flash -------------------------------------------------------------------------------------------
    def _load(self, key):
        if self.path is None or not os.path.exists(self.path):
            return None
        with np.load(self.path) as f:
            if tuple(str(v) for v in f["key"]) != tuple(str(k) for k in key):
                return None   # another run's or another method's state: start fresh
            n = int(f["n"])
            return [f[f"a{i}"].copy() for i in range(n)]

    def _save(self):
        """Written to a temporary file and renamed, so a power cut never leaves half a personal model."""
        if self.path is None or self.dev is None or self.dev.personal is None:
            return   # path None: an in-process device, whose personal state lives in its memory
        tmp = self.path + ".tmp.npz"
        arrays = {f"a{i}": a for i, a in enumerate(self.dev.personal)}
        np.savez(tmp, key=np.array([str(k) for k in self.key]), n=len(self.dev.personal), **arrays)
        os.replace(tmp, self.path)


class PersonalRole(Role):
    """PerFit on the device: the method's device step on the host's message, personal state in flash;
    edge offloading of its windows when it cannot train itself."""
    name = "perfit"
    tasks = ("perfit", "personalize", "offload")
    blobs = ("message", "personal")

    def __init__(self, device, client: PersonalClient):
        super().__init__(device)
        self.client = client
        self.messages: dict[int, tuple] = {}   # task -> (arrays, public set version) from the host
        self.answered: dict[int, bytes] = {}   # task -> the upload blob sent for it (the last one)

    def on_blob(self, meta, arrays):
        if meta["kind"] == "message":   # what the method sends this device for one task
            self.messages = {meta["task"]: (arrays, meta.get("version"))}
            return
        acc, n, crc = self.client.adopt(meta, arrays)   # edge offloading: the host trained our personal model
        self.dev.status("personal", meta["round"], task=meta["task"], accuracy=acc, n=n, crc=crc)

    def run(self, task):
        dev, rnd = self.dev, task["round"]
        if task["role"] == "offload":
            x, y = self.client.data[0], self.client.data[1]
            blob = wire.encode_blob({"kind": "samples", "round": rnd, "task": task["task"], "device": dev.id,
                                     "n": len(y)}, [to_wire(x), to_wire(y.astype(np.uint8))])
            dev.send_blob(wire.KIND_SAMPLES, rnd, blob)
            return True
        if task["role"] == "perfit" and task["task"] in self.answered:
            # the same task again (a restarted host asks anew): the same answer, not a second training
            dev.send_blob(wire.KIND_UPDATE, rnd, self.answered[task["task"]])
            self.messages.pop(task["task"], None)
            return True
        if task["task"] not in self.messages:
            return False   # its message is still arriving
        arrays, version = self.messages.pop(task["task"])
        dev.phase("train")
        t0 = time.perf_counter()
        if task["role"] == "personalize":
            acc, n, crc = self.client.personalize(task, arrays)
            dev.computed(time.perf_counter() - t0)
            dev.status("personal", rnd, task=task["task"], accuracy=acc, n=n, crc=crc)
            dev.phase("idle")
            return True
        up, before, after = self.client.local(task, arrays, version)
        t_local = dev.computed(time.perf_counter() - t0)
        meta = {"kind": up.kind, "round": rnd, "task": task["task"], "device": dev.id, "n": up.n,
                "personal_from": before, "personal_to": after, "t_local_s": round(t_local, 4)}
        if up.version is not None:
            meta["version"] = int(up.version)
        blob = wire.encode_blob(meta, [to_wire(a) for a in up.arrays])
        self.answered = {task["task"]: blob}
        dev.send_blob(wire.KIND_UPDATE, rnd, blob)
        return True
