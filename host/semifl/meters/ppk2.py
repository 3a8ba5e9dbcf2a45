"""Nordic Power Profiler Kit II in source-meter mode: it powers the DUT at a set voltage and samples
its current at 100 kHz over a USB CDC serial port.

Serial commands through ppk2-api (`pip install ppk2-api`, imported in start()); the sample stream is
decoded here, as ppk2-api's get_samples/get_adc_result and nRF Connect's Power Profiler do it: each
sample is 4 bytes little-endian: bits 0..13 the ADC value, 14..16 the current range (0..4), 18..23 a
6-bit counter that advances by one each sample, 24..31 the logic port. Amps in range r:
    x = (4 * adc - O[r]) * (1.8 / 163840) / R[r]
    A = UG[r] * (x * (GS[r] * x + GI[r]) + S[r] * vdd_V + I[r])
with R, O, GS, GI, S, I, UG the board's calibration (its metadata; ppk2-api's defaults below).
ppk2-api's rolling-average spike filter at range switches is left out: raw samples integrate the same
charge. A counter that skips now and then is samples lost on USB (their time is kept); a range
above 4, or skips in more than 1 % of the samples, is a misaligned or corrupted stream: MeterError.
"""
from __future__ import annotations

import time

import numpy as np

from .base import Meter, MeterError

SAMPLE_HZ = 100_000
ADC_MULT = 1.8 / 163840
DEFAULT_MODIFIERS = {   # ppk2-api's PPK2_API.modifiers before a board's metadata is read
    "R": {"0": 1031.64, "1": 101.65, "2": 10.15, "3": 0.94, "4": 0.043},
    "GS": {str(r): 1.0 for r in range(5)}, "GI": {str(r): 1.0 for r in range(5)},
    "O": {str(r): 0.0 for r in range(5)}, "S": {str(r): 0.0 for r in range(5)},
    "I": {str(r): 0.0 for r in range(5)}, "UG": {str(r): 1.0 for r in range(5)},
}


def split_words(buf: bytes, carry: bytes = b"") -> tuple[np.ndarray, bytes]:
    """uint32 sample words of carry + buf, and the bytes of an incomplete last sample."""
    data = carry + buf
    n = len(data) // 4
    return np.frombuffer(data[:4 * n], "<u4"), data[4 * n:]


def decode(words: np.ndarray, vdd_mv: float, modifiers: dict = DEFAULT_MODIFIERS,
           expect_counter: int | None = None, max_gap_share: float = 0.01) -> tuple[np.ndarray, np.ndarray, int]:
    """Amps of each sample word, each sample's index from the first (a counter that skips k means k
    samples were lost on USB, as nRF Connect counts them) and the counter the next word must carry.
    Raises MeterError on a range above 4 or when more than max_gap_share of the words skip: garbage."""
    words = np.asarray(words, np.uint32)
    if not len(words):
        return np.zeros(0), np.zeros(0, int), expect_counter
    adc = (words & 0x3FFF).astype(float) * 4
    rng = ((words >> 14) & 0x7).astype(int)
    counter = ((words >> 18) & 0x3F).astype(int)
    if np.any(rng > 4):
        k = int(np.argmax(rng > 4))
        raise MeterError(f"ppk2: sample {k} has current range {rng[k]} (garbage or a misaligned stream)")
    prev = np.concatenate(([counter[0] - 1 if expect_counter is None else expect_counter - 1], counter[:-1]))
    gaps = (counter - prev - 1) & 0x3F
    if np.count_nonzero(gaps) > max(1, max_gap_share * len(words)):
        raise MeterError(f"ppk2: the sample counter skips in {np.count_nonzero(gaps)} of {len(words)} samples (garbage)")
    m = {k: np.array([float(modifiers[k][str(r)]) for r in range(5)]) for k in ("R", "GS", "GI", "O", "S", "I", "UG")}
    x = (adc - m["O"][rng]) * (ADC_MULT / m["R"][rng])
    amps = m["UG"][rng] * (x * (m["GS"][rng] * x + m["GI"][rng]) + m["S"][rng] * (vdd_mv / 1000) + m["I"][rng])
    return amps, np.cumsum(gaps + 1) - 1, int((counter[-1] + 1) & 0x3F)


class PPK2Meter(Meter):
    """Source-meter mode: the PPK2 powers the DUT at vdd_mv (wiring: PPK2 VOUT -> DUT VIN/3V3, GND -> GND)."""
    name = "ppk2"

    def __init__(self, port: str | None = None, vdd_mv: int = 3300, timeout_s: float = 3.0):
        super().__init__(timeout_s)
        self.port, self.vdd_mv = port, vdd_mv
        self.ppk = None
        self.carry, self.counter, self.n = b"", None, 0
        self.t0 = None

    def _open(self):
        from ppk2_api.ppk2_api import PPK2_API   # optional: only a bench with a PPK2 needs it

        port = self.port or (PPK2_API.list_devices() or [None])[0]
        if port is None:
            raise MeterError("ppk2: no PPK2 found (is it plugged in? pass --meter-port)")
        self.ppk = PPK2_API(port)
        self.ppk.ser.timeout = 0.5   # reads never block for long: the watchdog needs the loop to spin
        if not self.ppk.get_modifiers():
            raise MeterError(f"ppk2: no calibration metadata from {port} (not a PPK2?)")
        self.modifiers = self.ppk.modifiers
        self.ppk.use_source_meter()
        self.ppk.set_source_voltage(self.vdd_mv)
        self.ppk.toggle_DUT_power("ON")
        self.ppk.start_measuring()
        self.t0 = time.monotonic()

    def _read(self):
        buf = self.ppk.get_data()
        if not buf:
            time.sleep(0.01)
            return np.zeros(0), np.zeros(0)
        words, self.carry = split_words(buf, self.carry)
        amps, index, self.counter = decode(words, self.vdd_mv, self.modifiers, self.counter)
        # the PPK2 clocks samples at 100 kHz: time is its sample count, not when USB delivered them
        t = self.t0 + (self.n + index) / SAMPLE_HZ
        self.n += int(index[-1]) + 1 if len(index) else 0
        return t, amps * self.vdd_mv / 1000

    def _close(self):
        if self.ppk is not None:
            self.ppk.stop_measuring()
            self.ppk.toggle_DUT_power("OFF")
            self.ppk.ser.close()
