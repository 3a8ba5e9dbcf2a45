"""Links: TLS and accounts on both brokers (the embedded amqtt one and Mosquitto with the shipped
config), the MicroPython node over TLS under its board's heap, and the commands' refusals."""
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from semifl.protocol import wire
from semifl.transport import certs
from semifl.transport.broker import EmbeddedBroker, free_port

from conftest import start_shipped_mosquitto

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fleet_certs():
    import tempfile

    d = Path(tempfile.mkdtemp())   # pytest's own folders are 0700: Mosquitto's user could not read these
    c = certs.fleet_credentials(d / "fleet", ["s-a", "s-b", "mcu-01"])
    other = certs.init(d / "other")   # a CA the brokers do not trust
    certs.issue(other.dir, "s-a")
    for f in d.rglob("*"):   # readable by the `mosquitto` user the broker drops to when started as root
        f.chmod(0o755 if f.is_dir() else 0o644)
    d.chmod(0o755)
    yield c, other
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def embedded(fleet_certs):
    with EmbeddedBroker.secured(fleet_certs[0].dir) as b:
        yield b.port


@pytest.fixture(scope="module")
def mosquitto(fleet_certs):
    c = fleet_certs[0]
    d = c.dir.parent / "mosq"
    d.mkdir(mode=0o755)
    port = free_port()   # the TLS listener
    proc = start_shipped_mosquitto(d, c.passwd, c.dir, free_port(), port)
    yield port
    proc.terminate()
    proc.wait(10)


def connect(port, ca, user=None, password=None, client_id=None, cert=None):
    """A paho client over TLS; -> (client or None, 'ok' or why not, messages it receives)."""
    got, done, why = [], threading.Event(), []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or user or "anon")
    if user:
        c.username_pw_set(user, password)
    c.tls_set(ca_certs=str(ca), certfile=cert and str(cert[0]), keyfile=cert and str(cert[1]))
    c.on_message = lambda cl, u, m: got.append(m.topic)
    c.on_connect = lambda cl, u, f, rc, p: (why.append("ok" if not rc.is_failure else str(rc)), done.set())
    c.on_disconnect = lambda *a: done.set()
    try:
        c.connect("127.0.0.1", port)
    except (ssl.SSLError, OSError) as e:
        return None, f"TLS refused: {e}", got
    c.loop_start()
    done.wait(5)
    c.loop_stop()
    if why == ["ok"]:
        c.loop_start()
        return c, "ok", got
    c.disconnect()
    return None, why[0] if why else "dropped", got


@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_anonymous_wrong_password_and_other_ca_are_refused(broker, fleet_certs, request):
    c, other = fleet_certs
    port = request.getfixturevalue(broker)
    a = c.device("s-a")
    ok, why, _ = connect(port, c.ca, a.user, a.password)
    assert why == "ok"
    ok.disconnect()
    assert connect(port, c.ca)[1] != "ok"                          # anonymous
    assert connect(port, c.ca, a.user, "wrong")[1] != "ok"          # wrong password
    # a client that trusts another CA does not accept the broker's certificate
    assert connect(port, other.ca, a.user, a.password)[1].startswith("TLS refused")
    # a plain MQTT client on the TLS port gets nowhere
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
        s.settimeout(5)
        try:
            assert not s.recv(4).startswith(b"\x20")   # never a CONNACK
        except (ConnectionError, socket.timeout):
            pass


def test_embedded_broker_requires_a_certificate_of_its_ca_when_asked(fleet_certs):
    c, other = fleet_certs
    with EmbeddedBroker.secured(c.dir, require_certificate=True) as b:
        own = certs.issue(c.dir, "cert-dev")
        ok, why, _ = connect(b.port, c.ca, own.user, None, cert=(own.cert, own.key))
        assert why == "ok"
        ok.disconnect()
        foreign = other.device("s-a")
        assert connect(b.port, c.ca, "s-a", None, cert=(foreign.cert, foreign.key))[1] != "ok"
        assert connect(b.port, c.ca, "s-a", c.device("s-a").password)[1] != "ok"   # no certificate


@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_a_device_reads_only_its_own_down_topic_and_speaks_only_for_itself(broker, fleet_certs, request):
    c, _ = fleet_certs
    port = request.getfixturevalue(broker)
    h, a, b_ = c.host(), c.device("s-a"), c.device("s-b")
    host, _, host_got = connect(port, c.ca, h.user, h.password)
    dev_a, _, got_a = connect(port, c.ca, a.user, a.password)
    dev_b, _, got_b = connect(port, c.ca, b_.user, b_.password)
    host.subscribe(wire.ROOT + "/dev/+/status", 1)
    dev_a.subscribe(wire.dev_topic("s-a", wire.T_DOWN), 1)
    for t in (wire.dev_topic("s-a", wire.T_DOWN), wire.ROOT + "/dev/+/down", wire.dev_topic("s-b", wire.T_DOWN)):
        dev_b.subscribe(t, 1)
    time.sleep(0.5)
    host.publish(wire.dev_topic("s-a", wire.T_DOWN), b"for a", 1).wait_for_publish(5)
    host.publish(wire.dev_topic("s-b", wire.T_DOWN), b"for b", 1).wait_for_publish(5)
    dev_b.publish(wire.dev_topic("s-a", wire.T_STATUS), b"forged", 1).wait_for_publish(5)
    dev_b.publish(wire.dev_topic("s-b", wire.T_STATUS), b"own", 1).wait_for_publish(5)
    end = time.monotonic() + 5
    while not (got_a and got_b and host_got) and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.3)
    assert got_a == [wire.dev_topic("s-a", wire.T_DOWN)]
    assert got_b == [wire.dev_topic("s-b", wire.T_DOWN)]
    assert host_got == [wire.dev_topic("s-b", wire.T_STATUS)]
    for cl in (host, dev_a, dev_b):
        cl.loop_stop()
        cl.disconnect()


def test_embedded_broker_refuses_a_client_id_not_its_username_and_an_oversized_packet(fleet_certs, embedded):
    c, _ = fleet_certs
    b_ = c.device("s-b")
    assert connect(embedded, c.ca, b_.user, b_.password, client_id="s-a")[1] != "ok"
    dev, why, _ = connect(embedded, c.ca, b_.user, b_.password)
    assert why == "ok"
    gone = threading.Event()
    dev.on_disconnect = lambda *a: gone.set()
    dev.publish(wire.dev_topic("s-b", wire.T_UP), b"\0" * (100 << 20), 1)
    assert gone.wait(20)   # cut off at the header, as Mosquitto's max_packet_size does
    dev.loop_stop()


def test_the_micropython_node_connects_over_tls_within_its_board_heap(fleet_certs, embedded, tmp_path):
    from semifl.flash.build import build_app
    from semifl.sim.fleet import BOARD_HEAP, micropython_env, micropython_ready

    if micropython_ready():
        pytest.skip(micropython_ready())
    c, _ = fleet_certs
    app = tmp_path / "app"
    build_app(app, "unix")
    probe = REPO / "benchmarks" / "tls_probe_mp.py"
    d = c.device("mcu-01")
    r = subprocess.run(["micropython", "-X", f"heapsize={BOARD_HEAP['esp32']}", str(probe), "127.0.0.1", str(embedded),
                        d.user, d.password, str(c.ca_der)], env=micropython_env(dict(os.environ), app),
                       capture_output=True, text=True, timeout=60)
    assert "RESULT" in r.stdout, r.stdout + r.stderr
    held = int(r.stdout.split("RESULT")[1].split()[0])
    assert 0 < held < 16_000   # what the TLS session keeps of a 110 KB heap


def test_semifl_run_broker_gives_an_anonymous_subscriber_nothing(tmp_path):
    from semifl.app.run import own_broker
    import contextlib

    with contextlib.ExitStack() as stack:
        url, link, creds = own_broker(stack, tmp_path / "certs", ["pi-00", "mcu-01"], tls=False)
        port = int(url.rsplit(":", 1)[1])
        link.connect()
        spy = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="spy")
        got, refused = [], threading.Event()
        spy.on_message = lambda *a: got.append(a[2].topic)
        spy.on_connect = lambda cl, u, f, rc, p: (refused.set() if rc.is_failure else cl.subscribe("#"))
        spy.connect("127.0.0.1", port)
        spy.loop_start()
        link.publish(wire.host_topic("round"), b'{"v": 1, "round": 1}', retain=True)
        assert refused.wait(5)
        time.sleep(0.5)
        assert got == []
        spy.loop_stop()
        link.close()


def test_broker_beyond_loopback_without_certs_refuses_to_start():
    r = subprocess.run([sys.executable, "-m", "semifl.cli", "broker", "--host", "0.0.0.0", "--port", str(free_port())],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "anonymous and in clear" in r.stderr and "--insecure" in r.stderr
    r = subprocess.run([sys.executable, "-m", "semifl.cli", "serve", "--broker", "mqtt://192.0.2.1:1883"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "in clear beyond loopback" in r.stderr


def test_a_device_enrolled_while_the_embedded_broker_runs_can_connect(tmp_path):
    """`semifl certs issue` (or `semifl fleet --certs`) while `semifl broker --certs` runs: the new account
    works at once, without restarting the broker."""
    c = certs.fleet_credentials(tmp_path / "certs", ["s-a"])
    with EmbeddedBroker.secured(c.dir) as b:
        new = certs.issue(c.dir, "s-late")
        ok, why, _ = connect(b.port, c.ca, new.user, new.password)
        assert why == "ok"
        ok.disconnect()
        assert connect(b.port, c.ca, new.user, "wrong")[1] != "ok"


def test_fleet_credentials_issue_a_fleet_in_one_password_file_and_keep_earlier_accounts(tmp_path):
    c = certs.fleet_credentials(tmp_path / "certs", [f"d-{i}" for i in range(50)])
    before = certs.read_passwd(c.passwd)
    certs.fleet_credentials(tmp_path / "certs", [f"d-{i}" for i in range(60)])   # ten more join
    after = certs.read_passwd(c.passwd)
    assert len(after) == 61 and all(after[u] == h for u, h in before.items())   # 60 devices and the host
    for i in (0, 49, 59):
        assert certs.verify_password(c.device(f"d-{i}").password, after[f"d-{i}"])
    assert not certs.verify_password(c.device("d-1").password, after["d-0"])
