"""The host's state in SQLite (WAL): devices, capability history, rounds, accepted contributions,
checkpoints, rejections. A restarted host reads everything back from here and resumes.

The payloads of accepted contributions (updates, sample batches) are not written through SQLite: they go
to the spool (`service/spool.py`, append-only files next to the database, `<db>-spool/`), and the
`contributions` table keeps the small row (round, device, kind, n, when). `accept` writes the spool
record before the row, so a row always has its payload; after a power cut a row whose record did not
reach the disk is dropped on open (the round asks that device again)."""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import zlib

import numpy as np

from semifl.protocol.tensors import decode_arrays, encode_arrays

from .spool import Spool

log = logging.getLogger("semifl.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (id TEXT PRIMARY KEY, caps TEXT NOT NULL, online INTEGER NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS caps_history (id TEXT NOT NULL, t REAL NOT NULL, caps TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (round INTEGER PRIMARY KEY, state TEXT NOT NULL, plan TEXT,
    uploaders TEXT, metrics TEXT, started REAL, finished REAL);
CREATE TABLE IF NOT EXISTS contributions (round INTEGER NOT NULL, device TEXT NOT NULL, kind TEXT NOT NULL,
    n INTEGER NOT NULL, blob BLOB NOT NULL, accepted REAL NOT NULL, PRIMARY KEY (round, device, kind));
CREATE TABLE IF NOT EXISTS checkpoints (round INTEGER PRIMARY KEY, params BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS strategy_state (name TEXT PRIMARY KEY, digest INTEGER NOT NULL, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS artifacts (device TEXT NOT NULL, kind TEXT NOT NULL, version INTEGER NOT NULL,
    round INTEGER NOT NULL, sha256 TEXT NOT NULL, epsilon REAL, delta REAL, blob BLOB NOT NULL,
    PRIMARY KEY (device, kind, version));
CREATE TABLE IF NOT EXISTS rejections (t REAL NOT NULL, round INTEGER, device TEXT, reason TEXT NOT NULL,
    detail TEXT);
"""


class Store:
    def __init__(self, path: str, payloads: bool = True):
        """payloads False (or path ":memory:"): nothing needs to outlive the process (an in-process
        run): the payloads go to anonymous temporary files, never synced."""
        self.path, self.payloads = path, payloads
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a power cut loses no committed round
        self.db.executescript(SCHEMA)
        self._digests = dict(self.db.execute("SELECT name, digest FROM strategy_state"))
        token = self.get_meta("spool_token")
        if token is None:   # names this store's spool files: another run's in the same folder are not ours
            token = os.urandom(8).hex()
            self.set_meta("spool_token", token)
        durable = payloads and path != ":memory:"
        self.spool = Spool(path + "-spool" if durable else None, token)
        if durable:
            self._drop_lost()

    def _drop_lost(self) -> None:
        """Rows of unfinished rounds whose payload is neither in the table (a store written before the
        spool) nor in the spool: their record was lost with a power cut; the round asks for it again."""
        open_rounds = [r for (r,) in self.db.execute("SELECT round FROM rounds WHERE state != 'done'")]
        for rnd in open_rounds:
            have = self.spool.keys(rnd)
            lost = [(d, k) for d, k, b in self.db.execute(
                "SELECT device, kind, length(blob) FROM contributions WHERE round=?", (rnd,)) if not b and (d, k) not in have]
            for d, k in lost:
                log.warning("round %d: %s's accepted %s is not in the spool (lost with a power cut): asked again", rnd, d, k)
                self.db.execute("DELETE FROM contributions WHERE round=? AND device=? AND kind=?", (rnd, d, k))

    def close(self):
        done = self.last_completed_round()
        if done and self.spool.rounds() and min(self.spool.rounds()) <= done:
            self._release_spool(done)   # what the last round's own release left behind
        self.spool.close()
        self.db.close()

    # --- meta -------------------------------------------------------------------------------------
    def get_meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    # --- devices ----------------------------------------------------------------------------------
    def upsert_device(self, dev_id: str, caps: dict) -> None:
        now = time.time()
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT INTO devices VALUES (?, ?, 1, ?, ?) ON CONFLICT(id) DO UPDATE SET caps=excluded.caps, "
                            "online=1, last_seen=excluded.last_seen", (dev_id, json.dumps(caps), now, now))
            self.db.execute("INSERT INTO caps_history VALUES (?, ?, ?)", (dev_id, now, json.dumps(caps)))

    def set_online(self, dev_id: str, online: bool) -> None:
        self.db.execute("UPDATE devices SET online=?, last_seen=? WHERE id=?", (int(online), time.time(), dev_id))

    def devices(self) -> dict[str, dict]:
        return {r[0]: {"caps": json.loads(r[1]), "online": bool(r[2]), "first_seen": r[3], "last_seen": r[4]}
                for r in self.db.execute("SELECT id, caps, online, first_seen, last_seen FROM devices")}

    def caps_history(self, dev_id: str) -> list[dict]:
        return [json.loads(r[0]) for r in self.db.execute("SELECT caps FROM caps_history WHERE id=? ORDER BY t", (dev_id,))]

    # --- rounds -----------------------------------------------------------------------------------
    def begin_round(self, rnd: int, plan: dict) -> None:
        self.db.execute("INSERT INTO rounds (round, state, plan, started) VALUES (?, 'collecting', ?, ?) "
                        "ON CONFLICT(round) DO UPDATE SET plan=excluded.plan", (rnd, json.dumps(plan), time.time()))

    def round_row(self, rnd: int) -> dict | None:
        r = self.db.execute("SELECT state, plan, uploaders, metrics FROM rounds WHERE round=?", (rnd,)).fetchone()
        if not r:
            return None
        return {"state": r[0], "plan": json.loads(r[1]) if r[1] else None,
                "uploaders": json.loads(r[2]) if r[2] else None, "metrics": json.loads(r[3]) if r[3] else None}

    def set_uploaders(self, rnd: int, uploaders: list[str]) -> None:
        self.db.execute("UPDATE rounds SET uploaders=? WHERE round=?", (json.dumps(uploaders), rnd))

    def accept(self, rnd: int, device: str, kind: str, n: int, blob, crc: int | None = None) -> None:
        """An accepted update or sample batch is durable before the device hears back: its payload in
        the spool (crc: the payload's CRC-32 where the caller has it), then its row."""
        self.spool.append(rnd, (device, kind), blob, crc)
        self.db.execute("INSERT INTO contributions VALUES (?, ?, ?, ?, x'', ?)", (rnd, device, kind, n, time.time()))

    def keep_artifact(self, device: str, kind: str, rnd: int, sha256: str, epsilon: float | None, delta: float | None,
                      blob: bytes) -> int:
        """A device's artifact (IoTSL: its generator), kept for the run with its privacy spent; each new
        one is the device's next version. -> the version."""
        (v,) = self.db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM artifacts WHERE device=? AND kind=?",
                               (device, kind)).fetchone()
        eps = None if epsilon is None or epsilon == float("inf") else epsilon
        self.db.execute("INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (device, kind, v, rnd, sha256, eps, delta, blob))
        return v

    def artifacts(self, kind: str) -> dict[str, dict]:
        """The latest artifact of `kind` per device: {device: {"version", "round", "sha256", "epsilon", "delta", "blob"}}."""
        rows = self.db.execute("SELECT device, version, round, sha256, epsilon, delta, blob FROM artifacts WHERE kind=? "
                               "ORDER BY device, version", (kind,)).fetchall()
        return {r[0]: dict(zip(("version", "round", "sha256", "epsilon", "delta", "blob"), r[1:])) for r in rows}

    def contributions(self, rnd: int) -> list[tuple[str, str, int, bytes]]:
        """(device, kind, n, payload) of what round `rnd` accepted, payloads read back whole (b"" once
        the round is done): for small payloads; updates are read one at a time (`contribution`)."""
        return [(d, k, n, b or self.spool.get(rnd, (d, k)) or b"") for d, k, n, b in self.db.execute(
                "SELECT device, kind, n, blob FROM contributions WHERE round=? ORDER BY device, kind", (rnd,))]

    def last_samples_rounds(self) -> dict[str, int]:
        """device -> the latest round whose CL samples the store holds from it (a late batch, kept in the
        round after its own, counts for its own; an async run's "samples/<version>" for its version)."""
        out: dict[str, int] = {}
        for d, k, r in self.db.execute("SELECT device, kind, MAX(round) FROM contributions WHERE kind IN "
                                       "('samples', 'late_samples') OR kind LIKE 'samples/%' GROUP BY device, kind"):
            r = int(k[8:]) if k.startswith("samples/") else r - (k == "late_samples")
            out[d] = max(out.get(d, 0), r)
        return out

    def contribution_keys(self, rnd: int) -> list[tuple[str, str, int]]:
        """(device, kind, n) of what round `rnd` accepted, without the payloads."""
        return self.db.execute("SELECT device, kind, n FROM contributions WHERE round=? ORDER BY device, kind",
                               (rnd,)).fetchall()

    def contribution(self, rnd: int, device: str, kind: str) -> bytes:
        """The payload of one accepted contribution (from the spool; a store written before it had
        them in the table)."""
        got = self.spool.get(rnd, (device, kind))
        if got is not None:
            return got
        return self.db.execute("SELECT blob FROM contributions WHERE round=? AND device=? AND kind=?",
                               (rnd, device, kind)).fetchone()[0]

    def has_contribution(self, rnd: int, device: str, kind: str) -> bool:
        return self.db.execute("SELECT 1 FROM contributions WHERE round=? AND device=? AND kind=?",
                               (rnd, device, kind)).fetchone() is not None

    def finish_round(self, rnd: int, params: list[np.ndarray], metrics: dict,
                     strategy_state: tuple[dict, dict[str, list[np.ndarray]]] | None = None) -> None:
        """The new global model, the strategy's state after it and the round's metrics land in one
        transaction. Strategy arrays are rewritten only when their contents changed (a sample memory
        of megabytes that stopped growing costs a checksum per round, not a write)."""
        blob = encode_arrays({"round": rnd}, params)
        self.spool.sync(rnd)   # what the round merged is on disk before the round counts as done
        writes, gone = [], []
        if strategy_state is not None:
            meta, arrays = strategy_state
            for name, arrs in arrays.items():
                digest = _digest(arrs)
                if self._digests.get(name) != digest:
                    writes.append((name, digest, encode_arrays({"name": name}, arrs)))
            gone = [n for n in self._digests if n not in arrays]
        with self.db:
            self.db.execute("BEGIN")
            if strategy_state is not None:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('strategy_state', ?)",
                                (json.dumps(dict(strategy_state[0], round=rnd)),))
                self.db.executemany("INSERT OR REPLACE INTO strategy_state VALUES (?, ?, ?)", writes)
                self.db.executemany("DELETE FROM strategy_state WHERE name=?", [(n,) for n in gone])
            self.db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?)", (rnd, blob))
            self.db.execute("UPDATE rounds SET state='done', metrics=?, finished=? WHERE round=?",
                            (json.dumps(metrics), time.time(), rnd))
            # the round's payloads now live in the checkpoint; keep the rows as an audit trail
            self.db.execute("UPDATE contributions SET blob=x'' WHERE round=?", (rnd,))
            self.db.execute("DELETE FROM checkpoints WHERE round < ? AND round % 50 != 0", (rnd - 2,))
        for name, digest, _ in writes:   # only once committed
            self._digests[name] = digest
        for name in gone:
            self._digests.pop(name, None)
        self._release_spool(rnd)

    def _release_spool(self, rnd: int) -> None:
        """The spool files of rounds up to `rnd`, once the commit that finished `rnd` is on disk: WAL +
        NORMAL syncs at a checkpoint, so one that completes makes it so; else they wait for the next."""
        if self.spool.folder is not None:
            busy, frames, done = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if busy or frames != done:
                return
        self.spool.drop(rnd)

    def strategy_state(self) -> tuple[dict, dict[str, list[np.ndarray]]] | None:
        """(meta, arrays) as of the last completed round, or None if no strategy state was kept."""
        meta = self.get_meta("strategy_state")
        if meta is None:
            return None
        arrays = {name: [a.copy() for a in decode_arrays(blob)[1]]
                  for name, blob in self.db.execute("SELECT name, blob FROM strategy_state")}
        return meta, arrays

    def last_completed_round(self) -> int:
        r = self.db.execute("SELECT MAX(round) FROM rounds WHERE state='done'").fetchone()
        return r[0] or 0

    def checkpoint(self, rnd: int) -> list[np.ndarray] | None:
        r = self.db.execute("SELECT params FROM checkpoints WHERE round=?", (rnd,)).fetchone()
        return [a.copy() for a in decode_arrays(r[0])[1]] if r else None

    def round_metrics(self) -> list[dict]:
        return [json.loads(r[0]) for r in self.db.execute("SELECT metrics FROM rounds WHERE state='done' ORDER BY round")]

    # --- rejections -------------------------------------------------------------------------------
    def reject(self, rnd: int | None, device: str | None, reason: str, detail: str) -> None:
        self.db.execute("INSERT INTO rejections VALUES (?, ?, ?, ?, ?)", (time.time(), rnd, device, reason, detail[:500]))

    def rejections(self) -> list[tuple]:
        return self.db.execute("SELECT round, device, reason, detail FROM rejections ORDER BY t").fetchall()


def _digest(arrays: list[np.ndarray]) -> int:
    """CRC32 over dtypes, shapes and bytes: cheap enough to run on every array every round."""
    c = 0
    for a in arrays:
        a = np.ascontiguousarray(a)
        c = zlib.crc32(f"{a.dtype.str}{a.shape}".encode(), c)
        c = zlib.crc32(memoryview(a).cast("B"), c)
    return c
