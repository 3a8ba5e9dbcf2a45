"""Fleet registry: who is there (presence via last will), what each can do (capability reports, with
history in the store), and what each said about its link this round.

Every message costs O(1) here, whatever the fleet's size: who is online and who a round still waits for
are sets kept as reports arrive, never recomputed over the fleet per message (10,000 devices answering an
announcement would otherwise cost 10^8 set operations a round)."""
from __future__ import annotations

import logging
import time

from semifl.protocol import wire

log = logging.getLogger("semifl.registry")

REQUIRED_CAPS = {"id": str, "class": str, "ram": int, "flash": int, "cpu_score": (int, float),
                 "battery": (int, float), "n_samples": int, "hist": list, "raw_ok": bool, "max_chunk": int}
DEVICE_CLASSES = ("mcu", "pi")


def validate_caps(dev_id: str, caps: dict) -> dict:
    for key, typ in REQUIRED_CAPS.items():
        if not isinstance(caps.get(key), typ) or isinstance(caps.get(key), bool) and typ is int:
            raise wire.WireError("schema", f"caps.{key} missing or not {typ}")
    if caps["id"] != dev_id:
        raise wire.WireError("schema", f"caps.id {caps['id']!r} does not match topic id {dev_id!r}")
    if caps["class"] not in DEVICE_CLASSES:
        raise wire.WireError("schema", f"caps.class must be one of {DEVICE_CLASSES}")
    if wire.VERSION not in caps.get("proto", [wire.VERSION]):
        raise wire.WireError("version", f"device speaks {caps.get('proto')}, host speaks v{wire.VERSION}")
    if not 256 <= caps["max_chunk"] <= 1 << 20:
        raise wire.WireError("schema", "caps.max_chunk out of 256..1 MiB")
    return caps


class Registry:
    def __init__(self, store):
        self.store = store
        self.devices = {d: v["caps"] for d, v in store.devices().items()}
        self.present = {d for d, v in store.devices().items() if v["online"]}  # by presence messages
        self.online: set[str] = self.present & set(self.devices)   # connected and reported: kept, not computed
        self.link: dict[str, dict] = {}      # device -> latest {"round", "rssi", "battery"}
        self.last_seen: dict[str, float] = {}
        self.ready_round: int | None = None  # the round whose `ready` reports are being counted
        self.ready: set[str] = set()         # who answered it (online or not since)
        self.unready: set[str] = set()       # online devices it still waits for (`expect_ready`)
        self._not_waited: frozenset = frozenset()

    def on_caps(self, dev_id: str, caps: dict) -> None:
        validate_caps(dev_id, caps)
        if dev_id not in self.devices:
            ram = caps["ram"]
            log.info("%s joined: %s, %s on %s, %d samples, %s RAM", dev_id, caps["class"], caps.get("runtime"),
                     caps.get("board"), caps["n_samples"], f"{ram / 1e6:.0f} MB" if ram >= 1e6 else f"{ram / 1e3:.0f} kB")
        self.devices[dev_id] = caps
        self.last_seen[dev_id] = time.time()
        self.store.upsert_device(dev_id, caps)
        if dev_id in self.present:
            self._came_online(dev_id)

    def on_presence(self, dev_id: str, payload: bytes) -> None:
        if payload not in (b"online", b"offline"):
            raise wire.WireError("malformed", "presence must be online|offline")
        up = payload == b"online"
        # presence alone says who is connected (a retained caps report may outlive its device)
        if up != (dev_id in self.present) and dev_id in self.devices:
            log.info("%s is %s", dev_id, "online" if up else "offline")
        (self.present.add if up else self.present.discard)(dev_id)
        if dev_id in self.devices:
            self.store.set_online(dev_id, up)
            if up:
                self._came_online(dev_id)
            else:
                self.online.discard(dev_id)
                self.unready.discard(dev_id)   # gone: nothing to wait for

    def _came_online(self, dev_id: str) -> None:
        self.online.add(dev_id)
        if self.ready_round is not None and dev_id not in self.ready and dev_id not in self._not_waited:
            self.unready.add(dev_id)   # joined while a round waits: it gets the retained announcement too

    def on_ready(self, dev_id: str, msg: dict) -> None:
        self.link[dev_id] = {"round": msg["round"], "rssi": msg.get("rssi"), "battery": msg.get("battery", 1.0)}
        self.last_seen[dev_id] = time.time()
        if msg["round"] != self.ready_round:
            self.ready_round, self.ready, self.unready = msg["round"], set(), set()
        self.ready.add(dev_id)
        self.unready.discard(dev_id)

    def expect_ready(self, rnd: int, not_waited=()) -> None:
        """Start waiting for round `rnd`'s `ready` reports from every online device but `not_waited`
        (devices still busy with an earlier task); `unready` then says who is still missing."""
        if rnd != self.ready_round:
            self.ready_round, self.ready = rnd, set()
        self._not_waited = frozenset(not_waited)
        self.unready = self.online - self.ready - self._not_waited

    def answered(self, rnd: int) -> set[str]:
        """Online devices that answered round `rnd`'s announcement."""
        return self.ready & self.online if rnd == self.ready_round else set()

    def known(self, dev_id: str) -> bool:
        return dev_id in self.devices

    def view(self, rnd: int) -> dict[str, dict]:
        """Online devices that answered this round's announcement: caps merged with the link report."""
        out = {}
        for d in self.online:
            link = self.link.get(d)
            if link and link["round"] == rnd:
                merged = dict(self.devices[d])
                merged.update({k: v for k, v in link.items() if v is not None})
                out[d] = merged
        return out
