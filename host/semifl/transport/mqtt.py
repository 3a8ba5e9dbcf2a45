"""The host's MQTT link (paho-mqtt 2.x). Callbacks only put messages into a bounded inbox; the session's
thread drains it (service/session.py: Session.dispatch takes each message from here)."""
from __future__ import annotations

import logging
import os
import queue
import socket
import ssl
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


SCHEMES = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}


def parse_broker_url(url: str) -> tuple[str, int]:
    u = urlparse(url)
    if u.scheme not in SCHEMES or not u.hostname:
        raise ValueError(f"broker URL must look like mqtt://[user[:password]@]host[:port] (mqtts:// for TLS), got {url!r}")
    try:
        return u.hostname, u.port or SCHEMES[u.scheme]
    except ValueError:   # a port that is not a number
        raise ValueError(f"broker URL {url!r}: the port must be a number") from None


def is_tls(url: str) -> bool:
    return urlparse(url).scheme in ("mqtts", "ssl")


def is_loopback(url: str) -> bool:
    """Whether the broker in `url` is on this machine's loopback (nothing beyond it can listen in)."""
    return is_loopback_host(parse_broker_url(url)[0])


def is_loopback_host(host: str) -> bool:
    """Whether `host` (a name or an address to listen on or connect to) is this machine's loopback."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def broker_credentials(url: str) -> tuple[str | None, str | None]:
    """(username, password) from mqtt://user:password@host:port; (None, None) without them. A user
    without a password in the URL takes it from $SEMIFL_BROKER_PASSWORD (kept out of argv, which any
    local user can read with `ps`; the CLI's --broker-password-file sets it)."""
    u = urlparse(url)
    password = u.password
    if u.username and password is None:
        password = os.environ.get("SEMIFL_BROKER_PASSWORD")
    return u.username, password


def tls_settings(url: str, ca: str | None = None, cert: str | None = None, key: str | None = None) -> dict | None:
    """paho's tls_set arguments for an mqtts:// URL (None for mqtt://): the CA that signed the broker's
    certificate (`ca`, else $SEMIFL_BROKER_CA, else the system's), and a client certificate if given
    (else $SEMIFL_BROKER_CERT / $SEMIFL_BROKER_KEY)."""
    if not is_tls(url):
        return None
    cert = cert or os.environ.get("SEMIFL_BROKER_CERT")
    return {"ca_certs": ca or os.environ.get("SEMIFL_BROKER_CA"), "certfile": cert,
            "keyfile": (key or os.environ.get("SEMIFL_BROKER_KEY")) if cert else None}


def no_delay(client, userdata, sock):
    """Disable Nagle: a round is a chain of small request/answer messages, and Nagle with delayed
    ACKs adds ~40 ms to each link of that chain."""
    if hasattr(sock, "setsockopt"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class HostLink(Link):
    """Host side of the broker connection: publish with byte accounting, receive into `inbox`."""

    def __init__(self, url: str, client_id: str = "semifl-host", inbox_size: int = 100_000,
                 max_payload: int = 1 << 20, inbox_bytes: int = 256 << 20, ca: str | None = None, cert: str | None = None,
                 key: str | None = None, password: str | None = None, subs: list[str] | None = None,
                 presence: str | None = None, v5: bool = False, instance: bytes = b""):
        """url: mqtt[s]://[user[:password]@]host:port; mqtts verifies the broker against `ca` (see
        tls_settings) and may present a client certificate; `password` overrides the URL's. The inbox
        holds at most `inbox_size` messages and `inbox_bytes` of payload: a flood waits in the broker
        (or is dropped and counted), not in the host's memory. subs: the topics to take (default what
        devices send); presence: where this client says online/offline (default the host's), each
        followed by `instance` (a process of a name that another took over says offline without
        confusing anyone); v5: MQTT v5 (shared subscriptions, `$share/...`) instead of v3.1.1."""
        self.host, self.port = parse_broker_url(url)
        self.url = url
        self.inbox: queue.Queue = queue.Queue(maxsize=inbox_size)
        self.inbox_bytes, self.queued_bytes = inbox_bytes, 0
        self._queued_lock = threading.Lock()
        self.max_payload = max_payload
        self.dropped = Counter()          # reason -> messages dropped before the codec saw them
        self.bytes_to = Counter()         # topic -> bytes published
        self._connected = threading.Event()
        self._refused: str | None = None     # the broker's reason when its CONNACK says no
        # what devices send, and only that: tasks and per-device blobs the host publishes do not echo back
        self.subs = subs if subs is not None else [wire.ROOT + "/dev/+/" + leaf for leaf in
                                                   (wire.T_CAPS, wire.T_PRESENCE, wire.T_STATUS, wire.T_UP)]
        self.presence = presence or wire.host_topic("presence")
        self.online, self.offline = b"online" + instance, b"offline" + instance
        if v5:
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self.client.max_inflight_messages_set(256)
        self.client.max_queued_messages_set(0)
        user, url_password = broker_credentials(url)
        if user:   # an authenticated broker (tools/mosquitto/semifl.conf): the host's own account
            self.client.username_pw_set(user, password or url_password)
        self.tls = tls_settings(url, ca, cert, key)
        if self.tls:
            self.client.tls_set(**self.tls)
        self.client.will_set(self.presence, self.offline, qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_socket_open = no_delay
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.subscribed = threading.Event()   # the broker answered the subscription
        self.sub_refused: list[str] = []      # the topics it refused (e.g. `$share/...` on a broker without it)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._refused = str(reason_code)
            self._connected.set()
            return
        client.subscribe([(t, 1) for t in self.subs])
        client.publish(self.presence, self.online, qos=1, retain=True)
        self._connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.sub_refused = [t for t, rc in zip(self.subs, reason_codes) if rc.is_failure]
        self.subscribed.set()

    def _on_message(self, client, userdata, msg):
        if len(msg.payload) > self.max_payload:
            # counted here so an oversized message never reaches the queue or the codec
            self.dropped["oversized"] += 1
            try:
                self.inbox.put_nowait(("_rejected", msg.topic, "oversized", len(msg.payload)))
            except queue.Full:
                pass
            return
        n = len(msg.payload)
        with self._queued_lock:
            if self.queued_bytes + n > self.inbox_bytes:
                self.dropped["inbox_full"] += 1
                return
            self.queued_bytes += n
        try:
            self.inbox.put_nowait((msg.topic, msg.payload))
        except queue.Full:
            self.dropped["inbox_full"] += 1
            with self._queued_lock:
                self.queued_bytes -= n

    def connect(self, timeout: float = 30.0) -> "HostLink":
        where = f"the broker at {self.host}:{self.port}"
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except ssl.SSLError as e:   # a certificate that does not verify, or a broker not speaking TLS
            raise BrokerError(f"TLS with {where} failed: {e.reason or e} (check the CA, --broker-ca, "
                              f"and that the port is the broker's TLS listener)") from None
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
        # listening once this returns: a device's message sent before the broker took the subscription
        # (a non-retained caps or status) would be lost to the host (seen under load, test_bad_input)
        if not self.subscribed.wait(timeout):
            self.close()
            raise BrokerError(f"{where} did not answer the host's subscription within {timeout:.0f} s")
        return self

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False):
        self.bytes_to[topic] += len(payload)
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def publish_json(self, topic: str, obj: dict, retain: bool = False):
        obj = dict(obj, v=wire.VERSION)
        return self.publish(topic, wire.encode_json(obj), retain=retain)

    def get(self, timeout: float):
        try:
            msg = self.inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if msg[0] != "_rejected":
            with self._queued_lock:
                self.queued_bytes -= len(msg[1])
        return msg

    def close(self):
        self.client.publish(self.presence, self.offline, qos=1, retain=True)
        time.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()
