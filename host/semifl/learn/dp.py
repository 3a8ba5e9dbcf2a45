"""Client-level differential privacy for FL updates: DP-FedAvg (McMahan et al. 2018) with fixed or
adaptive clipping (Andrew et al. 2021), accounted with Google's `dp-accounting` (RDP).

One round: each client's update is clipped to L2 norm C, the clipped updates are summed, Gaussian
noise N(0, (z C)^2) is added to every coordinate of the sum and the noised sum is divided by the
expected number of clients per round (a fixed denominator: dividing by the actual count would make
the sensitivity data-dependent). Each client counts once: sample-count weights are not used, since a
weight would let one client's contribution exceed C (and the count is what the device claims).

Adaptive clipping: each client also contributes the bit 1[||delta|| <= C]; the bits' sum is noised
with std sigma_b, and C moves geometrically towards the target quantile gamma of the update norms,
C <- C exp(-eta (b - gamma)). The update noise is raised to z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2 so
the round as a whole (update sum and bit sum) costs what one Gaussian query with multiplier z costs.

`ClientDP.merge` has the merge seam's signature (learn/strategy.py: `fl_merge(fl, weights)`); with
SecAgg the device clips (`clip`) and the host only noises the secure sum (`release`). Every round draws
its noise from `np.random.default_rng((seed, round))`, so a run is reproducible and a restarted host
continues with the same generator.

Accounting (`epsilon_run`, `epsilon_device`): per run, the Poisson-subsampled Gaussian with rate
q = clients per round / fleet size, composed over the rounds merged. The amplification assumes each
round's clients are a uniform random sample of the fleet; semifl's planner picks the top-K FL clients
by update norm, which is not random, so for that planner read the per-device figure: the Gaussian
composed over the rounds the device took part in, with no amplification claimed.
"""
from __future__ import annotations

import math

import numpy as np

from .aggregate import global_norm


def clip(delta: list[np.ndarray], c: float) -> tuple[list[np.ndarray], float]:
    """delta scaled to L2 norm <= c (float32 kept) -> (clipped, norm before clipping)."""
    norm = global_norm(delta)
    f = min(1.0, c / norm) if norm > 0 else 1.0
    return ([a if f == 1.0 else (a * np.float32(f)).astype(a.dtype) for a in delta]), norm


def epsilon(noise: float, steps: int, q: float = 1.0, delta: float = 1e-5, accountant: str = "rdp") -> float:
    """(epsilon, delta) of `steps` Gaussian queries with multiplier `noise` (sensitivity 1), each on a
    Poisson sample at rate q (q = 1: no sampling, no amplification), by dp-accounting's RDP (or PLD)
    accountant. noise = 0 is infinite epsilon. IoTSL's generators (learn/iotsl/dp.py) count with it too."""
    import dp_accounting
    from dp_accounting import pld, rdp

    if not 0 < q <= 1:
        raise ValueError(f"sampling rate q = {q} outside (0, 1]")
    if steps <= 0:
        return 0.0
    if noise <= 0:
        return math.inf
    event = dp_accounting.GaussianDpEvent(noise)
    if q < 1:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    acc = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    return float(acc.compose(dp_accounting.SelfComposedDpEvent(event, steps)).get_epsilon(delta))


class ClientDP:
    """DP-FedAvg's merge: clip, sum, noise, divide by the expected number of clients.

    noise: z (0: clipping only, no privacy claimed); clip: C (adaptive: its start); adaptive: Andrew et
    al.'s quantile-tracking clip with target `quantile`, learning rate `clip_lr` and bit-noise std
    `bit_noise` (default max(expected_clients / 20, z): the paper's m / 20, raised for small cohorts so
    the bits take at most a quarter of the budget, z_delta <= 1.16 z); expected_clients: the fixed
    denominator (None: the round's own count, which is not DP-FedAvg's estimator); fleet_size: for the
    sampling rate q of `epsilon_run`.
    """

    def __init__(self, noise: float = 0.0, clip: float = 1.0, adaptive: bool = False, delta: float = 1e-5,
                 expected_clients: int | None = None, fleet_size: int | None = None, seed: int = 0,
                 quantile: float = 0.5, clip_lr: float = 0.2, bit_noise: float | None = None):
        if noise < 0 or clip <= 0 or not 0 < delta < 1 or not 0 <= quantile <= 1:
            raise ValueError(f"client DP: bad settings noise={noise} clip={clip} delta={delta} quantile={quantile}")
        self.noise, self.clip, self.adaptive, self.delta = float(noise), float(clip), bool(adaptive), float(delta)
        self.expected_clients, self.fleet_size, self.seed = expected_clients, fleet_size, int(seed)
        self.quantile, self.clip_lr = float(quantile), float(clip_lr)
        self.bit_noise = bit_noise
        self.steps = 0                       # rounds merged (and the index of the next round's generator)
        self.rounds: dict[str, int] = {}     # rounds each device took part in
        self.last: dict = {}                 # the last round's figures (norms, clip, noise std)

    @classmethod
    def from_trust(cls, trust, expected_clients: int | None, fleet_size: int | None, seed: int = 0) -> ClientDP:
        """From config.Trust's dp_* fields (duck-typed: learn/ does not import config)."""
        return cls(noise=trust.dp_noise, clip=trust.dp_clip, adaptive=trust.dp_adaptive, delta=trust.dp_delta,
                   expected_clients=expected_clients, fleet_size=fleet_size, seed=seed)

    # --- noise multipliers ------------------------------------------------------------------------
    def bit_std(self, count: int) -> float:
        m = self.expected_clients or count
        return float(self.bit_noise) if self.bit_noise is not None else max(m / 20.0, self.noise)

    def update_noise(self, count: int) -> float:
        """z_delta: z itself with a fixed clip; with adaptive clipping, what is left of z's budget after the
        bit query (Andrew et al., Thm 1)."""
        if not self.adaptive or self.noise == 0:
            return self.noise
        sb = self.bit_std(count)
        rest = self.noise ** -2 - (2 * sb) ** -2
        if rest <= 0:
            raise ValueError(f"adaptive clipping: bit noise {sb:g} too small for z = {self.noise:g} "
                             f"(needs 2 sigma_b > z)")
        return rest ** -0.5

    # --- one round ----------------------------------------------------------------------------------
    def merge(self, fl, weights: list[float] | None = None) -> list[np.ndarray]:
        """The merge seam: FL updates (learn.strategy.FLUpdate) -> the noised mean delta. `weights` are
        ignored (each client counts once, see the module docstring); a staleness weight u.weight <= 1
        scales the clipped update (keeps the sensitivity <= C)."""
        if not fl:
            raise ValueError("client DP: nothing to merge")
        fl = sorted(fl, key=lambda u: u.device)
        total = [np.zeros(a.shape, np.float64) for a in fl[0].delta]
        norms, bits = [], 0
        for u in fl:
            clipped, norm = clip(u.delta, self.clip)
            s = min(1.0, float(u.weight))
            for t, a in zip(total, clipped):
                t += s * a.astype(np.float64)
            norms.append(norm)
            bits += norm <= self.clip
        out = self.release(total, len(fl), bits)
        self.last["norms"] = norms
        for u in fl:
            self.rounds[u.device] = self.rounds.get(u.device, 0) + 1
        return [o.astype(a.dtype) for o, a in zip(out, fl[0].delta)]

    def release(self, total: list[np.ndarray], count: int, bits: float | None = None) -> list[np.ndarray]:
        """The clipped sum (from merge, or the secure sum of device-clipped updates) -> the noised mean;
        with adaptive clipping `bits` (sum of the clients' 1[norm <= C]) moves the clip for the next round.
        Counts one step of the accountant; the caller records participation (`took_part`) when it
        does not go through merge."""
        rng = np.random.default_rng((self.seed, self.steps))
        m = self.expected_clients or count
        z = self.update_noise(count)
        std = z * self.clip
        out = [(np.asarray(t, np.float64) + (rng.normal(0.0, std, np.shape(t)) if std > 0 else 0.0)) / m
               for t in total]
        self.last = {"clip": self.clip, "noise_std": std, "clients": count, "denominator": m}
        if self.adaptive:
            if bits is None:
                raise ValueError("adaptive clipping needs the clients' clip bits")
            b = (bits + rng.normal(0.0, self.bit_std(count))) / m
            self.clip *= math.exp(-self.clip_lr * (b - self.quantile))
            self.last["below_clip"] = b
        self.steps += 1
        return out

    def took_part(self, devices) -> None:
        for d in devices:
            self.rounds[d] = self.rounds.get(d, 0) + 1

    # --- accounting ---------------------------------------------------------------------------------
    def epsilon_run(self, rounds: int | None = None) -> float:
        """epsilon at self.delta over `rounds` (default: the rounds merged), Poisson-subsampled at
        q = expected_clients / fleet_size (1 without them): valid only for uniformly sampled clients."""
        q = 1.0
        if self.expected_clients and self.fleet_size:
            q = min(1.0, self.expected_clients / self.fleet_size)
        return epsilon(self.noise, self.steps if rounds is None else rounds, q, self.delta)

    def epsilon_device(self, device: str) -> float:
        """epsilon at self.delta of one device: the Gaussian composed over the rounds it took part in,
        no amplification by sampling claimed."""
        return epsilon(self.noise, self.rounds.get(device, 0), 1.0, self.delta)

    def summary(self) -> dict:
        """What a run's summary reports."""
        return {"noise": self.noise, "clip": self.clip, "adaptive": self.adaptive, "delta": self.delta,
                "rounds": self.steps, "epsilon_run": self.epsilon_run(),
                "epsilon_run_assumes": "clients sampled uniformly at q = expected_clients / fleet_size",
                "epsilon_device": {d: self.epsilon_device(d) for d in sorted(self.rounds)}}

    # --- durability ---------------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict[str, list[np.ndarray]]]:
        return {"clip": self.clip, "steps": self.steps, "rounds": dict(self.rounds)}, {}

    def load_state(self, meta: dict, arrays: dict | None = None) -> None:
        if meta:
            self.clip = float(meta["clip"])
            self.steps = int(meta["steps"])
            self.rounds = {str(k): int(v) for k, v in meta["rounds"].items()}
