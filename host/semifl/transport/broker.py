"""Embedded MQTT broker (amqtt) in a background thread, so one command works on a fresh machine.

Production and the scale tests use Mosquitto; everything talks to either through `--broker mqtt://host:port`.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _SnapshotDict(dict):
    """amqtt 0.12.1 iterates `Broker._subscriptions` across awaits (when a client connects, and in every
    broadcast); a client subscribing meanwhile raised 'dictionary changed size during iteration' and left
    the connecting client with no message loop. Iterating over snapshots closes that race."""

    def __iter__(self):
        return iter(list(dict.keys(self)))

    def items(self):
        return list(dict.items(self))

    def keys(self):
        return list(dict.keys(self))

    def values(self):
        return list(dict.values(self))


def _own_retained_only(broker) -> None:
    """amqtt 0.12.1, on every client connect, sends the client the retained messages of *every* topic
    filter any client subscribed to (it means to do so for a resumed session's own filters). Devices then
    received, e.g., every other device's retained presence. Restrict it to filters this session holds."""
    original = broker._publish_retained_messages_for_subscription

    async def publish_retained(subscription, session):
        if any(s is session for s, _ in broker._subscriptions.get(subscription[0], ())):
            await original(subscription, session)

    broker._publish_retained_messages_for_subscription = publish_retained


def _close_connections(broker) -> None:
    """amqtt 0.12.1 closes a client's StreamWriter only after draining it; when the client has already
    gone (a killed device, a client that drops the socket without DISCONNECT) drain raises and the
    writer, its transport and socket are left open until garbage collection warns (ResourceWarning).
    Close each connection's writer when amqtt is done with it."""
    original = broker.stream_connected

    async def stream_connected(reader, writer, listener_name):
        try:
            await original(reader, writer, listener_name)
        finally:
            writer.close()

    broker.stream_connected = stream_connected


class EmbeddedBroker:
    """amqtt broker on its own event loop thread. `url` is what clients connect to."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host, self.port = host, port or free_port(host)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="amqtt", daemon=True)
        self._broker = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> "EmbeddedBroker":
        from amqtt.broker import Broker  # imported here: only the embedded path needs amqtt

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._thread.start()

        async def _start():
            self._broker = Broker(config)
            self._broker._subscriptions = _SnapshotDict(self._broker._subscriptions)
            _own_retained_only(self._broker)
            _close_connections(self._broker)
            await self._broker.start()

        asyncio.run_coroutine_threadsafe(_start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self._broker is not None:
            async def _shutdown(broker):
                await broker.shutdown()
                # connection handlers amqtt leaves waiting: cancelled, so that each closes its socket
                rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in rest:
                    t.cancel()
                if rest:
                    await asyncio.wait(rest, timeout=5)
                await asyncio.sleep(0)   # the transports' connection_lost callbacks run

            asyncio.run_coroutine_threadsafe(_shutdown(self._broker), self._loop).result(timeout=40)
            self._broker = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
