"""umqtt.simple's MQTTClient interface over paho-mqtt, so the MicroPython node's unchanged code runs
under CPython in the virtual fleet. An adapter, not an MQTT client: paho speaks the protocol.

Semantics kept from umqtt.simple: callbacks fire only inside wait_msg()/check_msg() on the caller's
thread, topics and payloads are bytes, and a QoS 1 publish returns once the broker has acked it.
"""
import queue

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
