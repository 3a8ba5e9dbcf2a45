"""Host workers (issue 20): the same run with the host alone, 1 and 2 host workers on Mosquitto 2: round
time, the upload and aggregate phases, CPU per round of the host and of each worker, and the relay's share
of the upload traffic (chunks a worker received through the shared subscription but did not own, passed to
their owner). N devices (Pis and MCUs), K FL uploaders of 2K tasked, the MLP.

    python benchmarks/bench_workers.py [--devices 200] [--rounds 4] [--uploaders 50] [--workers 0,1,2]

Each configuration runs in a process of its own (a fresh Mosquitto, a fresh fleet); round 1 (first
connections, caches) is left out of the per-round figures. Writes benchmarks/results/workers.json.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]
OUT = REPO / "benchmarks" / "results" / "workers.json"


def one(devices: int, rounds: int, uploaders: int, workers: int) -> dict:
    """One configuration, in this process: the host here, the fleet and workers in their own processes."""
    import numpy as np
    from conftest import _wait_port
    from semifl.app.run import fleet_specs, load_data, run_on_broker
    from semifl.config import RunConfig
    from semifl.transport.broker import free_port

    port, d = free_port(), Path(tempfile.mkdtemp())
    # as tests/conftest.py's, with no cap on a client's queue (Mosquitto's default 1000 drops a busy
    # host's chunks at this many devices; benchmarks/bench_scale.py does the same)
    (d / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                                      "set_tcp_nodelay true\nmax_packet_size 4194304\nmax_queued_messages 0\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(d / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    _wait_port(port)
    out = Path(tempfile.mkdtemp())
    cpu = []
    try:
        cfg = RunConfig.make(rounds=rounds, seed=1, out=str(out), broker=f"mqtt://127.0.0.1:{port}", plot=False,
                             int8_every=0, fl_devices=devices // 2, cl_devices=devices - devices // 2,
                             fl_uploaders=uploaders, over_select=1.0, cl_uploaders=uploaders // 2)
        data = load_data(cfg)
        specs = fleet_specs(cfg, data)
        t0 = time.process_time()
        _, rounds_obj, metrics = run_on_broker(cfg, out, specs, data, workers=workers,
                                               on_round=lambda m: cpu.append(time.process_time()))
        final = [a.copy() for a in rounds_obj.params]
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(d, ignore_errors=True)
    per = metrics[1:]
    stats = [json.loads((out / "workers" / f"w{i}" / "stats.json").read_text()) for i in range(workers)]
    upd = sum(s.get("own_bytes", 0) + s.get("relayed_out_bytes", 0) for s in stats)
    relayed = sum(s.get("relayed_out_bytes", 0) for s in stats)
    steps = np.diff([t0] + cpu)[1:]
    np.savez(out / "final.npz", *final)
    return {"host_workers": workers, "devices": devices, "fl_uploaders": uploaders, "rounds": rounds,
            "accuracy": [m["accuracy"] for m in metrics],
            "participants_fl": [len(m["participants"]["fl"]) for m in metrics],
            "round_s": round(float(np.mean([m["wall_s"] for m in per])), 3),
            "upload_s": round(float(np.mean([m["phases_s"]["upload"] for m in per])), 3),
            "aggregate_s": round(float(np.mean([m["phases_s"]["aggregate"] for m in per])), 3),
            "host_cpu_per_round_s": round(float(np.mean(steps)), 3),
            "workers_cpu_s_total": [s["cpu_s"] for s in stats],
            "update_chunk_bytes": upd, "relayed_bytes": relayed,
            "relay_share": round(relayed / upd, 3) if upd else None,
            "samples_bytes_via_workers": sum(s.get("samples_bytes", 0) for s in stats),
            "rejected": sum(sum(m["rejected"].values()) for m in metrics),
            "final_model": str(out / "final.npz")}


def main() -> None:
    import variants

    variants.main(__file__, variants.parser(__doc__, "--workers", "0,1,2").parse_args(), one, "workers",
                  key="host_workers", diff="host_alone", out=OUT)


if __name__ == "__main__":
    main()
