"""The embedded broker under the load a fleet puts on it at start-up."""
import threading
import time

import paho.mqtt.client as mqtt

from semifl.protocol import wire
from semifl.transport.broker import EmbeddedBroker
from semifl.transport.mqtt import HostLink


def test_many_clients_connecting_and_subscribing_while_messages_flow():
    """amqtt 0.12.1 crashed a connecting client's session when another client subscribed meanwhile;
    every one of these clients must end up receiving the broadcast."""
    n = 40
    with EmbeddedBroker() as b:
        got = set()
        lock = threading.Lock()
        stop = threading.Event()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
        pub.connect(b.host, b.port)
        pub.loop_start()

        def noise():   # retained traffic on many topics while clients connect
            for i in range(300):   # bounded: every client subscribes to it, so it fans out 40-fold
                if stop.is_set():
                    break
                pub.publish(f"noise/{i % 50}", b"x" * 512, qos=1, retain=True)
                time.sleep(0.002)
        t = threading.Thread(target=noise)
        t.start()
        clients = []
        for i in range(n):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"c{i}")

            def on_connect(cl, u, f, rc, p, i=i):
                cl.subscribe([("noise/#", 0), (f"own/{i}", 1), ("all", 1)])

            def on_message(cl, u, m, i=i):
                if m.topic == "all":
                    with lock:
                        got.add(i)
            c.on_connect, c.on_message = on_connect, on_message
            c.connect_async(b.host, b.port)
            c.loop_start()
            clients.append(c)
        time.sleep(1.0)
        stop.set()
        t.join()
        pub.publish("all", b"hello", qos=1).wait_for_publish(10)
        end = time.monotonic() + 10
        while len(got) < n and time.monotonic() < end:
            time.sleep(0.05)
        for c in clients + [pub]:
            c.disconnect()
            c.loop_stop()
        assert got == set(range(n))


def test_a_connecting_client_gets_only_the_retained_messages_it_subscribed_to():
    """amqtt 0.12.1 sent every connecting client the retained messages of every other client's
    filters (devices saw each other's retained presence); Mosquitto does not, nor may we."""
    with EmbeddedBroker() as b:
        host = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="host")
        host.connect(b.host, b.port)
        host.loop_start()
        host.subscribe("dev/+/presence", 1)
        host.publish("dev/a/presence", b"online", qos=1, retain=True).wait_for_publish(5)
        host.publish("host/round", b"7", qos=1, retain=True).wait_for_publish(5)
        got = []
        dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-b")
        dev.on_message = lambda c, u, m: got.append(m.topic)
        dev.on_connect = lambda c, u, f, rc, p: c.subscribe("host/round", 1)
        dev.connect(b.host, b.port)
        dev.loop_start()
        end = time.monotonic() + 5
        while "host/round" not in got and time.monotonic() < end:
            time.sleep(0.02)
        time.sleep(0.3)   # anything misrouted would have arrived with the retained message it wanted
        for c in (dev, host):
            c.disconnect()
            c.loop_stop()
        assert got == ["host/round"]


def test_the_host_inbox_is_bounded_in_bytes_too():
    """A flood of large messages waits in the broker or is dropped and counted, not held by the host."""
    from types import SimpleNamespace

    link = HostLink("mqtt://127.0.0.1:1", inbox_bytes=10_000)
    topic = wire.dev_topic("d", wire.T_UP)
    for _ in range(5):
        link._on_message(None, None, SimpleNamespace(topic=topic, payload=b"x" * 3000))
    assert link.inbox.qsize() == 3 and link.queued_bytes == 9000 and link.dropped["inbox_full"] == 2
    assert link.get(0)[1] == b"x" * 3000 and link.queued_bytes == 6000
    link._on_message(None, None, SimpleNamespace(topic=topic, payload=b"y" * 3000))
    assert link.inbox.qsize() == 3 and link.dropped["inbox_full"] == 2
