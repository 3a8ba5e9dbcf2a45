"""A three-node RabbitMQ cluster on loopback with the MQTT plugin, for running semifl against a clustered
broker (docs/scale.md, "A clustered broker: RabbitMQ"). Debian's `rabbitmq-server` (3.10, MQTT 3.1.1).

    python tools/rabbitmq/cluster.py start DIR [--nodes 3]   # prints each node's MQTT URL
    python tools/rabbitmq/cluster.py accounts DIR --certs CERTS  # a `semifl certs` folder's, with semifl's ACL
    python tools/rabbitmq/cluster.py accounts DIR ACCOUNTS.json  # or {"user": "password", ...}
    python tools/rabbitmq/cluster.py stop DIR

Everything lives in DIR and runs as the current user: an Erlang cookie (HOME=DIR, which the CLI reads
too), its own epmd on a free loopback port (so the system's epmd and the system's rabbitmq service,
its /etc/rabbitmq and /var/lib/rabbitmq are never touched), and per node rabbitN@localhost with its
config, data, logs and pid file under DIR/rabbitN. Every listener is on 127.0.0.1 and MQTT is in clear:
a loopback test needs no TLS. `stop` ends the nodes and the epmd this module started (pids in
DIR/cluster.json) and nothing else; the data stays in DIR for reading the logs.

The nodes boot in parallel, then each but the first joins it (`rabbitmqctl stop_app`, `join_cluster
rabbit1@localhost`, `start_app`); how long that takes: benchmarks/results/rabbitmq.json (docs/scale.md).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Debian's scripts themselves: the /usr/sbin wrappers switch to the `rabbitmq` user and /var/lib/rabbitmq
BIN = Path(os.environ.get("RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
VHOST = "semifl"   # the fleet's own virtual host: other applications of the same cluster see none of it


def missing() -> str | None:
    """Why no cluster can start here, or None."""
    for tool in ("rabbitmq-server", "rabbitmqctl"):
        if not (BIN / tool).exists():
            return f"no {BIN / tool} (apt-get install rabbitmq-server)"
    if shutil.which("epmd") is None:
        return "no epmd on PATH (Debian's erlang-base, which rabbitmq-server depends on)"
    plugins = list(Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*/plugins/rabbitmq_mqtt-*"))
    if not plugins and "RABBITMQ_BIN" not in os.environ:
        return "rabbitmq-server has no rabbitmq_mqtt plugin"
    return None


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all held open until every one is chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Node:
    name: str          # rabbitN@localhost
    mqtt_port: int
    dist_port: int     # Erlang distribution (inter-node and CLI traffic)
    pid: int = 0       # the rabbitmq-server script, which runs the Erlang VM as its child

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"


@dataclass
class Cluster:
    dir: Path
    nodes: list[Node]
    epmd_port: int
    epmd_pid: int = 0
    start_s: float = 0.0   # how long start() took

    def folder(self, node: Node) -> Path:
        return self.dir / node.name.split("@")[0]

    def env(self, node: Node | None = None) -> dict:
        """The environment of a node (or of the CLI, node None): every path under DIR, none of the system's."""
        # none of the caller's RABBITMQ_* or ERL_* settings: they would point a node at other paths or ports
        own = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env = dict(own, HOME=str(self.dir), ERL_EPMD_PORT=str(self.epmd_port), ERL_EPMD_ADDRESS="127.0.0.1",
                   RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
                   RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
                   RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}")
        if node is not None:
            d = self.folder(node)
            env.update(RABBITMQ_NODENAME=node.name, RABBITMQ_DIST_PORT=str(node.dist_port),
                       RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"), RABBITMQ_CONFIG_FILES=str(d / "conf.d"),
                       RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
                       RABBITMQ_MNESIA_BASE=str(d / "mnesia"), RABBITMQ_LOG_BASE=str(d / "log"),
                       RABBITMQ_PID_FILE=str(d / "pid"), RABBITMQ_MOTD_FILE=str(d / "motd"),
                       # three VMs share the machine's cores: no spinning schedulers, none bound to a core
                       RABBITMQ_SCHEDULER_BUSY_WAIT_THRESHOLD="none", RABBITMQ_SCHEDULER_BIND_TYPE="u",
                       RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}")
        return env

    def ctl(self, node: Node, *args: str, timeout: float = 120) -> str:
        """rabbitmqctl against `node`; raises with its output when it fails."""
        r = subprocess.run([str(BIN / "rabbitmqctl"), "-n", node.name, *args], env=self.env(), capture_output=True,
                           text=True, timeout=timeout, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {node.name}: {r.stdout}{r.stderr}")
        return r.stdout

    def boot(self, node: Node) -> subprocess.Popen:
        d = self.folder(node)
        for sub in ("mnesia", "log", "conf.d"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        conf = (
            "listeners.tcp = none\n"                       # no AMQP listener: MQTT only
            f"mqtt.listeners.tcp.default = 127.0.0.1:{node.mqtt_port}\n"
            "mqtt.allow_anonymous = false\n"
            f"mqtt.vhost = {VHOST}\n"
            "mqtt.exchange = amq.topic\n"
            "max_message_size = 4194304\n"               # semifl's 4 MiB packet limit (docs/protocol.md §1)
            "log.console = false\nlog.file.level = info\n"
            # the admin account the broker creates at first boot: a random password nobody uses
            f"default_user = semifl-admin\ndefault_pass = {secrets.token_hex(16)}\n")
        fd = os.open(d / "rabbitmq.conf", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # that password
        with os.fdopen(fd, "w") as f:
            f.write(conf)
        with open(d / "stdout.log", "wb") as out:
            p = subprocess.Popen([str(BIN / "rabbitmq-server")], env=self.env(node), stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        node.pid = p.pid
        self.save()
        return p

    def wait(self, node: Node, timeout: float = 120) -> None:
        """Until the node runs RabbitMQ and its plugins."""
        try:
            self.ctl(node, "wait", str(self.folder(node) / "pid"), "--timeout", str(int(timeout)), timeout=timeout + 10)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            logs = sorted((self.folder(node) / "log").glob("*.log")) + [self.folder(node) / "stdout.log"]
            tail = "".join(p.read_text(errors="replace")[-3000:] for p in logs if p.exists())
            raise RuntimeError(f"{node.name} did not start ({e}); its logs in {self.folder(node)} end:\n{tail}") from None

    def save(self) -> None:
        state = {"nodes": [asdict(n) for n in self.nodes], "epmd_port": self.epmd_port, "epmd_pid": self.epmd_pid,
                 "start_s": self.start_s, "vhost": VHOST}
        (self.dir / "cluster.json").write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, folder) -> Cluster:
        state = json.loads((Path(folder) / "cluster.json").read_text())
        return cls(Path(folder), [Node(**n) for n in state["nodes"]], state["epmd_port"], state["epmd_pid"],
                   state.get("start_s", 0.0))

    def running(self) -> list[str]:
        """The cluster's running nodes, as node 1 sees them."""
        out = self.ctl(self.nodes[0], "eval", "rabbit_nodes:all_running().")
        return sorted(re.findall(r"rabbit\d+@localhost", out))

    def accounts(self, passwords: dict[str, str], host_user: str = "semifl-host") -> None:
        """Create the fleet's accounts with semifl's ACL (docs/protocol.md §1), one definitions import:
        `host_user` writes semifl/v1/host/# and the devices' task and down topics and reads every device's;
        any other user is a device whose id is its username, and reads and writes its own subtree only
        and reads semifl/v1/host/#. Each may use only the queues of its own client id (RabbitMQ's MQTT
        plugin names them mqtt-subscription-<client id>qos0|1)."""
        users, perms, topics = [], [], []
        for user, password in passwords.items():
            salt = secrets.token_bytes(4)   # rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))
            users.append({"name": user, "tags": "", "hashing_algorithm": "rabbit_password_hashing_sha256",
                          "password_hash": base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()})
            queues = rf"mqtt-subscription-{re.escape(user)}qos[01]"
            perms.append({"user": user, "vhost": VHOST, "configure": f"^{queues}$",
                          "write": rf"^(amq\.topic|{queues})$", "read": rf"^(amq\.topic|{queues})$"})
            # MQTT topics as AMQP routing keys: '/' is '.', and a subscription's + and # are * and #
            if user == host_user:
                write, read = r"^semifl\.v1\.(host\..+|dev\.[^.]+\.(task|down))$", r"^semifl\.v1\.dev\..+$"
            else:
                own = rf"semifl\.v1\.dev\.{re.escape(user)}\.[^.]+"
                write, read = f"^{own}$", rf"^(semifl\.v1\.host\.[^.]+|{own})$"
            topics.append({"user": user, "vhost": VHOST, "exchange": "amq.topic", "write": write, "read": read})
        defs = {"vhosts": [{"name": VHOST}], "users": users, "permissions": perms, "topic_permissions": topics}
        path = self.dir / "accounts.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # password hashes
        with os.fdopen(fd, "w") as f:
            json.dump(defs, f)
        self.ctl(self.nodes[0], "import_definitions", str(path))

    def vm_pid(self, node: Node) -> int:
        """The node's Erlang VM (beam.smp), from the pid file it writes; 0 before it has."""
        try:
            return int((self.folder(node) / "pid").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def stop(self, timeout: float = 30) -> None:
        """End the nodes and the epmd this cluster started, by pid: SIGTERM to a node's script, which
        stops RabbitMQ cleanly and waits for its VM; SIGKILL to what is left after `timeout`."""
        vms = {n.name: self.vm_pid(n) for n in self.nodes if _alive(n.pid)}
        for n in self.nodes:
            _signal(n.pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        for n in self.nodes:
            for pid in (n.pid, vms.get(n.name, 0)):
                if not _wait_gone(pid, end):
                    _signal(pid, signal.SIGKILL)
                    _wait_gone(pid, time.monotonic() + 5)
        _signal(self.epmd_pid, signal.SIGTERM)   # no node is left registered with it
        _wait_gone(self.epmd_pid, time.monotonic() + 5)
        self.epmd_pid = 0
        for n in self.nodes:
            n.pid = 0
        self.save()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"   # a zombie has ended
    except OSError:
        return False


def _signal(pid: int, sig) -> None:
    if _alive(pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(pid: int, end: float) -> bool:
    while _alive(pid):
        try:   # our own child (started by this process): reap it
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"epmd did not listen on 127.0.0.1:{port} (exit code {proc.poll()})")


def start(folder, n: int = 3, timeout: float = 180) -> Cluster:
    """Start an n-node cluster in `folder` (made if missing; must not hold an earlier one). -> the Cluster."""
    why = missing()
    if why:
        raise RuntimeError(why)
    t0 = time.monotonic()
    d = Path(folder).resolve()
    d.mkdir(parents=True, exist_ok=True)
    if (d / "cluster.json").exists():   # its nodes would boot waiting for their old peers, on other ports
        raise RuntimeError(f"{d} holds a cluster already (cluster.json); stop it (cluster.py stop {d}) and start "
                           f"one in a new folder")
    cookie = d / ".erlang.cookie"
    if not cookie.exists():
        cookie.write_text(secrets.token_hex(20).upper())
        os.chmod(cookie, 0o400)
    (d / "rabbitmq-env.conf").write_text("")   # instead of /etc/rabbitmq/rabbitmq-env.conf
    (d / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")   # offline plugin enabling
    ports = free_ports(2 * n + 1)
    nodes = [Node(f"rabbit{i + 1}@localhost", ports[2 * i], ports[2 * i + 1]) for i in range(n)]
    c = Cluster(d, nodes, ports[-1])
    epmd = subprocess.Popen([shutil.which("epmd"), "-port", str(c.epmd_port), "-address", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    c.epmd_pid = epmd.pid
    try:
        # before any node: a node or CLI that finds no epmd on its port starts one of its own, which
        # would outlive stop()
        _wait_listening(c.epmd_port, epmd)
        c.boot(nodes[0])
        for node in nodes[1:]:
            c.boot(node)
        c.wait(nodes[0], timeout)
        for node in nodes[1:]:
            c.wait(node, timeout)
            c.ctl(node, "stop_app")
            c.ctl(node, "join_cluster", nodes[0].name)
            c.ctl(node, "start_app")
        joined = c.running()
        if joined != sorted(x.name for x in nodes):
            raise RuntimeError(f"cluster formed of {joined}, not of all {n} nodes")
    except BaseException:
        c.stop(timeout=10)
        raise
    c.start_s = round(time.monotonic() - t0, 1)
    c.save()
    return c


def stop(folder) -> None:
    Cluster.load(folder).stop()


def certs_passwords(certs: Path) -> dict[str, str]:
    """The accounts of a `semifl certs` folder (semifl.transport.certs' layout): the host's, each device's."""
    out = {"semifl-host": (certs / "host.password").read_text().strip()}
    for p in sorted((certs / "devices").glob("*.password")):
        out[p.stem] = p.read_text().strip()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="cluster.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start the cluster in DIR; prints each node's MQTT URL")
    s.add_argument("dir")
    s.add_argument("--nodes", type=int, default=3)
    a = sub.add_parser("accounts", help="create semifl's accounts: those of a `semifl certs` folder (--certs), or "
                                         'a JSON file {"user": "password"} (semifl-host: the host)')
    a.add_argument("dir")
    a.add_argument("passwords", nargs="?")
    a.add_argument("--certs", metavar="CERTS", help="a `semifl certs` folder: host.password, devices/<id>.password")
    sub.add_parser("stop", help="stop the nodes and the epmd started in DIR").add_argument("dir")
    args = ap.parse_args(argv)
    if args.cmd == "start":
        c = start(args.dir, args.nodes)
        for node in c.nodes:
            print(node.name, node.url)
        print(f"started in {c.start_s} s; stop with: {sys.argv[0]} stop {args.dir}", file=sys.stderr)
    elif args.cmd == "accounts":
        if bool(args.certs) == bool(args.passwords):
            ap.error("accounts: give a passwords JSON file or --certs, one of them")
        Cluster.load(args.dir).accounts(certs_passwords(Path(args.certs)) if args.certs else
                                        json.loads(Path(args.passwords).read_text()))
    else:
        stop(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
