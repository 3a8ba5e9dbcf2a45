"""One interface for every power meter: start(), stop(), samples() -> (t, watts), joules(t0, t1).

A meter's reads run on a thread of their own so the bench never waits on hardware: a read that fails
or returns garbage stops sampling with a MeterError that keeps its reason, and a meter that goes
silent for `timeout_s` is stopped the same way. The samples taken before either stay available.
"""
from __future__ import annotations

import threading
import time

import numpy as np


class MeterError(RuntimeError):
    """A meter that could not be opened, disconnected, went silent or sent garbage."""


def integrate(t, watts, t0: float | None = None, t1: float | None = None) -> float:
    """Joules between t0 and t1 (seconds, the samples' clock): trapezoids over the samples, the power
    at t0 and t1 interpolated linearly; outside the sampled span nothing is counted."""
    t, w = np.asarray(t, float), np.asarray(watts, float)
    if len(t) < 2:
        return 0.0
    lo = t[0] if t0 is None else max(t0, t[0])
    hi = t[-1] if t1 is None else min(t1, t[-1])
    if hi <= lo:
        return 0.0
    inside = (t > lo) & (t < hi)
    tt = np.concatenate(([lo], t[inside], [hi]))
    ww = np.concatenate(([np.interp(lo, t, w)], w[inside], [np.interp(hi, t, w)]))
    return float(np.sum((ww[1:] + ww[:-1]) * np.diff(tt)) / 2)


class Meter:
    """Subclasses implement _open(), _read() -> (t array, watts array) (may be empty), _close().
    Timestamps are time.monotonic() seconds on the bench, or the meter's own clock mapped onto it."""
    name = "meter"

    def __init__(self, timeout_s: float = 3.0):
        self.timeout_s = timeout_s
        self._t: list[np.ndarray] = []
        self._w: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: MeterError | None = None

    # --- to implement -------------------------------------------------------------------------
    def _open(self):
        pass

    def _read(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _close(self):
        pass

    # --- the interface ------------------------------------------------------------------------
    def start(self) -> "Meter":
        try:
            self._open()
        except MeterError:
            raise
        except Exception as e:   # ImportError of the vendor package, a busy or missing port, ...
            raise MeterError(f"{self.name}: cannot open: {type(e).__name__}: {e}") from e
        self._thread = threading.Thread(target=self._loop, name=f"meter-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _loop(self):
        last = time.monotonic()
        while not self._halt.is_set():
            try:
                t, w = self._read()
            except Exception as e:
                self.error = e if isinstance(e, MeterError) else MeterError(f"{self.name}: {type(e).__name__}: {e}")
                return
            if len(t):
                with self._lock:
                    self._t.append(np.asarray(t, float))
                    self._w.append(np.asarray(w, float))
                last = time.monotonic()
            elif time.monotonic() - last > self.timeout_s:
                self.error = MeterError(f"{self.name}: no samples for {self.timeout_s:.1f} s (disconnected?)")
                return

    def stop(self) -> "Meter":
        """Stop sampling; raises the MeterError that ended sampling early, if any (samples are kept)."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 1.0)
            if self._thread.is_alive() and self.error is None:
                self.error = MeterError(f"{self.name}: a read did not return within {self.timeout_s + 1.0:.1f} s")
        try:
            self._close()
        except Exception:
            pass   # closing a port that already went away: the error that matters is self.error
        if self.error is not None:
            raise self.error
        return self

    def samples(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if not self._t:
                return np.zeros(0), np.zeros(0)
            return np.concatenate(self._t), np.concatenate(self._w)

    def joules(self, t0: float | None = None, t1: float | None = None) -> float:
        return integrate(*self.samples(), t0, t1)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
