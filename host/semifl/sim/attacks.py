"""Byzantine FL clients for in-process runs: the real device role (`semifl.device.FLClient`) with one
step changed, so everything else (model download, task checks, encoding, chunking, upload on request)
is the code a Pi runs.

* `sign_flip` — sends -delta (and reports its norm, which is the honest one).
* `scale100` — sends 100 x delta and reports that norm truthfully; `scale100_lie` reports 10 x its
  honest norm (enough to win an upload slot) and sends 100 x delta (the host's claim check refuses it).
* `label_flip` — trains on labels c -> n_classes - 1 - c.
* `free_rider` — trains once (its first task) and from then on sends that stale delta again without
  training, claiming the samples a task asks for; `free_rider_zero` sends zeros claiming the norm of
  its one real update.
"""
from __future__ import annotations

import time

import numpy as np

from semifl.device import FLClient
from semifl.device.fl import encode_update, local_update, update_masks
from semifl.learn.aggregate import global_norm

ATTACKS = ("sign_flip", "scale100", "scale100_lie", "label_flip", "free_rider", "free_rider_zero")


class ByzantineClient(FLClient):
    """FLClient whose training step is replaced by `attack`; `run` mirrors FLClient.run."""
    attack = "none"

    def __init__(self, device):
        super().__init__(device)
        self.kept: list[np.ndarray] | None = None   # free riders: the one delta they trained

    def train(self, params, task, masks):
        """-> (delta to send, n to claim, norm to report)."""
        dev = self.dev
        if self.attack == "label_flip":
            y = (self.n_classes - 1 - np.asarray(dev.y, np.int64)).astype(np.asarray(dev.y).dtype)
            delta, n, norm = local_update(params, dev.x, y, task, masks)
            return delta, n, norm
        if self.attack.startswith("free_rider") and self.kept is not None:
            n = local_update_n(len(dev.y), task)
            if self.attack == "free_rider_zero":
                return [np.zeros_like(a) for a in self.kept], n, global_norm(self.kept)
            return self.kept, n, global_norm(self.kept)
        delta, n, norm = local_update(params, dev.x, dev.y, task, masks)
        if self.attack.startswith("free_rider"):
            self.kept = delta
        elif self.attack == "sign_flip":
            delta = [-d for d in delta]
        elif self.attack.startswith("scale100"):
            delta = [np.float32(100) * d for d in delta]
            norm = 10 * norm if self.attack == "scale100_lie" else global_norm(delta)
        return delta, n, norm

    @property
    def n_classes(self) -> int:
        return int(getattr(self.dev, "n_classes", 10))

    def run(self, task):
        if task["role"] == "upload":
            return self._upload(task)
        rnd = task["round"]
        if rnd not in self.models:
            return False
        dev = self.dev
        dev.phase("train")
        t0 = time.perf_counter()
        masks = update_masks(self.models[rnd], task)
        delta, n, norm = self.train(self.models[rnd], task, masks)
        t_local = dev.computed(time.perf_counter() - t0)
        tensors = encode_update(delta, task, masks)
        times = {"t_local_s": round(t_local, 5), "t_download_s": round(self.download_s.pop(rnd, 0.0), 5)}
        dev.phase("idle")
        if task.get("upload"):
            self._send_update(rnd, task["task"], tensors, n, **times)
            return True
        self.results = {rnd: (tensors, n, norm)}
        dev.status("trained", rnd, task=task["task"], n=n, norm=norm, **times)
        return True


def local_update_n(n: int, task: dict) -> int:
    """The batch size an honest client would report for this task."""
    from semifl.protocol.sampling import ceil_fraction
    return ceil_fraction(n, task.get("fraction", 1.0))


def role(attack: str) -> type:
    """The FLClient subclass that plays `attack` (ATTACKS)."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose from {', '.join(ATTACKS)}")
    return type(f"Byzantine_{attack}", (ByzantineClient,), {"attack": attack})


def pick(fl_ids: list[str], fraction: float) -> list[str]:
    """The Byzantine devices of a run: round(fraction * n) of the FL devices, at least one when
    fraction > 0, the last ones by id (the seed fleet's first devices hold the low classes)."""
    k = max(1, round(fraction * len(fl_ids))) if fraction > 0 else 0
    return sorted(fl_ids)[len(fl_ids) - k:]
