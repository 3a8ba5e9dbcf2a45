# The MicroPython node's MQTT client over TLS (benchmarks/bench_trust_tls.py, tests/test_tls.py): the heap
# the session keeps, an oversized message skipped. micropython -X heapsize=N tls_probe_mp.py HOST PORT USER PASSWORD CA_DER [plain]
import gc, sys
from semifl_node.mqtt import MQTTClient
host, port, user, pw, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
tls = len(sys.argv) < 7
with open(ca, "rb") as f:
    cadata = f.read()
gc.collect()
free0 = gc.mem_free()
got = []
c = MQTTClient(user, host, port=port, user=user, password=pw, keepalive=30, ssl=tls, ca=cadata, max_msg=8192)
c.set_callback(lambda t, m: got.append((t, len(m))))
c.connect()
gc.collect()
free1 = gc.mem_free()
c.subscribe(b"semifl/v1/dev/" + user.encode() + b"/#", 1)
c.publish(b"semifl/v1/dev/" + user.encode() + b"/status", b"hello", False, 1)
c.sock.settimeout(5)
while not got:   # its own status, back through the broker
    c.wait_msg()
print("RESULT", free0 - free1, got, c.skipped)
c.disconnect()
