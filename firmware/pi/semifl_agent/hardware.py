"""What the Pi agent reads from its board: memory, storage, CPU speed, radio and battery.

The virtual fleet swaps `Radio` and `Battery` for simulated ones (semifl.device.link); everything else
is measured for real on whatever machine runs the agent.
"""
from __future__ import annotations

import os
import shutil
import time

import numpy as np


def ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def flash_bytes(path: str = ".") -> int:
    return shutil.disk_usage(path).free


def cpu_score(repeats: int = 5) -> float:
    """Measured, not declared: GFLOP/s of a 128x128 float32 matmul, times 100 (best of `repeats`)."""
    a = np.random.default_rng(0).random((128, 128), dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(10):
            a @ a
        best = min(best, time.perf_counter() - t)
    return round(10 * 2 * 128 ** 3 / best / 1e9 * 100, 1)


class Radio:
    """Wi-Fi link quality from /proc/net/wireless (dBm), None when the kernel reports none."""

    def rssi(self, rnd: int) -> float | None:
        try:
            with open("/proc/net/wireless") as f:
                lines = f.read().splitlines()[2:]
            return float(lines[0].split()[3].rstrip(".")) if lines else None
        except (OSError, IndexError, ValueError):
            return None

    def delay(self, nbytes: int) -> None:
        """Real radios take their own time."""

    def receive(self, nbytes: int) -> None:
        """As `delay`."""

    def drops(self, rnd: int) -> bool:
        return False


class Battery:
    """Charge fraction from the first power supply that reports one; mains-powered boards say 1.0."""

    def level(self) -> float:
        base = "/sys/class/power_supply"
        try:
            for name in sorted(os.listdir(base)):
                p = os.path.join(base, name, "capacity")
                if os.path.exists(p):
                    with open(p) as f:
                        return int(f.read()) / 100.0
        except OSError:
            pass
        return 1.0

    def compute(self, seconds: float) -> None:
        """A real battery drains by itself; only the simulated one needs telling."""

    def transmit(self, nbytes: int) -> None:
        """As `compute`."""
