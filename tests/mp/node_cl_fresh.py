# The real MCU node under MicroPython: a sequence of CL tasks under the fresh-samples rule (docs/protocol.md
# §5), each streamed from flash as the node streams any upload; the test checks what each upload holds.
# usage: micropython -X heapsize=110000 node_cl_fresh.py WORKDIR   (the tasks: WORKDIR/tasks.json; the unix
# port dies of a long argument: "FATAL: uncaught NLR")
import json
import sys

work = sys.argv[1]
with open(work + "/tasks.json") as f:
    tasks = json.loads(f.read())

from semifl_node.node import Node  # noqa: E402
from link import SimBattery, SimRadio  # noqa: E402
from harness import RecordingClient  # noqa: E402

cfg = {"id": "mcu-t", "samples": work + "/samples.bin", "labels": work + "/labels.bin", "max_chunk": 2048,
       "raw_ok": True}
client = RecordingClient(work + "/published.bin")
node = Node(cfg, client, SimRadio({"rssi": [-61.5]}), SimBattery({}))
for t in tasks:
    node.upload_samples(t)
client.f.close()
import gc  # noqa: E402
gc.collect()
print("OK", node.bytes_up, gc.mem_free())
