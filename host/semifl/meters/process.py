"""The virtual meter as a sampled meter, for the simulated bench: it watches the real device process
(the MicroPython node or the Pi agent) and turns what the process does into watts with its board's
profile (hil_tests/profiles/<board>.toml): idle power, plus the CPU increment for the share of each
period the process ran, plus the radio-TX increment for the time its written bytes take at the
profile's link rate. Written bytes are /proc's wchar (psutil), sockets and files alike, so a model
written to flash counts as radio time too: the meter over-reads downloads, it never under-reads.
Bounded by the profile: idle <= P <= idle + (cpu_active - idle) + (wifi_tx - idle).
"""
from __future__ import annotations

import time

import numpy as np

from semifl.energy import Profile

from .base import Meter, MeterError


def power_bounds(p: Profile) -> tuple[float, float]:
    """The least and most watts the process meter can report for a profile."""
    idle = p.watts("idle")
    return idle, idle + (p.watts("cpu_active") - idle) + (p.watts("wifi_tx") - idle)


def process_watts(p: Profile, dt_s: float, cpu_s: float, bytes_out: int) -> float:
    """Mean watts over a period of dt_s in which the process used cpu_s of CPU and wrote bytes_out."""
    idle = p.watts("idle")
    busy = min(1.0, max(0.0, cpu_s / dt_s))
    tx = min(1.0, 8 * bytes_out / p.throughput_bps / dt_s)
    return idle + busy * (p.watts("cpu_active") - idle) + tx * (p.watts("wifi_tx") - idle)


class ProcessMeter(Meter):
    name = "virtual"

    def __init__(self, pid: int, profile: Profile, period_s: float = 0.02, timeout_s: float = 3.0):
        super().__init__(timeout_s)
        self.pid, self.profile, self.period_s = pid, profile, period_s
        self.proc = None

    def _counters(self):
        c = self.proc.cpu_times()
        return time.monotonic(), c.user + c.system, self.proc.io_counters().write_chars

    def _open(self):
        import psutil

        self.psutil = psutil
        self.proc = psutil.Process(self.pid)
        self.last = self._counters()

    def _read(self):
        time.sleep(self.period_s)
        try:
            now = self._counters()
        except self.psutil.NoSuchProcess as e:
            raise MeterError(f"virtual: device process {self.pid} is gone") from e
        (t0, c0, b0), (t1, c1, b1) = self.last, now
        self.last = now
        # a sample per period, stamped at its middle: the mean power of the period it covers
        return np.array([(t0 + t1) / 2]), np.array([process_watts(self.profile, t1 - t0, c1 - c0, b1 - b0)])
