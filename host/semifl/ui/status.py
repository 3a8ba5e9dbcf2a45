"""`semifl status`: the fleet as a live table in a terminal, for whoever is on the host over SSH. Either
from a running `--ui`'s JSON API (the same numbers as the page), or straight from the broker: it listens
read-only to the devices' capability, presence and status topics and the host's announcements (it never
publishes, and needs an account that may read `semifl/v1/#`: docs/ui.md)."""
from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.parse
import urllib.request

from semifl.protocol import wire

COLUMNS = ("device", "class", "runtime", "board", "role", "this round", "online", "last seen", "battery", "RSSI",
           "up", "down", "rejected")


def _bytes(n) -> str:
    if n is None:
        return "-"
    return f"{n} B" if n < 1e3 else f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.2f} MB"


def _ago(t) -> str:
    return "-" if t is None else f"{max(0.0, time.time() - t):.0f} s ago"


class FromUI:
    """Reads a `--ui` server's /api/state and one page of /api/devices."""

    def __init__(self, url: str, token: str | None = None, sort: str = "id", limit: int = 40, query: str = ""):
        u = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
        self.base = f"{u.scheme}://{u.netloc}{u.path.rstrip('/')}/"
        self.token = token or urllib.parse.parse_qs(u.query).get("token", [None])[0]
        self.params = {"sort": sort, "limit": limit, "q": query}

    def _get(self, path: str, **params):
        req = urllib.request.Request(self.base + path + ("?" + urllib.parse.urlencode(params) if params else ""))
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def read(self) -> tuple[dict, list[dict]]:
        st = self._get("api/state")
        rows = self._get("api/devices", **self.params)
        acc = "-" if st["accuracy"] is None else f"{100 * st['accuracy']:.2f} %"
        head = {"title": f"{st['name']} · {st['mode']} · round {st['round']} ({st['rounds_done']} done)",
                "lines": [f"accuracy {acc} · "
                          f"{sum(st['online'].values())} of {st['devices']} online · up {_bytes(st['bytes_up'])}, "
                          f"down {_bytes(st['bytes_down'])} · rejected {st['rejected'] or 'none'}",
                          f"{st['said']}" if st["mode"] == "live" else "",
                          f"{rows['matched']} devices; showing {len(rows['rows'])}"]}
        return head, [[r["id"], r["class"], r["runtime"], r["board"], r["role"], r["now"],
                       "online" if r["online"] else "offline", _ago(r["last_seen"]),
                       "-" if r["battery"] is None else f"{100 * r['battery']:.0f} %",
                       "-" if r["rssi"] is None else f"{r['rssi']:.1f}", _bytes(r["bytes_up"]), _bytes(r["bytes_down"]),
                       ", ".join(f"{k} {v}" for k, v in r["rejected"].items()) or "-"] for r in rows["rows"]]


class FromBroker:
    """Listens read-only on the broker: caps (class, runtime, board), presence, status (ready: battery and
    RSSI; any kind: last heard) and the host's retained announcement (the round) and presence."""

    def __init__(self, url: str, limit: int = 40):
        import paho.mqtt.client as mqtt

        from semifl.transport.mqtt import broker_credentials, parse_broker_url, tls_settings

        self.host, self.port = parse_broker_url(url)
        self.limit, self.lock = limit, threading.Lock()
        self.devices: dict[str, dict] = {}
        self.round, self.host_up, self.connected, self.refused = None, None, threading.Event(), None
        user, password = broker_credentials(url)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user or f"semifl-status-{secrets.token_hex(4)}",
                                  clean_session=True)
        if user:
            self.client.username_pw_set(user, password)
        tls = tls_settings(url)
        if tls:
            self.client.tls_set(**tls)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.refused = str(reason_code)
        else:
            client.subscribe([(wire.ROOT + "/dev/+/" + leaf, 0) for leaf in (wire.T_CAPS, wire.T_PRESENCE, wire.T_STATUS)]
                             + [(wire.host_topic("round"), 0), (wire.host_topic("presence"), 0)])
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            if msg.topic.startswith(wire.ROOT + "/host/"):
                if msg.topic.endswith("/round") and msg.payload:
                    try:
                        self.round = json.loads(msg.payload).get("round")
                    except ValueError:
                        pass
                elif msg.topic.endswith("/presence"):
                    self.host_up = msg.payload == b"online"
                return
            try:
                dev, leaf = wire.parse_dev_topic(msg.topic)
            except ValueError:
                return
            d = self.devices.setdefault(dev, {"online": None, "seen": None})
            d["seen"] = time.time()
            try:
                if leaf == wire.T_CAPS and msg.payload:
                    c = json.loads(msg.payload)
                    d.update({k: c.get(k) for k in ("class", "runtime", "board", "battery", "rssi")})
                elif leaf == wire.T_PRESENCE:
                    d["online"] = msg.payload == b"online"
                elif leaf == wire.T_STATUS:
                    s = json.loads(msg.payload)
                    d["last"] = f"{s.get('kind')} r{s.get('round')}"
                    if s.get("kind") == "ready":
                        d.update(battery=s.get("battery", d.get("battery")), rssi=s.get("rssi", d.get("rssi")))
            except (ValueError, AttributeError):
                d["last"] = "unreadable"

    def start(self, timeout: float = 10.0) -> "FromBroker":
        from semifl.transport.mqtt import BrokerError

        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as e:
            raise BrokerError(f"cannot reach the broker at {self.host}:{self.port}: {e.strerror or e}") from None
        self.client.loop_start()
        if not self.connected.wait(timeout) or self.refused:
            self.client.loop_stop()
            raise BrokerError(f"the broker at {self.host}:{self.port} refused: {self.refused or 'no answer'}")
        return self

    def read(self) -> tuple[dict, list[list]]:
        with self.lock:
            devs = sorted(self.devices.items())
            rnd, host_up = self.round, self.host_up
        online = sum(1 for _, d in devs if d["online"])
        head = {"title": f"broker {self.host}:{self.port} · host {'online' if host_up else 'offline' if host_up is False else '?'}"
                         f" · round {rnd if rnd is not None else '-'}",
                "lines": [f"{online} of {len(devs)} devices online", f"{len(devs)} devices; showing {min(len(devs), self.limit)}"]}
        rows = [[dev, d.get("class"), d.get("runtime"), d.get("board"), None, d.get("last"),
                 "online" if d["online"] else "offline" if d["online"] is False else "?", _ago(d["seen"]),
                 "-" if d.get("battery") is None else f"{100 * d['battery']:.0f} %",
                 "-" if d.get("rssi") is None else f"{d['rssi']:.1f}", "-", "-", "-"] for dev, d in devs[:self.limit]]
        return head, rows

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def table(head: dict, rows: list[list]):
    from rich.table import Table

    t = Table(title=head["title"], caption="\n".join(x for x in head["lines"] if x), caption_justify="left")
    for c in COLUMNS:
        t.add_column(c, justify="right" if c in ("battery", "RSSI", "up", "down") else "left", no_wrap=True)
    for r in rows:
        t.add_row(*("-" if v is None else str(v) for v in r),
                  style="red" if r[6] == "offline" else None)
    return t


def watch(source, interval: float = 1.0, once: bool = False) -> int:
    """Draw the table every `interval` seconds until Ctrl-C (or once)."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if once:
        console.print(table(*source.read()))
        return 0
    with Live(table(*source.read()), console=console, refresh_per_second=4, screen=False) as live:
        while True:
            time.sleep(interval)
            live.update(table(*source.read()))
