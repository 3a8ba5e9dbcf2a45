# Runs the real MCU node (firmware/micropython/semifl_node) under the real MicroPython unix port with a
# board-sized heap: capability report, then one CL upload streamed from flash. The only stand-ins are
# what a board would supply: an MQTT client (here it records what is published to a file), radio, battery.
# usage: micropython -X heapsize=110000 node_cl_upload.py WORKDIR SEED FRACTION
import sys

work, seed, fraction = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

from semifl_node.node import Node  # noqa: E402
from link import SimBattery, SimRadio  # noqa: E402
from harness import RecordingClient  # noqa: E402


cfg = {"id": "mcu-t", "samples": work + "/samples.bin", "labels": work + "/labels.bin", "max_chunk": 2048,
       "raw_ok": True}
client = RecordingClient(work + "/published.bin")
node = Node(cfg, client, SimRadio({"rssi": [-61.5]}), SimBattery({}))
node.publish(node.topic("caps"), __import__("wire").encode_json(node.capabilities()), retain=True)
node.upload_samples({"round": 3, "task": 77, "seed": seed, "fraction": fraction})
client.f.close()
import gc  # noqa: E402
gc.collect()
print("OK", node.bytes_up, gc.mem_free())
