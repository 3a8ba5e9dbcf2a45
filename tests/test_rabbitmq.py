"""semifl on a three-node RabbitMQ cluster (Debian's rabbitmq-server 3.10 and its MQTT 3.1.1 plugin), started
by tools/rabbitmq/cluster.py with semifl's accounts: the default experiment with its devices spread over
the three nodes and the host on one of them, and what the protocol takes from the broker (QoS 1, last
will, retained messages, shared subscriptions) as it is there. docs/scale.md, "A clustered broker: RabbitMQ"."""
import importlib.util
import queue
import secrets
import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest
from semifl.app.run import fleet_specs, run_on_broker
from semifl.config import RunConfig
from semifl.protocol import wire
from semifl.transport.certs import HOST_USER
from semifl.transport.mqtt import HostLink

_spec = importlib.util.spec_from_file_location("rabbitmq_cluster", Path(__file__).parents[1] / "tools" / "rabbitmq" / "cluster.py")
cluster = sys.modules["rabbitmq_cluster"] = importlib.util.module_from_spec(_spec)   # dataclasses look it up there
_spec.loader.exec_module(cluster)

pytestmark = [pytest.mark.rabbitmq,
              pytest.mark.skipif(cluster.missing() is not None, reason=f"RabbitMQ cluster test: {cluster.missing()}")]

HOST_NODE = 2        # the host on rabbit3; device i on node i % 3, so two thirds of them talk to it across nodes
PROBES = ["probe-a", "probe-b", "probe-c"]   # device accounts of the protocol checks, not in the run's fleet


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory):
    c = cluster.start(tmp_path_factory.mktemp("rabbitmq"))
    yield c
    pids = [c.epmd_pid] + [p for n in c.nodes for p in (n.pid, c.vm_pid(n))]
    c.stop()
    left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"the cluster left processes behind: {left}"
    for port in [c.epmd_port] + [p for n in c.nodes for p in (n.mqtt_port, n.dist_port)]:
        with pytest.raises(OSError):   # nor an epmd or node that one of them started by itself
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.fixture(scope="module")
def run_cfg(tmp_path_factory):
    return RunConfig.make(rounds=3, out=str(tmp_path_factory.mktemp("run")), plot=False)


@pytest.fixture(scope="module")
def passwords(rabbit, fashion, run_cfg):
    """An account per device of the run and per probe, and the host's: semifl's ACL on the cluster."""
    ids = [s.id for s in fleet_specs(run_cfg, fashion)] + PROBES
    pw = {HOST_USER: secrets.token_hex(16), **{i: secrets.token_hex(16) for i in ids}}
    rabbit.accounts(pw)
    return pw


def url(rabbit, node: int, user: str, pw: dict) -> str:
    return f"mqtt://{user}:{pw[user]}@127.0.0.1:{rabbit.nodes[node].mqtt_port}"


class Client:
    """A device-side MQTT client (paho, as the Pi agent) for the protocol checks."""

    def __init__(self, rabbit, node: int, user: str, pw: dict, client_id: str | None = None):
        import paho.mqtt.client as mqtt

        self.got, self.closed = queue.Queue(), []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or user, clean_session=True)
        self.c.username_pw_set(user, pw[user])
        self.c.reconnect_delay_set(30, 60)   # a connection the broker closes stays closed while a test looks
        self.c.on_message = lambda c, u, m: self.got.put((m.topic, bytes(m.payload), bool(m.retain)))
        self.c.on_disconnect = lambda c, u, f, rc, p: self.closed.append(str(rc))
        self.c.connect("127.0.0.1", rabbit.nodes[node].mqtt_port, 30)
        self.c.loop_start()

    def subscribe(self, topic: str) -> "Client":
        done = []
        self.c.on_subscribe = lambda c, u, mid, rcs, p: done.append(rcs)
        self.c.subscribe(topic, 1)
        end = time.monotonic() + 5
        while not done and time.monotonic() < end:
            time.sleep(0.01)
        assert done, f"no SUBACK for {topic}"
        return self

    def wait_closed(self, timeout: float = 5.0) -> bool:
        end = time.monotonic() + timeout
        while not self.closed and time.monotonic() < end:
            time.sleep(0.05)
        return bool(self.closed)

    def messages(self, wait: float = 1.0) -> list:
        out, end = [], time.monotonic() + wait
        while time.monotonic() < end:
            try:
                out.append(self.got.get(timeout=0.05))
            except queue.Empty:
                pass
        return out

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def connections(rabbit) -> dict:
    """client id -> (the node it is connected to, its user), over the whole cluster."""
    import json

    port = {n.mqtt_port: i for i, n in enumerate(rabbit.nodes)}
    rows = json.loads(rabbit.ctl(rabbit.nodes[0], "list_mqtt_connections", "client_id", "conn_name", "user",
                                 "--formatter", "json"))
    return {r["client_id"]: (port[int(r["conn_name"].rsplit(":", 1)[1])], r["user"]) for r in rows}


def host_messages(link: HostLink, wait: float = 1.0) -> list:
    out, end = [], time.monotonic() + wait
    while time.monotonic() < end:
        m = link.get(0.05)
        if m is not None:
            out.append(m[:2] if m[0] == "_rejected" else (m[0], bytes(m[1])))   # refused by its size: no payload
    return out


def test_default_experiment_on_the_cluster_and_a_killed_device_goes_offline_by_its_will(rabbit, passwords, fashion,
                                                                                       run_cfg, monkeypatch):
    """Three rounds of the default experiment, each device on node i % 3 with its own account, the host on
    rabbit3; after round 1 an MCU on rabbit1 is killed (SIGKILL, no DISCONNECT): the will its node
    publishes reaches the host on another node, which runs the rest without it."""
    monkeypatch.setenv("SEMIFL_BROKER_PASSWORD", passwords[HOST_USER])   # not in the URL, nor in config.json
    cfg = run_cfg.replace(broker=f"mqtt://{HOST_USER}@127.0.0.1:{rabbit.nodes[HOST_NODE].mqtt_port}")
    specs = fleet_specs(cfg, fashion)
    for i, s in enumerate(specs):
        s.config["broker"] = url(rabbit, i % 3, s.id, passwords)
    victim = next(s.id for i, s in enumerate(specs) if s.device_class == "mcu" and i % 3 == 0)
    killed, connected = [], {}

    def kill_after_round_1(m):
        if m["round"] == 1:
            connected.update(connections(rabbit))
            # the node's own process (the real MicroPython interpreter, or its stand-in)
            procs = [p for p in psutil.Process().children(recursive=True)
                     if any(a.endswith(f"/{victim}/config.json") for a in p.cmdline())]
            assert len(procs) == 1, f"{victim}'s process: {procs}"
            procs[0].send_signal(signal.SIGKILL)
            killed.append(m["round"])

    session, _, rounds = run_on_broker(cfg, Path(cfg.out), specs, fashion, on_round=kill_after_round_1)
    assert killed == [1] and [m["round"] for m in rounds] == [1, 2, 3]
    # each on the node it was given, under its own account
    assert connected == {HOST_USER: (HOST_NODE, HOST_USER), **{s.id: (i % 3, s.id) for i, s in enumerate(specs)}}
    for m in rounds:   # the seed's plan every round: 3 FL updates and 2 CL batches, nothing refused
        assert len(m["participants"]["fl"]) == 3 and len(m["participants"]["cl"]) == 2, m["participants"]
        assert m["rejected"] == {} and 0.1 < m["accuracy"] <= 1, (m["rejected"], m["accuracy"])
    assert rounds[-1]["accuracy"] > rounds[0]["accuracy"]
    # the will: offline for the victim only, and it took no part after it
    assert session.registry.online == {s.id for s in specs} - {victim}
    assert all(victim not in m["participants"]["cl"] + m["participants"]["fl"] for m in rounds[1:])
    assert session.link.dropped == {}


def test_retained_messages_are_node_local_and_exact_topic_only(rabbit, passwords):
    """RabbitMQ 3.10 keeps a retained message on the node it was published to, and hands it only to a
    subscription of that exact topic: a device on another node than the host's misses the retained
    announcement, and the host's wildcard subscriptions get no retained caps or presence on any node.
    (What semifl does about it: docs/scale.md.)"""
    host = HostLink(url(rabbit, 0, HOST_USER, passwords)).connect()
    try:
        announcement = wire.encode_json({"v": 1, "round": 7, "run": "probe"})
        host.publish(wire.host_topic("round"), announcement, retain=True).wait_for_publish(5)
        same = Client(rabbit, 0, "probe-a", passwords).subscribe(wire.host_topic("round"))
        other = Client(rabbit, 1, "probe-b", passwords).subscribe(wire.host_topic("round"))
        assert same.messages() == [(wire.host_topic("round"), announcement, True)]
        assert other.messages() == []
        host.publish(wire.host_topic("round"), b"", retain=True).wait_for_publish(5)   # cleared, as a run ends
        same.close(), other.close()
        # a device's retained presence, on the host's node: the host's wildcard subscription has it
        # live; a host that subscribes afterwards gets it for the exact topic only
        dev = Client(rabbit, 0, "probe-a", passwords)
        presence = wire.dev_topic("probe-a", wire.T_PRESENCE)
        dev.c.publish(presence, b"online", qos=1, retain=True).wait_for_publish(5)
        assert host_messages(host) == [(presence, b"online")]
        host.close()
        host = HostLink(url(rabbit, 0, HOST_USER, passwords)).connect()   # subscribes dev/+/presence again
        assert host_messages(host) == []
        host.client.subscribe(presence, 1)
        assert host_messages(host) == [(presence, b"online")]
        dev.c.publish(presence, b"", qos=1, retain=True).wait_for_publish(5)
        dev.close()
    finally:
        host.close()


def test_a_device_speaks_only_for_itself_and_within_4_mib(rabbit, passwords):
    """The accounts' topic permissions keep a device to its own subtree: the broker closes a connection
    that publishes elsewhere, and the host, on another node, never sees what it sent. A message over
    semifl's 4 MiB limit is refused by the broker (max_message_size), one under it is delivered."""
    host = HostLink(url(rabbit, 2, HOST_USER, passwords)).connect()
    try:
        forger = Client(rabbit, 1, "probe-a", passwords)
        time.sleep(0.3)
        forger.c.publish(wire.dev_topic("probe-b", wire.T_STATUS), b'{"v": 1}', qos=1)
        assert forger.wait_closed(), "the broker kept a device that spoke for another"
        forger.close()
        honest = Client(rabbit, 0, "probe-b", passwords)
        honest.c.publish(wire.dev_topic("probe-b", wire.T_PRESENCE), b"online", qos=1).wait_for_publish(5)
        assert host_messages(host) == [(wire.dev_topic("probe-b", wire.T_PRESENCE), b"online")]
        up = wire.dev_topic("probe-b", wire.T_UP)
        honest.c.publish(up, bytes((4 << 20) - 1024), qos=1)   # the host's own 1 MiB cap then counts it
        assert host_messages(host, 3) == [("_rejected", up)]
        honest.c.publish(up, bytes((4 << 20) + 1), qos=1)
        assert host_messages(host, 3) == []
        honest.close()
    finally:
        host.close()


def test_anonymous_and_wrong_password_are_refused(rabbit, passwords):
    import paho.mqtt.client as mqtt

    for user, password in ((None, None), ("probe-a", "not-" + passwords["probe-a"])):
        answers = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe-a", clean_session=True)
        if user:
            c.username_pw_set(user, password)
        c.on_connect = lambda c_, u, f, rc, p, got=answers: got.append(rc)
        c.connect("127.0.0.1", rabbit.nodes[1].mqtt_port, 30)
        c.loop_start()
        end = time.monotonic() + 5
        while not answers and time.monotonic() < end:
            time.sleep(0.05)
        c.loop_stop()
        assert answers and answers[0].is_failure, (user, answers)


def test_another_account_with_a_device_client_id_takes_its_connection_but_not_its_topics(rabbit, passwords):
    """RabbitMQ has no use_username_as_clientid: an account that connects with a device's client id ends
    the device's connection (client ids are unique cluster-wide), but it may not subscribe in the
    device's name: its queue and topics are the device's own (docs/scale.md says what that leaves)."""
    device = Client(rabbit, 0, "probe-b", passwords)
    time.sleep(0.3)
    impostor = Client(rabbit, 1, "probe-a", passwords, client_id="probe-b")
    assert device.wait_closed(), "the first connection of a client id survived a second one"
    assert not impostor.closed
    impostor.c.subscribe(wire.dev_topic("probe-b", wire.T_TASK), 1)
    assert impostor.wait_closed(), "an account subscribed in another device's name"
    device.close(), impostor.close()


def test_no_shared_subscriptions(rabbit, passwords):
    """`$share/<group>/<filter>` is granted, but RabbitMQ 3.10 takes it for a topic name that nothing is
    published to: a subscriber with read permission on every topic gets nothing of what matches the
    filter. (Under semifl's accounts the host may not even subscribe to it: its connection is closed.)"""
    rabbit.ctl(rabbit.nodes[0], "set_topic_permissions", "-p", cluster.VHOST, "probe-c", "amq.topic", "^$", ".*")
    reader = Client(rabbit, 1, "probe-c", passwords).subscribe("$share/hosts/semifl/v1/dev/+/status")
    dev = Client(rabbit, 1, "probe-a", passwords)
    dev.c.publish(wire.dev_topic("probe-a", wire.T_STATUS), b'{"v": 1}', qos=1).wait_for_publish(5)
    assert reader.messages() == [] and not reader.closed
    reader.subscribe("semifl/v1/dev/+/status")   # the same filter without $share: delivered
    dev.c.publish(wire.dev_topic("probe-a", wire.T_STATUS), b'{"v": 1}', qos=1).wait_for_publish(5)
    assert reader.messages() == [(wire.dev_topic("probe-a", wire.T_STATUS), b'{"v": 1}', False)]
    reader.close(), dev.close()
