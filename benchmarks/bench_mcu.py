"""MCU memory and time budget per board profile: the heap one round needs (the smallest -X heapsize at
which the real MicroPython unix port completes it, found by bisection), against each board's free heap;
on-device int8 inference time (measured here on the unix port, so a lower bound for a board); bytes on
air per round by role. Writes benchmarks/results/mcu.json.

A round = a CL upload of S x 6000 samples streamed from flash + the int8 model downloaded to flash,
swapped in and evaluated on 32 local samples. The node runs as `semifl flash` builds it (.mpy).

    python benchmarks/bench_mcu.py
"""
from __future__ import annotations

import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

from semifl.flash.build import build_app  # noqa: E402
from semifl.learn import int8  # noqa: E402
from semifl.learn.data import load_dataset  # noqa: E402
from semifl.protocol import wire  # noqa: E402
from semifl.sim.fleet import BOARD_HEAP, micropython_env  # noqa: E402

FRACTIONS = (0.05, 0.3, 1.0)


def run_round(app: Path, work: Path, heap: int, fraction: float) -> tuple[bool, str]:
    for f in ("model.bin", "model.bin.tmp"):
        (work / f).unlink(missing_ok=True)
    env = micropython_env(dict(os.environ), app)
    r = subprocess.run(["micropython", "-X", f"heapsize={heap}", str(HERE / "mp_round.py"), str(work), str(fraction)],
                       capture_output=True, text=True, env=env, timeout=600)
    last = (r.stdout.strip().splitlines() or [""])[-1]
    ok = r.returncode == 0 and last.startswith("OK") and '"eval"' in last
    return ok, last if ok else (r.stdout + r.stderr)[-300:]


def min_heap(app, work, fraction, lo=16_000, hi=2_000_000) -> int:
    """Smallest heap (to 1 KB) at which the round completes."""
    assert run_round(app, work, hi, fraction)[0]
    while hi - lo > 1024:
        mid = (lo + hi) // 2
        if run_round(app, work, mid, fraction)[0]:
            hi = mid
        else:
            lo = mid
    return hi


def main() -> int:
    ds = load_dataset(None)
    tmp = Path(tempfile.mkdtemp())
    app = tmp / "app"
    build_app(app, "unix", sim=True)
    sel = ds.y_train == 7
    (tmp / "samples.bin").write_bytes(ds.x_train[sel].tobytes())
    (tmp / "labels.bin").write_bytes(ds.y_train[sel].tobytes())
    params = [np.load(REPO / "models" / "mlp-fmnist" / "mlp-fmnist.fp32.npz")[f"arr_{i}"] for i in range(8)]
    model = int8.quantize(params, ds.x_train[::60][:1000] / np.float32(255))
    blob = int8.encode(model, 10)
    with open(tmp / "model_chunks.bin", "wb") as f:
        for c in wire.iter_chunks(wire.KIND_MODEL_INT8, 10, blob, 4096):
            f.write(struct.pack("<I", len(c)) + c)

    rows = {}
    for s in FRACTIONS:
        need = min_heap(app, tmp, s)
        ok, line = run_round(app, tmp, need + 8192, s)
        _, up, t_up, down, ev = line.split(" ", 4)
        ev = json.loads(ev)
        rows[str(s)] = {"heap_needed_bytes": need, "cl_upload_bytes_on_air": int(up), "cl_upload_ms_unix": int(t_up),
                        "model_int8_download_bytes_on_air": int(down), "eval_n": ev["n"], "eval_ms_unix": ev["ms"],
                        "infer_ms_per_sample_unix": round(ev["ms"] / ev["n"], 2)}
        print(s, rows[str(s)], flush=True)
    boards = {b: {"free_heap_bytes": h, "fits": {s: rows[s]["heap_needed_bytes"] <= h for s in rows},
                  "margin_bytes_at_S0.3": h - rows["0.3"]["heap_needed_bytes"]} for b, h in BOARD_HEAP.items()}
    out = {"what": "one MCU round: CL upload of S x 6000 samples + int8 model download, swap, eval of 32 samples",
           "machine": platform.platform(), "micropython": subprocess.run(["micropython", "-c", "import sys; print(sys.version)"],
                                                                         capture_output=True, text=True).stdout.strip(),
           "model_int8_blob_bytes": len(blob), "by_fraction": rows, "boards": boards,
           "note": "times are the unix port on this machine (a lower bound for a 240 MHz ESP32); heap and bytes are the board's"}
    (HERE / "results" / "mcu.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(boards, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
