"""An edge aggregator (issue 20; seed 003's edge tier): a gateway's own Mosquitto, bridged to the core
broker by Mosquitto's own bridge, and an aggregator (service/aggregator.py) on it that takes the uploads of
the devices behind it and sends the core one partial sum (`semifl edge`). Devices connect to the edge exactly as to the
core: the same topics, the same accounts where the edge has the fleet's password file.

What crosses the bridge (docs/scale.md):
  in  (core -> edge): semifl/v1/host/# (announcements, the int8 model), dev/+/task, dev/+/down,
                      agg/ctx, agg/<edge>/collect
  out (edge -> core): dev/+/caps, dev/+/presence, dev/+/status (retained ones retained: a device's last
                      will fired at the edge reaches the core), agg/<edge>/{acc,sum,up/+,presence};
                      the bridge's own state on agg/<edge>/bridge (1, and 0 as its will at the core)
  not at all:         dev/+/up: the edge's aggregator takes the devices' uploads on the edge
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from semifl.protocol import wire

from semifl.service.aggregator import AGG, CTX
from semifl.transport.broker import wait_port

R = wire.ROOT
IN = (f"{R}/host/#", f"{R}/dev/+/{wire.T_TASK}", f"{R}/dev/+/{wire.T_DOWN}", CTX)
OUT = tuple(f"{R}/dev/+/{leaf}" for leaf in (wire.T_CAPS, wire.T_PRESENCE, wire.T_STATUS))


# the edge broker's own ACL: devices as at the core (tools/mosquitto/semifl.acl), and the edge's aggregator,
# which logs in there with the host's account (the core's host never connects to an edge)
EDGE_ACL = f"""pattern readwrite {R}/dev/%u/#
pattern read {R}/host/#
user semifl-host
topic readwrite {R}/#
"""


def edge_user(name: str) -> str:
    """The core account of edge `name`'s bridge."""
    return f"semifl-edge-{name}"


def bridge_config(name: str, core: str, port: int, bind: str = "127.0.0.1", password: str | None = None,
                  passwd: str | None = None, acl: str | None = None, ca: str | None = None) -> str:
    """The edge broker's Mosquitto configuration: a listener for the devices and the bridge to `core`
    (mqtt[s]://host:port). passwd/acl: the fleet's password file and ACL, so devices log in as at the
    core (else anonymous, which only a loopback listener may be); password: the bridge account's at
    the core; ca: the core's CA for an mqtts:// core."""
    from semifl.transport.mqtt import is_loopback_host, is_tls, parse_broker_url

    host, core_port = parse_broker_url(core)
    if passwd is None and not is_loopback_host(bind):
        raise ValueError(f"an edge listening on {bind} needs the fleet's accounts (--certs): anonymous only on loopback")
    lines = [f"# semifl edge {name}: written by `semifl edge` (app/edge.py); devices connect here as to the core",
             "per_listener_settings false", f"listener {port} {bind}", "persistence false",
             "max_packet_size 4194304", "set_tcp_nodelay true",
             # the edge's aggregator and the bridge take every device's chunks: Mosquitto's default cap of
             # 1,000 queued messages per client drops them once a few hundred devices upload at once; by
             # bytes instead, as tools/mosquitto/semifl.conf for the core
             "max_queued_messages 0", "max_queued_bytes 1073741824"]
    if passwd:
        lines += ["allow_anonymous false", f"password_file {passwd}", "use_username_as_clientid true"]
        if acl:
            lines.append(f"acl_file {acl}")
    else:
        lines.append("allow_anonymous true")
    user = edge_user(name)
    lines += ["", f"connection {user}", f"address {host}:{core_port}", f"remote_clientid {user}",
              "bridge_protocol_version mqttv311", "cleansession true", "try_private true", "restart_timeout 1 10",
              "notifications true", f"notification_topic {AGG}/{name}/bridge", "notifications_local_only false"]
    if password is not None:
        lines += [f"remote_username {user}", f"remote_password {password}"]
    if is_tls(core):
        lines += [f"bridge_cafile {ca}" if ca else "bridge_capath /etc/ssl/certs", "bridge_insecure false"]
    lines += [f"topic {t} in 1" for t in IN + (f"{AGG}/{name}/collect",)]
    lines += [f"topic {t} out 1" for t in OUT + tuple(f"{AGG}/{name}/{leaf}" for leaf in ("acc", "sum", "up/+", "presence"))]
    return "\n".join(lines) + "\n"


def edge_acl(name: str) -> str:
    """The core ACL's block for edge `name`'s bridge account: what it relays and nothing more."""
    user = edge_user(name)
    reads = IN + (f"{AGG}/{name}/collect",)
    writes = OUT + tuple(f"{AGG}/{name}/{leaf}" for leaf in ("acc", "sum", "up/+", "presence", "bridge"))
    return "\n".join([f"user {user}"] + [f"topic read {t}" for t in reads] + [f"topic write {t}" for t in writes]) + "\n"


def worker_acl(name: str) -> str:
    """The core ACL's block for host worker `name` (its shared subscription is checked as the topic it shares)."""
    return (f"user semifl-worker-{name}\ntopic read {R}/dev/+/{wire.T_UP}\ntopic read {CTX}\n"
            f"topic readwrite {AGG}/#\n")


def role_acl(role: str, name: str) -> str:
    return edge_acl(name) if role == "edge" else worker_acl(name)


class Edge:
    """`semifl edge`: the edge's Mosquitto (its config written into `folder`) and its aggregator, as
    processes of this machine, ended by their pids."""

    def __init__(self, name: str, core: str, port: int, folder: str | Path, bind: str = "127.0.0.1",
                 certs: str | None = None, ca: str | None = None):
        self.name, self.core, self.port, self.folder = name, core, port, Path(folder)
        self.bind, self.certs, self.ca = bind, certs, ca
        self.broker: subprocess.Popen | None = None
        self.aggregator: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Where devices (and the edge's aggregator) connect."""
        return f"mqtt://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        kw = {}
        if self.certs:   # the fleet's accounts (semifl certs): devices log in here as at the core
            c = Path(self.certs)
            pw = c / "edges" / f"{self.name}.password"
            if not pw.exists():   # semifl certs issue <name> --role edge
                raise FileNotFoundError(f"{pw}: issue the edge's account first (semifl certs issue {self.name} --role edge)")
            kw = {"passwd": str(c / "passwd"), "password": pw.read_text().strip(), "ca": self.ca or str(c / "ca.pem")}
            (self.folder / "semifl.acl").write_text(EDGE_ACL)
            kw["acl"] = str(self.folder / "semifl.acl")
        conf = self.folder / "mosquitto.conf"
        umask = os.umask(0o077)   # the bridge's password is in it
        try:
            conf.write_text(bridge_config(self.name, self.core, self.port, self.bind, **kw))
        finally:
            os.umask(umask)
        return conf

    def start(self) -> Edge:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.write_config()
        with open(self.folder / "mosquitto.log", "ab") as log_f:
            self.broker = subprocess.Popen([exe, "-c", str(conf)], stdout=log_f, stderr=subprocess.STDOUT)
        wait_port(self.port, what="the edge broker not")
        url, env = self.url, dict(os.environ)
        if self.certs:   # the edge's aggregator logs in to the edge broker with the host's account
            from semifl.transport.certs import HOST_USER

            url = f"mqtt://{HOST_USER}@127.0.0.1:{self.port}"
            env["SEMIFL_BROKER_PASSWORD"] = (Path(self.certs) / "host.password").read_text().strip()
        with open(self.folder / "aggregator.log", "ab") as log_f:
            self.aggregator = subprocess.Popen(
                [sys.executable, "-m", "semifl.app.aggregate", "--edge", "--with-parent", "--broker", url, "--id", self.name,
                 "--dir", str(self.folder / "aggregator"), "-v"], stdout=log_f, stderr=subprocess.STDOUT, env=env)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        for p in (self.aggregator, self.broker):   # the aggregator first: its goodbye crosses the bridge
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)

    def __enter__(self) -> Edge:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
