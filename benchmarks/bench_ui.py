"""The page with a large fleet (semifl.ui): time to first render and update latency in headless Chromium,
and what a snapshot costs the session's thread. Writes benchmarks/results/ui.json.

A synthetic fleet: N devices' capability reports, presence and ready reports published on a real broker
(Mosquitto when installed, else the embedded one) to a real host session (HostLink -> Session.dispatch ->
Registry), whose page `semifl.ui` serves; the page runs in Debian's chromium through Playwright.
  first render: from navigating to the page to its fleet table showing its first page of rows
  update latency: from publishing a device's presence `offline` (what its last will does) to its row
    showing it offline, over the broker, the session, a snapshot, the event stream and a fetch
  snapshot: Live.publish on the session's thread, and building the table's rows, at 1,000 and 10,000
    devices (dispatched directly, without a broker)

    python benchmarks/bench_ui.py [--devices 1000] [--updates 20]
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "ui.json"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def caps(i: int) -> tuple[str, dict]:
    """Device i of a seed-like fleet: 60 % Pis, 40 % ESP32 MCUs."""
    cls = "pi" if i % 10 < 6 else "mcu"
    dev = f"{cls}-{i:05d}"
    return dev, {"id": dev, "class": cls, "ram": 4 << 30 if cls == "pi" else 110_000, "flash": 1 << 22,
                 "cpu_score": 100.0 if cls == "pi" else 3.2, "battery": 1.0, "n_samples": 600,
                 "hist": [60] * 10, "raw_ok": cls == "mcu", "max_chunk": 65536 if cls == "pi" else 4096,
                 "runtime": "cpython" if cls == "pi" else "micropython", "board": "rpi4" if cls == "pi" else "esp32"}


class QueueLink:
    """A host link whose inbox the benchmark fills directly (the snapshot figures, without a broker)."""

    def __init__(self):
        self.inbox = queue.Queue()

    def get(self, timeout):
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def publish(self, *a, **k):
        pass


class SyntheticFleet:
    """A host session on `link` with its page, driven on a thread of its own as `semifl serve` drives it;
    `publish(topic, payload)` is how devices speak to it."""

    def __init__(self, link, folder: Path, publish, name: str = "synthetic"):
        from semifl.service.session import Session
        from semifl.service.store import Store
        from semifl.ui.live import Live

        self.store = Store(str(folder / "state.db"))
        self.session = Session(link, self.store)
        self.live = Live(self.session, name, role_of=lambda c: "fl" if c == "pi" else "cl")
        self.publish = publish
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="session")
        self.thread.start()

    def _loop(self):
        while not self._stop.is_set():
            self.session.pump(lambda: self._stop.is_set(), 0.5)

    def join(self, n: int, timeout: float = 120.0) -> None:
        from semifl.protocol import wire

        end = time.monotonic() + timeout
        for i in range(n):
            dev, c = caps(i)
            self.publish(wire.dev_topic(dev, wire.T_CAPS), wire.encode_json(c))
            self.publish(wire.dev_topic(dev, wire.T_PRESENCE), b"online")
            if (i + 1) % 200 == 0 or i + 1 == n:   # in steps: a broker's queue per client is bounded (Mosquitto: 1000)
                while len(self.live.snap.online) < i + 1:
                    if time.monotonic() > end:
                        raise TimeoutError(f"{len(self.live.snap.online)} of {i + 1} synthetic devices online "
                                           f"after {timeout:.0f} s")
                    time.sleep(0.05)

    def ready(self, n: int, seed: int = 0) -> None:
        """Every device's ready report for round 0: battery and RSSI of its link."""
        import random

        from semifl.protocol import wire

        rng = random.Random(seed)
        for i in range(n):
            dev, _ = caps(i)
            self.publish(wire.dev_topic(dev, wire.T_STATUS), wire.encode_json(
                {"v": wire.VERSION, "kind": "ready", "round": 0, "battery": round(rng.uniform(0.2, 1.0), 3),
                 "rssi": round(rng.uniform(-90, -40), 1)}))

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.store.close()


def mqtt_publisher(url: str):
    import paho.mqtt.client as mqtt

    from semifl.transport.mqtt import parse_broker_url

    host, port = parse_broker_url(url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-ui-{secrets.token_hex(3)}")
    c.max_queued_messages_set(0)
    c.connect(host, port)
    c.loop_start()
    return c, lambda topic, payload: c.publish(topic, payload, qos=1)


def start_broker(stack):
    """Mosquitto on a free loopback port when installed (as the tests use), else the embedded broker."""
    from semifl.transport.broker import EmbeddedBroker, free_port

    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if exe is None:
        b = EmbeddedBroker()
        b.start()
        stack.append(b.stop)
        return b.url, "embedded"
    port, d = free_port(), tempfile.mkdtemp()
    Path(d, "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                                 f"max_packet_size 4194304\nmax_queued_messages 100000\n")
    proc = subprocess.Popen([exe, "-c", f"{d}/m.conf"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    stack.append(lambda: (proc.terminate(), proc.wait(10)))
    time.sleep(0.5)
    return f"mqtt://127.0.0.1:{port}", "mosquitto"


def browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])


def first_render(page, url: str, rows: int) -> dict:
    """Seconds from navigation to the fleet table showing its first page (`rows` rows)."""
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_function(f"document.querySelectorAll('#fleet tbody tr').length === {rows}", timeout=60_000)
    wall = time.perf_counter() - t0
    return {"first_render_s": round(wall, 3),
            "first_render_in_page_ms": round(page.evaluate("window.semifl.firstRender"), 1)}


def offline_latency(page, fleet: SyntheticFleet, devs: list[str]) -> list[float]:
    """Per device: seconds from its presence `offline` on the broker to its row showing offline (then back)."""
    from semifl.protocol import wire

    out = []
    for dev in devs:
        for state, cls in ((b"offline", "off"), (b"online", "on")):
            t0 = time.perf_counter()
            fleet.publish(wire.dev_topic(dev, wire.T_PRESENCE), state)
            page.wait_for_selector(f'#fleet tr[data-device="{dev}"] td[data-col="online"].{cls}', timeout=30_000)
            if state == b"offline":
                out.append(time.perf_counter() - t0)
    return out


def snapshot_cost(n: int, folder: Path) -> dict:
    """Live.publish (the session's thread) and the table's rows and one sorted page (the server's) at n devices."""
    from semifl.protocol import wire
    from semifl.ui.live import MAX_SHARE, MIN_INTERVAL_S

    link = QueueLink()
    fleet = SyntheticFleet(link, folder, lambda t, p: link.inbox.put((t, p)), name=f"synthetic-{n}")
    fleet.join(n)
    fleet.ready(n)
    time.sleep(1.0)
    fleet.stop()
    live = fleet.live
    pub, rows, pages = [], [], []
    for _ in range(20):
        t0 = time.perf_counter()
        live.publish()
        pub.append(time.perf_counter() - t0)
        live.current(force=True)   # the server takes it up (as it does every _adopt_s)
        t0 = time.perf_counter()
        all_rows = live.rows()
        rows.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        live.devices(sort="battery", desc=True, offset=0, limit=100)
        pages.append(time.perf_counter() - t0)
    assert len(all_rows) == n and wire
    ms = lambda v: round(1000 * statistics.median(v), 3)
    return {"devices": n, "publish_ms": ms(pub), "rows_ms": ms(rows), "sorted_page_ms": ms(pages),
            "publish_interval_s": round(max(MIN_INTERVAL_S, statistics.median(pub) / MAX_SHARE), 3),
            "server_takes_up_every_s": round(live._adopt_s, 3)}


def measure(n: int, updates: int, broker: str | None = None) -> dict:
    from playwright.sync_api import sync_playwright

    from semifl.transport.mqtt import HostLink
    from semifl.ui.server import UIServer

    stack = []
    folder = Path(tempfile.mkdtemp())
    try:
        kind = "given"
        if broker is None:
            broker, kind = start_broker(stack)
        link = HostLink(broker, client_id=f"semifl-host-bench-{secrets.token_hex(3)}").connect()
        stack.append(link.close)
        client, publish = mqtt_publisher(broker)
        stack.append(client.loop_stop)
        fleet = SyntheticFleet(link, folder, publish, name=f"synthetic-{n}")
        stack.append(fleet.stop)
        t0 = time.perf_counter()
        fleet.join(n)
        joined = time.perf_counter() - t0
        fleet.ready(n)
        server = UIServer([fleet.live])
        url = server.start()
        stack.append(server.stop)
        with sync_playwright() as p:
            b = browser(p)
            page = b.new_page(viewport={"width": 1600, "height": 1000})
            out = first_render(page, url, min(n, 100))
            shown = page.evaluate("document.querySelectorAll('#fleet tbody tr').length")
            info = page.inner_text("#pageinfo")
            first_page = page.evaluate("[...document.querySelectorAll('#fleet tbody tr')].map(r => r.dataset.device)")
            lat = offline_latency(page, fleet, first_page[:updates])
            t0 = time.perf_counter()
            before = page.evaluate("window.semifl.renders")
            page.click('#fleet th[data-col="battery"]')
            page.wait_for_function(f"window.semifl.renders > {before}")
            sort_s = time.perf_counter() - t0
            b.close()
        return {"devices": n, "broker": kind, "join_s": round(joined, 2), **out, "rows_in_dom": shown,
                "page_info": info, "update_latency_s": {"median": round(statistics.median(lat), 3),
                                                         "max": round(max(lat), 3), "n": len(lat)},
                "sort_s": round(sort_s, 3), "publish_ms": round(1000 * fleet.live.publish_s, 3)}
    finally:
        for f in reversed(stack):
            try:
                f()
            except Exception:
                pass
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--updates", type=int, default=20)
    args = ap.parse_args()
    browser_run = measure(args.devices, args.updates)
    snaps = []
    for n in (1000, 10_000):
        d = Path(tempfile.mkdtemp())
        snaps.append(snapshot_cost(n, d))
        shutil.rmtree(d, ignore_errors=True)
    out = {"command": "python benchmarks/bench_ui.py" + (f" --devices {args.devices}" if args.devices != 1000 else "")
           + (f" --updates {args.updates}" if args.updates != 20 else ""),
           "machine": f"{os.cpu_count()} cores", "chromium": subprocess.run([CHROMIUM, "--version"], capture_output=True,
                                                                           text=True).stdout.strip(),
           "page": browser_run, "snapshot": snaps}
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
