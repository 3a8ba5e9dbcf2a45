"""A recorded meter stream played back as a live meter: the stand-in for a hardware meter when the
bench has none (CI). The recording is parsed by its own driver's decoder (ppk2.decode for PPK2 sample
words, ina219.decode for INA219 register pairs), so the samples are the ones that driver would have
produced, and it is looped in real time from start(). Its name is "replay:<driver>".

A recording whose driver refuses a record (the INA219 file's last row carries the overflow flag) is
played up to that record; `load_recording` says which record and why.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .base import Meter, MeterError

DRIVERS = ("ppk2", "ina219")


def load_recording(path: str | Path, driver: str, vdd_mv: float = 3300, shunt_ohms: float = 0.1):
    """(t s from the first sample, watts, the refused record's error or None) of a recorded stream:
    ppk2: raw sample words (the serial stream), timed by the PPK2's 100 kHz sample count (a lost sample
    keeps its time); ina219: CSV rows t_s,shunt,bus (raw register values in hex), timed by t_s."""
    from . import ina219, ppk2

    path = Path(path)
    if driver == "ppk2":
        words, _ = ppk2.split_words(path.read_bytes())
        amps, index, _ = ppk2.decode(words, vdd_mv)
        return index / ppk2.SAMPLE_HZ, amps * vdd_mv / 1000, None
    if driver == "ina219":
        t, w, why = [], [], None
        for line in path.read_text().split()[1:]:
            ts, shunt, bus = line.split(",")
            try:
                w.append(ina219.decode(int(shunt, 16), int(bus, 16), shunt_ohms)[2])
            except MeterError as e:
                why = f"record at t={ts} s: {e}"
                break
            t.append(float(ts))
        t = np.asarray(t) - (t[0] if t else 0.0)
        return t, np.asarray(w, float), why
    raise ValueError(f"no replay for driver {driver!r}; choose from {DRIVERS}")


class ReplayMeter(Meter):
    """`t`, `watts`: one pass of the recording (t from 0). Played in a loop: pass k's samples at
    k * period + t, period = the recording's span plus one sample step."""

    def __init__(self, t, watts, driver: str, period_s: float = 0.02, timeout_s: float = 3.0):
        super().__init__(timeout_s)
        self.rec_t, self.rec_w = np.asarray(t, float), np.asarray(watts, float)
        if len(self.rec_t) < 2 or np.any(np.diff(self.rec_t) <= 0):
            raise MeterError(f"replay:{driver}: a recording needs two or more samples in time order")
        self.name = f"replay:{driver}"
        self.loop_s = self.rec_t[-1] + float(np.median(np.diff(self.rec_t)))
        self.period_s, self.t0, self.next = period_s, None, 0

    @classmethod
    def from_file(cls, path, driver: str, **kw) -> "ReplayMeter":
        rec = {k: kw.pop(k) for k in ("vdd_mv", "shunt_ohms") if k in kw}
        t, w, _ = load_recording(path, driver, **rec)
        return cls(t, w, driver, **kw)

    def played(self, j0: int, j1: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples j0 .. j1-1 of the endless loop, t relative to start()."""
        j = np.arange(j0, j1)
        k, i = np.divmod(j, len(self.rec_t))
        return k * self.loop_s + self.rec_t[i], self.rec_w[i]

    def count_until(self, s: float) -> int:
        """How many samples of the loop lie at or before s seconds after start()."""
        k = int(s // self.loop_s)
        return k * len(self.rec_t) + int(np.searchsorted(self.rec_t, s - k * self.loop_s, side="right"))

    def _open(self):
        self.t0, self.next = time.monotonic(), 0

    def _read(self):
        time.sleep(self.period_s)
        upto = self.count_until(time.monotonic() - self.t0)
        t, w = self.played(self.next, upto)
        self.next = upto
        return self.t0 + t, w
