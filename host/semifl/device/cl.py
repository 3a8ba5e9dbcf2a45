"""SemiFL's CL uploader as in-process runs play it: the MCU node's `cl` role in CPython.

On a board (and in the virtual fleet) the CL uploader is the MicroPython node (firmware/micropython),
which streams the same blob from flash; this role sends byte for byte what the node sends for the same
task (`tests/test_mcu_node.py` checks it): ceil(fraction * n) samples chosen by the task's seed
(`protocol.sampling`), with `fresh` only those the host does not hold yet, as a `samples` blob in chunks of
the device's `max_chunk`.
"""
from __future__ import annotations

import numpy as np

from semifl.protocol import wire
from semifl.protocol.sampling import ceil_fraction, select

from .device import Role

ROW = 784


class CLUploader(Role):
    name = "cl"
    tasks = ("cl",)

    def __init__(self, device):
        super().__init__(device)
        self.fresh_id, self.sent, self.unconf, self.unconf_round = 0, None, None, -1

    def fresh_only(self, task, idx: np.ndarray) -> np.ndarray:
        """The node's fresh-samples rule (docs/protocol.md §5): of idx, those not in an upload the host said
        it holds; the last upload stays unconfirmed until a task's `got` names its round."""
        if task["fresh"] != self.fresh_id:
            self.fresh_id, self.sent, self.unconf, self.unconf_round = task["fresh"], np.zeros(len(self.dev.y), bool), None, -1
        if self.unconf is not None and self.unconf_round == task.get("got", 0):
            self.sent |= self.unconf
        idx = idx[~self.sent[idx]]
        self.unconf, self.unconf_round = np.zeros_like(self.sent), task["round"]
        self.unconf[idx] = True
        return idx

    def run(self, task):
        dev = self.dev
        n = len(dev.y)
        idx = np.asarray(select(n, ceil_fraction(n, task["fraction"]), task["seed"]), np.int64)
        if task.get("fresh"):
            idx = self.fresh_only(task, idx)
        x = np.ascontiguousarray(np.asarray(dev.x).reshape(n, ROW)[idx], np.uint8)
        y = np.ascontiguousarray(np.asarray(dev.y)[idx], np.uint8)
        k = len(idx)
        meta = {"kind": "samples", "round": task["round"], "task": task["task"], "device": dev.id, "n": k}
        blob = wire.encode_blob(meta, [("uint8", (k, ROW), 1.0, 0, x.tobytes()), ("uint8", (k,), 1.0, 0, y.tobytes())])
        dev.send_blob(wire.KIND_SAMPLES, task["round"], blob)
        return True
