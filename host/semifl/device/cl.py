"""SemiFL's CL uploader as in-process runs play it: the MCU node's `cl` role in CPython.

On a board (and in the virtual fleet) the CL uploader is the MicroPython node (firmware/micropython),
which streams the same blob from flash; this role sends byte for byte what the node sends for the same
task (`tests/test_mcu_node.py` checks it): ceil(fraction * n) samples chosen by the task's seed
(`protocol.sampling`), as a `samples` blob in chunks of the device's `max_chunk`.
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

    def run(self, task):
        dev = self.dev
        n = len(dev.y)
        idx = np.asarray(select(n, ceil_fraction(n, task["fraction"]), task["seed"]), np.int64)
        x = np.ascontiguousarray(np.asarray(dev.x).reshape(n, ROW)[idx], np.uint8)
        y = np.ascontiguousarray(np.asarray(dev.y)[idx], np.uint8)
        k = len(idx)
        meta = {"kind": "samples", "round": task["round"], "task": task["task"], "device": dev.id, "n": k}
        blob = wire.encode_blob(meta, [("uint8", (k, ROW), 1.0, 0, x.tobytes()), ("uint8", (k,), 1.0, 0, y.tobytes())])
        dev.send_blob(wire.KIND_SAMPLES, task["round"], blob)
        return True
