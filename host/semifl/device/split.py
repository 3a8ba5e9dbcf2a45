"""Split learning on the device (IoTSL's client side): the device keeps the first layers f_a, sends the
smashed data of a batch with its labels, and updates f_a with the gradient the host returns for that
batch. One batch is in flight at a time, as in the seed's sequential SL. IoTSL adds the device's DP
generator (Algorithm 1) and the classes its paired generators make for it (Algorithm 2).

`SplitClient` is the transport-free computation; `SplitClientRole` is the role a `Device` plays with
it (docs/protocol.md §5a).
"""
from __future__ import annotations

import logging
import time

import numpy as np

from semifl.learn import compress, nn
from semifl.learn.data import to_float
from semifl.protocol import wire
from semifl.protocol.tensors import to_wire

from .device import DeviceError, Role

log = logging.getLogger("semifl.device")

class SplitError(DeviceError):
    """A message the split client cannot use (wrong batch, wrong shape): refused, nothing changes."""


class SplitClient:
    def __init__(self, f_a: nn.Net, x: np.ndarray, y: np.ndarray):
        """f_a: the device part's layers; x: float inputs shaped as f_a's input; y: int labels."""
        self.net, self.x, self.y = f_a, x, np.asarray(y, np.int64)
        self.params: list[np.ndarray] | None = None
        self.task: dict | None = None
        self.batches: list[np.ndarray] = []
        self.next = 0                 # index of the next batch to send
        self.in_flight = None         # (batch id, caches) of the batch whose gradient is awaited
        self.compute_s = 0.0          # CPU time of this epoch's forward and backward passes (the energy meter's)

    def begin(self, task: dict, params: list[np.ndarray]):
        """Start an epoch of task {"batch", "lr", "seed", "smashed": dtype, "batches"} from the f_a it was
        handed; "batches" (absent or 0: all) bounds how many of the epoch's shuffled batches it sends."""
        if [tuple(p.shape) for p in params] != [tuple(s) for s in self.net.shapes()]:
            raise SplitError(f"f_a shapes {[p.shape for p in params]} are not {self.net.shapes()}")
        self.task, self.params = task, [np.array(p, np.float32) for p in params]
        order = np.random.default_rng(task["seed"]).permutation(len(self.y))
        b = int(task["batch"])
        self.batches = [order[i:i + b] for i in range(0, len(order), b)]
        if int(task.get("batches") or 0) > 0:
            self.batches = self.batches[:int(task["batches"])]
        self.next, self.in_flight, self.compute_s = 0, None, 0.0

    @property
    def done(self) -> bool:
        return self.task is not None and self.next == len(self.batches) and self.in_flight is None

    def smashed(self) -> tuple[int, list[tuple[np.ndarray, float]], np.ndarray]:
        """-> (batch id, the smashed data as (array, scale) in the task's dtype, uint8 labels)."""
        if self.in_flight is not None:
            raise SplitError(f"batch {self.in_flight[0]} still awaits its gradient")
        i = self.next
        idx = self.batches[i]
        t0 = time.process_time()
        out, caches = self.net.forward(self.params, self.x[idx], keep=True)
        self.compute_s += time.process_time() - t0
        self.in_flight = (i, caches, out.shape)
        self.next += 1
        return i, compress.encode_delta([out], self.task.get("smashed", "float32")), self.y[idx].astype(np.uint8)

    def gradient(self, batch: int, grad: np.ndarray):
        """Apply the host's d loss / d smashed for `batch`: backprop through f_a and one SGD step."""
        if self.in_flight is None or batch != self.in_flight[0]:
            raise SplitError(f"a gradient for batch {batch}, which is not the one in flight "
                             f"({None if self.in_flight is None else self.in_flight[0]})")
        _, caches, shape = self.in_flight
        if tuple(grad.shape) != tuple(shape) or not np.isfinite(grad).all():
            raise SplitError(f"gradient of shape {grad.shape} (finite: {bool(np.isfinite(grad).all())}), expected {shape}")
        t0 = time.process_time()
        g = self.net.backward(self.params, caches, grad.astype(np.float32))
        lr = np.float32(self.task["lr"])
        self.params = [p - lr * d for p, d in zip(self.params, g)]
        self.compute_s += time.process_time() - t0
        self.in_flight = None


class SplitClientRole(Role):
    """The device side of split learning and of IoTSL's generator stage."""
    name = "sl"
    tasks = ("sl", "generator")
    blobs = ("fa", "grad", "impute")

    def __init__(self, device):
        super().__init__(device)
        self.client: SplitClient | None = None
        self.fa: dict[int, list[np.ndarray]] = {}   # round -> the f_a the host handed this device
        self.generated = None    # IoTSL: (x float, y) the paired generators made for the classes it lacks
        self.asked = False       # it asked the host for its paired generators again (after a restart)

    def on_blob(self, meta, arrays):
        kind = meta["kind"]
        if kind == "fa":
            self.fa = {meta["round"]: arrays}
        elif kind == "impute":
            self._impute(meta, arrays)
        else:   # grad
            c = self.client
            if c is None or c.task is None or meta.get("task") != c.task["task"]:
                raise SplitError(f"a gradient for task {meta.get('task')}, which this device is not running")
            c.gradient(meta["batch"], arrays[0])
            self._next()

    def run(self, task):
        if task["role"] == "generator":
            self._train_generator(task)
            return True
        rnd, want = task["round"], task.get("imputed", 0)
        if isinstance(self.dev.round, int) and rnd < self.dev.round:
            # its f_a (or paired generators) never came and the host has moved on: nobody waits for it
            log.warning("%s: dropped the split task of round %d (round %d is open)", self.dev.id, rnd, self.dev.round)
            self.fa.pop(rnd, None)
            return True
        have = 0 if self.generated is None else len(self.generated[1])
        if have < want and not self.dev.arriving(wire.KIND_GENERATOR) and not self.asked:
            # IoTSL after a restart: the paired generators are gone and none are on the way: ask
            self.asked = True
            self.dev.status("request", rnd, what="generators")
        if rnd not in self.fa or have < want:
            return False   # its f_a (or, IoTSL, its paired generators) is still arriving
        self._begin(task)
        return True

    def _begin(self, task):
        from semifl.models import get   # the model definitions: layers only, numpy

        f_a = get(task["model"]).network().split(task["cut"])[0]
        dev = self.dev
        x, y = to_float(dev.x).reshape((-1,) + f_a.input_shape), dev.y   # the one input scaling every side uses
        if self.generated is not None:   # IoTSL: local data plus the classes the paired generators made
            x, y = np.concatenate([x, self.generated[0]]), np.concatenate([y, self.generated[1]])
        if self.client is None or self.client.net != f_a or len(self.client.y) != len(y):
            self.client = SplitClient(f_a, x, y)
        self.client.begin(task, self.fa.pop(task["round"]))
        dev.phase("train")
        self._next()

    def _next(self):
        """Send the next batch's smashed data or, the epoch over, f_a back to the host."""
        c, dev = self.client, self.dev
        t = c.task
        if c.done:
            # t_local_s: the epoch's forward and backward CPU time (waiting for gradients is not computing)
            took = dev.computed(c.compute_s)
            blob = wire.encode_blob({"kind": "fa", "round": t["round"], "task": t["task"], "device": dev.id,
                                     "n": len(c.y), "t_local_s": round(took, 4)}, [to_wire(p) for p in c.params])
            dev.phase("idle")
            dev.send_chunks(wire.KIND_UPDATE, t["round"], blob)
            return
        batch, ((a, scale),), labels = c.smashed()
        blob = wire.encode_blob({"kind": "smashed", "round": t["round"], "task": t["task"], "device": dev.id,
                                 "n": len(labels), "batch": batch}, [to_wire(a, scale), to_wire(labels)])
        dev.send_chunks(wire.KIND_SMASHED, t["round"], blob)

    def _train_generator(self, task):
        """IoTSL's Algorithm 1 on this device: a DP conditional generator of its data, sent as an artifact."""
        from semifl.learn.iotsl import artifact
        from semifl.learn.iotsl.train import train_generator

        dev = self.dev
        dev.phase("train")
        tg = train_generator(dev.x.reshape(-1, 28, 28), dev.y, steps=task["steps"], batch=task["batch"],
                             sigma=task["sigma"], dim=task["dim"], n_critic=2, lr=2e-4, seed=task["seed"],
                             n_classes=dev.n_classes, deadline_s=task.get("deadline_s"))
        took = dev.computed(tg.seconds)
        art = artifact.to_bytes(tg, dev.id)
        blob = wire.encode_blob({"kind": "generator", "round": task["round"], "task": task["task"], "device": dev.id,
                                 "n": len(dev.y), "t_local_s": round(took, 4)}, [("uint8", (len(art),), 1.0, 0, art)])
        dev.send_blob(wire.KIND_GENERATOR, task["round"], blob)

    def _impute(self, meta, arrays):
        """Algorithm 2 on this device: the paired generators (hash-checked) make the missing classes."""
        from semifl.learn.iotsl import artifact
        from semifl.learn.iotsl.impute import Fill, imputed_set

        open_policy = artifact.PrivacyPolicy(float("inf"), 1.0)   # the host held them to their owners' policies
        gens = {j: artifact.load(bytes(a), open_policy, device=j)[0] for j, a in zip(meta["generators"], arrays)}
        fills = [Fill(int(c), j, int(q)) for c, j, q in meta["fills"]]
        self.generated = imputed_set(np.zeros((0, 28, 28, 1), np.float32), np.zeros(0, np.int64), fills, gens,
                                     seed=meta["task"])



