"""Wireless channel model of the SemiFL seed (get_channels.m): path loss over distance and Rician
fading per round, seeded. The virtual fleet turns it into each device's reported RSSI."""
from __future__ import annotations

import numpy as np


class ChannelModel:
    def __init__(self, n_devices: int, seed: int = 0, r_min: float = 30.0, r_max: float = 40.0,
                 path_loss_exp: float = 2.2, kappa: float = 2.0, c0_db: float = -30.0, bs_height: float = 10.0,
                 tx_power_dbm: float = 20.0):
        rng = np.random.default_rng(seed)
        # devices uniform in an annulus around the base station, on the ground
        r = np.sqrt(rng.uniform(r_min ** 2, r_max ** 2, n_devices))
        self.distance = np.sqrt(r ** 2 + bs_height ** 2)
        self.large_scale = 10 ** (c0_db / 10) * self.distance ** (-path_loss_exp)
        self.kappa, self.seed, self.tx_power_dbm = kappa, seed, tx_power_dbm

    def gains(self, rnd: int) -> np.ndarray:
        """|h_k|^2 for every device in round `rnd` (a fresh Rician draw per round)."""
        rng = np.random.default_rng([self.seed, rnd])
        n = len(self.distance)
        rayleigh = (rng.normal(0, np.sqrt(0.5), n) + 1j * rng.normal(0, np.sqrt(0.5), n))
        small = np.sqrt(self.kappa / (self.kappa + 1)) + np.sqrt(1 / (self.kappa + 1)) * rayleigh
        return self.large_scale * np.abs(small) ** 2

    def rssi_dbm(self, rnd: int) -> np.ndarray:
        return self.tx_power_dbm + 10 * np.log10(self.gains(rnd))
