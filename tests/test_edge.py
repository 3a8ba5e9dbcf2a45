"""Edge aggregators (issue 20, seed 003's edge tier): a core Mosquitto and two edge Mosquittos bridged to it
by Mosquitto's own bridge (the configuration `semifl edge` writes), all real processes on loopback; the
devices split over the two edges and the core, each edge's aggregator folds its devices' updates and the
host merges the partial sums with its own: the same run as the flat fleet on the core (same participants
and accuracy every round, the model equal up to float32 regrouping). A device killed behind an edge
goes offline at the core (its last will crosses the bridge)."""
import contextlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import running_mosquitto, stored_updates
from semifl.app.build import limits, make_round
from semifl.app.run import fleet_layout, fleet_specs, load_data, run_on_broker, wait_for_fleet
from semifl.config import RunConfig
from semifl.service.aggregator import Coordinator, coordinator_subs
from semifl.app.edge import Edge, bridge_config, edge_acl
from semifl.service.session import Session
from semifl.service.store import Store
from semifl.sim.fleet import VirtualFleet
from semifl.transport.broker import free_port
from semifl.transport.mqtt import HostLink

ROUNDS = 3
TOL = 1e-6   # as tests/test_workers.py: partial sums regroup float32 additions (measured: see the test)


def config(tmp_path, name, broker):
    return RunConfig.make(rounds=ROUNDS, seed=5, out=str(tmp_path / name), broker=broker, plot=False, int8_every=0,
                          fl_devices=8, cl_devices=4, fl_uploaders=6)


@pytest.fixture
def core():
    with running_mosquitto() as url:
        yield url


def test_two_edges_fold_the_flat_fleets_model(tmp_path, core, fashion):
    flat_cfg = config(tmp_path, "flat", core)
    data = load_data(flat_cfg)
    specs = fleet_specs(flat_cfg, data)
    (tmp_path / "flat").mkdir()
    _, flat, flat_m = run_on_broker(flat_cfg, tmp_path / "flat", specs, data)

    cfg = config(tmp_path, "edges", core)
    out = tmp_path / "edges"
    out.mkdir()
    # the devices over the two edges and the core, Pis and MCUs on each
    where = {s.id: ("a", "b", "core")[i % 3] for i, s in enumerate(specs)}
    with contextlib.ExitStack() as stack:
        edges = {n: stack.enter_context(Edge(n, core, free_port(), out / f"edge-{n}")) for n in ("a", "b")}
        store = Store(str(out / "state.db"))
        stack.callback(store.close)
        link = HostLink(core, subs=coordinator_subs(True)).connect()
        stack.callback(link.close)
        coord = Coordinator(link)
        session = Session(coord, store, limits(cfg))
        rounds_obj = make_round(cfg, session, data, [s.id for s in specs])
        coord.attach(rounds_obj)
        assert coord.wait(session, 2, 30), coord.live
        fleets = {}
        for n, url in (("a", edges["a"].url), ("b", edges["b"].url), ("core", core)):
            fleets[n] = stack.enter_context(VirtualFleet(out / f"fleet-{n}", [s for s in specs if where[s.id] == n],
                                                         data, url, **fleet_layout(cfg)))
        assert wait_for_fleet(session, len(specs), 60), sorted(session.registry.online)
        session.run(rounds_obj, cfg.rounds)
        metrics = store.round_metrics()

        # a device behind edge a dies: its last will fires on the edge broker and crosses the bridge
        victim = next(s.id for s in specs if where[s.id] == "a")
        fleets["a"].kill(victim)
        assert session.pump(lambda: victim not in session.registry.online, 15), "the core still has it online"
        assert victim in session.registry.devices and len(session.registry.online) == len(specs) - 1
        session.stop_fleet()
        for f in fleets.values():
            f.stop()

    assert [m["participants"] for m in flat_m] == [m["participants"] for m in metrics]
    assert [m["accuracy"] for m in flat_m] == [m["accuracy"] for m in metrics]
    for a, b in zip(flat.params, rounds_obj.params):
        np.testing.assert_allclose(b, a, rtol=0, atol=TOL)
    # each edge folded its own devices' updates, the host those of the devices on the core, none twice
    ups = {(m["round"], d) for m in metrics for d in m["participants"]["fl"]}
    own = {n: set(stored_updates(out / f"edge-{n}" / "aggregator" / "aggregator.db")) for n in ("a", "b")}
    own["core"] = set(stored_updates(out / "state.db"))
    assert set().union(*own.values()) == ups and sum(map(len, own.values())) == len(ups)
    assert all(where[d] == n for n, rows in own.items() for _, d in rows)
    assert all(own.values())


def test_the_bridge_relays_what_the_edge_tier_needs_and_no_uploads():
    conf = bridge_config("a", "mqtt://core.example:1883", 1884)
    lines = set(conf.splitlines())
    assert "address core.example:1883" in lines and "listener 1884 127.0.0.1" in lines
    assert {"topic semifl/v1/host/# in 1", "topic semifl/v1/dev/+/task in 1", "topic semifl/v1/dev/+/down in 1",
            "topic semifl/v1/dev/+/caps out 1", "topic semifl/v1/dev/+/presence out 1",
            "topic semifl/v1/dev/+/status out 1", "topic semifl/v1/agg/a/sum out 1"} <= lines
    assert not any("/up " in x and "agg/a/up" not in x for x in lines)   # uploads stay on the edge
    with pytest.raises(ValueError, match="accounts"):   # anonymous beyond loopback is refused
        bridge_config("a", "mqtt://core.example:1883", 1884, bind="0.0.0.0")
    acl = edge_acl("a")
    assert acl.startswith("user semifl-edge-a\n") and "topic write semifl/v1/dev/+/presence" in acl
    assert "semifl/v1/dev/+/up" not in acl and "agg/b" not in acl


def test_an_edge_on_the_shipped_accounts_and_acl(tmp_path, fashion):
    """The core on the shipped Mosquitto config (accounts, ACL) with the edge's block `semifl certs issue a
    --role edge` prints; the edge broker takes the devices' own accounts: their reports reach the core
    through the bridge account (with only its block's rights), and a device killed there goes offline
    at the core."""
    import signal
    import time

    from conftest import REPO, start_shipped_mosquitto
    from semifl.app.edge import edge_acl
    from semifl.transport import certs

    d = Path(tempfile.mkdtemp())
    d.chmod(0o755)   # the broker drops to the `mosquitto` user, which must read the accounts
    cfg = config(tmp_path, "acl", None)
    data = load_data(cfg)
    specs = [s for s in fleet_specs(cfg, data) if s.id in ("pi-00", "mcu-08")]
    c = certs.fleet_credentials(d / "certs", [s.id for s in specs])
    certs.issue_role(d / "certs", "a", "edge")
    for f in [d / "certs", *(d / "certs").rglob("*")]:
        f.chmod(0o755 if f.is_dir() else 0o644)
    port = free_port()
    proc = start_shipped_mosquitto(d, c.passwd, c.dir, port, free_port())
    try:
        (d / "semifl.acl").write_text((REPO / "tools" / "mosquitto" / "semifl.acl").read_text() + "\n" + edge_acl("a"))
        proc.send_signal(signal.SIGHUP)   # the operator's step: add the block, reload
        time.sleep(0.5)
        core = f"mqtt://127.0.0.1:{port}"
        host = c.host()
        with contextlib.ExitStack() as stack:
            edge = stack.enter_context(Edge("a", core, free_port(), d / "edge-a", certs=str(c.dir)))
            store = Store(str(tmp_path / "state.db"))
            stack.callback(store.close)
            link = HostLink(core.replace("://", f"://{host.user}@"), password=host.password,
                            subs=coordinator_subs(True)).connect()
            stack.callback(link.close)
            coord = Coordinator(link)
            session = Session(coord, store)
            fleet = stack.enter_context(VirtualFleet(tmp_path / "fleet", specs, data, edge.url, certs=c))
            assert session.pump(lambda: len(session.registry.online) == 2 and "a" in coord.live, 30), \
                (sorted(session.registry.online), coord.live, (d / "edge-a" / "mosquitto.log").read_text()[-1500:])
            fleet.kill("pi-00")
            assert session.pump(lambda: "pi-00" not in session.registry.online, 15)
            assert "mcu-08" in session.registry.online
            assert session.rejected == {}, session.rejected
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)
