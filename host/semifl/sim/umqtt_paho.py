"""umqtt.simple's MQTTClient interface over paho-mqtt, so the MicroPython node's unchanged code runs
under CPython in the virtual fleet. An adapter, not an MQTT client: paho speaks the protocol.

`MQTTClient` (a node process of its own, sim/mcu_runner.py) keeps umqtt.simple's semantics: callbacks
fire only inside wait_msg()/check_msg() on the caller's thread, topics and payloads are bytes, and a
QoS 1 publish returns once the broker has acked it. `LoopMQTTClient` is the same interface for the many
nodes a fleet worker runs on one loop (sim/worker.py), where nothing may block.
"""
import queue
import socket

import paho.mqtt.client as mqtt

from semifl.transport.mqtt import no_delay


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl=None, ssl_params=None):
        self.server, self.port, self.keepalive = server, port or 1883, keepalive or 60
        self.cb = None
        self._q = queue.Queue()
        self._c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                              client_id=client_id.decode() if isinstance(client_id, bytes) else client_id)
        if user is not None:
            self._c.username_pw_set(user, password)
        self._c.on_message = lambda c, u, m: self._q.put((m.topic.encode(), m.payload))
        self._c.on_socket_open = no_delay  # umqtt.simple on lwIP sends each write at once too

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self._c.will_set(_s(topic), msg, qos=qos, retain=retain)

    def connect(self, clean_session=True):
        self._c.connect(self.server, self.port, keepalive=self.keepalive)
        self._c.loop_start()
        return 0

    def disconnect(self):
        self._c.disconnect()
        self._c.loop_stop()

    def publish(self, topic, msg, retain=False, qos=0):
        # umqtt writes a payload out before publish returns, so the node may reuse its buffer; paho queues
        # it (and takes no memoryview): a copy
        info = self._c.publish(_s(topic), bytes(msg) if isinstance(msg, memoryview) else msg, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(30)

    def subscribe(self, topic, qos=0):
        result, mid = self._c.subscribe(_s(topic), qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise OSError("subscribe failed: %d" % result)

    def wait_msg(self, timeout=1.0):
        try:
            topic, msg = self._q.get(timeout=timeout)
        except queue.Empty:
            return None
        self.cb(topic, msg)

    def check_msg(self):
        try:
            topic, msg = self._q.get_nowait()
        except queue.Empty:
            return None
        self.cb(topic, msg)

    def ping(self):
        pass


def _s(topic):
    return topic.decode() if isinstance(topic, bytes) else topic


class LoopMQTTClient:
    """umqtt.simple's interface over a paho client that a shared selector loop drives (`sim.loop`, in a
    fleet worker), so one process runs many nodes' unchanged code without a thread or a blocking wait
    each: publish queues the packet (a QoS 1 one is acked later, in order; a clean disconnect waits
    for the last one, as umqtt's publish would have); the loop hands messages to the node's callback;
    the worker calls the node's drain() instead of its serve(), so wait_msg() is not offered."""

    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl_context=None,
                 loop=None, owner=None):
        self.server, self.port, self.keepalive = server, port or 1883, keepalive or 60
        self.cb = None
        self.loop = loop
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                client_id=client_id.decode() if isinstance(client_id, bytes) else client_id)
        self.paho.max_inflight_messages_set(64)   # umqtt has one in flight; queued ones wait here, not in the node
        if user is not None:
            self.paho.username_pw_set(user, password)
        if ssl_context is not None:
            self.paho.tls_set_context(ssl_context)
        self.paho.on_message = lambda c, u, m: self.cb(m.topic.encode(), m.payload)
        self.paho.on_socket_open = no_delay
        self.sock = _Socket(self.paho)
        self._opened = False
        self._last = None   # the info of the last QoS 1 publish, which a clean disconnect waits for
        loop.attach(self.paho, owner)

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.paho.will_set(_s(topic), msg, qos=qos, retain=retain)

    def connect(self, clean_session=True):
        """The TCP (and TLS) connection and the CONNECT; a refused CONNACK comes later, to on_connect."""
        if self._opened:
            self.paho.reconnect()
        else:
            self.paho.connect(self.server, self.port, keepalive=self.keepalive)
            self._opened = True
        return 0

    def disconnect(self):
        if self._last is not None and self.paho.socket() is not None:
            self.loop.leave(self.paho, self._last)
        else:
            self.paho.disconnect()

    def publish(self, topic, msg, retain=False, qos=0):
        if self.paho.socket() is None:
            raise OSError(107, "link lost")   # ENOTCONN, as umqtt's write on a closed socket
        # the node may reuse its buffer once publish returns: a copy
        payload = bytes(msg) if isinstance(msg, (memoryview, bytearray)) else msg
        info = self.paho.publish(_s(topic), payload, qos=qos, retain=retain)
        if qos:
            self._last = info

    def subscribe(self, topic, qos=0):
        result, mid = self.paho.subscribe(_s(topic), qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise OSError("subscribe failed: %d" % result)

    def ping(self):
        pass   # the loop keeps the session alive


class _Socket:
    """What the node does with `client.sock`: set an option, or close it after a failed write (which
    ends the link: the loop notices and the worker reconnects)."""

    def __init__(self, paho):
        self.paho = paho

    def setsockopt(self, *args):
        sock = self.paho.socket()
        if sock is not None:
            sock.setsockopt(*args)

    def settimeout(self, t):
        pass

    def close(self):
        sock = self.paho.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
