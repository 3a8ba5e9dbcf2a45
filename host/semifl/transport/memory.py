"""An in-process broker: the link of in-process runs (`semifl reproduce`, sweeps, benchmarks).

The host's `Session` and the devices' code talk to it exactly as they talk to MQTT: topics with `+`
and `#` filters, retained messages, chunked blobs. Delivery is FIFO and runs on the caller's thread
when the host asks for its next message, so a run is deterministic and never waits: when nothing is
left to deliver, time is virtual and a wait for a deadline returns at once (`MemoryLink.now`).
"""
from __future__ import annotations

from collections import Counter, deque

from semifl.protocol import wire

from . import Link


def matches(flt: str, topic: str) -> bool:
    """MQTT topic-filter matching (`+` one level, `#` the rest)."""
    f, t = flt.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


class MemoryBroker:
    def __init__(self):
        self.subs: list[tuple[str, object]] = []      # (filter, on_message(topic, payload))
        self.retained: dict[str, bytes] = {}
        self.queue: deque = deque()
        self._routes: dict[str, list] = {}            # topic -> its subscribers' callbacks (a cache)

    def subscribe(self, flt: str, on_message) -> None:
        self.subs.append((flt, on_message))
        self._routes.clear()
        for topic, payload in self.retained.items():
            if matches(flt, topic):
                self.queue.append((on_message, topic, payload))

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        payload = bytes(payload)
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
        route = self._routes.get(topic)
        if route is None:
            route = self._routes[topic] = [cb for flt, cb in self.subs if matches(flt, topic)]
        for cb in route:
            self.queue.append((cb, topic, payload))

    def deliver(self) -> int:
        """Hand every queued message to its subscriber; what they publish meanwhile goes too."""
        n = 0
        while self.queue:
            cb, topic, payload = self.queue.popleft()
            cb(topic, payload)
            n += 1
        return n


class MemoryLink(Link):
    """The host's side of a `MemoryBroker`: the interface of `transport.mqtt.HostLink`."""

    def __init__(self, broker: MemoryBroker):
        self.broker = broker
        self.inbox: deque = deque()
        self.bytes_to = Counter()
        self.t = 0.0    # virtual seconds: advanced only by waits that nothing can end
        for leaf in (wire.T_CAPS, wire.T_PRESENCE, wire.T_STATUS, wire.T_UP):
            broker.subscribe(wire.ROOT + "/dev/+/" + leaf, lambda topic, payload: self.inbox.append((topic, payload)))

    def connect(self) -> "MemoryLink":
        return self

    def now(self) -> float:
        return self.t

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False):
        self.bytes_to[topic] += len(payload)
        self.broker.publish(topic, payload, retain)

    def get(self, timeout: float):
        if not self.inbox:
            self.broker.deliver()
        if self.inbox:
            return self.inbox.popleft()
        self.t += max(0.0, timeout)   # nothing will come: the wait ends, in virtual time
        return None

    def close(self):
        pass
