"""The virtual meter: joules per device, phase and round from what the device did (CPU seconds it
measured, bytes the link counted) and a board's power profile (hil_tests/profiles/<board>.toml, each
number with its source). Used when no hardware meter is attached; its output has the same shape a
real meter's aligned samples give: joules per phase train, infer, upload, download, idle.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

PROFILES = Path(__file__).resolve().parents[2] / "hil_tests" / "profiles"
PHASES = ("train", "infer", "upload", "download", "idle")


@dataclass(frozen=True)
class Profile:
    board: str
    voltage_v: float
    current_a: dict
    throughput_bps: float

    def watts(self, state: str) -> float:
        return self.voltage_v * self.current_a[state]


def load_profile(board: str, folder: Path = PROFILES) -> Profile:
    path = folder / f"{board}.toml"
    if not path.exists():
        raise FileNotFoundError(f"no power profile for board {board!r} in {folder} "
                                f"(have: {sorted(p.stem for p in folder.glob('*.toml'))})")
    d = tomllib.loads(path.read_text())
    return Profile(d["board"], float(d["voltage_v"]), {k: float(v) for k, v in d["current_a"].items()},
                   float(d["link"]["throughput_bps"]))


class VirtualMeter:
    """`round_joules` for one device and round: radio on for bytes*8/throughput per direction, CPU busy
    for the seconds the device measured, idle for the rest of the round's wall time."""
    name = "virtual"

    def __init__(self, profile: Profile):
        self.p = profile

    def round_joules(self, wall_s: float, train_s: float = 0.0, infer_s: float = 0.0,
                     bytes_up: int = 0, bytes_down: int = 0) -> dict[str, float]:
        up_s = 8 * bytes_up / self.p.throughput_bps
        down_s = 8 * bytes_down / self.p.throughput_bps
        idle_s = max(0.0, wall_s - train_s - infer_s - up_s - down_s)
        return {"train": train_s * self.p.watts("cpu_active"), "infer": infer_s * self.p.watts("cpu_active"),
                "upload": up_s * self.p.watts("wifi_tx"), "download": down_s * self.p.watts("wifi_rx"),
                "idle": idle_s * self.p.watts("idle")}


def fleet_energy(rounds: list[dict], boards: dict[str, str]) -> dict[str, dict]:
    """Per device: {"energy_j", "energy_by_phase", "meter"} summed over a run's rounds (summary.json),
    from each round's device_bytes, device_times_s and device_evals. Boards without a profile get none."""
    meters, out = {}, {}
    for dev, board in boards.items():
        try:
            meters[dev] = VirtualMeter(load_profile(board))
        except FileNotFoundError:
            continue
        out[dev] = {ph: 0.0 for ph in PHASES}
    for m in rounds:
        for dev, meter in meters.items():
            up, down = m.get("device_bytes", {}).get(dev, (0, 0))
            t = m.get("device_times_s", {}).get(dev, {})
            ev = m.get("device_evals", {}).get(dev)
            j = meter.round_joules(m["wall_s"], train_s=t.get("local", 0.0),
                                   infer_s=(ev.get("ms") or 0) / 1000 if ev else 0.0, bytes_up=up, bytes_down=down)
            for ph, v in j.items():
                out[dev][ph] += v
    return {dev: {"energy_j": round(sum(ph.values()), 4), "energy_by_phase": {k: round(v, 4) for k, v in ph.items()},
                  "meter": "virtual"} for dev, ph in out.items()}
