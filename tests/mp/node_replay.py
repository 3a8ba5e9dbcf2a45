# Replays recorded messages into the real MCU node under the real MicroPython unix port, exactly as its
# run loop handles them (errors reported on the status topic, the node keeps serving), and records
# what it publishes. usage: micropython -X heapsize=110000 node_replay.py WORKDIR [burst]
# burst: every message arrives before the node acts on the first, as when they come in while an upload
# waits for its PUBACKs (umqtt hands them to the callback there).
import sys
import gc

work = sys.argv[1]
burst = sys.argv[2:] == ["burst"]

from semifl_node.node import Node  # noqa: E402
from link import SimBattery, SimRadio  # noqa: E402
from harness import RecordingClient, read_records  # noqa: E402

cfg = {"id": "mcu-t", "samples": work + "/samples.bin", "labels": work + "/labels.bin", "model": work + "/model.bin",
       "max_chunk": 4096, "eval_n": 20}
client = RecordingClient(work + "/published.bin")
node = Node(cfg, client, SimRadio({"rssi": [-61.5]}), SimBattery({}))
gc.collect()
start = low = gc.mem_free()
for topic, msg in read_records(work + "/messages.bin"):
    node.on_message(topic, msg)   # as umqtt's wait_msg delivers it, then as Node.serve acts on it
    msg = None
    if not burst:
        node.drain()
    gc.collect()
    low = min(low, gc.mem_free())
node.drain()
client.f.close()
print("OK", start - low)   # the most heap the queued messages held
