# One MCU round under the MicroPython unix port, on the board build (.mpy): a CL upload of fraction S
# streamed from flash, then the int8 model download to flash and its evaluation on local samples.
# Run by bench_mcu.py at a given -X heapsize. usage: micropython mp_round.py WORKDIR FRACTION
import gc
import struct
import sys
import time

work, fraction = sys.argv[1], float(sys.argv[2])

from semifl_node.node import Node  # noqa: E402
from link import SimBattery, SimRadio  # noqa: E402


class CountingClient:
    """umqtt.simple's publish(); counts bytes on air (MQTT fixed header + topic + packet id + payload)."""

    def __init__(self):
        self.bytes = 0
        self.statuses = []

    def publish(self, topic, msg, retain=False, qos=0):
        n = 2 + len(topic) + 2 + len(msg)
        self.bytes += n + (1 if n > 127 else 0) + (1 if n > 16383 else 0) + 1
        if topic.endswith("/status"):
            self.statuses.append(bytes(msg))


cfg = {"id": "mcu-b", "samples": work + "/samples.bin", "labels": work + "/labels.bin", "model": work + "/model.bin",
       "max_chunk": 4096, "eval_n": 32}
client = CountingClient()
node = Node(cfg, client, SimRadio({}), SimBattery({}))
gc.collect()
t0 = time.ticks_ms()
node.upload_samples({"round": 1, "task": 5, "seed": 12345, "fraction": fraction})
t_up = time.ticks_diff(time.ticks_ms(), t0)
up = client.bytes
down = 0
with open(work + "/model_chunks.bin", "rb") as f:   # <I len> chunk, as the broker would deliver them
    while True:
        h = f.read(4)
        if len(h) < 4:
            break
        n = struct.unpack("<I", h)[0]
        payload = f.read(n)
        down += n + 2 + len("semifl/v1/host/model_int8") + 2 + 3
        node.handle("semifl/v1/host/model_int8", payload)
        payload = None
ev = [s for s in client.statuses if b'"eval"' in s]
print("OK", up, t_up, down, ev[0].decode() if ev else "")
