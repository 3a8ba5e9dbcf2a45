"""Host ingest (issue 20): FL updates folded into a running sum as they are accepted, in the list merge's
order and with its float operations, so the merged model is the one the list merge computes, bit for
bit; payloads durable in the store's spool (append-only, CRC-checked, a torn tail cut off) instead of
SQLite; an update screened out after it was folded leaves the sum as if it had never been added."""
import os
import sqlite3

import numpy as np
import pytest
from semifl.app.inprocess import run_inprocess
from semifl.config import RunConfig
from semifl.learn import aggregate, dp, robust
from semifl.learn.fold import PartialSum, Summand, sum_rule
from semifl.learn.strategy import FLUpdate, SemiFL, average_fl
from semifl.service.rounds import ingest
from semifl.service.spool import Spool
from semifl.service.store import Store

SHAPES = ((30, 8), (8,), (8, 4), (4,))


def updates(k=6, seed=0, big=()):
    """k updates of SHAPES, device ids out of order; those in `big` scaled up (a norm bound clips them)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.permutation(k):
        d = f"pi-{i:02d}"
        f = 25.0 if d in big else 1.0
        out.append(FLUpdate(d, [(f * rng.standard_normal(s)).astype(np.float32) for s in SHAPES], int(rng.integers(50, 900))))
    return out


def fold(rule, fl):
    """What a round does: plan from the updates, add them in the plan's order, finish."""
    plan = rule.plan([Summand(u.device, u.n, aggregate.global_norm(u.delta), u.weight) for u in fl])
    by = {u.device: u for u in fl}
    ps = plan.empty(SHAPES)
    for d in plan.order:
        plan.add(ps, Summand(d, by[d].n, aggregate.global_norm(by[d].delta), by[d].weight), by[d].delta)
    return rule.finish(plan, ps)


def same(a, b):
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


def test_a_folded_sum_is_the_list_merge_bit_for_bit():
    fl = updates(big={"pi-02"})
    srt = sorted(fl, key=lambda u: u.device)
    w = [u.n for u in srt]
    # the mean (the strategies' own) and the plain rule
    assert same(fold(sum_rule(average_fl), fl), average_fl(srt, w))
    mean = robust.Rule()
    assert same(fold(sum_rule(mean), fl), robust.Rule()(srt, w)) and mean.last == {}
    # norm_bound, adaptive: pi-02 is clipped, and the rule reports the same bound and the same clipped device
    ref, folded = robust.NormBound(), robust.NormBound()
    want = ref(srt, w)
    assert ref.last["clipped"] == ["pi-02"]
    assert same(fold(sum_rule(folded), fl), want) and folded.last == ref.last
    fixed = robust.NormBound(bound=1.5)
    assert same(fold(sum_rule(fixed), fl), robust.NormBound(bound=1.5)(srt, w))
    # FedBuff's staleness weights: the stale mean, shrunk
    stale = [FLUpdate(u.device, u.delta, u.n, staleness=i % 3, weight=1 / np.sqrt(1 + i % 3)) for i, u in enumerate(fl)]
    assert same(fold(sum_rule(average_fl), stale), average_fl(sorted(stale, key=lambda u: u.device), [u.n for u in sorted(stale, key=lambda u: u.device)]))
    # client-level DP: clip, float64 sum, the same noise, the same accountant
    a, b = dp.ClientDP(noise=1.1, clip=1.0, seed=4, expected_clients=6), dp.ClientDP(noise=1.1, clip=1.0, seed=4, expected_clients=6)
    assert same(fold(sum_rule(b.merge), fl), a.merge(fl))
    assert (b.steps, b.rounds, b.last) == (a.steps, a.rounds, a.last)
    # the rules that need every update at once do not fold
    assert all(sum_rule(r) is None for r in (robust.Median(), robust.TrimmedMean(), robust.Krum()))


def test_partial_sums_merge_and_travel_as_blobs():
    fl = sorted(updates(8, seed=1), key=lambda u: u.device)
    total = float(sum(u.n for u in fl))
    left, right = PartialSum(SHAPES, denominator=total), PartialSum(SHAPES, denominator=total)
    for u in fl[:5]:
        left.add(u.delta, u.n, key=u.device)
    for u in fl[5:]:
        right.add(u.delta, u.n, key=u.device)
    back = PartialSum.decode(right.encode())
    assert back.keys == right.keys and back.weight == right.weight and same(back.sum, right.sum)
    want = [a + b for a, b in zip(left.sum, right.sum)]
    left.merge(back)
    assert same(left.sum, want) and left.keys == [u.device for u in fl] and left.weight == total
    # the mean of all eight, up to float32 rounding of a different summation order
    ref = aggregate.weighted_average([u.delta for u in fl], [u.n for u in fl])
    assert all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(left.sum, ref))
    with pytest.raises(ValueError):
        left.merge(back)   # the same updates twice
    with pytest.raises(ValueError):
        left.merge(PartialSum(SHAPES, denominator=1.0))   # another plan's


def test_the_spool_rebuilds_its_index_and_a_torn_tail_is_cut_off(tmp_path):
    folder = str(tmp_path / "state.db-spool")
    sp = Spool(folder, "0011223344556677")
    blobs = {("pi-00", "update"): os.urandom(5000), ("mcu-00", "samples"): os.urandom(300),
             ("pi-01", "update"): os.urandom(4000)}
    for k, b in blobs.items():
        sp.append(7, k, bytearray(b))
    sp.close()
    (path,) = [os.path.join(folder, f) for f in os.listdir(folder)]
    size = os.path.getsize(path)
    with open(path, "r+b") as f:   # a power cut in the middle of the last append
        f.truncate(size - 1000)
    sp = Spool(folder, "0011223344556677")
    assert sp.keys(7) == {("pi-00", "update"), ("mcu-00", "samples")}
    assert sp.get(7, ("pi-00", "update")) == blobs[("pi-00", "update")]
    sp.append(7, ("pi-01", "update"), blobs[("pi-01", "update")])   # cuts the torn tail, follows the last whole record
    sp.close()
    assert os.path.getsize(path) == size
    sp = Spool(folder, "0011223344556677")
    assert {k: sp.get(7, k) for k in sp.keys(7)} == blobs
    sp.close()
    with open(path, "r+b") as f:   # a flipped bit in the second record's data: it and what follows are not trusted
        f.seek(size - 4000 - 300 - 40)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    sp = Spool(folder, "0011223344556677")
    assert sp.keys(7) == {("pi-00", "update")}
    theirs = Spool(folder, "8899aabbccddeeff")   # another store's spool in the same folder sees none of it
    assert theirs.keys(7) == set()
    theirs.drop(7)
    theirs.close()
    assert os.path.exists(path)
    sp.drop(7)
    sp.close()   # (the removal runs in the spool's background thread; close waits for it)
    assert not os.path.exists(folder)


def test_the_store_keeps_payloads_out_of_sqlite_and_drops_rows_whose_payload_was_lost(tmp_path):
    db = str(tmp_path / "state.db")
    store = Store(db)
    store.begin_round(1, {})
    payloads = {d: os.urandom(2000 + i) for i, d in enumerate(("pi-00", "pi-01", "pi-02"))}
    for d, b in payloads.items():
        store.accept(1, d, "update", 100, bytearray(b))
    assert {d: store.contribution(1, d, "update") for d in payloads} == payloads
    assert [(d, len(b)) for d, _, _, b in store.contributions(1)] == [(d, len(b)) for d, b in payloads.items()]
    raw = sqlite3.connect(db).execute("SELECT SUM(length(blob)) FROM contributions").fetchone()[0]
    assert raw == 0   # SQLite holds the rows, not the payloads
    store.close()
    folder = db + "-spool"
    (path,) = [os.path.join(folder, f) for f in os.listdir(folder)]
    other = os.path.join(folder, "not-ours.spool")
    with open(other, "wb") as f:
        f.write(b"someone else's")
    with open(path, "r+b") as f:   # pi-02's record never reached the disk whole
        f.truncate(os.path.getsize(path) - 10)
    store = Store(db)
    assert [(d, k) for d, k, _ in store.contribution_keys(1)] == [("pi-00", "update"), ("pi-01", "update")]
    store.finish_round(1, [np.zeros(3, np.float32)], {"round": 1})
    store.close()
    assert sorted(os.listdir(folder)) == ["not-ours.spool"]   # its own file gone once the round is done; others kept


def test_score_views_stay_within_their_budget():
    shapes = [(784, 1024), (1024,), (1024, 192), (192,), (192, 10), (10,)]
    ing = ingest.Ingest(1, shapes, 10, 1000, None, load=None)
    arrays = [np.ones(s, np.float32) for s in shapes]
    ing.take(ingest.Taken("pi-00", "update", 10, 1.0), arrays)
    view = ing.taken[("pi-00", "update")].view
    assert sum(v.size for v in view) * 1000 <= ingest.SCORE_BUDGET + 1000 * (192 * 10 + 10)
    assert view[-2].shape == (192, 10) and view[-1].shape == (10,)   # the output layer whole: the class score's
    small = ingest.Ingest(1, SHAPES, 4, 6, None, load=None)
    small.take(ingest.Taken("pi-00", "update", 10, 1.0), [np.ones(s, np.float32) for s in SHAPES])
    assert [v.shape for v in small.taken[("pi-00", "update")].view] == list(SHAPES)   # small rounds: all of it


def hows(monkeypatch):
    """Record how each round's ingest merged."""
    seen, orig = [], ingest.Ingest.merged

    def merged(self, *a):
        out = orig(self, *a)
        seen.append(self.how)
        return out
    monkeypatch.setattr(ingest.Ingest, "merged", merged)
    return seen


@pytest.mark.parametrize("attack", [False, True])
def test_folding_as_accepted_ends_in_the_list_paths_bits(fashion, monkeypatch, attack):
    """The default run (SemiFL, norm_bound) folds each update as it comes. An x100 device under the plain
    mean is merged until its third outlier round, where it is quarantined after its update was folded:
    that round folds again without it. Either way the model is the list merge's, bit for bit."""
    cfg = RunConfig.make(rounds=3, int8_every=0, **({"aggregation": "mean"} if attack else {}))
    attackers = {"pi-05": "scale100"} if attack else None
    seen = hows(monkeypatch)
    ms = []
    folded = run_inprocess(cfg, fashion, on_round=ms.append, attackers=attackers).params
    monkeypatch.setattr(SemiFL, "folds", False)
    listed = run_inprocess(cfg, fashion, attackers=attackers).params
    assert same(folded, listed)
    assert seen[3:] == ["list"] * 3
    if attack:
        assert "pi-05" in ms[0]["participants"]["fl"] and ms[2]["quarantined"] == ["pi-05"]
        assert seen[:3] == ["folded", "folded", "refolded"] and "pi-05" not in ms[2]["participants"]["fl"]
    else:
        assert seen[:3] == ["folded"] * 3


def test_a_restarted_host_whose_spool_tail_was_torn_asks_again_and_ends_in_the_same_bits(tmp_path, fashion, mosquitto):
    """SIGKILL mid-round, then the open round's spool loses the end of its last record (what a power cut
    in the middle of an append leaves): the restarted host cuts the torn record off, drops the row it
    had (if any), asks that device again, and ends with the model an uninterrupted run computes."""
    import json
    import signal
    import subprocess
    import sys
    import time

    from conftest import accepted_in_open_round
    from semifl.sim.fleet import LinkProfile, VirtualFleet, seed_fleet

    rounds, seed, state = 4, 3, tmp_path / "state.db"
    log_path = tmp_path / "host.log"
    cmd = [sys.executable, "-m", "semifl.cli", "serve", "--broker", mosquitto, "--rounds", str(rounds), "--seed",
           str(seed), "--strategy", "semifl", "--state", str(state), "--wait-devices", "10", "--wait-s", "60"]
    specs = seed_fleet(6, 4, 10, seed, rounds, LinkProfile(latency_s=0.002))
    with VirtualFleet(tmp_path / "fleet", specs, fashion, mosquitto), open(log_path, "wb") as log:
        host = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        end, before = time.monotonic() + 120, []
        while not before and time.monotonic() < end and host.poll() is None:
            before = accepted_in_open_round(state) if state.exists() else []
            time.sleep(0.005)
        assert before, log_path.read_text()[-2000:]
        host.send_signal(signal.SIGKILL)
        host.wait(10)
        rnd = before[0][0]
        token = json.loads(sqlite3.connect(str(state)).execute("SELECT value FROM meta WHERE key='spool_token'").fetchone()[0])
        folder = str(state) + "-spool"
        whole = Spool(folder, token).keys(rnd)
        path = os.path.join(folder, f"{token}-{rnd:08d}.spool")
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 7)
        (torn,) = whole - Spool(folder, token).keys(rnd)
        host = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        assert host.wait(180) == 0, log_path.read_text()[-3000:]
    text = log_path.read_text()
    assert "a torn append" in text
    rows = {(d, k): t for d, k, t in sqlite3.connect(str(state)).execute(
        "SELECT device, kind, accepted FROM contributions WHERE round=?", (rnd,))}
    for _, dev, kind, t in before:   # kept as accepted, but the torn one: received again
        assert (rows[(dev, kind)] == t) == ((dev, kind) != torn)
    assert torn in rows
    if any((d, k) == torn for _, d, k, _ in before):
        assert "lost with a power cut" in text
    store = Store(str(state))
    final = store.checkpoint(rounds)
    store.close()
    expected = run_inprocess(RunConfig.make(rounds=rounds, seed=seed, strategy="semifl"), fashion).params
    assert same(final, expected)
    assert not os.path.exists(folder)   # every round done: the spool's files are gone
