"""Host workers (issue 20): two aggregator processes share the devices' uploads through an MQTT v5 shared
subscription on a real Mosquitto, each checks, spools and folds its share into a partial sum, and the host
merges the partial sums: the same run as one host (same participants and accuracy every round, the model
equal up to float32 regrouping). A worker killed mid-round: its updates are asked for again and the run
ends on the same model. The embedded broker (no $share) and merges that are not sums are refused."""
import json
import os
import signal
import time

import numpy as np
import pytest
from conftest import stored_updates
from semifl.app.build import make_round
from semifl.app.run import fleet_specs, load_data, run_on_broker
from semifl.config import ConfigError, RunConfig
from semifl.service.aggregator import Coordinator, owner
from semifl.service.session import Session
from semifl.service.store import Store

ROUNDS = 3


def config(tmp_path, name, broker, **extra):
    # 12 devices; 6 of the 8 Pis upload, so both workers hold updates in the middle of the fold's order
    return RunConfig.make(rounds=ROUNDS, seed=3, out=str(tmp_path / name), broker=broker, plot=False, int8_every=0,
                          fl_devices=8, cl_devices=4, fl_uploaders=6, **extra)


def run(cfg, workers=0, on_progress=None):
    from pathlib import Path

    data = load_data(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True)
    session, rounds_obj, metrics = run_on_broker(cfg, out, fleet_specs(cfg, data), data, workers=workers,
                                                 on_progress=on_progress)
    return rounds_obj.params, metrics




def same_run(one, many, tol):
    """Same participants and accuracy every round; the models equal within `tol`."""
    (p1, m1), (p2, m2) = one, many
    assert [m["participants"] for m in m1] == [m["participants"] for m in m2]
    assert [m["accuracy"] for m in m1] == [m["accuracy"] for m in m2]
    for a, b in zip(p1, p2):
        np.testing.assert_allclose(b, a, rtol=0, atol=tol)


# The partial sums regroup float32 additions: (c4 x4 + c5 x5) + (c0 x0 + ... + c3 x3) instead of one
# sum in device order, each regrouped sum off by a few ulps of the update (~1e-8 here), and the fleet
# trains on from that model. Measured: max |diff| 3e-8 after 3 rounds; 1e-6 leaves room, while a lost or
# doubled update (the smallest moves ~1e-3 of an entry) fails it.
TOL = 1e-6


def test_two_workers_fold_the_single_hosts_model(tmp_path, mosquitto, fashion):
    one = run(config(tmp_path, "one", mosquitto))
    many = run(config(tmp_path, "two", mosquitto), workers=2)
    same_run(one, many, TOL)
    # the host folded nothing itself: every update is in a worker's spool, the one its owner is
    assert stored_updates(tmp_path / "two" / "state.db") == []
    w = {f"w{i}": stored_updates(tmp_path / "two" / "workers" / f"w{i}" / "aggregator.db") for i in range(2)}
    ups = {(m["round"], d) for m in many[1] for d in m["participants"]["fl"]}
    assert set(w["w0"]) | set(w["w1"]) == ups and not set(w["w0"]) & set(w["w1"])
    assert all(owner(d, ["w0", "w1"]) == k for k, rows in w.items() for _, d in rows)
    assert w["w0"] and w["w1"]   # both folded: the merge regrouped
    # chunks scattered over the two and went to their owner: each passed chunks on and took some
    stats = [json.loads((tmp_path / "two" / "workers" / f"w{i}" / "stats.json").read_text()) for i in range(2)]
    assert all(st["relayed_out"] and st["relayed_in"] and st["own"] for st in stats), stats
    assert stats[0]["relayed_out"] == stats[1]["relayed_in"] and stats[1]["relayed_out"] == stats[0]["relayed_in"]


def test_a_worker_killed_mid_round_is_replaced_by_the_others(tmp_path, mosquitto, fashion):
    one = run(config(tmp_path, "one", mosquitto))
    killed = []

    def progress(rnd, text):   # the first update w0 holds in round 2: w0 dies (SIGKILL, no goodbye)
        if rnd == 2 and not killed and " in at w0 " in text:
            pid = int((tmp_path / "two" / "workers" / "w0.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(time.monotonic())

    many = run(config(tmp_path, "two", mosquitto), workers=2, on_progress=progress)
    assert killed
    same_run(one, many, TOL)
    w1 = stored_updates(tmp_path / "two" / "workers" / "w1" / "aggregator.db")
    # from the kill on, w1 held every update: round 2's and round 3's, those w0 had taken too
    assert {d for r, d in w1 if r == ROUNDS} == set(many[1][-1]["participants"]["fl"])
    assert {d for r, d in w1 if r == 2} == set(many[1][1]["participants"]["fl"])


def test_workers_need_shared_subscriptions_and_a_sum(tmp_path, fashion):
    cfg = config(tmp_path, "x", None)
    with pytest.raises(ConfigError, match=r"shared subscriptions \(\$share"):
        run(cfg, workers=2)
    store = Store(":memory:")
    session = Session(None, store)
    for agg, why in (("median", "must be a sum"), ("krum", "must be a sum")):
        rounds_obj = make_round(config(tmp_path, "y", None, aggregation=agg), session, fashion)
        with pytest.raises(ValueError, match=why):
            Coordinator(None, workers=2).attach(rounds_obj)
    store.close()


def test_a_merge_over_partial_sums_takes_back_what_a_dead_aggregator_stored_updates():
    """Ingest's merge over aggregators' partial sums (transport-free): w0 dies at collect time; of its two
    updates one came in again at w1 (asked anew), the other never did. The merge is the list merge of
    what is left, its sum the coordinator's plan over w1's share alone, and it says what it took."""
    from semifl.learn.fold import Summand, sum_rule
    from semifl.learn.strategy import FedAvg, FLUpdate, average_fl
    from semifl.service.rounds.ingest import Ingest, Taken

    shapes = [(6, 4), (4,)]
    rng = np.random.default_rng(2)
    ups = {f"pi-{i}": [rng.standard_normal(s).astype(np.float32) for s in shapes] for i in range(5)}
    n = {d: 50 + 10 * i for i, d in enumerate(ups)}
    ing = Ingest(1, shapes, 0, 5, sum_rule(average_fl), load=None)
    src = {"pi-0": "w0", "pi-1": "w1", "pi-2": "w0", "pi-3": "w1", "pi-4": "w1"}
    for d, s in src.items():
        ing.take_remote(Taken(d, "update", n[d], 1.0, source=s))
    calls = []

    def collect(plan, shares):   # what the workers would send: their share folded under `plan`
        calls.append({k: list(v) for k, v in shares.items()})
        if len(calls) == 1:   # w0 is gone; pi-0 comes in again at w1, pi-2 does not
            del ing.taken[("pi-0", "update")], ing.taken[("pi-2", "update")]
            ing.take_remote(Taken("pi-0", "update", n["pi-0"], 1.0, source="w1"))
        out = {}
        for s, devs in shares.items():
            if s == "w0" and len(calls) == 1:
                continue
            ps = plan.empty(shapes)
            for d in devs:
                plan.add(ps, Summand(d, n[d], 1.0), ups[d])
            out[s] = ps
        return out

    ing.collect = collect
    params = [np.zeros(s, np.float32) for s in shapes]
    got = ing.merged(FedAvg(), params, set(src), [])
    assert calls == [{"w0": ["pi-0", "pi-2"], "w1": ["pi-1", "pi-3", "pi-4"]}, {"w1": ["pi-0", "pi-1", "pi-3", "pi-4"]}]
    assert ing.merged_devices == ["pi-0", "pi-1", "pi-3", "pi-4"] and ing.how == "partial"
    kept = [FLUpdate(d, ups[d], n[d]) for d in ing.merged_devices]
    want = FedAvg().aggregate(params, kept, [])
    assert all(np.array_equal(a, b) for a, b in zip(got, want))   # one share, in order: the list merge's bits


def test_a_host_killed_mid_round_resumes_with_new_workers(tmp_path, fashion, mosquitto):
    """`semifl serve --host-workers 2` SIGKILLed in a round that has accepted work: its workers end with
    it (they watch their parent), the restarted host starts two more on the same spools, asks its
    uploaders again (their acceptances were the workers', not in its store) and ends on the model of an
    uninterrupted run, up to the partial sums' regrouping."""
    import subprocess
    import sys

    from conftest import kill_mid_round_and_restart
    from semifl.app.inprocess import run_inprocess
    from semifl.sim.fleet import LinkProfile, VirtualFleet, seed_fleet

    rounds, seed = 5, 3
    state = tmp_path / "state.db"

    def serve(log):
        return subprocess.Popen([sys.executable, "-m", "semifl.cli", "serve", "--broker", mosquitto, "--rounds",
                                 str(rounds), "--seed", str(seed), "--state", str(state), "--wait-devices", "10",
                                 "--wait-s", "60", "--host-workers", "2", "--no-plot"], stdout=log, stderr=subprocess.STDOUT)

    with VirtualFleet(tmp_path / "fleet", seed_fleet(6, 4, 10, seed, rounds, LinkProfile(latency_s=0.002)), fashion,
                      mosquitto):
        before = kill_mid_round_and_restart(serve, state, tmp_path / "host.log")
    assert before
    store = Store(str(state))
    metrics = {m["round"]: m for m in store.round_metrics()}
    assert sorted(metrics) == list(range(1, rounds + 1))
    assert all(len(m["participants"]["fl"]) == 3 for m in metrics.values())
    final = store.checkpoint(rounds)
    store.close()
    acc = []
    expected = run_inprocess(RunConfig.make(rounds=rounds, seed=seed), fashion, on_round=lambda m: acc.append(m["accuracy"]))
    assert acc == [metrics[r]["accuracy"] for r in sorted(metrics)]
    for a, b in zip(final, expected.params):
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL)
    assert (tmp_path / "workers" / "w0" / "stats.json").exists()   # the second w0 ended cleanly
