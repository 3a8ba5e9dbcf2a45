"""semifl+: SemiFL (Ni et al.) with host-side ingredients that keep its privacy and traffic split.

Devices do exactly what SemiFL asks of them (FL clients train locally and send a delta, CL uploaders
send raw samples); everything added here runs on the host, each ingredient behind a flag:

* `server_opt` — a server optimizer on the combined pseudo-gradient (FedOpt, Reddi et al. 2021):
  "sgd" (x += eta*g; with server_lr = lr this is SemiFL's single step), "avgm" (heavy-ball momentum,
  FedAvgM, Hsu et al. 2019), "adam" (FedAdam, with Kingma & Ba's bias correction) or "yogi" (FedYogi,
  Zaheer et al. 2018). g = combined delta / lr, i.e. minus the gradient when devices take one step.
* `cl_memory` — host-side sample memory: every distinct CL sample ever received is kept (the host
  stores them anyway) and the CL gradient is taken over all of them (`cl_batch` > 0: a seeded random
  minibatch of that many per device). Pairs with a "fresh samples only" upload rule, under which a CL
  device never re-sends a sample the host holds, so CL uplink stops once a device's data is in.
* `fl_memory` — stale-update memory (SAG, Le Roux et al. 2012; FedVARP, Jhunjhunwala et al. 2022):
  the latest delta of every FL device is kept and all of them enter each round, so every round's
  direction covers all FL devices' data, not only this round's top-K uploaders. `fl_decay` < 1
  weights a delta by f + (1-f)*fl_decay**a, f = `fl_floor`, a = its age in server steps each counted
  as step size / server_lr (staleness-aware weighting: under a decaying schedule the model moves
  less and old deltas stay valid; the floor keeps devices that are never in the top-K represented).
* `balanced` — weight each device by its full dataset size (`dataset_sizes`) instead of by the
  samples it used this round, so the mix estimates the gradient of the whole fleet's data.
* `prune` — prune-consistent host step: the CL gradient is taken on the same magnitude-pruned model
  the FL clients train (rate = the task's prune, mask from `mlp.prune_mask` of the global model) and
  the server step touches only unpruned entries. Without it the host trains the pruned entries on the
  CL classes alone while the clients cannot see them, and the full model drifts from the pruned one.
* `schedule` — the server step size over rounds: "constant" or "cosine" (to `min_lr_ratio`, over `rounds`).

With every flag off (server_opt="sgd", server_lr=None) `aggregate` is SemiFL's. Pure numpy and
deterministic: devices are visited in sorted order and minibatches come from a seeded generator.
"""
from __future__ import annotations

import math

import numpy as np

from . import aggregate, mlp
from .data import to_float
from .strategy import CLBatch, FLUpdate, Strategy

SERVER_OPTS = ("sgd", "avgm", "adam", "yogi")
SCHEDULES = ("constant", "cosine")


class SemiFLPlus(Strategy):
    name = "semifl+"
    uses_cl = True

    def __init__(self, lr: float = 0.01, *, server_opt: str = "sgd", server_lr: float | None = None,
                 beta1: float = 0.9, beta2: float = 0.99, eps: float = 1e-8,
                 cl_memory: bool = False, cl_batch: int = 0, fl_memory: bool = False, fl_decay: float = 1.0,
                 fl_floor: float = 0.0,
                 balanced: bool = False, dataset_sizes: dict[str, int] | None = None, prune: float = 0.0,
                 schedule: str = "constant", rounds: int = 1000, min_lr_ratio: float = 0.0, seed: int = 0):
        if server_opt not in SERVER_OPTS:
            raise ValueError(f"server_opt {server_opt!r}; choose from {SERVER_OPTS}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule {schedule!r}; choose from {SCHEDULES}")
        self.lr = lr                      # the devices' local step (the task's lr) and the host's CL step
        self.server_opt, self.server_lr = server_opt, lr if server_lr is None else server_lr
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.cl_memory, self.cl_batch, self.fl_memory, self.fl_decay = cl_memory, cl_batch, fl_memory, fl_decay
        self.fl_floor = fl_floor
        self.balanced, self.dataset_sizes = balanced, dict(dataset_sizes or {})
        self.prune = prune
        self.schedule, self.rounds, self.min_lr_ratio = schedule, rounds, min_lr_ratio
        self.rng = np.random.default_rng(seed)
        self.t = 0                        # aggregate calls so far (server steps)
        self.clock = 0.0                  # sum of step size / server_lr over those steps
        self.m = self.v = None            # optimizer state
        self.fl_mem: dict[str, tuple[FLUpdate, float]] = {}   # device -> (latest update, clock it came in)
        self.cl_mem: dict[str, tuple[list[np.ndarray], list[np.ndarray], set]] = {}

    # --- restart ---------------------------------------------------------------------------------
    def state(self):
        meta = {"t": self.t, "clock": self.clock, "rng": self.rng.bit_generator.state,
                "fl": {d: {"n": u.n, "clock": c} for d, (u, c) in self.fl_mem.items()}}
        arrays = {f"fl/{d}": u.delta for d, (u, _) in self.fl_mem.items()}
        if self.m is not None:
            arrays["opt/m"] = self.m
        if self.v is not None:
            arrays["opt/v"] = self.v
        for d in self.cl_mem:
            xs, ys, seen = self.cl_mem[d]
            if len(xs) > 1:  # one array per device: it only grows, so an unchanged one is not rewritten
                self.cl_mem[d] = ([np.concatenate(xs)], [np.concatenate(ys)], seen)
            arrays[f"cl/{d}"] = [self.cl_mem[d][0][0], self.cl_mem[d][1][0]]
        return meta, arrays

    def load_state(self, meta, arrays):
        self.t, self.clock = meta["t"], meta["clock"]
        self.rng.bit_generator.state = meta["rng"]
        self.fl_mem = {d: (FLUpdate(d, arrays[f"fl/{d}"], v["n"]), v["clock"]) for d, v in meta["fl"].items()}
        self.m, self.v = arrays.get("opt/m"), arrays.get("opt/v")
        self.cl_mem = {}
        for name, xy in arrays.items():
            if name.startswith("cl/"):
                x, y = xy
                seen = {x[i].tobytes() + int(y[i]).to_bytes(2, "little") for i in range(len(y))}
                self.cl_mem[name[3:]] = ([x], [y], seen)

    def forget(self, device: str) -> None:
        """A quarantined device's remembered delta and samples stop entering the rounds."""
        self.fl_mem.pop(device, None)
        self.cl_mem.pop(device, None)

    # --- memories -------------------------------------------------------------------------------
    def remember(self, cl: list[CLBatch]) -> int:
        """Adds the samples the host does not hold yet (identified by content); returns how many."""
        new = 0
        for b in sorted(cl, key=lambda b: b.device):
            xs, ys, seen = self.cl_mem.setdefault(b.device, ([], [], set()))
            keep = []
            for i in range(len(b.y)):
                key = b.x[i].tobytes() + int(b.y[i]).to_bytes(2, "little")   # as load_state rebuilds it
                if key not in seen:
                    seen.add(key)
                    keep.append(i)
            if keep:
                xs.append(b.x[keep])
                ys.append(np.asarray(b.y)[keep])
                new += len(keep)
        return new

    def cl_sets(self, cl: list[CLBatch]) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(device, x, y) the CL gradient is taken on this round, sorted by device."""
        if not self.cl_memory:
            return [(b.device, b.x, b.y) for b in sorted(cl, key=lambda b: b.device)]
        self.remember(cl)
        out = []
        for d in sorted(self.cl_mem):
            xs, ys, _ = self.cl_mem[d]
            x, y = np.concatenate(xs), np.concatenate(ys)
            if len(xs) > 1:  # keep one array per device
                self.cl_mem[d] = ([x], [y], self.cl_mem[d][2])
            if 0 < self.cl_batch < len(y):
                idx = np.sort(self.rng.choice(len(y), self.cl_batch, replace=False))
                x, y = x[idx], y[idx]
            out.append((d, x, y))
        return out

    # --- one round ------------------------------------------------------------------------------
    def observe_fleet(self, dataset_sizes: dict[str, int]) -> None:
        self.dataset_sizes.update(dataset_sizes)

    def weight(self, device: str, n_used: int) -> float:
        if self.balanced and device not in self.dataset_sizes:
            raise ValueError(f"balanced weighting needs {device}'s dataset size (observe_fleet)")
        return float(self.dataset_sizes[device]) if self.balanced else float(n_used)

    def combined_delta(self, params, fl: list[FLUpdate], cl: list[CLBatch], masks=None):
        """SemiFL's mix: weighted mean of the FL deltas and of the host's CL steps (-lr * gradient),
        the latter on params * masks and masked when `masks` is given."""
        if masks is not None:
            params = [p * m for p, m in zip(params, masks)]
        age = {}
        if self.fl_memory:
            for u in fl:   # a late (carried) update counts as old as it is, and never replaces a newer one
                came = self.clock - u.staleness
                if u.device not in self.fl_mem or came >= self.fl_mem[u.device][1]:
                    self.fl_mem[u.device] = (u, came)
            fl = [u for u, _ in self.fl_mem.values()]
            age = {d: self.clock - c for d, (_, c) in self.fl_mem.items()}
        fl = sorted(fl, key=lambda u: u.device)
        parts, weights = [], []
        if fl:
            f = self.fl_floor
            w = [self.weight(u.device, u.n) * (f + (1 - f) * self.fl_decay ** age.get(u.device, 0)) for u in fl]
            parts.append(self.fl_merge(fl, w))
            weights.append(sum(w))
        sets = [s for s in self.cl_sets(cl) if len(s[2])]
        if sets:
            step = np.float32(-self.lr)
            if self.balanced:  # one gradient per device, each weighted by its dataset size
                deltas, w = [], []
                for d, x, y in sets:
                    _, g = mlp.loss_and_grad(params, to_float(x), np.asarray(y).astype(np.int64))
                    deltas.append([step * gi for gi in self.masked(g, masks)])
                    w.append(self.weight(d, len(y)))
                parts.append(aggregate.weighted_average(deltas, w))
                weights.append(sum(w))
            else:  # one gradient over all samples, as SemiFL
                x = to_float(np.concatenate([s[1] for s in sets]))
                y = np.concatenate([s[2] for s in sets]).astype(np.int64)
                _, g = mlp.loss_and_grad(params, x, y)
                parts.append([step * gi for gi in self.masked(g, masks)])
                weights.append(len(y))
        if not parts:
            return None
        return aggregate.weighted_average(parts, weights)

    @staticmethod
    def masked(arrays, masks):
        return arrays if masks is None else [a * m for a, m in zip(arrays, masks)]

    def step_size(self) -> float:
        """Server step for step t (1-based)."""
        if self.schedule == "cosine":
            frac = min(1.0, (self.t - 1) / max(1, self.rounds))
            r = self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
            return self.server_lr * r
        return self.server_lr

    def aggregate(self, params, fl, cl):
        masks = mlp.prune_mask(params, self.prune) if self.prune > 0 else None
        delta = self.combined_delta(params, fl, cl, masks)
        if delta is None:
            return params
        self.t += 1
        g = [d / np.float32(self.lr) for d in delta]  # descent direction at unit step
        eta = self.step_size()
        self.clock += eta / self.server_lr
        if self.server_opt == "sgd":
            upd = g
        elif self.server_opt == "avgm":
            self.m = g if self.m is None else [np.float32(self.beta1) * m + gi for m, gi in zip(self.m, g)]
            upd = self.m
        else:  # adam / yogi
            b1, b2 = np.float32(self.beta1), np.float32(self.beta2)
            if self.m is None:
                self.m = [np.zeros_like(gi) for gi in g]
                self.v = [np.zeros_like(gi) for gi in g]
            self.m = [b1 * m + (1 - b1) * gi for m, gi in zip(self.m, g)]
            if self.server_opt == "adam":
                self.v = [b2 * v + (1 - b2) * gi * gi for v, gi in zip(self.v, g)]
            else:
                self.v = [v - (1 - b2) * gi * gi * np.sign(v - gi * gi) for v, gi in zip(self.v, g)]
            c1 = 1.0 - self.beta1 ** self.t
            c2 = 1.0 - self.beta2 ** self.t
            upd = [(m / np.float32(c1)) / (np.sqrt(v / np.float32(c2)) + np.float32(self.eps))
                   for m, v in zip(self.m, self.v)]
        upd = self.masked(upd, masks)
        return [(p + np.float32(eta) * u).astype(np.float32) for p, u in zip(params, upd)]
