"""A running session as the page sees it. The session's own thread publishes a snapshot (`Snapshot`:
shallow copies of the registry's and the session's counters, made between two messages) at most a few
times a second, from the hook `Session.on_tick`; the server's threads read only the latest snapshot and
the state database (`history.History`), never the session's live dicts, so nothing they do can change
the session's state or see it half-updated. A snapshot costs O(devices) dict copies (no Python loop):
a few milliseconds at 10,000 devices (benchmarks/results/ui.json); the interval grows so that
publishing never takes more than 2 % of the session's time. The server takes up a new snapshot (and
builds the table's rows from it, O(devices) in Python, under the GIL the session needs too) at most
every ten times what that build costs: 4 times a second at 1,000 devices, less often at 10,000."""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from .history import History
from .table import page

MIN_INTERVAL_S = 0.25   # at most 4 snapshots a second
MAX_SHARE = 0.02        # of the session's thread spent publishing
VIEW_SHARE = 0.1        # of a core the server spends building the table (it shares the GIL with the session)


@dataclass(frozen=True)
class Snapshot:
    """The session between two messages. Everything here is a copy the session no longer touches (caps
    and link reports are replaced whole by the registry, never changed in place)."""
    seq: int
    t: float
    round: int
    said: str
    devices: dict          # device -> caps
    online: frozenset
    link: dict             # device -> {"round", "rssi", "battery"} of its latest ready report
    last_seen: dict
    bytes_up: dict
    bytes_down: dict
    rejected: dict         # reason -> messages
    rejected_by: dict      # (device, reason) -> messages
    taken: dict            # (device, leaf) -> messages
    plan: dict = field(default_factory=dict)   # this round's roles: {"fl", "cl", "uploaders", "idle", "refused", "offload"}
    phases: dict = field(default_factory=dict)  # the open round's phases so far
    evals: dict = field(default_factory=dict)   # the open round's on-device evaluations
    failed: dict = field(default_factory=dict)


def this_round(dev: str, plan: dict) -> str | None:
    """What a device does in the open round: train (FL), upload (an FL client asked for its update),
    send samples (CL), train for it on the host (offload), or sit out and why."""
    if dev in plan.get("uploaders", ()):
        return "fl·upload"
    if dev in plan.get("fl", ()):
        return "fl"
    if dev in plan.get("cl", ()):
        return "cl"
    if dev in plan.get("offload", ()):
        return "offload"
    if dev in plan.get("refused", {}):
        return "refused"
    if dev in plan.get("idle", {}):
        return "idle"
    return None


class Live:
    """The source of `semifl run --ui` and `serve --ui`. role_of(device_class) -> the role the run's
    summary will record (app.run.device_role)."""
    mode = "live"

    def __init__(self, session, name: str = "", role_of=None):
        self.session, self.name, self.role_of = session, name, role_of or (lambda cls: None)
        self.history = History(getattr(session.store, "path", None))
        self.snap: Snapshot | None = None
        self.finished = False
        self._said, self._interval, self._next = "", MIN_INTERVAL_S, 0.0
        self.publish_s = 0.0   # the last snapshot's cost on the session's thread
        self._rows, self._rows_seq, self._rows_rounds = [], -1, -1
        self._lock = threading.Lock()
        self._refreshed = 0.0
        self.view: Snapshot | None = None   # the snapshot the server shows: the latest, adopted at most every
        self._adopted, self._adopt_s = 0.0, MIN_INTERVAL_S   # _adopt_s (10x what its rows cost to build)
        self._pages: dict = {}              # (view seq, rounds, query) -> a sorted page: the same page for every client
        self._progress = session.on_progress
        session.on_progress = self._on_progress
        session.on_tick = self.tick
        self.publish()

    # --- on the session's thread ------------------------------------------------------------------
    def _on_progress(self, rnd: int, text: str) -> None:
        self._said = text
        if self._progress:
            self._progress(rnd, text)
        self.tick()

    def tick(self) -> None:
        """Publish a snapshot if the last one is older than the interval (one clock read otherwise)."""
        if time.monotonic() >= self._next:
            self.publish()

    def publish(self) -> None:
        """A new snapshot of the session, now. Call it only on the session's thread (or once it is done)."""
        t0 = time.perf_counter()
        s, reg = self.session, self.session.registry
        h = s.handler
        plan = getattr(h, "plan", None)
        roles = {}
        if plan is not None and getattr(plan, "round", None) == s.round:
            roles = {"fl": frozenset(plan.fl), "cl": frozenset(plan.cl), "idle": dict(plan.idle),
                     "refused": dict(plan.refused), "offload": frozenset(plan.offload),
                     "uploaders": frozenset(getattr(h, "uploaders", None) or ())}
        rec = s.rec
        self.snap = Snapshot(
            seq=(self.snap.seq + 1) if self.snap else 1, t=time.time(), round=s.round, said=self._said,
            devices=dict(reg.devices), online=frozenset(reg.online), link=dict(reg.link), last_seen=dict(reg.last_seen),
            bytes_up=dict(s.bytes_up), bytes_down=dict(s.bytes_down), rejected=dict(s.rejected),
            rejected_by=dict(s.rejected_by), taken=dict(s.taken), plan=roles,
            phases=dict(rec.phases) if rec.round == s.round else {}, evals=dict(rec.evals), failed=dict(rec.failed))
        self.publish_s = time.perf_counter() - t0
        self._interval = max(MIN_INTERVAL_S, self.publish_s / MAX_SHARE)
        self._next = time.monotonic() + self._interval

    def done(self) -> None:
        """The run is over: a last snapshot (the session's thread has stopped) and the page says so."""
        self.publish()
        self.finished = True
        self.refresh(force=True)
        self.current(force=True)

    # --- on the server's threads ------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        """New rounds and rejections from the state database, at most 4 times a second."""
        now = time.monotonic()
        if force or now - self._refreshed >= MIN_INTERVAL_S:
            self._refreshed = now
            snap = self.snap
            self.history.refresh({d: c.get("board") for d, c in snap.devices.items() if c.get("board")})

    def current(self, force: bool = False) -> Snapshot:
        """The snapshot the server shows: the latest one, taken up at most every `_adopt_s` so that a fleet
        of 10,000 costs the session's thread (with which it shares the GIL) at most VIEW_SHARE."""
        now = time.monotonic()
        if self.view is None or force or (self.snap is not self.view and now - self._adopted >= self._adopt_s):
            self.view, self._adopted = self.snap, now
        return self.view

    def state(self) -> dict:
        self.refresh()
        snap, h = self.current(), self.history
        known, online = Counter(), Counter()
        for d, c in snap.devices.items():
            known[c.get("class", "?")] += 1
            if d in snap.online:
                online[c.get("class", "?")] += 1
        last = h.rounds[-1] if h.rounds else {}
        return {"name": self.name, "mode": "finished" if self.finished else "live", "seq": snap.seq, "t": snap.t,
                "round": snap.round, "rounds_done": len(h.rounds), "said": snap.said,
                "open_phases": snap.phases, "known": dict(known), "online": dict(online),
                "devices": len(snap.devices), "bytes_up": sum(snap.bytes_up.values()),
                "bytes_down": sum(snap.bytes_down.values()), "rejected": snap.rejected,
                "accuracy": last.get("accuracy"), "joules": round(sum(sum(j.values()) for j in h.joules.values()), 3),
                "rejections_stored": len(h.rejections), "publish_ms": round(1000 * self.publish_s, 3)}

    def rows(self) -> list[dict]:
        """Every device's row, built once per snapshot and finished round (O(devices))."""
        self.refresh()
        snap, h = self.current(), self.history
        with self._lock:
            if self._rows_seq == snap.seq and self._rows_rounds == len(h.rounds):
                return self._rows
            t0 = time.perf_counter()
            rej: dict[str, dict] = {}
            for (d, reason), n in snap.rejected_by.items():
                rej.setdefault(d, {})[reason] = n
            rows = []
            for d, c in snap.devices.items():
                link = snap.link.get(d) or {}
                ev = snap.evals.get(d) or h.evals.get(d)
                vals = h.values.get(d)
                rows.append({
                    "id": d, "class": c.get("class"), "runtime": c.get("runtime"), "board": c.get("board"),
                    "role": self.role_of(c.get("class")), "now": this_round(d, snap.plan) if snap.plan else None,
                    "online": d in snap.online, "last_seen": snap.last_seen.get(d),
                    "battery": link.get("battery", c.get("battery")), "rssi": link.get("rssi", c.get("rssi")),
                    "bytes_up": snap.bytes_up.get(d, 0), "bytes_down": snap.bytes_down.get(d, 0),
                    "joules": h.device_joules(d), "int8_accuracy": ev.get("accuracy") if ev else None,
                    "personal_accuracy": h.personal.get(d), "values_up": vals[0] if vals else None,
                    "values_down": vals[1] if vals else None, "rejected": rej.get(d, {}),
                    "failed": snap.failed.get(d)})
            self._rows, self._rows_seq, self._rows_rounds = rows, snap.seq, len(h.rounds)
            self._adopt_s = max(MIN_INTERVAL_S, (time.perf_counter() - t0) / VIEW_SHARE)
            return rows

    def devices(self, **query) -> dict:
        rows = self.rows()
        key = (self._rows_seq, self._rows_rounds, tuple(sorted(query.items())))
        got = self._pages.get(key)
        if got is None:
            if len(self._pages) > 32 or any(k[:2] != key[:2] for k in self._pages):
                self._pages.clear()
            got = self._pages[key] = page(rows, **query)
        return got

    def rounds(self, since: int = 0) -> list[dict]:
        self.refresh()
        return self.history.since(since)

    def round(self, rnd: int) -> dict | None:
        self.refresh()
        return self.history.full.get(rnd)

    def rejections(self, limit: int = 200) -> dict:
        self.refresh()
        snap = self.current()
        unattributed = {r: n for (d, r), n in snap.rejected_by.items() if d is None}
        return {"counts": snap.rejected, "unattributed": unattributed,
                "latest": self.history.latest_rejections(limit)}

    def counters(self) -> dict:
        """What /metrics exports (ui/metrics.py), as plain numbers."""
        self.refresh()
        snap, h = self.current(), self.history
        cls = {d: c.get("class", "unknown") for d, c in snap.devices.items()}
        out = {"round": snap.round, "rounds": len(h.rounds), "phase_s": dict(h.phase_s), "late": dict(h.late),
               "last": h.rounds[-1] if h.rounds else None, "bytes": Counter(), "taken": Counter(),
               "rejected": Counter(), "known": Counter(), "online": Counter(), "joules": Counter()}
        for d, n in snap.bytes_up.items():
            out["bytes"][("up", cls.get(d, "unknown"))] += n
        for d, n in snap.bytes_down.items():
            out["bytes"][("down", cls.get(d, "unknown"))] += n
        for (d, leaf), n in snap.taken.items():
            out["taken"][(leaf, cls.get(d, "unknown"))] += n
        for (d, reason), n in snap.rejected_by.items():
            out["rejected"][(reason, cls.get(d, "unknown"))] += n
        for d, c in cls.items():
            out["known"][c] += 1
            if d in snap.online:
                out["online"][c] += 1
        for d, phases in h.joules.items():
            for ph, j in phases.items():
                out["joules"][(cls.get(d, "unknown"), ph)] += j
        return out
