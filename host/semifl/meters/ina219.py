"""TI INA219 high-side current/power monitor over I2C (a Raspberry Pi running the bench).

Wiring: the shunt (0.1 ohm on the common breakouts) sits between the supply's + and the DUT's +
(VIN+ supply side, VIN- DUT side); GND shared; SDA/SCL to the Pi's I2C-1 (pins 3/5).
The driver reads the raw shunt- and bus-voltage registers with smbus2 (imported in start(); `pip
install smbus2`) rather than through pi-ina219, whose API returns converted floats: raw registers keep
the conversion below testable and expose the overflow flag. Register scaling from the TI datasheet
(SBOS448G, section 8.6.3): shunt voltage register 01h, two's complement, LSB 10 uV at every PGA gain;
bus voltage register 02h, bits 15..3 in 4 mV steps, bit 1 CNVR (conversion ready), bit 0 OVF (the
power or current calculation overflowed: the shunt voltage is out of the PGA range).
"""
from __future__ import annotations

import time

import numpy as np

from .base import Meter, MeterError

REG_CONFIG, REG_SHUNT, REG_BUS = 0x00, 0x01, 0x02
SHUNT_LSB_V = 10e-6
BUS_LSB_V = 4e-3
# 32 V bus range, PGA /8 (+-320 mV), 12-bit shunt and bus ADCs, shunt and bus continuous (datasheet 8.6.2.1)
CONFIG_32V_320MV_12BIT = 0x399F


def swap16(word: int) -> int:
    """SMBus read_word_data returns the low byte first; the INA219 sends its MSB first."""
    return ((word & 0xFF) << 8) | (word >> 8)


def shunt_volts(reg: int) -> float:
    if not 0 <= reg <= 0xFFFF:
        raise MeterError(f"ina219: shunt register {reg!r} is not 16 bits")
    return (reg - 0x10000 if reg & 0x8000 else reg) * SHUNT_LSB_V


def bus_volts(reg: int) -> float:
    """Volts on VIN- (the DUT's supply); raises on the overflow flag (the reading is meaningless)."""
    if not 0 <= reg <= 0xFFFF:
        raise MeterError(f"ina219: bus register {reg!r} is not 16 bits")
    if reg & 0x1:
        raise MeterError(f"ina219: overflow flag in bus register 0x{reg:04x} (current beyond the shunt range)")
    return (reg >> 3) * BUS_LSB_V


def decode(shunt_reg: int, bus_reg: int, shunt_ohms: float) -> tuple[float, float, float]:
    """(volts, amps, watts) of one pair of raw register values."""
    v, i = bus_volts(bus_reg), shunt_volts(shunt_reg) / shunt_ohms
    return v, i, v * i


class INA219Meter(Meter):
    name = "ina219"

    def __init__(self, bus: int = 1, address: int = 0x40, shunt_ohms: float = 0.1, period_s: float = 0.002,
                 timeout_s: float = 3.0):
        super().__init__(timeout_s)
        self.bus_no, self.address, self.shunt_ohms, self.period_s = bus, address, shunt_ohms, period_s
        self.i2c = None

    def _open(self):
        from smbus2 import SMBus   # optional: only a bench with an INA219 needs it

        self.i2c = SMBus(self.bus_no)
        self.i2c.write_word_data(self.address, REG_CONFIG, swap16(CONFIG_32V_320MV_12BIT))

    def _read(self):
        # 12-bit conversions take 532 us each; reading every period_s over-samples nothing
        t = time.monotonic()
        shunt = swap16(self.i2c.read_word_data(self.address, REG_SHUNT))
        bus = swap16(self.i2c.read_word_data(self.address, REG_BUS))
        _, _, w = decode(shunt, bus, self.shunt_ohms)
        time.sleep(self.period_s)
        return np.array([t]), np.array([w])

    def _close(self):
        if self.i2c is not None:
            self.i2c.close()
