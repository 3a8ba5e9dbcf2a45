# What a board supplies to the MCU node, for tests under the real MicroPython unix port: an MQTT client
# with umqtt.simple's publish() that records to a file (radio and battery: semifl's link simulator).
import struct


class RecordingClient:
    """Every publish goes to a length-prefixed record file: <H topic len><I payload len> topic payload."""

    def __init__(self, path):
        self.f = open(path, "wb")

    def publish(self, topic, msg, retain=False, qos=0):
        t = topic.encode()
        self.f.write(struct.pack("<HI", len(t), len(msg)))
        self.f.write(t)
        self.f.write(msg)


def read_records(path):
    """The same record format, as a generator of (topic, payload)."""
    with open(path, "rb") as f:
        while True:
            head = f.read(6)
            if len(head) < 6:
                return
            tlen, plen = struct.unpack("<HI", head)
            yield f.read(tlen).decode(), f.read(plen)
