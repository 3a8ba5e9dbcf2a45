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
        """Sending nbytes: the link's latency and its bandwidth."""
        t = self.latency_s + (nbytes * 8 / self.bandwidth_bps if self.bandwidth_bps else 0.0)
        if t > 0:
            time.sleep(t)

    def receive(self, nbytes):
        """Receiving nbytes of a blob: its bandwidth (the latency is the sender's)."""
        if self.bandwidth_bps:
            time.sleep(nbytes * 8 / self.bandwidth_bps)

    def drops(self, rnd):
        if self.drop <= 0:
            return False
        # a hash of (seed, round) rather than a shared RNG: the same rounds drop in every run
        h = (self.seed * 2654435761 + rnd * 40503) & 0xFFFFFFFF
        h = ((h ^ (h >> 15)) * 2246822519) & 0xFFFFFFFF
        return (h ^ (h >> 13)) / 4294967296.0 < self.drop


class SimBattery:
    """Energy bookkeeping: capacity in joules, drained by compute time and bytes sent and, with
    `idle_w`, by the board's idle power for the rest of the time (a Pi 4 has no sleep to fall into).

    The virtual fleet sets compute_w, tx_j_per_byte, idle_w and tx_bps from the board's power profile
    (hil_tests/profiles, as the virtual meter uses them), so the level a device reports falls by what
    the meter charges it. Idle is counted from the device's first round: the first level() call is
    its capabilities report at connect, the second its first `ready`.
    """

    def __init__(self, sim):
        self.capacity_j = float(sim.get("battery_j", 0.0))  # 0 = mains powered
        self.charge = float(sim.get("charge", 1.0))          # level at start, 0..1
        self.compute_w = float(sim.get("compute_w", 2.5))
        self.tx_j_per_byte = float(sim.get("tx_j_per_byte", 1e-6))
        self.idle_w = float(sim.get("idle_w", 0.0))          # 0 = asleep whenever it is not working
        self.tx_bps = float(sim.get("tx_bps", 0.0))          # radio time per byte, taken out of idle time
        self.spent_j = 0.0
        self.busy_s = 0.0        # computing or transmitting since idle started counting
        self._levels = 0
        self._t0 = None

    def _idle_j(self):
        if self._t0 is None:
            return 0.0
        return self.idle_w * max(0.0, _now() - self._t0 - self.busy_s)

    def level(self):
        if self.capacity_j <= 0:
            return 1.0
        self._levels += 1
        if self.idle_w > 0 and self._levels == 2:
            self._t0, self.busy_s = _now(), 0.0
        left = self.charge - (self.spent_j + self._idle_j()) / self.capacity_j
        return round(max(0.0, left), 4)

    def compute(self, seconds):
        self.spent_j += seconds * self.compute_w
        self.busy_s += seconds

    def transmit(self, nbytes):
        self.spent_j += nbytes * self.tx_j_per_byte
        if self.tx_bps > 0:
            self.busy_s += nbytes * 8 / self.tx_bps


def _now():
    # MicroPython's time has no monotonic(); the node's battery never counts idle (idle_w 0) anyway
    return time.monotonic() if hasattr(time, "monotonic") else time.time()
