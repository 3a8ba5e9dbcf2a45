"""Wall time and peak memory of a command *including every process it spawns*.

    from proctree import measure
    r = measure([".venv-flwr/bin/python", "benchmarks/flower_fl_baseline.py", "--rounds", "200"])
    # {"cmd", "rc", "wall_s", "peak_rss_bytes", "peak_rss_mib", "peak_procs", "samples", ...}

    python benchmarks/proctree.py [--interval 0.05] [--pss] [--out r.json] -- CMD ARG...

`peak_rss_bytes` is max over samples of sum(RSS) over the command's process and all its
descendants, sampled with psutil every `interval` seconds. Caveats:

* It is a *sampled* peak: a spike shorter than `interval` (plus the time one sample takes,
  which grows with the number of processes) can be missed, so the true peak can only be higher.
* Summed RSS counts pages shared between processes (shared libraries, copy-on-write pages
  after fork, shared memory such as Ray's object store in /dev/shm) once per process that maps
  them, so for multi-process programs it overstates the physical memory used. `pss=True` also
  reports the peak of summed PSS (shared pages split among their sharers; reads
  /proc/PID/smaps_rollup, so each sample is slower).
* Processes are found by walking the tree each sample; a process is counted once it has been
  seen, also after its parent exits and it is re-parented (it stays tracked until it ends).
  A grandchild that is started and orphaned between two samples is never seen.
* The measurement ends when the command's own process exits. Tracked descendants still
  running then are reported in "stragglers" (and not killed).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import psutil

__all__ = ["measure", "tree_memory"]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tree_memory(root: psutil.Process, known: dict[int, psutil.Process] | None = None,
                pss: bool = False) -> tuple[int, int, int]:
    """One sample: (sum RSS, sum PSS or 0, number of processes) over root, its descendants and
    any still-running process in `known` (updated in place with the descendants found)."""
    known = {} if known is None else known
    try:
        for c in root.children(recursive=True):
            known.setdefault(c.pid, c)
    except psutil.Error:
        pass
    rss = pss_sum = n = 0
    for p in [root, *known.values()]:
        try:
            if pss:
                mi = p.memory_full_info()
                pss_sum += getattr(mi, "pss", 0)
            else:
                mi = p.memory_info()
            rss += mi.rss
            n += 1
        except psutil.Error:  # gone, zombie, or not ours
            pass
    for pid in [pid for pid, p in known.items() if not _alive(p)]:
        del known[pid]
    return rss, pss_sum, n


def measure(cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
            interval: float = 0.05, *, pss: bool = False, stdout=None, stderr=None) -> dict:
    """Run `cmd` to completion; return {"cmd", "rc", "wall_s", "peak_rss_bytes", ...}.

    env/cwd are passed to subprocess.Popen (env=None inherits ours); stdout/stderr likewise
    (None: inherit). Peak RSS is the sampled max of the summed RSS of the process tree; see the
    module docstring for what sampling can miss.
    """
    known: dict[int, psutil.Process] = {}
    peak_rss = peak_pss = peak_n = samples = 0
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=stdout, stderr=stderr)
    try:
        root = psutil.Process(proc.pid)
        while True:
            rss, pss_b, n = tree_memory(root, known, pss)
            samples += 1
            peak_rss, peak_pss, peak_n = max(peak_rss, rss), max(peak_pss, pss_b), max(peak_n, n)
            try:
                proc.wait(timeout=interval)
                break
            except subprocess.TimeoutExpired:
                pass
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    wall = time.perf_counter() - t0
    stragglers = []
    for p in known.values():
        if _alive(p):
            try:
                stragglers.append({"pid": p.pid, "name": p.name()})
            except psutil.Error:
                pass
    out = {
        "cmd": list(cmd),
        "rc": proc.returncode,
        "wall_s": wall,
        "peak_rss_bytes": peak_rss,
        "peak_rss_mib": peak_rss / 2**20,
        "peak_procs": peak_n,
        "samples": samples,
        "interval_s": interval,
        "stragglers": stragglers,
    }
    if pss:
        out["peak_pss_bytes"] = peak_pss
        out["peak_pss_mib"] = peak_pss / 2**20
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Measure wall time and peak process-tree RSS of a command.",
                                 usage="%(prog)s [--interval S] [--pss] [--out JSON] -- CMD [ARG...]")
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--pss", action="store_true", help="also report the peak of summed PSS")
    ap.add_argument("--out", help="also write the result JSON here")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("no command given")
    r = measure(cmd, interval=a.interval, pss=a.pss)
    text = json.dumps(r, indent=1)
    print(text, file=sys.stderr)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return r["rc"] if r["rc"] >= 0 else 128 - r["rc"]


if __name__ == "__main__":
    sys.exit(main())
