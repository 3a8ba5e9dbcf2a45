"""The semifl MCU node: a CL uploader for computing-limited sensors.

MicroPython subset (runs on an ESP32 as flashed, and under CPython in the virtual fleet). The MQTT
client is umqtt.simple's MQTTClient (or anything with its interface); radio and battery are objects
with rssi(round)/delay(n)/drops(round) and level()/transmit(n), real on a board, simulated in the fleet.
Local samples live in flash as two files: samples.bin (n x 784 uint8) and labels.bin (n uint8), and are
streamed from there in chunks, so a 1.4 MB upload fits a 110 KB heap. Config `first` and `rows` make them
rows first..first + rows of bigger files (the virtual fleet writes a shard once for all who hold it).
"""
import errno
import gc
import json
import os
import sys
import time

try:
    import report
    import sampling
    import wire
except ImportError:  # CPython with the host package installed
    from semifl.protocol import report, sampling, wire
from semifl_node import int8
from semifl_node.download import FlashAssembler, replace

FIRMWARE = "semifl-mcu/0.1"
ROW = 784
OPS = ["FULLY_CONNECTED", "TANH", "LOGISTIC"]   # the int8 ops semifl_node/int8.py implements


def file_size(path):
    return os.stat(path)[6]


def now_ms():
    """Milliseconds on MicroPython's tick counter (time.time() under CPython)."""
    ticks = getattr(time, "ticks_ms", None)
    return ticks() if ticks else time.time() * 1000


def since_ms(t0):
    diff = getattr(time, "ticks_diff", None)
    return diff(now_ms(), t0) if diff else now_ms() - t0


def cpu_score(iterations=20000):
    """A timed integer loop, scaled so an ESP32 at 240 MHz scores in the single digits."""
    t0 = now_ms()
    acc = 0
    for i in range(iterations):
        acc = (acc + i * 7) ^ (acc >> 3)
    ms = since_ms(t0) or 1
    return round(iterations / ms / 100, 2)


class Node:
    def __init__(self, cfg, client, radio, battery):
        self.cfg = cfg
        self.id = cfg["id"]
        self.c = client
        self.radio = radio
        self.battery = battery
        self.samples_path = cfg["samples"]
        self.labels_path = cfg["labels"]
        self.first = int(cfg.get("first", 0))
        self.n = int(cfg["rows"]) if "rows" in cfg else file_size(self.labels_path) - self.first
        self.max_chunk = int(cfg.get("max_chunk", 4096))
        self.fresh = None   # the fresh-samples rule's state (semifl_node/fresh.py), from the first task that asks
        self.queue = []
        self.stopped = False
        self.bytes_up = 0
        self.round = 0   # the round last announced: errors are reported against it
        self.errors = 0  # messages it could not act on (malformed, failed): reported, never fatal
        # the int8 model for on-device inference: downloaded to model_path + ".tmp", swapped in only
        # once its CRC checks out, so a power cut mid-download leaves the last good model
        self.model_path = cfg.get("model", "model.bin")
        self.model_max = int(cfg.get("model_max", 262144))
        self.eval_n = int(cfg.get("eval_n", 32))
        self.model_topic = wire.host_topic(wire.T_MODEL_INT8)
        self.dl = None           # the FlashAssembler of the download in progress
        self.landed = None        # (blob id, blob CRC) of a complete download in model_path + ".new"
        self.model_round = None   # blob id (round) of the model in model_path
        self.model_crc = None     # its blob CRC, reported with each eval: the bench checks what landed
        self.pending = None       # the CL task being uploaded, until its last chunk is out
        self.ping_s = int(cfg.get("keepalive", 60)) // 2
        self.marks = bool(cfg.get("phases"))   # phase statuses for a bench's power meter (off: no bytes)
        self.cur_phase = None
        for leftover in (".tmp", ".new"):   # what a reset mid-download left behind
            try:
                os.remove(self.model_path + leftover)
            except OSError:
                pass

    def topic(self, leaf):
        return wire.dev_topic(self.id, leaf)

    def publish(self, topic, payload, retain=False):
        self.radio.delay(len(payload))
        self.battery.transmit(len(payload))
        self.bytes_up += len(payload)
        self.c.publish(topic, payload, retain, 1)

    def histogram(self, n_classes=10):
        hist = [0] * n_classes
        left = self.n
        with open(self.labels_path, "rb") as f:
            f.seek(self.first)
            while left > 0:
                block = f.read(min(512, left))
                if not block:
                    break
                left -= len(block)
                for c, k in enumerate(report.histogram(block, n_classes)):
                    hist[c] += k
        return hist

    def free_ram(self):
        """Free heap; config "ram" stands in for a simulated board's."""
        mem_free = getattr(gc, "mem_free", None)
        return int(self.cfg.get("ram") or (mem_free() if mem_free else 0))

    def capabilities(self):
        try:
            st = os.statvfs("/")
            flash = st[0] * st[4]
        except (AttributeError, OSError):
            flash = 0
        return report.capabilities(self.id, "mcu", FIRMWARE, self.free_ram(), flash, cpu_score(), self.battery.level(),
                                   self.radio.rssi(0), self.n, self.histogram(), bool(self.cfg.get("raw_ok", True)),
                                   self.max_chunk, ["cl", "infer"], sys.implementation.name,
                                   self.cfg.get("board", "esp32"), ops=self.cfg.get("ops", OPS))

    def status(self, kind, rnd, **fields):
        self.publish(self.topic(wire.T_STATUS), wire.encode_json(report.status(kind, rnd, **fields)))

    def phase(self, name):
        """A `phase` status at each change (train, infer, upload, download, idle), stamped with the
        device's millisecond tick, so a meter's samples can be attributed (semifl.meters.align)."""
        if self.marks and name != self.cur_phase:
            self.cur_phase = name
            self.status("phase", self.round, phase=name, t_ms=int(now_ms()))

    def on_message(self, topic, msg):
        # umqtt calls this inside wait_msg(), where publishing is not safe: queue it and act outside.
        # A model chunk goes to flash right here and only a small note waits: chunks that arrive while
        # the node is busy (an upload waits for every PUBACK) would otherwise pile up in the heap
        topic = topic.decode() if isinstance(topic, bytes) else topic
        if topic == self.model_topic:
            try:   # an empty message (a cleared retained one) leaves nothing to act on
                msg = self.store_model_chunk(msg) if msg else None
            except Exception as e:  # reported outside, like any message's error
                msg = e
        self.queue.append((topic, msg))

    def handle(self, topic, msg):
        if topic == self.model_topic:
            return self.on_model_chunk(msg)
        if not msg:
            return  # an empty retained message clears the announcement
        obj = wire.decode_json(msg, 2048)   # a host's JSON to a node is < 1 KB: a bigger one is not parsed
        msg = None
        if topic == wire.host_topic("round"):
            what, rnd = report.announcement(obj)   # every field checked; stop only as the exact `true`
            if what == "stop":
                self.stopped = True
                return
            self.round = rnd
            self.phase("idle")
            if not self.radio.drops(rnd):
                self.status("ready", rnd, rssi=self.radio.rssi(rnd), battery=self.battery.level())
        elif topic == self.topic(wire.T_TASK):
            if obj.get("role") == "cl":   # the fields it uses, checked before any is
                report.check(obj, "round")
                report.check(obj, "task")
                report.check(obj, "seed", 0, 0xFFFFFFFF)
                report.check(obj, "fraction", 0, 1, 1)
                if "fresh" in obj:
                    report.check(obj, "fresh", 0, 0xFFFFFFFF)
                    report.check(obj, "got")
                self.phase("upload")
                self.upload_samples(obj)
                self.phase("idle")

    # --- int8 model: download to flash, swap, evaluate on local samples --------------------------
    def store_model_chunk(self, payload):
        """Write one chunk of the int8 model at its place in model_path + ".tmp"; at the last one (CRC
        checked) rename it to ".new". Returns the blob id, or None for a late duplicate."""
        kind, blob_id, seq, count, blob_len, bcrc, data = wire.decode_chunk(payload, self.model_max)
        payload = None
        if kind != wire.KIND_MODEL_INT8:
            raise wire.WireError("malformed", "kind %d on the int8 model topic" % kind)
        if blob_id == self.model_round or (self.landed and blob_id == self.landed[0]):
            return None   # a late duplicate of a model already complete
        dl = self.dl
        if dl is None or (dl.blob_id, dl.count, dl.blob_len) != (blob_id, count, blob_len):
            self.abort_download()
            dl = self.dl = FlashAssembler(self.model_path + ".tmp", blob_id, count, blob_len)
        try:
            done = dl.add(seq, bcrc, data)
        except Exception:
            self.abort_download()
            raise
        if done:
            self.dl = None
            replace(self.model_path + ".tmp", self.model_path + ".new")
            self.landed = (blob_id, dl.blob_crc)
        return blob_id

    def on_model_chunk(self, note):
        """What store_model_chunk left: an error to report, or a chunk in flash; once the whole model
        is there, check that this node can run it, swap it in and evaluate it."""
        if isinstance(note, OSError):   # flash, not the link: serve must not take it for a lost link
            raise RuntimeError("flash: %s" % note)
        if isinstance(note, Exception):
            raise note
        if note is None:
            return
        self.phase("download")
        if self.landed is None or self.landed[0] != note:
            return   # more chunks to come (or a newer model landed since: its own note swaps it in)
        blob_id, blob_crc = self.landed
        self.landed = None
        try:   # a model this node cannot run is refused here and the last good one kept
            int8.check(self.model_path + ".new", self.cfg.get("ops", OPS), self.free_ram())
        except ValueError as e:
            os.remove(self.model_path + ".new")
            reason, _, detail = str(e).partition(": ")
            self.status("refused", blob_id, reason=reason, detail=detail[:120])
            self.phase("idle")
            return
        replace(self.model_path + ".new", self.model_path)
        self.model_round, self.model_crc = blob_id, blob_crc
        self.phase("infer")
        self.evaluate(blob_id)
        self.phase("idle")

    def abort_download(self):
        if self.dl is not None:
            self.dl.close()
            try:
                os.remove(self.model_path + ".tmp")
            except OSError:
                pass
        self.dl = None

    def evaluate(self, model_round):
        """Accuracy of the stored int8 model on eval_n local samples, spread over the file."""
        gc.collect()
        m = int8.Int8MLP(self.model_path)
        n = min(self.eval_n, self.n)
        row = bytearray(ROW)
        correct = 0
        t0 = now_ms()
        with open(self.samples_path, "rb") as fs, open(self.labels_path, "rb") as fl:
            for j in range(n):
                i = j * self.n // n
                fs.seek((self.first + i) * ROW)
                fs.readinto(row)
                fl.seek(self.first + i)
                if m.predict(row) == fl.read(1)[0]:
                    correct += 1
        ms = since_ms(t0)
        m = row = None
        gc.collect()   # the model's arrays go before the next upload needs its chunk buffers
        self.status("eval", model_round, accuracy=correct / n, n=n, ms=ms, crc=self.model_crc)
        return correct / n

    def report_error(self, topic, e):
        gc.collect()
        rnd = self.round
        print("semifl-node:", topic, type(e).__name__, e)
        try:
            self.status("error", rnd, error=type(e).__name__, detail=str(e)[:120])
        except Exception as e2:
            # a publish that failed mid-packet (or while reading the PUBACK) leaves the stream out of
            # step: close it, so serve's next read fails and run() reconnects on a clean session
            print("semifl-node: cannot report:", e2)
            try:
                self.c.sock.close()
            except Exception:
                pass

    def upload_samples(self, task):
        """Stream ceil(fraction*n) samples chosen by the task's seed, straight from flash (with `fresh`:
        only those the host does not hold yet)."""
        self.pending = task
        gc.collect()
        idx = sampling.select(self.n, sampling.ceil_fraction(self.n, task["fraction"]), task["seed"])
        if task.get("fresh"):
            from semifl_node.fresh import only_fresh   # docs/protocol.md §5
            idx = only_fresh(self, task, idx)
        gc.collect()  # select's n-sized scratch arrays are garbage now: free them before the chunk buffers
        k = len(idx)
        meta = {"kind": "samples", "round": task["round"], "task": task["task"], "device": self.id, "n": k}
        head, total = wire.blob_head(meta, [("uint8", (k, ROW), 1.0, 0), ("uint8", (k,), 1.0, 0)])
        topic = self.topic(wire.T_UP)
        w = wire.ChunkWriter(wire.KIND_SAMPLES, task["round"], total, self.max_chunk,
                             lambda p: self.publish(topic, p), True)   # publish is done with p when it returns
        w.write(head)
        w.write(wire.tensor_header("uint8", (k, ROW)))
        with open(self.samples_path, "rb") as f:
            for i in idx:
                f.seek((self.first + i) * ROW)
                w.write(f.read(ROW))
        w.write(wire.tensor_header("uint8", (k,)))
        with open(self.labels_path, "rb") as f:   # a label at a time: the whole file is n bytes of heap
            for i in idx:
                f.seek(self.first + i)
                w.write(f.read(1))
        w.close()
        self.pending = None
        gc.collect()

    def connect(self):
        c = self.c
        c.set_callback(self.on_message)
        c.set_last_will(self.topic(wire.T_PRESENCE), b"offline", True, 1)
        c.connect()
        try:  # umqtt writes each packet in pieces and waits for every PUBACK: with Nagle on, ~40 ms a chunk
            c.sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
        except Exception:
            pass  # a port without the option (or a client without .sock) is only slower
        c.subscribe(wire.host_topic("round"), 1)
        c.subscribe(self.topic(wire.T_TASK), 1)
        c.subscribe(wire.host_topic(wire.T_MODEL_INT8), 1)
        self.publish(self.topic(wire.T_PRESENCE), b"online", retain=True)
        self.publish(self.topic(wire.T_CAPS), wire.encode_json(self.capabilities()), retain=True)

    def serve(self):
        """Handle messages until stopped. Raises OSError when the link is gone."""
        c = self.c
        while not self.stopped:
            sock = getattr(c, "sock", None)
            if sock is not None:
                sock.settimeout(self.ping_s)   # wait_msg() resets it to blocking after each read
            try:
                c.wait_msg()
            except OSError as e:
                if e.args and e.args[0] in (errno.ETIMEDOUT, errno.EAGAIN):
                    c.ping()   # idle: keep the session alive; a dead link fails the next read
                    continue
                raise
            except Exception as e:  # e.g. MemoryError mid-packet: the stream is out of step
                raise OSError("read failed: %s %s" % (type(e).__name__, e))
            self.drain()

    def drain(self):
        """Act on the queued messages in order; a message's error is reported and serving goes on."""
        while self.queue:
            topic, msg = self.queue.pop(0)
            try:
                self.handle(topic, msg)
            except OSError:
                raise   # the link, not the message: reconnect
            except Exception as e:  # bad command, out of memory, ...: report it and keep serving
                msg = None  # free the payload first: it may be what exhausted the heap
                self.errors += 1
                if isinstance(e, wire.WireError) and topic != self.model_topic:
                    # a malformed command is counted and ignored: answering each one would let a
                    # flood of junk become a flood of statuses (model download errors are reported)
                    print("semifl-node: ignored", topic, e)
                    continue
                self.report_error(topic, e)

    def run(self):
        """Connect, serve, and on a lost link reconnect with exponential backoff (1 s to 30 s); an
        upload the link cut is sent again from the start (the host keeps the chunks it has)."""
        backoff = 1
        while not self.stopped:
            try:
                try:
                    self.connect()
                except OSError:
                    raise
                except Exception as e:   # umqtt's MQTTException: the broker refused us (credentials); retry
                    raise OSError("broker refused the connection: %s" % e)
                backoff = 1
                self.resume()
                self.serve()
            except OSError as e:
                print("semifl-node: link lost (%s); reconnecting in %d s" % (e, backoff))
                try:
                    self.c.sock.close()
                except Exception:
                    pass
                self.queue = []
                time.sleep(backoff)
                backoff = min(2 * backoff, 30)
        self.close()

    def resume(self):
        """Once connected: send again from the start an upload the link cut (the host keeps the chunks it has)."""
        task = self.pending
        if task is not None and task["round"] == self.round:
            self.upload_samples(task)

    def close(self):
        """Offline (retained), then a clean disconnect: the last will is for a link that dies."""
        self.publish(self.topic(wire.T_PRESENCE), b"offline", retain=True)
        self.c.disconnect()


def load_config(path="config.json"):
    with open(path) as f:
        return json.load(f)
