"""RDTech UM24C / UM25C / UM34C USB power meter, read over its Bluetooth serial port (/dev/rfcommN
after `rfcomm bind`) with pyserial at 9600 baud: the byte 0xF0 asks for one 130-byte record,
big-endian (as documented by sebastianha/um34c and rdserialtool): bytes 0..1 the model id (0x0963 UM24C,
0x09C9 UM25C, 0x0D4C UM34C), 2..3 volts, 4..5 amps, 6..9 watts x 1000. The UM25C reports volts x 1000
and amps x 10000, the others volts x 100 and amps x 1000. A record is about 2 per second: good for a
Pi's rail, too slow for an MCU's phases.
"""
from __future__ import annotations

import struct
import time

import numpy as np

from .base import Meter, MeterError

RECORD_LEN = 130
REQUEST = b"\xf0"
MODELS = {0x0963: ("UM24C", 100, 1000), 0x09C9: ("UM25C", 1000, 10000), 0x0D4C: ("UM34C", 100, 1000)}


def decode_record(rec: bytes) -> tuple[str, float, float, float]:
    """(model, volts, amps, watts) of one record; MeterError on a short record, an unknown model or
    a power that is not volts x amps (a record that slipped or was corrupted)."""
    if len(rec) != RECORD_LEN:
        raise MeterError(f"usb meter: record of {len(rec)} bytes, want {RECORD_LEN} (disconnected?)")
    model_id, v_raw, i_raw, w_raw = struct.unpack_from(">HHHI", rec)
    if model_id not in MODELS:
        raise MeterError(f"usb meter: unknown model id 0x{model_id:04x} (garbage or a misaligned record)")
    model, v_div, i_div = MODELS[model_id]
    v, i, w = v_raw / v_div, i_raw / i_div, w_raw / 1000
    if abs(v * i - w) > 0.002 + 0.02 * w:   # display rounding: 1 mW and the last digit of V and A
        raise MeterError(f"usb meter: {v} V x {i} A is not the {w} W reported (corrupted record)")
    return model, v, i, w


class USBMeter(Meter):
    name = "usb"

    def __init__(self, port: str = "/dev/rfcomm0", period_s: float = 0.5, timeout_s: float = 3.0):
        super().__init__(timeout_s)
        self.port, self.period_s = port, period_s
        self.ser = None

    def _open(self):
        import serial

        self.ser = serial.Serial(self.port, 9600, timeout=min(1.0, self.timeout_s))
        self.ser.reset_input_buffer()

    def _read(self):
        self.ser.write(REQUEST)
        t = time.monotonic()
        rec = self.ser.read(RECORD_LEN)
        if not rec:
            return np.zeros(0), np.zeros(0)   # nothing yet: the base's watchdog decides when that is a fault
        _, _, _, w = decode_record(rec)
        time.sleep(self.period_s)
        return np.array([t]), np.array([w])

    def _close(self):
        if self.ser is not None:
            self.ser.close()
