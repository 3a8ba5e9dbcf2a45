"""What a run has finished, read from its state database (service/store.py) over a read-only connection
of its own: rounds' metrics and stored rejections, read incrementally, and what the fleet table adds up
from them per device (joules of the virtual meter, the latest on-device int8 accuracy, personal accuracy,
split learning's values moved). The same for a live session and a finished run's folder; SQLite's WAL
lets it read while the session writes, without a lock on the session's side."""
from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter, deque
from pathlib import Path

from semifl.energy import PHASES, fleet_energy

KEEP = 1000   # the latest stored rejections kept in memory for the page


def compact(m: dict, joules: float | None) -> dict:
    """A round's metrics as the rounds charts and table take them (per-device detail stays in `round`)."""
    part = m.get("participants") or {}
    values = m.get("device_values") or {}
    return {"round": m["round"], "accuracy": m.get("accuracy"), "loss": m.get("loss"), "wall_s": m.get("wall_s"),
            "bytes_up": m.get("bytes_up", 0), "bytes_down": m.get("bytes_down", 0), "phases_s": m.get("phases_s", {}),
            "fl": len(part.get("fl", [])), "cl": len(part.get("cl", [])), "joules": joules,
            "rejected": m.get("rejected", {}), "late": m.get("late", {}),
            "personal_mean": m.get("personal_mean"), "personal_p10": m.get("personal_p10"),
            "global_accuracy": m.get("global_accuracy"), "quarantined": len(m.get("quarantined", [])),
            "values_up": sum(v.get("up", 0) for v in values.values()) if values else None,
            "values_down": sum(v.get("down", 0) for v in values.values()) if values else None}


class History:
    """Rounds and rejections of the state database at `path` (None: an in-memory store; nothing to read)."""

    def __init__(self, path: str | Path | None):
        self.path = None if path in (None, "", ":memory:") else str(path)
        self.lock = threading.Lock()   # the server's threads share one connection
        self._db = None
        self.rounds: list[dict] = []          # compact, in round order
        self.full: dict[int, dict] = {}       # round -> its stored metrics
        self.rejections: deque = deque(maxlen=KEEP)
        self._rowid = 0
        self.joules: dict[str, dict[str, float]] = {}   # device -> phase -> joules over finished rounds
        self.evals: dict[str, dict] = {}       # device -> its latest on-device int8 evaluation
        self.personal: dict[str, float] = {}   # device -> its latest personal accuracy
        self.values: dict[str, list[int]] = {}   # device -> [values up, values down] over the rounds (split)
        self.phase_s: Counter = Counter()      # phase -> seconds over finished rounds
        self.late: Counter = Counter()

    def _conn(self):
        if self._db is None and self.path and Path(self.path).exists():
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=5)
        return self._db

    def refresh(self, boards: dict[str, str]) -> None:
        """Read rounds finished and rejections stored since the last call. boards: device -> board
        profile, for the virtual meter's joules of the new rounds."""
        with self.lock:
            db = self._conn()
            if db is None:
                return
            last = self.rounds[-1]["round"] if self.rounds else 0
            try:
                rows = db.execute("SELECT round, metrics FROM rounds WHERE state='done' AND round > ? ORDER BY round",
                                  (last,)).fetchall()
                rej = db.execute("SELECT rowid, t, round, device, reason, detail FROM rejections WHERE rowid > ? "
                                 "ORDER BY rowid", (self._rowid,)).fetchall()
            except sqlite3.OperationalError:   # the store is being created, or locked for a moment
                return
            for _, text in rows:
                self.add(json.loads(text), boards)
            for rowid, t, rnd, dev, reason, detail in rej:
                self.rejections.append({"t": t, "round": rnd, "device": dev, "reason": reason, "detail": detail})
                self._rowid = rowid

    def add(self, m: dict, boards: dict[str, str]) -> None:
        """One finished round's metrics (as the store keeps them)."""
        energy = fleet_energy([m], boards)
        for dev, e in energy.items():
            acc = self.joules.setdefault(dev, dict.fromkeys(PHASES, 0.0))
            for ph, v in e["energy_by_phase"].items():
                acc[ph] += v
        self.evals.update(m.get("device_evals") or {})
        self.personal.update(m.get("personal") or {})
        for dev, v in (m.get("device_values") or {}).items():
            acc = self.values.setdefault(dev, [0, 0])
            acc[0] += v.get("up", 0)
            acc[1] += v.get("down", 0)
        self.phase_s.update(m.get("phases_s") or {})
        self.late.update(m.get("late") or {})
        self.full[m["round"]] = m
        self.rounds.append(compact(m, round(sum(e["energy_j"] for e in energy.values()), 4) if energy else None))

    def device_joules(self, dev: str) -> float | None:
        j = self.joules.get(dev)
        return round(sum(j.values()), 4) if j else None

    def since(self, rnd: int) -> list[dict]:
        with self.lock:
            return [r for r in self.rounds if r["round"] > rnd]

    def latest_rejections(self, limit: int) -> list[dict]:
        with self.lock:
            return list(self.rejections)[-limit:][::-1]

    def close(self) -> None:
        with self.lock:
            if self._db is not None:
                self._db.close()
                self._db = None
