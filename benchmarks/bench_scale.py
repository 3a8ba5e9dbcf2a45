"""The virtual fleet at scale: N devices (half Pis, half MCUs) connected to Mosquitto with the shipped
config (an account each, the ACL), 100 of them tasked per round (25 FL uploaders of 50 trained, 50 CL
uploaders), 5 rounds of the default strategy: start-up, seconds per round, peak RSS of the whole
process tree (host, fleet workers, MicroPython processes and Mosquitto), CPU per round of the host, the
workers and the broker, what the host accepted and rejected. Also a 300-device `semifl run` over
Mosquitto, its process tree's peak RSS.

    python benchmarks/bench_scale.py [--devices 100,1000,10000] [--rounds 5] [--no-run300]

Each N runs in a process of its own under benchmarks/proctree.py (the peak is that process's tree,
Mosquitto included). Accounts: one password per device, hashed for Mosquitto's password file with
mosquitto_passwd's 101 PBKDF2 iterations (--iterations; as `semifl certs` now does: the 10,000 it
wrote before cost Mosquitto ~7 ms of one core per connection, 70 s for 10,000 devices).
Writes benchmarks/results/scale.json (merging the N it ran into what is there).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO / "tests")]
OUT = REPO / "benchmarks" / "results" / "scale.json"
BROKER_CONF = "max_queued_messages 0"
TASKED = dict(fl_uploaders=25, over_select=1.0, cl_uploaders=50)   # ceil(25 * 2) = 50 FL + 50 CL tasked


def accounts(folder: Path, ids: list[str], iterations: int):
    """A certs folder (CA, server certificate, the host's account) and a password per device, the
    password file written once (issuing them one by one rewrites it each time: O(N^2))."""
    from semifl.transport import certs

    c = certs.init(folder)
    lines = []
    for dev in ids:
        pw = secrets.token_hex(16)
        (c.dir / "devices" / f"{dev}.password").write_text(pw + "\n")
        lines.append(f"{dev}:{certs.hash_password(pw, iterations)}\n")
    with open(c.passwd, "a") as f:
        f.write("".join(lines))
    for p in [folder, *folder.rglob("*")]:   # Mosquitto, started as root, reads them as its own user
        p.chmod(0o755 if p.is_dir() else 0o644)
    return c


def start_broker(d: Path, c, port: int, extra: str) -> subprocess.Popen:
    """Mosquitto with the shipped config (tests/conftest.py's), plus `extra` lines of configuration."""
    from conftest import _wait_port, start_shipped_mosquitto
    from semifl.transport.broker import free_port

    proc = start_shipped_mosquitto(d, c.passwd, c.dir, port, free_port())
    if extra:
        proc.terminate()
        proc.wait(10)
        with open(d / "semifl.conf", "a") as f:
            f.write(extra.replace("\\n", "\n") + "\n")
        proc = subprocess.Popen(["mosquitto", "-c", str(d / "semifl.conf")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
        _wait_port(port)
    return proc


def rss(procs) -> int:
    import psutil

    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def cpu(procs) -> float:
    import psutil

    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def tree():
    """(host process, workers, device processes, broker) of this process's tree."""
    import psutil

    me = psutil.Process()
    kids = me.children(recursive=True)
    def named(*words):
        out = []
        for p in kids:
            try:
                line = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if any(w in line for w in words):
                out.append(p)
        return out
    return me, named("semifl.sim.worker"), named("micropython", "semifl_agent", "mcu_runner"), named("mosquitto")


def one(n: int, rounds: int, iterations: int, result: Path, broker_conf: str = "") -> None:
    """One fleet of n devices, start to shutdown, in this process (run under proctree by main)."""
    import numpy as np

    from semifl.app.build import limits, make_round
    from semifl.app.run import fleet_layout, fleet_specs, wait_for_fleet
    from semifl.config import RunConfig
    from semifl.learn.data import load_idx_dataset
    from semifl.service.session import Session
    from semifl.service.store import Store
    from semifl.sim.fleet import VirtualFleet
    from semifl.transport.broker import free_port
    from semifl.transport.mqtt import HostLink

    d = Path(tempfile.mkdtemp(prefix=f"scale{n}-"))
    d.chmod(0o755)
    ds = load_idx_dataset()
    cfg = RunConfig.make(rounds=rounds, fl_devices=n // 2, cl_devices=n - n // 2, plot=False, int8_every=0,
                         ready_timeout_s=60.0, collect_timeout_s=120.0, out=str(d / "run"), **TASKED)
    specs = fleet_specs(cfg, ds)
    t = time.perf_counter()
    c = accounts(d / "certs", [s.id for s in specs], iterations)
    accounts_s = time.perf_counter() - t
    mosq = d / "mosq"
    mosq.mkdir(mode=0o755)
    port = free_port()
    broker = start_broker(mosq, c, port, broker_conf)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rec = {"git_head": head, "broker_conf": broker_conf, "loadavg_before": [round(v, 2) for v in os.getloadavg()], "devices": n, "tasked_per_round": math.ceil(TASKED["fl_uploaders"] * (1 + TASKED["over_select"]))
           + TASKED["cl_uploaders"], "rounds": rounds, "accounts_s": round(accounts_s, 2), "pbkdf2_iterations": iterations}
    try:
        host = c.host()
        link = HostLink(f"mqtt://{host.user}@127.0.0.1:{port}", password=host.password, client_id=host.user).connect()
        (d / "run").mkdir()
        store = Store(str(d / "run" / "state.db"))
        session = Session(link, store, limits(cfg))
        rounds_obj = make_round(cfg, session, ds, [s.id for s in specs])
        fleet = VirtualFleet(d / "run" / "fleet", specs, ds, f"mqtt://127.0.0.1:{port}", certs=c, **fleet_layout(cfg))
        t0 = time.perf_counter()
        fleet.start()
        files_s = time.perf_counter() - t0
        up = wait_for_fleet(session, n, cfg.host.startup_timeout_s)
        rec.update(startup_s=round(time.perf_counter() - t0, 2), fleet_files_s=round(files_s, 2),
                   connected=len(session.registry.online), all_connected=up,
                   processes={"workers": len(fleet.workers), "devices": len(fleet.procs)})
        if not up:
            raise SystemExit(f"only {len(session.registry.online)} of {n} came up")
        marks, mem = [], {}

        def on_round(m):
            host_p, workers, devices, mq = tree()
            marks.append((time.perf_counter(), cpu([host_p]), cpu(workers), cpu(devices), cpu(mq)))
            for k, ps in (("host", [host_p]), ("workers", workers), ("device_processes", devices), ("broker", mq)):
                mem[k] = max(mem.get(k, 0.0), round(rss(ps) / 2**20, 1))
        host_p, workers, devices, mq = tree()
        marks.append((time.perf_counter(), cpu([host_p]), cpu(workers), cpu(devices), cpu(mq)))
        session.run(rounds_obj, rounds, on_round=on_round)
        t1 = time.perf_counter()
        session.stop_fleet()
        fleet.stop(timeout=300)
        rec["shutdown_s"] = round(time.perf_counter() - t1, 2)
        rec["exit_codes"] = sorted({p.returncode for p in fleet.processes()})
        ms = store.round_metrics()
        walls = [m["wall_s"] for m in ms]
        k = len(marks) - 1
        per = [(marks[-1][i] - marks[0][i]) / k for i in range(1, 5)]
        local = [sum(t.get("local", 0.0) for t in m["device_times_s"].values()) for m in ms]
        rec.update(
            round_s=round(float(np.mean(walls)), 3), round_s_each=walls,
            host_cpu_s_per_round=round(per[0], 3), workers_cpu_s_per_round=round(per[1], 3),
            device_processes_cpu_s_per_round=round(per[2], 3), broker_cpu_s_per_round=round(per[3], 3),
            device_train_s_per_round=round(float(np.mean(local)), 3),
            phases_s={p: round(float(np.mean([m["phases_s"].get(p, 0.0) for m in ms])), 3) for p in ms[0]["phases_s"]},
            answered_ready=[len(m["device_battery"]) for m in ms],
            accepted={"fl": sum(len(m["participants"]["fl"]) for m in ms), "cl": sum(len(m["participants"]["cl"]) for m in ms)},
            rejected=dict(session.rejected), device_errors=sum(len(m["device_errors"]) for m in ms),
            final_accuracy=ms[-1]["accuracy"], rss_mib_at_round_ends=mem,
            fleet_disk_bytes=sum(p.stat().st_size for p in (d / "run" / "fleet").rglob("*") if p.is_file()),
            data_disk_bytes=sum(p.stat().st_size for p in (d / "run" / "fleet" / "_data").rglob("*") if p.is_file()))
        # the host's own CPU per round outside its learning arithmetic (the aggregate phase: merging and
        # training on the CL samples; evaluate), as a share of the round: what its message handling costs
        learn = rec["phases_s"].get("aggregate", 0.0) + rec["phases_s"].get("evaluate", 0.0)
        rec["host_overhead_share"] = round((rec["host_cpu_s_per_round"] - learn) / rec["round_s"], 3)
        rec["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
        store.close()
        link.close()
    finally:
        broker.terminate()
        broker.wait(30)
        result.write_text(json.dumps(rec))
        import shutil

        shutil.rmtree(d, ignore_errors=True)


def run300(rounds: int, iterations: int, broker_conf: str) -> dict:
    """`semifl run` of 300 devices against Mosquitto (the broker started here, outside the measured tree)."""
    from proctree import measure
    from semifl.transport.broker import free_port

    d = Path(tempfile.mkdtemp(prefix="scale300-"))
    d.chmod(0o755)
    ids = [f"pi-{i:02d}" for i in range(150)] + [f"mcu-{i:02d}" for i in range(150, 300)]
    c = accounts(d / "certs", ids, iterations)
    mosq = d / "mosq"
    mosq.mkdir(mode=0o755)
    port = free_port()
    broker = start_broker(mosq, c, port, broker_conf)
    host = c.host()
    cmd = [sys.executable, "-m", "semifl.cli", "run", "--fl-devices", "150", "--cl-devices", "150", "--rounds", str(rounds),
           "--broker", f"mqtt://{host.user}:{host.password}@127.0.0.1:{port}", "--certs", str(c.dir),
           "--out", str(d / "run"), "--no-plot"]
    try:
        import psutil

        r = measure(cmd, interval=0.2, stdout=subprocess.DEVNULL, stderr=open(d / "run.log", "wb"))
        broker_rss = psutil.Process(broker.pid).memory_info().rss
    finally:
        broker.terminate()
        broker.wait(30)
    summary = json.loads((d / "run" / "summary.json").read_text()) if r["rc"] == 0 else {}
    out = {"command": " ".join(["semifl run"] + [a if "@" not in a else "mqtt://semifl-host:***@127.0.0.1:PORT" for a in cmd[4:]]),
           "devices": 300, "rc": r["rc"], "wall_s": round(r["wall_s"], 1), "peak_rss_gib": round(r["peak_rss_bytes"] / 2**30, 3),
           "peak_procs": r["peak_procs"], "mosquitto_rss_mib_at_end": round(broker_rss / 2**20, 1),
           "final_accuracy": summary.get("final_accuracy"), "rejected": summary.get("rejected_total")}
    if r["rc"] != 0:
        out["log_tail"] = (d / "run.log").read_text()[-2000:]
    import shutil

    shutil.rmtree(d, ignore_errors=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="100,1000,10000", help="comma-separated N")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=101, help="PBKDF2 iterations of the accounts' hashes")
    ap.add_argument("--no-run300", action="store_true", help="skip the 300-device semifl run")
    ap.add_argument("--broker-conf", default=BROKER_CONF, help="extra Mosquitto configuration lines (\\n between "
                    "them) after the shipped config's (default %(default)r: with Mosquitto's default of 1000 queued "
                    "messages per client, 50 MCUs uploading at once overflow the host's queue and their chunks are "
                    "dropped: 5 of 100 CL uploads arrived in 2 rounds at 1,000 devices)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        return one(args.one, args.rounds, args.iterations, Path(args.result), args.broker_conf)
    from proctree import measure

    data = json.loads(OUT.read_text()) if OUT.exists() else {"runs": []}
    # runs with another broker configuration (e.g. "" for the shipped one as it is) are kept apart
    key = "runs" if args.broker_conf == BROKER_CONF else "runs_other_broker_conf"
    runs = {(r["devices"], r.get("broker_conf")): r for r in data.get(key, [])}
    cmd = " ".join(["python benchmarks/bench_scale.py", *(argv if argv is not None else sys.argv[1:])])
    ns = [int(v) for v in args.devices.split(",") if v]
    for n in ns:
        res = Path(tempfile.mktemp(suffix=".json"))
        r = measure([sys.executable, __file__, "--one", str(n), "--rounds", str(args.rounds), "--iterations",
                     str(args.iterations), "--result", str(res), "--broker-conf", args.broker_conf], interval=0.5)
        rec = json.loads(res.read_text()) if res.exists() else {"devices": n}
        rec.update(peak_rss_gib=round(r["peak_rss_bytes"] / 2**30, 3), peak_procs=r["peak_procs"], rc=r["rc"],
                   wall_s=round(r["wall_s"], 1))
        if key != "runs":
            rec["command"] = cmd
        runs[(n, args.broker_conf)] = rec
        print(json.dumps(rec), flush=True)
    data[key] = [runs[k] for k in sorted(runs)]
    if not args.no_run300:
        data["run_300"] = dict(run300(args.rounds, args.iterations, args.broker_conf), bench_command=cmd)
        print(json.dumps(data["run_300"]), flush=True)
    if ns and key == "runs":
        data["command"] = cmd
    data["machine"] = {"cores": os.cpu_count(), "python": platform.python_version(),
                       "ulimit_n": __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[0]}
    OUT.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
