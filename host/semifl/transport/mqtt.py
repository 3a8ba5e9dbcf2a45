"""The host's MQTT link (paho-mqtt 2.x). Callbacks only put messages into a bounded inbox; the session's
thread drains it (service/session.py: Session.dispatch takes each message from here)."""
from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections import Counter
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from semifl.protocol import wire

from . import Link

log = logging.getLogger("semifl.transport")


class BrokerError(ConnectionError):
    """The broker cannot be reached, or it refused us; the message says which and what to check."""


def parse_broker_url(url: str) -> tuple[str, int]:
    u = urlparse(url)
    if u.scheme not in ("mqtt", "tcp") or not u.hostname:
        raise ValueError(f"broker URL must look like mqtt://[user:password@]host:port, got {url!r}")
    return u.hostname, u.port or 1883


def broker_credentials(url: str) -> tuple[str | None, str | None]:
    """(username, password) from mqtt://user:password@host:port; (None, None) without them."""
    u = urlparse(url)
    return u.username, u.password


def no_delay(client, userdata, sock):
    """Disable Nagle: a round is a chain of small request/answer messages, and Nagle with delayed
    ACKs adds ~40 ms to each link of that chain."""
    if hasattr(sock, "setsockopt"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class HostLink(Link):
    """Host side of the broker connection: publish with byte accounting, receive into `inbox`."""

    def __init__(self, url: str, client_id: str = "semifl-host", inbox_size: int = 100_000,
                 max_payload: int = 1 << 20):
        self.host, self.port = parse_broker_url(url)
        self.url = url
        self.inbox: queue.Queue = queue.Queue(maxsize=inbox_size)
        self.max_payload = max_payload
        self.dropped = Counter()          # reason -> messages dropped before the codec saw them
        self.bytes_to = Counter()         # topic -> bytes published
        self._connected = threading.Event()
        self._refused: str | None = None     # the broker's reason when its CONNACK says no
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self.client.max_inflight_messages_set(256)
        self.client.max_queued_messages_set(0)
        user, password = broker_credentials(url)
        if user:   # an authenticated broker (tools/mosquitto/semifl.conf): the host's own account
            self.client.username_pw_set(user, password)
        self.client.will_set(wire.host_topic("presence"), b"offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_socket_open = no_delay
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._refused = str(reason_code)
            self._connected.set()
            return
        # what devices send, and only that: tasks and per-device blobs the host publishes do not echo back
        client.subscribe([(wire.ROOT + "/dev/+/" + leaf, 1) for leaf in (wire.T_CAPS, wire.T_PRESENCE, wire.T_STATUS, wire.T_UP)])
        client.publish(wire.host_topic("presence"), b"online", qos=1, retain=True)
        self._connected.set()

    def _on_message(self, client, userdata, msg):
        if len(msg.payload) > self.max_payload:
            # counted here so an oversized message never reaches the queue or the codec
            self.dropped["oversized"] += 1
            try:
                self.inbox.put_nowait(("_rejected", msg.topic, "oversized", len(msg.payload)))
            except queue.Full:
                pass
            return
        try:
            self.inbox.put_nowait((msg.topic, msg.payload))
        except queue.Full:
            self.dropped["inbox_full"] += 1

    def connect(self, timeout: float = 30.0) -> "HostLink":
        where = f"the broker at {self.host}:{self.port}"
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as e:   # refused, unknown host, unreachable network
            raise BrokerError(f"cannot reach {where}: {e.strerror or e} (is it running? check --broker; "
                              f"`semifl broker` starts one)") from None
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise BrokerError(f"{where} accepted the connection but did not answer within {timeout:.0f} s")
        if self._refused:
            self.close()
            raise BrokerError(f"{where} refused the host: {self._refused} (check the user and password in --broker)")
        return self

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False):
        self.bytes_to[topic] += len(payload)
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def publish_json(self, topic: str, obj: dict, retain: bool = False):
        obj = dict(obj, v=wire.VERSION)
        return self.publish(topic, wire.encode_json(obj), retain=retain)

    def get(self, timeout: float):
        try:
            return self.inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def close(self):
        self.client.publish(wire.host_topic("presence"), b"offline", qos=1, retain=True)
        time.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()
