"""The device side (semifl.device): one Device routes what the host sends to the role that plays it,
and nothing the host sends stops it: a broken message is reported as an error status and the next
good one is served. In-process, over the in-memory broker, as `semifl reproduce` runs devices."""
import numpy as np

from semifl.protocol import wire
from semifl.protocol.tensors import encode_arrays
from semifl.learn import mlp
from semifl.sim.fleet import DeviceSpec
from semifl.sim.inprocess import InProcessFleet
from semifl.transport.memory import MemoryBroker


def rig():
    broker, sent = MemoryBroker(), []
    broker.subscribe(wire.ROOT + "/dev/+/#", lambda topic, payload: sent.append((topic, payload)))
    rng = np.random.default_rng(0)
    spec = DeviceSpec("pi-t", "pi", [0, 1], raw_ok=False, data={"x": rng.integers(0, 255, (40, 784), dtype=np.uint8),
                                                                "y": np.tile([0, 1], 20)})
    fleet = InProcessFleet(broker, [spec], n_classes=2)
    broker.deliver()
    return broker, fleet.devices["pi-t"], sent


def statuses(sent):
    return [wire.decode_json(p) for t, p in sent if t.endswith("/status")]


def test_caps_name_the_roles_the_device_plays():
    _, dev, sent = rig()
    caps = next(wire.decode_json(p) for t, p in sent if t.endswith("/caps"))
    assert caps["roles"] == ["fl", "secagg", "sl"] and caps["class"] == "pi" and caps["hist"] == [20, 20]


def test_nothing_the_host_sends_stops_the_device():
    broker, dev, sent = rig()
    task = wire.dev_topic("pi-t", wire.T_TASK)
    sent.clear()
    for topic, payload in [(wire.host_topic("round"), b'{"v": 1}'),                     # no round
                           (wire.host_topic("round"), b'{"v": 1, "round": 2.5}'),       # not an integer
                           (task, b"{not json"),
                           (task, wire.encode_json({"v": 1, "role": "fl"})),            # no round, task, seed
                           (task, wire.encode_json({"v": 1, "round": 1, "role": "upload", "task": 5})),   # never trained
                           (task, wire.encode_json({"v": 1, "round": 1, "role": "dance"})),
                           (wire.dev_topic("pi-t", wire.T_DOWN), b"SF" + bytes(30))]:   # a broken chunk
        broker.publish(topic, payload)
        broker.deliver()
    errors = [s for s in statuses(sent) if s["kind"] == "error"]
    assert [e["error"] for e in errors] == ["DeviceError"]   # the upload it never trained; malformed ones are only logged
    assert not [s for s in statuses(sent) if s["kind"] == "ready"]        # the bad announcements got no answer
    # and it still serves: an announcement, the model and a task, trained and reported
    params = mlp.init_params(layers=(784, 8, 2), seed=0)
    broker.publish(wire.host_topic("round"), wire.encode_json({"v": 1, "round": 1, "run": 7}))
    for chunk in wire.iter_chunks(wire.KIND_MODEL, 1, encode_arrays({"kind": "model", "round": 1}, params), 65536):
        broker.publish(wire.dev_topic("pi-t", wire.T_DOWN), chunk)
    broker.publish(task, wire.encode_json({"v": 1, "round": 1, "role": "fl", "task": 9, "seed": 3, "prune": 0.0,
                                           "fraction": 0.5, "epochs": 1, "lr": 0.1}))
    broker.deliver()
    kinds = [s["kind"] for s in statuses(sent)]
    assert kinds[-2:] == ["ready", "trained"] and statuses(sent)[-1]["n"] == 20
