"""The virtual fleet's workers (sim/worker.py): many devices in one process, each the real device code
with its own MQTT connection. Same model bits as devices in processes of their own; a killed device's
last will fires while its worker's other devices go on; shutdown reaps every process; the training
data is on disk once per fleet, however many devices hold it."""
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import psutil

from semifl.app.run import run_experiment
from semifl.config import RunConfig
from semifl.protocol import wire
from semifl.sim.fleet import VirtualFleet, fleet_for, seed_fleet, shard, write_device
from semifl.sim.shards import FOLDER, write_shards

REPO = Path(__file__).resolve().parents[1]


def test_worker_hosted_devices_train_the_same_bits_as_devices_in_their_own_processes(tmp_path, fashion, mosquitto):
    common = dict(rounds=3, seed=5, broker=mosquitto, plot=False, int8_every=0, fl_uploaders=4)
    shared = run_experiment(RunConfig.make(out=str(tmp_path / "shared"), mcu_processes=0, workers=2, **common), ds=fashion)
    own = run_experiment(RunConfig.make(out=str(tmp_path / "own"), own_processes=True, **common), ds=fashion)
    # every device ran in one of the two workers, none in a process of its own; and the other way round
    lists = sorted((tmp_path / "shared" / "fleet" / "_workers").glob("worker-*.list"))
    hosted = [line.split()[0] for f in lists for line in f.read_text().splitlines()]
    assert len(lists) == 2 and sorted(hosted) == ["mcu"] * 4 + ["pi"] * 6
    assert not list((tmp_path / "shared" / "fleet").glob("*/device.log"))
    assert not (tmp_path / "own" / "fleet" / "_workers").exists()
    assert len(list((tmp_path / "own" / "fleet").glob("*/device.log"))) == 10
    for s in (shared, own):
        assert [len(m["participants"]["fl"]) for m in s["rounds"]] == [4, 4, 4]
        assert [len(m["participants"]["cl"]) for m in s["rounds"]] == [2, 2, 2] and s["rejected_total"] == {}
    assert [m["participants"] for m in shared["rounds"]] == [m["participants"] for m in own["rounds"]]
    a, b = np.load(tmp_path / "shared" / "final_model.npz"), np.load(tmp_path / "own" / "final_model.npz")
    for k in a.files:
        assert np.array_equal(a[k], b[k]), f"{k} differs"
    assert shared["final_accuracy"] == own["final_accuracy"]


class Presence:
    """What the broker says of each device's presence (retained, and the wills)."""

    def __init__(self, url):
        host, port = url.rsplit("/", 1)[1].split(":")
        self.seen, self.lock = {}, threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="presence-watch")
        self.c.on_message = self._on
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(wire.ROOT + "/dev/+/presence", 1)
        self.c.connect(host, int(port))
        self.c.loop_start()

    def _on(self, c, u, m):
        with self.lock:
            self.seen[wire.parse_dev_topic(m.topic)[0]] = m.payload.decode()

    def wait(self, want: dict, timeout=30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if all(self.seen.get(k) == v for k, v in want.items()):
                    return True
            time.sleep(0.05)
        return False

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def stop_announcement(url):
    import paho.mqtt.publish as publish

    host, port = url.rsplit("/", 1)[1].split(":")
    publish.single(wire.host_topic("round"), wire.encode_json({"v": wire.VERSION, "round": 0, "stop": True}),
                   hostname=host, port=int(port), qos=1)


def test_a_killed_device_s_will_fires_and_its_worker_goes_on_then_all_leave_cleanly(tmp_path, fashion, mosquitto):
    specs = seed_fleet(3, 3, 10, seed=0, rounds=5)
    ids = [s.id for s in specs]
    watch = Presence(mosquitto)
    fleet = VirtualFleet(tmp_path / "fleet", specs, fashion, mosquitto, mcu_processes=0, workers=1)
    try:
        fleet.start()
        assert fleet.procs == {} and len(fleet.workers) == 1
        assert watch.wait({d: "online" for d in ids}), watch.seen
        worker = fleet.workers[0][0]
        fleet.kill("pi-01")
        fleet.kill("mcu-04")
        # no DISCONNECT: the broker published each one's last will; the others are still online
        assert watch.wait({"pi-01": "offline", "mcu-04": "offline"}, 15), watch.seen
        time.sleep(1.0)
        assert all(watch.seen[d] == "online" for d in ids if d not in ("pi-01", "mcu-04")), watch.seen
        assert worker.poll() is None
        # the host's stop: the rest say offline themselves and disconnect; the worker then ends on its own
        stop_announcement(mosquitto)
        assert watch.wait({d: "offline" for d in ids}), watch.seen
        fleet.stop(timeout=30)
        assert worker.returncode == 0
        log = (tmp_path / "fleet" / "_workers" / "worker-0.log").read_text()
        assert "6 devices" in log and "done: 0 devices left" in log
    finally:
        fleet.stop(timeout=0)
        watch.close()


def test_stop_without_the_host_reaps_every_process(tmp_path, fashion, mosquitto):
    specs = seed_fleet(3, 3, 10, seed=0, rounds=5)
    watch = Presence(mosquitto)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    fleet = VirtualFleet(tmp_path / "fleet", specs, fashion, mosquitto, mcu_processes=1, workers=2).start()
    try:
        assert len(fleet.procs) == 1 and len(fleet.workers) == 2
        assert watch.wait({s.id: "online" for s in specs}), watch.seen
        fleet.stop(timeout=0.5)   # nobody told them to stop: ended, and their wills fire
        assert all(p.returncode is not None for p in fleet.processes())
        assert not {p.pid for p in psutil.Process().children(recursive=True)} - before
        assert watch.wait({s.id: "offline" for s in specs}), watch.seen
    finally:
        watch.close()


def test_a_worker_s_devices_reconnect_after_the_broker_restarts(tmp_path, fashion):
    import tempfile

    from conftest import start_mosquitto
    from semifl.transport.broker import free_port

    port, d = free_port(), tempfile.mkdtemp()
    url = f"mqtt://127.0.0.1:{port}"
    broker = start_mosquitto(port, d)
    specs = seed_fleet(2, 2, 10, seed=0, rounds=5)
    fleet = VirtualFleet(tmp_path / "fleet", specs, fashion, url, mcu_processes=0, workers=1).start()
    watch = Presence(url)
    try:
        assert watch.wait({s.id: "online" for s in specs}), watch.seen
        watch.close()
        broker.terminate()
        broker.wait(10)
        time.sleep(1.5)   # refused reconnects meanwhile: each device backs off
        broker = start_mosquitto(port, d)   # no persistence: nothing retained, every device must report again
        watch = Presence(url)
        assert watch.wait({s.id: "online" for s in specs}, 60), watch.seen
        log = (tmp_path / "fleet" / "_workers" / "worker-0.log").read_text()
        assert all(f"{s.id} semifl.worker link lost" in log for s in specs), log
    finally:
        watch.close()
        fleet.stop(timeout=0.5)
        broker.terminate()
        broker.wait(10)


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def lay_out(root: Path, cfg: RunConfig, ds) -> list:
    specs = fleet_for(cfg, ds)
    shards = write_shards(root, ds, specs)
    return [(s, json.loads(write_device(root, s, ds, "mqtt://127.0.0.1:1883", shard=shards[s.id]).read_text()))
            for s in specs]


def test_the_training_data_is_on_disk_once_per_fleet(tmp_path, fashion):
    sys.path.insert(0, str(REPO / "firmware" / "pi"))
    from semifl_agent.agent import local_data

    small = lay_out(tmp_path / "small", RunConfig.make(fl_devices=10, cl_devices=10, rounds=3), fashion)
    big = lay_out(tmp_path / "big", RunConfig.make(fl_devices=200, cl_devices=200, rounds=3), fashion)
    # the seed's class partition: 400 devices hold the same 10 shards as 20 do, written once each
    data = folder_bytes(tmp_path / "big" / FOLDER)
    assert data == folder_bytes(tmp_path / "small" / FOLDER) < 2 * fashion.x_train.nbytes * 785 / 784 + 4096
    per_device = [folder_bytes(tmp_path / "big" / s.id) for s, _ in big]
    assert max(per_device) < 8192   # config.json and rssi.bin
    assert folder_bytes(tmp_path / "big") < data + 400 * 8192
    for spec, cfg in big[::37] + small[::7]:
        x, y = shard(fashion, spec)
        if spec.device_class == "pi":   # the Pi agent's view: memory-mapped rows of the shared file
            dx, dy, _ = local_data(cfg)
            assert isinstance(dx, np.memmap) and np.array_equal(dx, x) and np.array_equal(dy, y)
        else:   # the node's: rows first..first+rows of the shared raw files
            raw = Path(cfg["samples"]).read_bytes()[cfg["first"] * 784:(cfg["first"] + cfg["rows"]) * 784]
            labels = Path(cfg["labels"]).read_bytes()[cfg["first"]:cfg["first"] + cfg["rows"]]
            assert raw == x.tobytes() and labels == y.astype(np.uint8).tobytes()
    # disjoint parts (Dirichlet) are each written once too: no more rows than the dataset has
    lay_out(tmp_path / "dir", RunConfig.make(fl_devices=30, cl_devices=30, partition="dirichlet", rounds=3), fashion)
    assert folder_bytes(tmp_path / "dir" / FOLDER) <= fashion.x_train.nbytes * 785 / 784 + 2 * 4096


class Recorder:
    """umqtt's client interface, recording what is published (QoS and all)."""

    def __init__(self):
        self.sent = []

    def publish(self, topic, msg, retain=False, qos=0):
        self.sent.append((topic, bytes(msg)))


def test_the_node_streams_the_same_upload_from_its_rows_of_a_shared_file(tmp_path, fashion):
    """The node's `first`/`rows` (a shard inside the fleet's shared files) send what its own files send."""
    sys.path.insert(0, str(REPO / "firmware" / "micropython"))
    from semifl_node.node import Node
    from semifl.device.link import SimBattery, SimRadio

    idx = np.flatnonzero(fashion.y_train == 8)[:500]
    (tmp_path / "samples.bin").write_bytes(fashion.x_train[idx].tobytes())
    (tmp_path / "labels.bin").write_bytes(fashion.y_train[idx].tobytes())
    before = np.flatnonzero(fashion.y_train == 3)[:123]   # another device's rows ahead of its own
    after = np.flatnonzero(fashion.y_train == 1)[:77]
    rows = np.concatenate([before, idx, after])
    (tmp_path / "shared.bin").write_bytes(fashion.x_train[rows].tobytes())
    (tmp_path / "shared-labels.bin").write_bytes(fashion.y_train[rows].tobytes())
    task = {"round": 2, "task": 9, "seed": 4242, "fraction": 0.3}
    sent = []
    for files in ({"samples": "samples.bin", "labels": "labels.bin"},
                  {"samples": "shared.bin", "labels": "shared-labels.bin", "first": 123, "rows": 500}):
        cfg = {"id": "mcu-s", **{k: str(tmp_path / v) if isinstance(v, str) else v for k, v in files.items()},
               "model": str(tmp_path / "model.bin")}
        node = Node(cfg, Recorder(), SimRadio({}), SimBattery({}))
        assert node.n == 500 and node.histogram() == np.bincount(fashion.y_train[idx], minlength=10).tolist()
        node.upload_samples(task)
        sent.append(node.c.sent)
    assert sent[0] == sent[1] and len(sent[0]) > 10
