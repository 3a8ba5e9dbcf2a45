"""Meter samples against a device's phase marks: joules per (round, phase), then per phase, round
and role. Pure functions; a mark is (device time s, round, phase) from a `phase` status (docs/protocol.md).

A phase lasts from its mark to the next mark (the last one to `t_end`, by default the last sample).
The device's clock maps onto the meter's by `offset_s` (meter time = device time + offset); without a
shared clock, `clock_offset` estimates it from when the bench received each mark.
"""
from __future__ import annotations

from collections import defaultdict

from .base import integrate

PHASES = ("train", "infer", "upload", "download", "idle")


def clock_offset(marks: list[tuple[float, int, str]], received: list[float]) -> float:
    """Meter-clock minus device-clock offset: the smallest (received - sent) over the marks, i.e. the
    mark that travelled fastest (a lower bound on the true offset by its transit time)."""
    if not marks or len(marks) != len(received):
        raise ValueError("clock_offset needs one receive time per mark")
    return min(r - m[0] for m, r in zip(marks, received))


def attribute(t, watts, marks: list[tuple[float, int, str]], offset_s: float = 0.0,
              t_end: float | None = None) -> dict[tuple[int, str], float]:
    """Joules per (round, phase) of the samples (t, watts) between the first mark and t_end."""
    out: dict[tuple[int, str], float] = defaultdict(float)
    if len(t) < 2 or not marks:
        return {}
    marks = sorted(marks, key=lambda m: m[0])
    end = t[-1] if t_end is None else t_end
    for k, (t_dev, rnd, phase) in enumerate(marks):
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        t0 = t_dev + offset_s
        t1 = marks[k + 1][0] + offset_s if k + 1 < len(marks) else end
        if t1 > t0:
            out[(rnd, phase)] += integrate(t, watts, t0, t1)
    return dict(out)


def roll_up(per_round_phase: dict[tuple[int, str], float], roles: dict[int, str] | None = None) -> dict:
    """{"energy_j", "by_phase", "by_round", "by_role"}: the same joules summed three ways; `roles`
    maps a round to the device's role in it (planner's cl/fl; a round without one is "none")."""
    by_phase = {p: 0.0 for p in PHASES}
    by_round: dict[int, float] = defaultdict(float)
    by_role: dict[str, float] = defaultdict(float)
    for (rnd, phase), j in per_round_phase.items():
        by_phase[phase] += j
        by_round[rnd] += j
        by_role[(roles or {}).get(rnd, "none")] += j
    return {"energy_j": sum(by_phase.values()), "by_phase": by_phase, "by_round": dict(by_round),
            "by_role": dict(by_role)}


def device_energy(t, watts, marks: list[tuple[float, int, str]], received: list[float], meter: str,
                  roles: dict[int, str] | None = None) -> dict:
    """A device's energy for summary.json from a meter's samples aligned to the phases it marked:
    {"energy_j", "energy_by_phase", "energy_by_round", "energy_by_role", "meter", "clock_offset_s"},
    the same keys as the virtual model's (semifl.energy.fleet_energy) plus the round and role split.
    The device clock maps onto the meter's by `clock_offset` of the marks' receive times."""
    offset = clock_offset(marks, received) if marks else 0.0
    r = roll_up(attribute(t, watts, marks, offset_s=offset), roles)
    return {"energy_j": r["energy_j"], "energy_by_phase": r["by_phase"],
            "energy_by_round": {str(k): v for k, v in sorted(r["by_round"].items())},
            "energy_by_role": r["by_role"], "meter": meter, "clock_offset_s": offset}
