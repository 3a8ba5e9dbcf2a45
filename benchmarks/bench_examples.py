"""Every example of the README, run as written, as a user would: the `semifl` command in a fresh
folder, under a terminal (a pty, so the live display draws). Per example: wall time, the result it
reports (final accuracy from its summary.json or results.json), and the longest time the live display
went without a new line of progress. Writes benchmarks/results/examples.json; the README's table of
examples states these times and results (tests/test_readme.py checks that it names every one).

    python benchmarks/bench_examples.py [--only NAME,...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import pty
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "examples.json"

# name -> the command exactly as the README's table of examples writes it
EXAMPLES = {
    "main": "semifl run --rounds 20",
    "semifl+": "semifl run --strategy semifl+ --rounds 20",
    "async": "semifl run --mode async --buffer 3 --rounds 20",
    "sl": "semifl run --strategy sl --cl-devices 0 --partition k-classes --rounds 10",
    "iotsl": "semifl run --strategy iotsl --cl-devices 0 --partition k-classes --rounds 10",
    "fedper": "semifl run --strategy fedper --rounds 20",
    "reproduce": "semifl reproduce semifl --rounds 1000 --out runs/reproduce-semifl",
    "sweep": "semifl sweep --rounds 300 --s 0.1,0.3 --p 0,0.3 --out runs/sweep-semifl",
}
ANSI = re.compile(rb"\x1b\[[0-9;?]*[a-zA-Z]")


def watch(cmd: list[str], cwd: Path, env: dict, timeout: float) -> dict:
    """Runs `cmd` on a pty; -> wall time, exit code, its last lines, and the longest gap between two
    different progress lines it drew."""
    master, slave = pty.openpty()
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    buf, seen, last_change, gap = b"", set(), t0, 0.0
    while True:
        r, _, _ = select.select([master], [], [], 0.5)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:   # the child closed the pty
                chunk = b""
            if not chunk and p.poll() is not None:
                break
            buf += chunk
            # a line of the display, without the clock column: new text is progress
            for line in re.split(rb"[\r\n]", ANSI.sub(b"", chunk)):
                text = re.sub(rb"\d+:\d\d:\d\d", b"", line).strip()
                if text and text not in seen:
                    seen.add(text)
                    now = time.monotonic()
                    gap, last_change = max(gap, now - last_change), now
        elif p.poll() is not None:
            break
        if time.monotonic() - t0 > timeout:
            p.kill()
            break
    p.wait()
    os.close(master)
    end = time.monotonic()
    tail = [ln.strip() for ln in re.split(r"[\r\n]", ANSI.sub(b"", buf).decode(errors="replace")) if ln.strip()][-1:]
    return {"rc": p.returncode, "wall_s": round(end - t0, 1), "max_progress_gap_s": round(gap, 1), "tail": tail}


def result_of(cwd: Path) -> dict:
    """What the example reports: a run's final accuracy, or the reproduction's per-baseline finals."""
    summaries = sorted(cwd.glob("runs/*/summary.json"))
    if summaries:
        s = json.loads(summaries[-1].read_text())
        return {"final_accuracy": s["final_accuracy"], "rounds": len(s["rounds"]), "folder": summaries[-1].parent.name}
    res = cwd / "runs" / "reproduce-semifl" / "results.json"
    if res.exists():
        r = json.loads(res.read_text())
        return {"final_accuracy": {k: v["accuracy"][-1] for k, v in r["baselines"].items()}}
    sweep = cwd / "runs" / "sweep-semifl" / "sweep.json"
    if sweep.exists():
        r = json.loads(sweep.read_text())
        return {"final_accuracy": {f"S={s} P={p}": r["final_accuracy"][i][j] for i, s in enumerate(r["S"])
                                   for j, p in enumerate(r["P"])}}
    return {}


def cell(r: dict) -> str:
    """How the README states an example's measured time and result."""
    t = r["wall_s"]
    took = f"{t:.0f} s" if t < 120 else f"{t / 60:.0f} min"
    acc = r.get("final_accuracy")
    if isinstance(acc, dict):
        shown = ", ".join(f"{k} {100 * v:.1f} %" for k, v in acc.items())
    else:
        shown = "-" if acc is None else f"{100 * acc:.1f} %"
    return f"{took}; {shown}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated example names")
    ap.add_argument("--timeout-s", type=float, default=1800)
    ap.add_argument("--table", action="store_true", help="print the README's cells from the results and stop")
    a = ap.parse_args()
    if a.table:
        for name, r in json.loads(RESULTS.read_text())["examples"].items():
            print(f"{name}: `{r['command']}` | {cell(r)}")
        return
    names = a.only.split(",") if a.only else list(EXAMPLES)
    semifl = shutil.which("semifl", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    out = {"benchmark": "examples", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
           "examples": old.get("examples", {})}
    env = dict(os.environ, COLUMNS="160")
    env.pop("OPENBLAS_NUM_THREADS", None)   # as on a fresh machine
    for name in names:
        cmd = EXAMPLES[name]
        with tempfile.TemporaryDirectory(prefix=f"example-{name}-") as d:
            r = watch([semifl, *cmd.split()[1:]], Path(d), env, a.timeout_s)
            r.update(result_of(Path(d)))
        out["examples"][name] = {"command": cmd, **r}
        print(name, json.dumps(out["examples"][name]), flush=True)
        RESULTS.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
