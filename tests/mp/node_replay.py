# Replays recorded messages into the real MCU node under the real MicroPython unix port, exactly as its
# run loop handles them (errors reported on the status topic, the node keeps serving), and records
# what it publishes. usage: micropython -X heapsize=110000 node_replay.py WORKDIR
import sys
import gc

work = sys.argv[1]

from semifl_node.node import Node  # noqa: E402
from link import SimBattery, SimRadio  # noqa: E402
from harness import RecordingClient, read_records  # noqa: E402

cfg = {"id": "mcu-t", "samples": work + "/samples.bin", "labels": work + "/labels.bin", "model": work + "/model.bin",
       "max_chunk": 4096, "eval_n": 20}
client = RecordingClient(work + "/published.bin")
node = Node(cfg, client, SimRadio({"rssi": [-61.5]}), SimBattery({}))
low = gc.mem_free()
for topic, msg in read_records(work + "/messages.bin"):
    try:
        node.handle(topic, msg)
    except Exception as e:  # as Node.run does
        msg = None
        node.report_error(topic, e)
    low = min(low, gc.mem_free())
client.f.close()
print("OK", low)
