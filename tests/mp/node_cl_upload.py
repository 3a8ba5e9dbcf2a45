# Runs the real MCU node (firmware/micropython/semifl_node) under the real MicroPython unix port with a
# board-sized heap: capability report, then one CL upload streamed from flash. The only stand-ins are
# what a board would supply: an MQTT client (here it records what is published to a file), radio, battery.
# usage: micropython -X heapsize=110000 node_cl_upload.py WORKDIR SEED FRACTION
import sys
import struct

work, seed, fraction = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

from semifl_node.node import Node  # noqa: E402


class RecordingClient:
    """umqtt.simple's publish signature; every publish goes to a length-prefixed record file."""

    def __init__(self, path):
        self.f = open(path, "wb")

    def publish(self, topic, msg, retain=False, qos=0):
        t = topic.encode()
        self.f.write(struct.pack("<HI", len(t), len(msg)))
        self.f.write(t)
        self.f.write(msg)


class Radio:
    def rssi(self, rnd):
        return -61.5

    def delay(self, n):
        pass

    def drops(self, rnd):
        return False


class Battery:
    def level(self):
        return 0.9

    def transmit(self, n):
        pass


cfg = {"id": "mcu-t", "samples": work + "/samples.bin", "labels": work + "/labels.bin", "max_chunk": 2048,
       "raw_ok": True}
client = RecordingClient(work + "/published.bin")
node = Node(cfg, client, Radio(), Battery())
node.publish(node.topic("caps"), __import__("wire").encode_json(node.capabilities()), retain=True)
node.upload_samples({"round": 3, "task": 77, "seed": seed, "fraction": fraction})
client.f.close()
import gc  # noqa: E402
gc.collect()
print("OK", node.bytes_up, gc.mem_free())
