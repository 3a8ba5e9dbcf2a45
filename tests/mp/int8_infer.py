# The node's int8 kernel under real MicroPython at a board heap: int8 inputs in, int8 logits out.
# usage: micropython -X heapsize=110000 int8_infer.py MODEL INPUTS OUTPUTS N
import sys
import time
import gc

from semifl_node.int8 import Int8MLP

model_path, inputs, outputs, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
m = Int8MLP(model_path)
gc.collect()
free0 = gc.mem_free()
row = bytearray(m.layers[0].n_in)
t0 = time.ticks_ms()
low = free0
with open(inputs, "rb") as fi, open(outputs, "wb") as fo:
    for _ in range(n):
        fi.readinto(row)
        from array import array
        x = array("b", row)   # the test writes int8 inputs as bytes
        y = m.forward(x)
        fo.write(bytes(y))
        low = min(low, gc.mem_free())
ms = time.ticks_diff(time.ticks_ms(), t0)
print("OK", n, ms, free0 - low)
