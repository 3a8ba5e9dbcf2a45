"""Role planner: SemiFL's stage 1 as a pure function of capabilities and channel reports.

Computing-limited devices whose privacy policy allows raw samples to leave are CL candidates, and
the top-N by channel upload this round; capable devices are FL clients, and after local training
the top-K by update norm upload (`select_fl_uploaders`).
"""
from __future__ import annotations

import binascii
import hashlib
from dataclasses import dataclass, field

CL, FL, IDLE = "cl", "fl", "idle"


@dataclass(frozen=True)
class PlannerConfig:
    cl_uploaders: int = 2          # N: CL devices that upload per round (top by channel)
    fl_uploaders: int = 3          # K: FL devices that upload per round (top by update norm)
    min_cpu_score: float = 50.0    # below this a device counts as computing-limited
    min_ram: int = 8 << 20         # bytes; an MCU with 520 KB is computing-limited
    min_battery: float = 0.05      # below this a device sits the round out
    fl_min_battery: float = 0.0    # energy-aware: a capable device below this does not train this round; it
                                   # uploads samples instead if its policy lets raw data go, else sits out


@dataclass
class RoundPlan:
    round: int
    cl: list[str] = field(default_factory=list)   # CL uploaders this round
    fl: list[str] = field(default_factory=list)   # FL clients that train this round
    idle: dict[str, str] = field(default_factory=dict)  # device -> why it sits out
    refused: dict[str, str] = field(default_factory=dict)  # device -> why the model was not given to it
    offload: list[str] = field(default_factory=list)  # personalization: devices the host trains for


def is_capable(caps: dict, cfg: PlannerConfig) -> bool:
    return caps.get("class") != "mcu" and caps.get("cpu_score", 0) >= cfg.min_cpu_score and caps.get("ram", 0) >= cfg.min_ram


def cannot_run(caps: dict, ops: list[str], need_bytes: int) -> tuple[str, str] | None:
    """Why a device cannot run a model, as (reason, detail), or None: an op its runtime lacks (caps
    "ops"; "*" for a full TFLite runtime) or more working memory than its free RAM (caps "ram")."""
    have = caps.get("ops", ["*"])
    if "*" not in have:
        missing = sorted(set(ops) - set(have))
        if missing:
            return "model_ops", f"its runtime lacks {', '.join(missing)} (has {', '.join(have)})"
    ram = int(caps.get("ram") or 0)
    if need_bytes > ram:
        return "arena", f"the model needs {need_bytes:,} bytes of working memory, the device reports {ram:,} free"
    return None


def plan_personal(rnd: int, devices: dict[str, dict], picked: list[str], ready: set[str], need_bytes) -> RoundPlan:
    """PerFit's first stage: who personalizes where. devices: id -> caps; picked: this round's K;
    need_bytes(id) -> bytes its training takes. A device that cannot hold its training is offloaded
    (the host trains for it) if its policy lets its data leave it (caps "raw_ok"), else sits out;
    the others train on the device when drawn and present."""
    plan = RoundPlan(rnd)
    for d in sorted(devices):
        why = cannot_run(devices[d], ["*"], need_bytes(d))
        if why and devices[d].get("raw_ok") is True:
            plan.offload.append(d)
        elif why:
            plan.idle[d] = f"cannot train ({why[1]}) and may not share its data"
        elif d in picked and d in ready:
            plan.fl.append(d)
        elif d in ready:
            plan.idle[d] = "not drawn this round"
    return plan


def plan_round(rnd: int, devices: dict[str, dict], cfg: PlannerConfig, use_cl: bool = True,
               train_bytes=None, fl_budget: int | None = None, seed: int = 0,
               exclude: dict[str, str] | None = None) -> RoundPlan:
    """devices: id -> latest capabilities merged with this round's link report ("rssi", "battery").
    train_bytes(caps) -> bytes a device needs to train this round's model: a capable device with less
    RAM is refused the model before training (plan.refused) and treated as computing-limited.
    fl_budget: at most this many FL clients train (the K a round uses plus its over-selection),
    drawn seeded per round from the capable ones; None: all of them. exclude: device -> why it is not
    planned at all (quarantined, benched), recorded as idle."""
    plan = RoundPlan(rnd)
    cl_candidates = []
    for dev_id in sorted(devices):
        caps = devices[dev_id]
        if exclude and dev_id in exclude:
            plan.idle[dev_id] = exclude[dev_id]
            continue
        battery = caps.get("battery", 1.0)
        capable = is_capable(caps, cfg)
        if capable and train_bytes is not None:
            why = cannot_run(caps, [], train_bytes(caps))
            if why:
                plan.refused[dev_id] = f"{why[0]}: {why[1]}"
                capable = False
        # a device that lists its roles must list "cl" to be given samples to send: the Pi agent plays
        # fl and sl only, so a low-battery Pi sits out rather than get a task it cannot do
        can_cl = use_cl and caps.get("raw_ok", False) and "cl" in caps.get("roles", ["cl"])
        if battery < cfg.min_battery:
            plan.idle[dev_id] = "battery"
        elif capable and battery >= cfg.fl_min_battery:
            plan.fl.append(dev_id)
        elif dev_id in plan.refused and not can_cl:
            plan.idle[dev_id] = "model does not fit to train"
        elif capable and not can_cl:
            plan.idle[dev_id] = "battery too low to train"
        elif not use_cl:
            plan.idle[dev_id] = "strategy uses no CL"
        elif not caps.get("raw_ok", False):
            plan.idle[dev_id] = "privacy policy keeps raw samples on device"
        elif not can_cl:
            plan.idle[dev_id] = f"cannot upload samples (roles: {', '.join(caps['roles'])})"
        else:
            cl_candidates.append(dev_id)
    if fl_budget is not None and len(plan.fl) > fl_budget:
        drawn = drawn_order(plan.fl, seed, rnd)[:fl_budget]
        for d in plan.fl:
            if d not in drawn:
                plan.idle[d] = "not drawn to train this round"
        plan.fl = sorted(drawn)
    # strongest channel first; ties broken by id so the plan is deterministic
    ranked = sorted(cl_candidates, key=lambda d: (-devices[d].get("rssi", -200.0), d))
    plan.cl = sorted(ranked[:cfg.cl_uploaders])
    for d in ranked[cfg.cl_uploaders:]:
        plan.idle[d] = "weaker channel"
    return plan


def drawn_order(ids, seed: int, rnd: int) -> list[str]:
    """`ids` in a seeded order of their own for round (or version) `rnd`, so that over the rounds every
    device gets its turn (a cryptographic hash: CRC-32 is linear, and its orders repeat round to round)."""
    return sorted(ids, key=lambda d: hashlib.blake2b(f"{seed}/{rnd}/{d}".encode(), digest_size=8).digest())


def select_fl_uploaders(norms: dict[str, float], k: int) -> list[str]:
    """Top-K devices by update norm (seed: get_selected_FL_devices); ties by id."""
    return sorted(sorted(norms, key=lambda d: (-norms[d], d))[:k])


def task_seed(run_seed: int, rnd: int, device_id: str) -> int:
    """The per-round, per-device sampling seed carried in a task (uint32, stable across runtimes)."""
    return (binascii.crc32(device_id.encode()) ^ (run_seed * 1000003 + rnd * 7919)) & 0xFFFFFFFF


class Zombies:
    """Devices that take FL tasks and never deliver ("zombies": they answer `ready`, nothing else).
    After `after` undelivered tasks in a row a device is benched, not tasked for base**k rounds
    (k = 1, 2, ... with each further miss, at most `cap`); a delivery, even a late one, clears it.
    Checkpointable (`state` / `load_state`)."""

    def __init__(self, after: int = 2, base: int = 2, cap: int = 64):
        self.after, self.base, self.cap = after, base, cap
        self.misses: dict[str, int] = {}
        self.until: dict[str, int] = {}   # device -> first round it may be tasked again

    def missed(self, dev: str, rnd: int) -> None:
        self.misses[dev] = self.misses.get(dev, 0) + 1
        k = self.misses[dev] - self.after + 1
        if k >= 1:
            self.until[dev] = rnd + 1 + min(self.cap, self.base ** k)

    def delivered(self, dev: str) -> None:
        self.misses.pop(dev, None)
        self.until.pop(dev, None)

    def benched(self, rnd: int) -> dict[str, str]:
        """device -> why it is not tasked in round `rnd`."""
        return {d: f"benched until round {u}: {self.misses[d]} FL tasks in a row not delivered"
                for d, u in sorted(self.until.items()) if rnd < u}

    def state(self) -> dict:
        return {"misses": self.misses, "until": self.until}

    def load_state(self, meta: dict) -> None:
        self.misses, self.until = dict(meta.get("misses", {})), dict(meta.get("until", {}))
