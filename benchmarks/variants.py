"""One benchmark configuration per child process, compared with the first: what bench_workers.py and
bench_edge.py share. Each child (`SCRIPT ... --one VALUE`) prints `RESULT {json}` with its row, which
names its run's `final_model` (.npz); rows are compared with the row whose `key` is 0 (the model's
largest difference and whether every round's accuracy is the same), the runs' folders are removed, and
the rows written to `out` with the command and the machine.

    import variants
    ap = variants.parser(__doc__, "--workers", "0,1,2")   # the shared flags, the values, --one
    variants.main(__file__, ap.parse_args(), one, "workers", key="host_workers", diff="host_alone", out=OUT)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path


def parser(doc: str, values: str, default: str) -> argparse.ArgumentParser:
    """The flags both benchmarks take: the fleet (--devices, --rounds, --uploaders), the values to compare
    (`values`, a comma list) and, hidden, --one VALUE for a child."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--uploaders", type=int, default=50)
    ap.add_argument(values, default=default)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)   # a child: one configuration, JSON on stdout
    return ap


def main(script: str, a: argparse.Namespace, one, values: str, key: str, diff: str, out: Path) -> None:
    """A child (--one V) prints its row from one(devices, rounds, uploaders, V); else every value runs
    as a child and the rows are compared (`run_variants`)."""
    if a.one is not None:
        print("RESULT " + json.dumps(one(a.devices, a.rounds, a.uploaders, a.one)), flush=True)
        return
    run_variants(script, ["--devices", str(a.devices), "--rounds", str(a.rounds), "--uploaders", str(a.uploaders)],
                 [int(x) for x in getattr(a, values).split(",")], key=key, diff=diff, out=out)


def run_variants(script: str, args: list[str], values: list[int], key: str, diff: str, out: Path) -> list[dict]:
    rows = []
    for v in values:
        got = subprocess.run([sys.executable, script, *args, "--one", str(v)], capture_output=True, text=True)
        line = next((x for x in got.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"--one {v} failed:\n{got.stderr[-3000:]}")
        rows.append(json.loads(line[7:]))
        print(json.dumps({k: x for k, x in rows[-1].items() if k != "final_model"}), flush=True)
    import numpy as np

    base = next((r for r in rows if r[key] == 0), None)
    if base is not None:
        ref = np.load(base["final_model"])
        for r in rows:
            m = np.load(r["final_model"])
            r[f"max_abs_diff_vs_{diff}"] = float(max(np.abs(m[k] - ref[k]).max() for k in ref))
            r["same_accuracy_every_round"] = r["accuracy"] == base["accuracy"]
    for r in rows:   # the run's folder (fleet, spools) goes with it
        shutil.rmtree(Path(r.pop("final_model")).parent, ignore_errors=True)
    out.write_text(json.dumps({
        "command": f"python benchmarks/{Path(script).name} " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_at_end": os.getloadavg()},
        "broker": "Mosquitto " + subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.split("\n")[0],
        "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return rows
