"""The shipped Mosquitto configuration (tools/mosquitto/): authenticated clients, each device confined
to its own topics. A personal model (or a gradient) sent on one device's down topic reaches that
device only; a device cannot speak on another's behalf; the host and the real Pi agent connect with
credentials in their broker URLs."""
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from semifl.protocol import wire
from semifl.protocol.tensors import encode_arrays
from semifl.transport import certs
from semifl.transport.broker import free_port
from semifl.transport.mqtt import HostLink
from semifl_agent.agent import PiAgent

from conftest import start_shipped_mosquitto

REPO = Path(__file__).resolve().parents[1]
PASSWORDS = {"semifl-host": "h0st-pw", "s-a": "a-pw", "s-b": "b-pw"}


@pytest.fixture(scope="module")
def secured():
    # readable by the `mosquitto` user the broker drops to when started as root
    d = Path(tempfile.mkdtemp())
    d.chmod(0o755)
    pw = d / "semifl.passwd"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run(["mosquitto_passwd", "-b"] + (["-c"] if i == 0 else []) + [str(pw), user, password], check=True)
    pw.chmod(0o644)
    certs.init(d / "certs")   # the shipped config's TLS listener needs them (tests/test_tls.py uses it)
    for f in (d / "certs").iterdir():
        f.chmod(0o755 if f.is_dir() else 0o644)
    port = free_port()
    proc = start_shipped_mosquitto(d, pw, d / "certs", port, free_port())
    yield port
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(d, ignore_errors=True)


def client(port, user, password, client_id=None):
    got, ok = [], threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or user)
    c.username_pw_set(user, password)
    c.on_message = lambda cl, u, m: got.append((m.topic, bytes(m.payload)))
    c.on_connect = lambda cl, u, f, rc, p: ok.set() if not rc.is_failure else None
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, got, ok


def test_a_device_reads_only_its_own_down_topic_and_speaks_only_for_itself(secured):
    host = HostLink(f"mqtt://semifl-host:{PASSWORDS['semifl-host']}@127.0.0.1:{secured}").connect()
    a, got_a, ok_a = client(secured, "s-a", PASSWORDS["s-a"])
    # s-b tries everything: another's down topic, every down topic, and s-a's client id
    b, got_b, ok_b = client(secured, "s-b", PASSWORDS["s-b"], client_id="s-a-impostor")
    assert ok_a.wait(10) and ok_b.wait(10)
    a.subscribe(wire.dev_topic("s-a", wire.T_DOWN), 1)
    for t in (wire.dev_topic("s-a", wire.T_DOWN), wire.ROOT + "/dev/+/down", wire.ROOT + "/#", wire.dev_topic("s-b", wire.T_DOWN)):
        b.subscribe(t, 1)
    time.sleep(0.5)
    mine = encode_arrays({"kind": "personal", "round": 1, "task": 7}, [np.full((4, 3), 0.25, np.float32)])
    host.publish_blob(wire.dev_topic("s-a", wire.T_DOWN), wire.KIND_MODEL, 1, mine, 65536)
    host.publish_blob(wire.dev_topic("s-b", wire.T_DOWN), wire.KIND_MODEL, 1, b"\x00" * 8, 65536)
    end = time.monotonic() + 10
    # got_b alone is no signal: the retained host presence its `#` brings arrives first
    while not (got_a and any("/dev/" in t for t, _ in got_b)) and time.monotonic() < end:
        time.sleep(0.05)
    assert [t for t, _ in got_a] == [wire.dev_topic("s-a", wire.T_DOWN)]
    # its own only, not s-a's model (the host's broadcasts it may read: its `#` brought the host's presence)
    assert [t for t, _ in got_b if "/dev/" in t] == [wire.dev_topic("s-b", wire.T_DOWN)]
    assert all(t.startswith(wire.ROOT + "/host/") for t, _ in got_b if "/dev/" not in t)
    # speaking for another device: dropped by the broker, the host never sees it
    status = wire.encode_json({"v": 1, "kind": "ready", "round": 1, "rssi": -50.0, "battery": 1.0})
    b.publish(wire.dev_topic("s-a", wire.T_STATUS), status, qos=1).wait_for_publish(5)
    # the broker may end the link of a client that published where it may not (seen now and then in the full
    # suite): its own report is then sent once paho has reconnected it
    end = time.monotonic() + 10
    while not b.is_connected() and time.monotonic() < end:
        time.sleep(0.05)
    b.publish(wire.dev_topic("s-b", wire.T_STATUS), status, qos=1).wait_for_publish(5)
    seen, end = [], time.monotonic() + 5
    while time.monotonic() < end and not seen:
        m = host.get(0.2)
        if m is not None and m[0].endswith("/status"):
            seen.append(m[0])
    assert seen == [wire.dev_topic("s-b", wire.T_STATUS)]
    time.sleep(0.3)
    while (m := host.get(0.1)) is not None:
        assert not m[0].startswith(wire.ROOT + "/dev/s-a/"), m[0]
    for c in (a, b):
        c.loop_stop()
        c.disconnect()
    host.close()


def test_wrong_password_is_refused_and_the_real_agent_connects_with_its_credentials(secured, tmp_path):
    _, _, ok = client(secured, "s-a", "wrong")
    assert not ok.wait(2)
    host = HostLink(f"mqtt://semifl-host:{PASSWORDS['semifl-host']}@127.0.0.1:{secured}").connect()
    cfg = {"id": "s-a", "broker": f"mqtt://s-a:{PASSWORDS['s-a']}@127.0.0.1:{secured}", "n_classes": 2}
    agent = PiAgent(cfg, np.zeros((4, 784), np.uint8), np.array([0, 1, 0, 1]))
    t = threading.Thread(target=agent.run, kwargs={"timeout": 4}, daemon=True)
    t.start()
    caps, end = None, time.monotonic() + 10
    while caps is None and time.monotonic() < end:
        m = host.get(0.2)
        if m is not None and m[0] == wire.dev_topic("s-a", wire.T_CAPS) and m[1]:
            caps = wire.decode_json(m[1])
    assert caps is not None and caps["id"] == "s-a" and caps["hist"] == [2, 2]
    t.join(10)
    host.close()
