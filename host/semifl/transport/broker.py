"""Embedded MQTT broker (amqtt) in a background thread, so one command works on a fresh machine.

Production and the scale tests use Mosquitto; everything talks to either through `--broker mqtt://host:port`
(or `mqtts://` over TLS). `EmbeddedBroker()` alone is anonymous on loopback (tests, in-process tools);
given a password file (and TLS files) it enforces what tools/mosquitto/semifl.conf enforces: no anonymous
client, each device's password or client certificate, each device confined to its own topics
(`FleetACLPlugin`, the rules of tools/mosquitto/semifl.acl) and Mosquitto's maximum packet size.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

log = logging.getLogger("semifl.transport.broker")

HOST_USER = "semifl-host"          # the host service's account (transport/certs.py makes its password)
ROOT = "semifl"
MAX_PACKET = 4 * 1024 * 1024       # tools/mosquitto/semifl.conf: max_packet_size 4194304
_PEER_CN: dict[tuple, str] = {}    # (peer address, port) -> CN of its verified client certificate
_BAD_ID = set("/+#")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, what: str = "nothing", host: str = "127.0.0.1", alive=None) -> None:
    """Until something accepts connections on host:port (a broker started in another process), or
    TimeoutError naming `what` after `timeout` s; alive() False ends the wait at once (the process exited)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and (alive is None or alive()):
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} listening on {host}:{port} after {timeout:.0f} s")


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


class FleetAuthPlugin(BaseAuthPlugin):
    """Each client by its account: a password checked against the `$7$` password file (the format
    Mosquitto reads), or, where the listener requires certificates, a verified client certificate
    whose CN is the username. A device's client id must be its username (Mosquitto's
    use_username_as_clientid), so no client can take over another's session."""

    @dataclass
    class Config:
        password_file: str = ""
        require_certificate: bool = False

    def __init__(self, context) -> None:
        super().__init__(context)
        self.path = Path(self.config.password_file)
        self._stamp = None
        self._users = {}
        self.refused: Counter = Counter()

    @property
    def users(self) -> dict[str, str]:
        """The password file's accounts, read again when it changed: `semifl certs issue` (or a fleet's
        --certs) enrols a device while the broker runs, without a restart (Mosquitto needs a SIGHUP)."""
        from .certs import read_passwd

        st = self.path.stat()
        if (st.st_mtime_ns, st.st_size) != self._stamp:
            self._users, self._stamp = read_passwd(self.path), (st.st_mtime_ns, st.st_size)
        return self._users

    def _refuse(self, reason: str, session) -> bool:
        self.refused[reason] += 1
        log.warning("refused %s (client id %r) from %s: %s", session.username, session.client_id,
                    session.remote_address, reason)
        return False

    async def authenticate(self, *, session) -> bool:
        verdict = getattr(session, "_semifl_verdict", None)   # decided once, before amqtt acted on CONNECT
        if verdict is not None:
            return verdict
        session._semifl_verdict = verdict = self._decide(session)
        return verdict

    def _decide(self, session) -> bool:
        from .certs import verify_password

        cn = _PEER_CN.get((session.remote_address, session.remote_port))
        if self.config.require_certificate:
            if cn is None:
                return self._refuse("no client certificate", session)
            session.username = session.username or cn
            if session.username != cn:
                return self._refuse("username is not the certificate's CN", session)
        elif not session.username:
            return self._refuse("anonymous", session)
        user = session.username
        if set(user) & _BAD_ID:
            return self._refuse("username with a topic wildcard or level", session)
        if user != HOST_USER and session.client_id != user:
            return self._refuse("client id is not the username", session)
        if cn is None or not self.config.require_certificate:
            stored = self.users.get(user)
            if stored is None or not verify_password(session.password or "", stored):
                return self._refuse("wrong user or password", session)
        return True


def _within(topic: str, prefix: str) -> bool:
    return topic == prefix[:-1] or topic.startswith(prefix)


class FleetACLPlugin(BaseTopicPlugin):
    """tools/mosquitto/semifl.acl on the embedded broker: device <id> reads and writes only
    semifl/v1/dev/<id>/# and reads semifl/v1/host/#; the host reads and writes semifl/#. Filters are
    checked when subscribed (a wildcard reaching beyond those subtrees is refused) and every message
    again when delivered."""

    @dataclass
    class Config:
        root: str = ROOT + "/v1"

    async def topic_filtering(self, *, session=None, topic=None, action=None) -> bool:
        from amqtt.contexts import Action

        user = session.username if session else None
        if not user or not topic:
            return False
        if user == HOST_USER:
            return _within(topic, ROOT + "/")
        own = f"{self.config.root}/dev/{user}/"
        if _within(topic, own):
            return True
        return action != Action.PUBLISH and _within(topic, f"{self.config.root}/host/")


_reading = contextvars.ContextVar("semifl_broker_limit", default=None)   # (max_packet, close, counter)
_deferred = contextvars.ContextVar("semifl_broker_deferred", default=None)


def _limit_packets() -> None:
    """amqtt 0.12.1 reads a packet's whole remaining length (up to 256 MB) with readexactly, so a
    100 MB PUBLISH is buffered before anything looks at it. Check the length in the fixed header
    instead, as Mosquitto's max_packet_size does, and close the connection there. Installed once; the
    limit is the connection's own (a context variable its handler task carries)."""
    from amqtt.mqtt.packet import MQTTFixedHeader

    if getattr(MQTTFixedHeader, "_semifl_limited", False):
        return
    original = MQTTFixedHeader.from_stream.__func__

    async def from_stream(cls, reader):
        header = await original(cls, reader)
        limit = _reading.get()
        if header is not None and limit is not None and header.remaining_length + 5 > limit[0]:
            limit[2]["oversized_packet"] += 1
            log.warning("closed a connection: a packet of %d bytes (max %d)", header.remaining_length, limit[0])
            limit[1]()
            reader.feed_eof()
            return None
        return header

    MQTTFixedHeader.from_stream = classmethod(from_stream)
    MQTTFixedHeader._semifl_limited = True


def _secure_connections(broker, max_packet: int, refused: Counter) -> None:
    """Per connection: its packet limit, the CN of a verified client certificate, and authentication
    before amqtt acts on the CONNECT. amqtt 0.12.1 deletes the session of the client id a clean CONNECT
    names, and registers the new session under that id, before it checks the credentials: an anonymous
    client naming a device's id wiped its subscriptions. A refused client gets an id of its own instead,
    dropped with its connection (amqtt kept every refused session forever)."""
    original_connected, original_init = broker.stream_connected, broker._initialize_client_session
    original_delete = broker._delete_session
    serial = iter(range(1 << 62))

    async def stream_connected(reader, writer, listener_name):
        peer = writer.get_extra_info("peername")
        peer = tuple(peer[:2]) if peer else None
        tls = writer.get_extra_info("ssl_object")
        cert = tls.getpeercert() if tls is not None else None
        if cert and peer:
            cn = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
            if cn:
                _PEER_CN[peer] = cn[0]
        _reading.set((max_packet, writer.close, refused))
        mine = {}
        _deferred.set(mine)
        try:
            await original_connected(reader, writer, listener_name)
        except ConnectionError:   # the peer went away mid-handshake or mid-CONNACK: nothing left to do
            pass
        finally:
            _PEER_CN.pop(peer, None)
            if "refused_id" in mine:
                broker._sessions.pop(mine["refused_id"], None)

    async def delete_session(client_id):
        pending = _deferred.get()
        if pending is None or "deleting" not in pending:
            await original_delete(client_id)
        else:
            pending["deleting"].append(client_id)

    async def initialize(reader, writer, address, port):
        mine = _deferred.get()
        if mine is None:
            return await original_init(reader, writer, address, port)
        mine["deleting"] = []
        try:
            handler, session = await original_init(reader, writer, address, port)
        finally:
            pending = mine.pop("deleting")
        if await broker._authenticate(session, None):
            for client_id in pending:
                await original_delete(client_id)
        else:
            session.client_id = mine["refused_id"] = f"$refused/{next(serial)}"
        return handler, session

    broker.stream_connected = stream_connected
    broker._delete_session = delete_session
    broker._initialize_client_session = initialize


def _ssl_context(tls: "TLSFiles", require_certificate: bool):
    """amqtt's own context with verify_mode fixed at CERT_OPTIONAL; ours requires a client
    certificate when asked (Mosquitto's require_certificate) and TLS 1.2 at least."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.cafile))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.certfile), str(tls.keyfile))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_certificate else ssl.CERT_OPTIONAL
    return ctx


@dataclass(frozen=True)
class TLSFiles:
    """The broker's TLS listener: the fleet CA (to verify client certificates), its certificate, its key."""
    cafile: Path
    certfile: Path
    keyfile: Path


class EmbeddedBroker:
    """amqtt broker on its own event loop thread. `url` is what clients connect to.

    password_file: enforce accounts (no anonymous client) and the fleet ACL; tls: a TLS listener (the
    only one) with these files; require_certificate: clients must present a certificate of the CA.
    `EmbeddedBroker.secured(certs_dir)` takes all three from a `semifl certs init` folder."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, password_file: str | Path | None = None,
                 tls: TLSFiles | None = None, require_certificate: bool = False, max_packet: int = MAX_PACKET):
        self.host, self.port = host, port or free_port(host)
        self.password_file, self.tls, self.require_certificate = password_file, tls, require_certificate
        if require_certificate and tls is None:
            raise ValueError("require_certificate needs a TLS listener (tls=TLSFiles(...))")
        self.max_packet = max_packet
        self.refused: Counter = Counter()   # reason -> connections refused or closed
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="amqtt", daemon=True)
        self._broker = None

    @classmethod
    def secured(cls, certs_dir: str | Path, host: str = "127.0.0.1", port: int = 0, tls: bool = True,
                require_certificate: bool = False, **kw) -> "EmbeddedBroker":
        from .certs import Certs

        c = Certs(Path(certs_dir)).check()
        return cls(host, port, password_file=c.passwd, tls=TLSFiles(c.ca, c.server, c.server_key) if tls else None,
                   require_certificate=require_certificate, **kw)

    @property
    def secure(self) -> bool:
        return self.password_file is not None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def refusals(self) -> dict:
        """Connections refused (by reason: anonymous, wrong password, ...) and closed (oversized_packet)."""
        out = Counter(self.refused)
        if self._broker is not None:
            auth = self._broker.plugins_manager.get_plugin("FleetAuthPlugin")
            if auth is not None:
                out.update(auth.refused)
        return dict(out)

    def start(self) -> "EmbeddedBroker":
        from amqtt.broker import Broker  # imported here: only the embedded path needs amqtt

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        listener = {"type": "tcp", "bind": f"{self.host}:{self.port}"}
        if self.tls:
            listener.update(ssl=True, cafile=str(self.tls.cafile), certfile=str(self.tls.certfile),
                            keyfile=str(self.tls.keyfile))
        plugins = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        if self.secure:
            plugins = {f"{__name__}.FleetAuthPlugin": {"password_file": str(self.password_file),
                                                         "require_certificate": self.require_certificate},
                       f"{__name__}.FleetACLPlugin": {}}
        config = {"listeners": {"default": listener}, "plugins": plugins}
        _limit_packets()
        self._thread.start()

        async def _start():
            self._broker = Broker(config)
            if self.tls:
                ctx = _ssl_context(self.tls, self.require_certificate)
                self._broker._create_ssl_context = lambda listener: ctx
            self._broker._subscriptions = _SnapshotDict(self._broker._subscriptions)
            _own_retained_only(self._broker)
            _close_connections(self._broker)
            _secure_connections(self._broker, self.max_packet, self.refused)
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
