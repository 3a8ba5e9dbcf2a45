"""A finished (or interrupted) run's folder, read-only, as the page sees it: `summary.json` where the run
finished, its `state.db` (opened read-only) for rounds, devices' last reports and stored rejections."""
from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

from .history import History
from .table import page


class NotARunFolder(ValueError):
    """A folder that holds neither summary.json nor state.db; the message is the line to show."""


class RunFolder:
    mode = "finished"

    def __init__(self, folder: str | Path, role_of=None):
        """role_of(device_class): the run's role rule, for a run that ended before its summary."""
        self.folder = Path(folder)
        db, summary = self.folder / "state.db", self.folder / "summary.json"
        if not self.folder.is_dir() or not (db.exists() or summary.exists()):
            raise NotARunFolder(f"{folder} holds no run (no summary.json or state.db there; give runs/<name>)")
        self.name = self.folder.name
        self.summary = json.loads(summary.read_text()) if summary.exists() else None
        self.role_of = role_of or (lambda cls: None)
        self.history = History(db if db.exists() else None)
        self.caps, self.seen, self.rejected_by = {}, {}, Counter()
        if db.exists():
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                for dev, caps, last in con.execute("SELECT id, caps, last_seen FROM devices"):
                    self.caps[dev], self.seen[dev] = json.loads(caps), last
                # stored ones only: past KEEP_REJECTIONS of a reason in a round the session only counted them
                for dev, reason, n in con.execute("SELECT device, reason, COUNT(*) FROM rejections GROUP BY device, reason"):
                    self.rejected_by[(dev, reason)] = n
            finally:
                con.close()
        entries = {d["id"]: d for d in (self.summary or {}).get("devices", [])}
        self.boards = {d: (entries.get(d) or self.caps.get(d) or {}).get("board") for d in set(entries) | set(self.caps)}
        self.history.refresh({d: b for d, b in self.boards.items() if b})
        if not db.exists():   # a summary without its state database: the rounds are in the summary
            for m in self.summary.get("rounds", []):
                self.history.add(m, {d: b for d, b in self.boards.items() if b})
        if self.summary is None:   # the rounds that finished are in the state database
            self.summary = {"rounds": [self.history.full[r["round"]] for r in self.history.rounds],
                            "rejected_total": dict(sum((Counter(m.get("rejected", {})) for m in
                                                        self.history.full.values()), Counter()))}
        self._rows = self._build(entries)

    def _build(self, entries: dict) -> list[dict]:
        h = self.history
        rej: dict[str, dict] = {}
        for (d, reason), n in self.rejected_by.items():
            rej.setdefault(d, {})[reason] = n
        last_link = {}
        for m in self.summary.get("rounds", []):
            last_link.update(m.get("device_battery") or {})
        rows = []
        for d in sorted(set(entries) | set(self.caps)):
            e, c = entries.get(d, {}), self.caps.get(d, {})
            cls = e.get("device_class") or c.get("class")
            ev = e.get("int8_eval") or h.evals.get(d)
            vals = h.values.get(d)
            rows.append({
                "id": d, "class": cls, "runtime": e.get("runtime") or c.get("runtime"),
                "board": e.get("board") or c.get("board"), "role": e.get("role") or self.role_of(cls), "now": None,
                "online": False, "last_seen": self.seen.get(d), "battery": last_link.get(d, c.get("battery")),
                "rssi": c.get("rssi"), "bytes_up": e.get("bytes_up"), "bytes_down": e.get("bytes_down"),
                "joules": e.get("energy_j", h.device_joules(d)), "int8_accuracy": ev.get("accuracy") if ev else None,
                "personal_accuracy": e.get("personal_accuracy", h.personal.get(d)),
                "values_up": vals[0] if vals else None, "values_down": vals[1] if vals else None,
                "rejected": rej.get(d, {}), "failed": None})
        return rows

    def state(self) -> dict:
        s, h = self.summary, self.history
        known = Counter(r["class"] or "?" for r in self._rows)
        rounds = h.rounds
        return {"name": self.name, "mode": "finished" if (self.folder / "summary.json").exists() else "interrupted",
                "seq": 1, "t": None, "round": rounds[-1]["round"] if rounds else 0, "rounds_done": len(rounds),
                "said": "", "open_phases": {}, "known": dict(known), "online": {}, "devices": len(self._rows),
                "bytes_up": sum(r["bytes_up"] or 0 for r in self._rows),
                "bytes_down": sum(r["bytes_down"] or 0 for r in self._rows),
                "rejected": s.get("rejected_total", s.get("rejected", {})),
                "accuracy": s.get("final_accuracy", rounds[-1]["accuracy"] if rounds else None),
                "joules": round(sum(r["joules"] or 0 for r in self._rows), 3), "strategy": s.get("strategy"),
                "rejections_stored": len(h.rejections)}

    def rows(self) -> list[dict]:
        return self._rows

    def devices(self, **query) -> dict:
        return page(self._rows, **query)

    def rounds(self, since: int = 0) -> list[dict]:
        return self.history.since(since)

    def round(self, rnd: int) -> dict | None:
        return self.history.full.get(rnd)

    def rejections(self, limit: int = 200) -> dict:
        return {"counts": self.state()["rejected"], "unattributed": {r: n for (d, r), n in self.rejected_by.items()
                                                                     if d is None},
                "latest": self.history.latest_rejections(limit)}

    def counters(self) -> dict:
        h = self.history
        out = {"round": self.state()["round"], "rounds": len(h.rounds), "phase_s": dict(h.phase_s), "late": dict(h.late),
               "last": h.rounds[-1] if h.rounds else None, "bytes": Counter(), "taken": Counter(), "rejected": Counter(),
               "known": Counter(), "online": Counter(), "joules": Counter()}
        for r in self._rows:
            c = r["class"] or "unknown"
            out["bytes"][("up", c)] += r["bytes_up"] or 0
            out["bytes"][("down", c)] += r["bytes_down"] or 0
            out["known"][c] += 1
        for reason, n in self.state()["rejected"].items():
            out["rejected"][(reason, "all")] += n
        for d, phases in h.joules.items():
            c = next((r["class"] for r in self._rows if r["id"] == d), None) or "unknown"
            for ph, j in phases.items():
                out["joules"][(c, ph)] += j
        return out
