"""Joulescope (JS110/JS220) in series with the DUT's supply, through the vendor's `joulescope`
package (`pip install joulescope`, imported in start()): scan_require_one(config="auto"), open(),
then read(contiguous_duration=block_s) blocks of calibrated samples, an (N, 2) float32 array of
current (A) and voltage (V) at `sampling_frequency`. The driver marks samples it lost on USB as NaN
(its forum: "NaNs during 10 minutes recordings"): they are dropped here and their time left empty, so
integration bridges them; a block that is all NaN, or a value no Joulescope can measure, is an error.
"""
from __future__ import annotations

import time

import numpy as np

from .base import Meter, MeterError

MAX_AMPS, MAX_VOLTS = 10.0, 15.0   # beyond a JS110's ranges (3 A, 15 V) with margin: not a reading


def decode_block(data, t0: float, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """(t, watts) of one read() block whose first sample was taken at t0."""
    data = np.asarray(data, float)
    if data.ndim != 2 or data.shape[1] != 2:
        raise MeterError(f"joulescope: block of shape {data.shape}, want (N, 2) current, voltage")
    t = t0 + np.arange(len(data)) / fs
    ok = ~np.isnan(data).any(axis=1)
    if len(data) and not ok.any():
        raise MeterError(f"joulescope: all {len(data)} samples of a block are missing (NaN)")
    i, v = data[ok, 0], data[ok, 1]
    if np.any(~np.isfinite(i)) or np.any(np.abs(i) > MAX_AMPS) or np.any(np.abs(v) > MAX_VOLTS):
        raise MeterError("joulescope: a sample outside any range the instrument measures (garbage)")
    return t[ok], i * v


class JoulescopeMeter(Meter):
    name = "joulescope"

    def __init__(self, block_s: float = 0.1, sampling_frequency: int = 1000, timeout_s: float = 3.0):
        super().__init__(timeout_s)
        self.block_s, self.fs = block_s, sampling_frequency
        self.js = None

    def _open(self):
        import joulescope   # optional: only a bench with a Joulescope needs it

        self.js = joulescope.scan_require_one(config="auto")
        self.js.parameter_set("sampling_frequency", self.fs)
        self.js.open()
        self.js.parameter_set("i_range", "auto")

    def _read(self):
        t0 = time.monotonic()
        return decode_block(self.js.read(contiguous_duration=self.block_s), t0, self.fs)

    def _close(self):
        if self.js is not None:
            self.js.close()
