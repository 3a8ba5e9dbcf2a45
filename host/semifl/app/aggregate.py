"""Aggregator processes (service/aggregator.py): a host worker or an edge's aggregator as a process of its
own, on its own link and store (`semifl worker`, `python -m semifl.app.aggregate`), and `Workers`, the N
host workers `semifl serve/run --host-workers N` starts beside the host."""
from __future__ import annotations

import argparse
import json
import logging
import signal
from pathlib import Path

from semifl.service.aggregator import Aggregator, agg_topic, subscriptions
from semifl.service.store import Store
from semifl.transport.mqtt import HostLink

log = logging.getLogger("semifl.aggregator")


def open_aggregator(url: str, agg_id: str, folder: str | Path, shared: bool = True, timeout: float = 30.0) -> Aggregator:
    """Aggregator `agg_id` connected to the broker at `url` (MQTT v5 for a shared subscription), its
    spool in `folder`. A broker that refuses the shared subscription (the embedded one) is said so."""
    import os

    link = HostLink(url, client_id=f"semifl-agg-{agg_id}", subs=subscriptions(agg_id, shared),
                    presence=agg_topic(agg_id, "presence"), v5=shared, instance=b":" + os.urandom(6).hex().encode()
                    ).connect(timeout)
    if link.sub_refused:   # connect() waited for the broker's answer
        link.close()
        raise ConnectionError(f"the broker at {link.host}:{link.port} refused the subscriptions "
                              f"{link.sub_refused}: host workers need MQTT v5 shared "
                              f"subscriptions (Mosquitto 2; the embedded broker has none)")
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Aggregator(link, Store(str(Path(folder) / "aggregator.db")), agg_id, shared)


def run_aggregator(url: str, agg_id: str, folder: str, shared: bool = True, with_parent: bool = False) -> int:
    """One aggregator until SIGTERM/SIGINT (with_parent: or until the process that started it is gone, so
    a host killed outright leaves no worker behind to take its restarted self's place); at the end its
    CPU seconds and chunk counts in folder/stats.json."""
    import os
    import resource

    from threadpoolctl import threadpool_limits

    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    parent = os.getppid()
    agg = open_aggregator(url, agg_id, folder, shared)
    try:
        with threadpool_limits(limits=1):   # the host's arithmetic on one BLAS thread, as Session.run
            while not stop and not (with_parent and os.getppid() != parent):
                msg = agg.link.get(0.2)
                if msg is not None:
                    agg.on_message(*msg[:2]) if msg[0] != "_rejected" else agg.session.dispatch(msg)
    finally:
        use = resource.getrusage(resource.RUSAGE_SELF)
        log.info("%s: chunks %s", agg_id, dict(agg.stats))
        (Path(folder) / "stats.json").write_text(json.dumps(dict(agg.stats, cpu_s=round(use.ru_utime + use.ru_stime, 3))))
        agg.link.close()
        agg.store.close()
    return 0


class Workers:
    """N host workers as processes of this machine (`semifl serve/run --host-workers N`), each with its folder
    and log under `folder`; ended by their pids on exit (SIGTERM: they say offline and close)."""

    def __init__(self, url: str, n: int, folder: Path):
        self.url, self.n, self.folder, self.procs = url, n, Path(folder), []

    def __enter__(self) -> Workers:
        import subprocess
        import sys

        self.folder.mkdir(parents=True, exist_ok=True)
        for i in range(self.n):
            log_f = open(self.folder / f"w{i}.log", "ab")
            self.procs.append(subprocess.Popen([sys.executable, "-m", "semifl.app.aggregate", "--broker", self.url,
                                                "--id", f"w{i}", "--dir", str(self.folder / f"w{i}"), "--with-parent",
                                                "-v"],
                                               stdout=log_f, stderr=subprocess.STDOUT))
            log_f.close()
            (self.folder / f"w{i}.pid").write_text(str(self.procs[-1].pid))   # who to signal, for an operator or a test
        return self

    def __exit__(self, *exc) -> None:
        import subprocess

        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def main(argv=None) -> int:
    """`python -m semifl.app.aggregate --broker URL --id NAME --dir DIR [--edge]`: one aggregator
    until SIGTERM/SIGINT (`semifl worker` and `semifl edge` run it)."""
    p = argparse.ArgumentParser(prog="semifl worker", description=__doc__.split("\n")[0])
    p.add_argument("--broker", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--edge", action="store_true", help="take every upload on the broker (no shared subscription)")
    p.add_argument("--with-parent", action="store_true", help="end when the process that started it ends")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format=f"%(asctime)s {a.id} %(levelname)s %(message)s")
    return run_aggregator(a.broker, a.id, a.dir, shared=not a.edge, with_parent=a.with_parent)


if __name__ == "__main__":
    raise SystemExit(main())
