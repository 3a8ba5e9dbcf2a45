"""Personalized federated learning (PerFit, seed 003) over arrays: FedAvg, FTL, FedPer, FD, Per-FedAvg, Ditto.

Transport-free like `strategy.py`: numpy in, numpy out. Every method is a small class with the steps
of one round, split by who runs them:

  begin_round(r)           host: open round r (FD draws this round's public set version)
  send(device_id)          host: the Message one participant receives (its arrays are what goes down)
  local(dev, msg, seed)    device: train its own state from the message, return the Upload it sends
  aggregate(uploads)       host: check each upload and fold the accepted ones into the host's state
  personalize(dev, seed)   device: the personal model it runs (FTL fine-tunes, Per-FedAvg adapts here)

A device's personal state (`Device.personal`: FedPer's head, Ditto's v, FD's own model, FTL's
fine-tuned copy) lives in its Device and never enters the host's state, so a device that misses
rounds finds it where it left it. `Message.values` / `Upload.values` count the values of the arrays
that travel, the seed's communication measure (Fig. 8). `state()/load_state()` carry the host's side
across a restart.
"""
from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import aggregate, nn


def _count(arrays) -> int:
    return int(sum(int(np.asarray(a).size) for a in arrays))


@dataclass
class Device:
    """One device (one subject): its network, its data in that network's view, its personal state."""
    id: str
    net: nn.Net
    x: np.ndarray                 # training inputs, already in the net's view
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    view: Callable = lambda a: a      # features -> this net's input (FD applies it to the public set)
    personal: list[np.ndarray] | None = None     # stays on the device
    rounds: list[int] = field(default_factory=list)   # rounds it took part in

    def accuracy(self, params) -> float:
        return float((self.net.predict(params, self.x_test) == self.y_test).mean())


@dataclass
class Message:
    """What the host sends one participant in one round."""
    round: int
    arrays: list[np.ndarray]
    version: int | None = None    # FD: the public set version the device must answer

    @property
    def values(self) -> int:
        return _count(self.arrays)


@dataclass
class Upload:
    """What one device sends back: weights, FedPer's shared base, or FD's logits."""
    device: str
    kind: str
    arrays: list[np.ndarray]
    n: int                        # training samples behind it (FedAvg's weight)
    version: int | None = None

    @property
    def values(self) -> int:
        return _count(self.arrays)


@dataclass
class Local:
    """Local training: SGD (the seed: lr 0.01), `epochs` passes over the device's data per round."""
    epochs: int = 1
    batch: int = 32
    lr: float = 0.01
    momentum: float = 0.0


def train(net: nn.Net, params, x, y, cfg: Local, seed: int, epochs: int | None = None, trainable: int = 0,
          step: Callable | None = None, grad: Callable | None = None):
    """`nn.sgd` with the round's local settings and personalization's hooks: `trainable` = k > 0 updates
    only the last k arrays (FTL's head-only fine-tuning), `grad` edits the gradient, `step` post-processes
    each step (Ditto's proximal pull)."""
    return nn.sgd(net, params, x, y, epochs=cfg.epochs if epochs is None else epochs, batch=cfg.batch, lr=cfg.lr,
                  momentum=cfg.momentum, seed=seed, trainable=trainable, grad=grad, step=step)


def _check_arrays(up: Upload, shapes: list[tuple], what: str) -> None:
    got = [tuple(np.shape(a)) for a in up.arrays]
    if got != [tuple(s) for s in shapes]:
        raise ValueError(f"{up.device}: {what} of shapes {got}, expected {[tuple(s) for s in shapes]}")
    if not all(np.isfinite(a).all() for a in up.arrays):
        raise ValueError(f"{up.device}: non-finite values in its {what}")


class Method:
    name = "base"
    kind = "weights"

    def begin_round(self, r: int) -> None:
        self.round = r

    def settings(self) -> dict:
        """The constructor's keyword arguments a device needs to run this method's device steps
        (`make` on the device rebuilds the same method from them; they travel in the task)."""
        return {}

    def check(self, up: Upload) -> None:
        """Raise ValueError if the host cannot take this upload (kind, shapes, values, version)."""
        raise NotImplementedError

    def state(self) -> tuple[dict, dict[str, list[np.ndarray]]]:
        return {"round": self.round}, {}

    def load_state(self, meta: dict, arrays: dict[str, list[np.ndarray]]) -> None:
        self.round = meta["round"]


class FedAvg(Method):
    """FL-3NN / FL-CNN: McMahan's FedAvg; every device runs the global model."""
    name = "fedavg"

    def __init__(self, net: nn.Net, local: Local, seed: int = 0):
        self.net, self.cfg, self.seed = net, local, seed
        self.params = net.init(seed)
        self.round = 0

    def send(self, device_id: str) -> Message:
        return Message(self.round, [p.copy() for p in self.params])

    def local(self, dev: Device, msg: Message, seed: int) -> Upload:
        p = train(dev.net, msg.arrays, dev.x, dev.y, self.cfg, seed)
        return Upload(dev.id, self.kind, p, len(dev.y))

    def settings(self):
        return {"seed": self.seed}

    def check(self, up):
        if up.kind != self.kind:
            raise ValueError(f"{up.device}: a {up.kind!r} upload, {self.name} takes {self.kind!r}")
        _check_arrays(up, self.shared_shapes(), "weights")

    def aggregate(self, uploads: list[Upload]) -> None:
        """Sample-weighted mean of the accepted uploads (sorted by device, so order cannot matter)."""
        ups = sorted(uploads, key=lambda u: u.device)
        for u in ups:
            self.check(u)
        if ups:
            self.params = aggregate.weighted_average([u.arrays for u in ups], [u.n for u in ups])

    def shared_shapes(self) -> list[tuple]:
        return self.net.shapes()

    def personalize(self, dev: Device, seed: int) -> list[np.ndarray]:
        dev.personal = [p.copy() for p in self.params]
        return dev.personal

    def state(self):
        meta, arrays = super().state()
        return meta, {"global": self.params}

    def load_state(self, meta, arrays):
        super().load_state(meta, arrays)
        self.params = [a.copy() for a in arrays["global"]]


class FTL(FedAvg):
    """Federated transfer learning: FedAvg, then each device fine-tunes the global model on its own data
    (`ft_epochs` passes; `ft_arrays` = k > 0 fine-tunes only the last k arrays, 0 all of them)."""
    name = "ftl"

    def __init__(self, net, local, seed=0, ft_epochs: int = 5, ft_arrays: int = 0, ft_lr: float | None = None):
        super().__init__(net, local, seed)
        self.ft_epochs, self.ft_arrays = ft_epochs, ft_arrays
        self.ft_cfg = Local(local.epochs, local.batch, local.lr if ft_lr is None else ft_lr, local.momentum)

    def settings(self):
        return dict(super().settings(), ft_epochs=self.ft_epochs, ft_arrays=self.ft_arrays, ft_lr=self.ft_cfg.lr)

    def personalize(self, dev, seed):
        # starts from the global model the host serves, never from an older personal copy
        dev.personal = train(dev.net, self.params, dev.x, dev.y, self.ft_cfg, seed, epochs=self.ft_epochs,
                             trainable=self.ft_arrays)
        return dev.personal


class FedPer(FedAvg):
    """FedPer (Arivazhagan et al.): the base layers are shared and averaged; the personal head (the last
    `head_arrays` parameter arrays) is trained and kept on the device and never sent. Every device
    starts its head from the same seeded initialisation as the base, drawn on the device."""
    name = "fedper"
    kind = "base"

    def __init__(self, net, local, seed=0, head_arrays: int = 2):
        if not 0 < head_arrays < len(net.shapes()):
            raise ValueError(f"head_arrays {head_arrays}: the net has {len(net.shapes())} arrays")
        super().__init__(net, local, seed)
        self.k = head_arrays
        self.init_seed = seed
        self.params = self.params[:-self.k]      # the host holds the shared base only

    def settings(self):
        return dict(super().settings(), head_arrays=self.k)

    def shared_shapes(self):
        return self.net.shapes()[:-self.k]

    def head(self, dev: Device) -> list[np.ndarray]:
        if dev.personal is None:
            dev.personal = dev.net.init(self.init_seed)[-self.k:]
        return dev.personal

    def local(self, dev, msg, seed):
        p = train(dev.net, list(msg.arrays) + self.head(dev), dev.x, dev.y, self.cfg, seed)
        dev.personal = p[-self.k:]
        return Upload(dev.id, self.kind, p[:-self.k], len(dev.y))

    def personalize(self, dev, seed):
        return [p.copy() for p in self.params] + self.head(dev)


class PerFedAvg(FedAvg):
    """Per-FedAvg (Fallah et al.), first-order MAML: each local step takes a batch D, an inner step
    w' = w - alpha g(w; D), a second batch D' and the outer step w -= beta g(w'; D'). The device
    personalizes by `adapt_steps` inner steps from the global model."""
    name = "perfedavg"

    def __init__(self, net, local, seed=0, alpha: float = 0.01, adapt_steps: int = 1):
        super().__init__(net, local, seed)
        self.alpha, self.adapt_steps = alpha, adapt_steps

    def settings(self):
        return dict(super().settings(), alpha=self.alpha, adapt_steps=self.adapt_steps)

    def local(self, dev, msg, seed):
        w = [p.copy() for p in msg.arrays]
        rng = np.random.default_rng(seed)
        b, a, beta = self.cfg.batch, np.float32(self.alpha), np.float32(self.cfg.lr)
        for _ in range(self.cfg.epochs):
            order = rng.permutation(len(dev.y))
            for i in range(0, len(order) - b, 2 * b):
                d1, d2 = order[i:i + b], order[i + b:i + 2 * b]
                _, g = dev.net.loss_and_grad(w, dev.x[d1], dev.y[d1])
                inner = [p - a * gi for p, gi in zip(w, g)]
                _, g2 = dev.net.loss_and_grad(inner, dev.x[d2], dev.y[d2])
                w = [p - beta * gi for p, gi in zip(w, g2)]
        return Upload(dev.id, self.kind, w, len(dev.y))

    def personalize(self, dev, seed):
        # MAML's adaptation: a few inner steps, each on a fresh batch of the device's own data
        rng = np.random.default_rng(seed)
        p = [q.copy() for q in self.params]
        for _ in range(self.adapt_steps):
            idx = rng.choice(len(dev.y), min(self.cfg.batch, len(dev.y)), replace=False)
            p = train(dev.net, p, dev.x[idx], dev.y[idx], Local(1, 0, self.alpha), seed)
        dev.personal = p
        return p


class Ditto(FedAvg):
    """Ditto (Li et al. 2021), multi-task by regularisation: the device trains the global model as in
    FedAvg and sends it, and trains its personal model v on its loss + lambda/2 ||v - w||^2, w the
    global model it received. The pull is applied as a proximal step, v <- (v' + c w) / (1 + c) with
    c = lr lambda, stable for any lambda: lambda = 0 is local training, lambda -> infinity is w."""
    name = "ditto"

    def __init__(self, net, local, seed=0, lam: float = 0.1, personal_epochs: int | None = None):
        super().__init__(net, local, seed)
        self.lam = lam
        self.personal_epochs = local.epochs if personal_epochs is None else personal_epochs

    def settings(self):
        return dict(super().settings(), lam=self.lam, personal_epochs=self.personal_epochs)

    def local(self, dev, msg, seed):
        up = train(dev.net, msg.arrays, dev.x, dev.y, self.cfg, seed)
        w = msg.arrays
        c = np.float32(self.cfg.lr * self.lam)
        inv = np.float32(1.0) / (np.float32(1.0) + c)

        def prox(v):
            return [(vi + c * wi) * inv for vi, wi in zip(v, w)]

        start = dev.personal if dev.personal is not None else [p.copy() for p in w]
        dev.personal = train(dev.net, start, dev.x, dev.y, self.cfg, seed + 1, epochs=self.personal_epochs,
                             step=prox)
        return Upload(dev.id, self.kind, up, len(dev.y))

    def personalize(self, dev, seed):
        # a device that never took part has only the global model
        return dev.personal if dev.personal is not None else [p.copy() for p in self.params]


def kd_grad(student_logits: np.ndarray, teacher_logits: np.ndarray, T: float) -> tuple[float, np.ndarray]:
    """Hinton's distillation loss T^2 KL(softmax(t/T) || softmax(s/T)), mean over the batch, and its
    gradient with respect to the student's logits: T (softmax(s/T) - softmax(t/T)) / n."""
    def soft(z):
        z = z / np.float32(T)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    ps, pt = soft(student_logits), soft(teacher_logits)
    n = len(ps)
    loss = float(T * T * (pt * (np.log(np.maximum(pt, 1e-12)) - np.log(np.maximum(ps, 1e-12)))).sum(axis=1).mean())
    return loss, (np.float32(T) * (ps - pt) / np.float32(n)).astype(student_logits.dtype)


class FD(Method):
    """Federated distillation (FedMD, Li & Wang): devices share only logits on a public set, so each may
    run its own architecture. Every round the host draws a fresh version of the public set (`public_n`
    samples of the globally shared pool every device holds) and sends its indices together with the
    consensus (mean logits) of the previous round's version. A participant distils its model towards
    that consensus (`distil_epochs`, temperature `T`), trains on its own data, then answers the new
    version with its logits: public_n x classes values (the seed: 500 x 10 = 5,000)."""
    name = "fd"
    kind = "logits"

    def __init__(self, public_x: np.ndarray, classes: int, local: Local, seed: int = 0, public_n: int = 500,
                 distil_epochs: int = 1, T: float = 1.0):
        self.public_x, self.classes, self.cfg = public_x, classes, local
        self.public_n, self.distil_epochs, self.T, self.seed = min(public_n, len(public_x)), distil_epochs, T, seed
        self.round = 0
        self.version = 0
        self.indices: np.ndarray | None = None       # the public set version now open
        self.consensus: np.ndarray | None = None     # mean logits of the last closed version
        self.consensus_indices: np.ndarray | None = None

    def begin_round(self, r):
        self.round = r
        self.version += 1
        rng = np.random.default_rng((self.seed, self.version))
        self.indices = np.sort(rng.choice(len(self.public_x), self.public_n, replace=False)).astype(np.int32)

    def send(self, device_id):
        arrays = [self.indices.copy()]
        if self.consensus is not None:
            arrays += [self.consensus_indices.copy(), self.consensus.copy()]
        return Message(self.round, arrays, version=self.version)

    def model(self, dev: Device) -> list[np.ndarray]:
        """The device's own model (its architecture, its own seeded initialisation; never sent)."""
        if dev.personal is None:
            dev.personal = dev.net.init(hash_id(dev.id) ^ self.seed)
        return dev.personal

    def distil(self, dev: Device, params, x_pub: np.ndarray, teacher: np.ndarray, seed: int):
        params = [p.copy() for p in params]
        rng = np.random.default_rng(seed)
        lr = np.float32(self.cfg.lr)
        for _ in range(self.distil_epochs):
            order = rng.permutation(len(x_pub))
            for i in range(0, len(order), self.cfg.batch):
                idx = order[i:i + self.cfg.batch]
                out, caches = dev.net.forward(params, x_pub[idx], keep=True)
                _, dz = kd_grad(out, teacher[idx], self.T)
                g = dev.net.backward(params, caches, dz)
                params = [p - lr * gi for p, gi in zip(params, g)]
        return params

    def local(self, dev, msg, seed):
        p = self.model(dev)
        if len(msg.arrays) == 3:
            idx, teacher = msg.arrays[1], msg.arrays[2]
            p = self.distil(dev, p, dev.view(self.public_x[idx]), teacher, seed + 1)
        p = train(dev.net, p, dev.x, dev.y, self.cfg, seed)
        dev.personal = p
        logits = dev.net.forward(p, dev.view(self.public_x[msg.arrays[0]])).astype(np.float32)
        return Upload(dev.id, self.kind, [logits], len(dev.y), version=msg.version)

    def settings(self):
        return {"seed": self.seed, "public_n": self.public_n, "distil_epochs": self.distil_epochs, "T": self.T}

    def check(self, up):
        """Logits must answer the version the host sent, in shape (public_n, classes)."""
        if up.kind != "logits":
            raise ValueError(f"{up.device}: a {up.kind!r} upload; federated distillation takes logits only")
        if up.version != self.version:
            raise ValueError(f"{up.device}: logits for public set version {up.version}, the host sent version "
                             f"{self.version}")
        _check_arrays(up, [(self.public_n, self.classes)], "logits")

    def aggregate(self, uploads):
        """The consensus: the plain mean of the accepted logits (every device's voice counts once)."""
        ups = sorted(uploads, key=lambda u: u.device)
        for u in ups:
            self.check(u)
        if ups:
            self.consensus = np.mean(np.stack([u.arrays[0] for u in ups]).astype(np.float64), axis=0).astype(np.float32)
            self.consensus_indices = self.indices.copy()

    def personalize(self, dev, seed):
        return self.model(dev)

    def state(self):
        meta = {"round": self.round, "version": self.version}
        arrays = {"indices": [self.indices]} if self.indices is not None else {}
        if self.consensus is not None:
            arrays["consensus"] = [self.consensus_indices, self.consensus]
        return meta, arrays

    def load_state(self, meta, arrays):
        self.round, self.version = meta["round"], meta["version"]
        self.indices = arrays["indices"][0] if "indices" in arrays else None
        self.consensus_indices, self.consensus = arrays.get("consensus", [None, None])


def participants(rnd: int, ids: list[str], k: int, seed: int) -> list[str]:
    """K of the devices, uniformly at random per round (seeded); k = 0 or >= len(ids): all of them."""
    if not k or k >= len(ids):
        return list(ids)
    rng = np.random.default_rng((seed, rnd))
    return sorted(rng.choice(ids, k, replace=False).tolist())


def p10(accs) -> float:
    """The worst decile: the 10th percentile of per-device accuracy (what an unlucky user sees)."""
    return float(np.percentile(accs, 10))


def hash_id(device_id: str) -> int:
    """A stable per-device seed (Python's hash() is salted per process)."""
    return binascii.crc32(device_id.encode())


METHODS = {"fedavg": FedAvg, "ftl": FTL, "fedper": FedPer, "perfedavg": PerFedAvg, "ditto": Ditto, "fd": FD}


def make(name: str, net: nn.Net | None, local: Local, settings: dict, public_x: np.ndarray | None = None,
         classes: int | None = None) -> Method:
    """A method from its name, local settings and `settings()`: how a device rebuilds the host's
    method from a task (FD: its public pool and class count instead of a net)."""
    if name not in METHODS:
        raise ValueError(f"personalization method {name!r}: one of {sorted(METHODS)}")
    if name == "fd":
        if public_x is None or classes is None:
            raise ValueError("federated distillation needs the public set and the class count")
        return FD(public_x, classes, local, **settings)
    return METHODS[name](net, local, **settings)
