"""Simulated radio and battery handed to the real device code in the virtual fleet.

Plain Python (no numpy): the MicroPython node uses the same objects. Configured by the `sim`
section of a device's config.json, which `semifl.sim.fleet` writes.
"""
import time


class SimRadio:
    """Link of a virtual device: RSSI per round from the channel model, latency, bandwidth, dropouts."""

    def __init__(self, sim):
        self.rssi_by_round = sim.get("rssi", [])     # index = round (0 = at connect)
        # or, on a device (a list of a thousand floats costs an ESP32 heap ~20 KB), a file of int16
        # centi-dBm, one per round, read one value at a time
        self.rssi_file = sim.get("rssi_file")
        self.latency_s = float(sim.get("latency_s", 0.0))
        self.bandwidth_bps = float(sim.get("bandwidth_bps", 0.0))  # 0 = not throttled
        self.drop = float(sim.get("drop", 0.0))     # probability of missing a whole round
        self.seed = int(sim.get("seed", 0))

    def rssi(self, rnd):
        if self.rssi_file:
            with open(self.rssi_file, "rb") as f:
                f.seek(0, 2)
                count = f.tell() // 2
                f.seek(2 * (rnd % count))
                b = f.read(2)
            v = b[0] | (b[1] << 8)
            return (v - 0x10000 if v & 0x8000 else v) / 100
        if not self.rssi_by_round:
            return None
        return round(float(self.rssi_by_round[rnd % len(self.rssi_by_round)]), 2)

    def delay(self, nbytes):
        t = self.latency_s + (nbytes * 8 / self.bandwidth_bps if self.bandwidth_bps else 0.0)
        if t > 0:
            time.sleep(t)

    def drops(self, rnd):
        if self.drop <= 0:
            return False
        # a hash of (seed, round) rather than a shared RNG: the same rounds drop in every run
        h = (self.seed * 2654435761 + rnd * 40503) & 0xFFFFFFFF
        h = ((h ^ (h >> 15)) * 2246822519) & 0xFFFFFFFF
        return (h ^ (h >> 13)) / 4294967296.0 < self.drop


class SimBattery:
    """Energy bookkeeping: capacity in joules, drained by compute time and bytes sent."""

    def __init__(self, sim):
        self.capacity_j = float(sim.get("battery_j", 0.0))  # 0 = mains powered
        self.compute_w = float(sim.get("compute_w", 2.5))
        self.tx_j_per_byte = float(sim.get("tx_j_per_byte", 1e-6))
        self.spent_j = 0.0

    def level(self):
        if self.capacity_j <= 0:
            return 1.0
        return round(max(0.0, 1.0 - self.spent_j / self.capacity_j), 4)

    def compute(self, seconds):
        self.spent_j += seconds * self.compute_w

    def transmit(self, nbytes):
        self.spent_j += nbytes * self.tx_j_per_byte
