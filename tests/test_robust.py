"""Robust aggregation (learn/robust.py) and the host's trust in what devices claim: each rule's math
against brute force, and the attacks replayed in-process through the real round object and device
code: an x100 device contained and quarantined, a lying norm refused, a zombie benched, quarantine
kept across a restart."""

import numpy as np
import pytest
from semifl.app.inprocess import run_inprocess
from semifl.config import RunConfig
from semifl.fleet.planner import Zombies
from semifl.learn import robust
from semifl.learn.strategy import FLUpdate, average_fl
from semifl.service.store import Store


def deltas(n=5, seed=0, shapes=((4, 3), (3,))):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(n)]


def masks_for(ds, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.random(a.shape) < 0.6 for a in d] for d in ds]


def test_coordinate_median_is_the_median_of_each_entry_over_its_holders():
    ds = deltas(5)
    out = robust.coordinate_median(ds)
    for i in range(2):
        np.testing.assert_allclose(out[i], np.median(np.stack([d[i] for d in ds]), axis=0), rtol=1e-6)
    ms = masks_for(ds)
    out = robust.coordinate_median(ds, ms)
    for i in range(2):
        for j in np.ndindex(ds[0][i].shape):
            held = [d[i][j] for d, m in zip(ds, ms) if m[i][j]]
            assert out[i][j] == pytest.approx(np.median(held) if held else 0.0, abs=1e-6)


def brute_trimmed(values, trim):
    v = sorted(values)
    b = min(int(np.ceil(trim * len(v) - 1e-9)), (len(v) - 1) // 2) if v else 0
    kept = v[b:len(v) - b]
    return float(np.mean(kept)) if kept else 0.0


@pytest.mark.parametrize("trim", [0.0, 0.1, 0.2, 0.4])
def test_trimmed_mean_drops_ceil_trim_k_at_each_end_per_entry(trim):
    ds = deltas(7, seed=3)
    ms = masks_for(ds, seed=4)
    for masks in (None, ms):
        out = robust.trimmed_mean(ds, trim, masks)
        for i in range(2):
            for j in np.ndindex(ds[0][i].shape):
                vals = [d[i][j] for k, d in enumerate(ds) if masks is None or masks[k][i][j]]
                assert out[i][j] == pytest.approx(brute_trimmed(vals, trim), abs=1e-5)
    assert robust.trim_count(3, 0.2) == 1 and robust.trim_count(10, 0.2) == 2 and robust.trim_count(2, 0.4) == 0


def test_krum_scores_and_selection_match_brute_force():
    ds = deltas(7, seed=5)
    ds[6] = [a * 50 for a in ds[6]]            # one far away
    flat = [np.concatenate([a.ravel() for a in d]).astype(np.float64) for d in ds]
    for f in (0, 1, 2):
        want = []
        for i in range(7):
            dist = sorted(float(((flat[i] - flat[j]) ** 2).sum()) for j in range(7) if j != i)
            want.append(sum(dist[:7 - f - 2]))
        np.testing.assert_allclose(robust.krum_scores(ds, f), want, rtol=1e-9)
        best = min(range(7), key=lambda i: (want[i], i))
        assert robust.krum_select(ds, f) == [best]
        if f:
            assert 6 not in robust.krum_select(ds, f, 7 - f)   # multi-Krum leaves the far one out
    assert robust.krum_f(7, 0) == 2 and robust.krum_f(7, 1) == 1


def test_rules_through_the_merge_seam():
    ds = deltas(5, seed=7)
    fl = [FLUpdate(f"d{i}", d, n=10 + i) for i, d in enumerate(ds)]
    w = [u.n for u in fl]
    assert all(np.array_equal(a, b) for a, b in zip(robust.make("mean")(fl, w), average_fl(fl, w)))
    nb = robust.make("norm_bound", clip_norm=1.0)
    clipped = [FLUpdate(u.device, robust.clip(u.delta, 1.0), u.n) for u in fl]
    np.testing.assert_allclose(nb(fl, w)[0], average_fl(clipped, w)[0], rtol=1e-6)
    assert max(robust.norms([u.delta for u in clipped])) <= 1.0 + 1e-6
    adaptive = robust.make("norm_bound")   # 2 x the round's median norm
    adaptive(fl, w)
    assert adaptive.last["bound"] == pytest.approx(2 * np.median(robust.norms(ds)), rel=1e-5)
    k = robust.make("krum")
    k(fl, w)
    assert len(k.last["kept"]) == 1
    # staleness: an order statistic takes FedBuff's shorter step too
    stale = [FLUpdate(u.device, u.delta, u.n, staleness=3, weight=0.5) for u in fl]
    np.testing.assert_allclose(robust.make("median")(stale, w)[0], 0.5 * robust.coordinate_median(ds)[0], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        robust.make("mode")


def test_anomaly_scores_flag_a_scaled_a_flipped_and_a_zero_update():
    base = deltas(1, seed=9)[0]
    rng = np.random.default_rng(10)
    honest = [[b + 0.3 * rng.standard_normal(b.shape).astype(np.float32) for b in base] for _ in range(4)]
    fl = [FLUpdate(f"h{i}", d, 10) for i, d in enumerate(honest)]
    fl += [FLUpdate("x100", [100 * a for a in honest[0]], 10), FLUpdate("flip", [-a for a in honest[1]], 10),
           FLUpdate("zero", [np.zeros_like(a) for a in base], 10)]
    a = robust.anomaly(fl)
    assert {d for d, s in a.items() if s["outlier"]} == {"x100", "flip", "zero"}
    assert robust.anomaly(fl[:2]) == {}   # too few to compare


def class_round(seed=0, hidden=6, C=4):
    """Updates whose output columns push each held class towards a shared class prototype (as
    cross-entropy does) and everything else is device-specific noise: non-IID as wholes."""
    rng = np.random.default_rng(seed)
    proto, base = rng.standard_normal((hidden, C)), rng.standard_normal((8, hidden))
    hists = {"a": [50, 50, 0, 0], "b": [40, 0, 60, 0], "c": [0, 50, 50, 0], "d": [30, 30, 30, 10],
             "e": [60, 40, 0, 0], "flip": [50, 0, 50, 0]}
    fl = []
    for dev, h in hists.items():
        share = np.asarray(h, float) / sum(h)
        col = proto * share + 0.2 * rng.standard_normal((hidden, C))
        # the first layer dominates the whole update's direction; device c's data pulls it the other way
        first = (-3.0 if dev == "c" else 3.0) * base + 0.5 * rng.standard_normal((8, hidden))
        d = [first.astype(np.float32), col.astype(np.float32)]
        if dev == "flip":
            d = [-a for a in d]
        fl.append(FLUpdate(dev, d, 10))
    return fl, hists


def test_class_scores_agree_per_class_and_a_flipped_update_disagrees():
    fl, hists = class_round()
    s = robust.class_scores(fl, hists, 4)
    assert s["flip"] < -0.5 and min(v for d, v in s.items() if d != "flip") > 0.3
    # brute force for one device: share-weighted cosine to the holders' median column
    holders = {c: [u for u in fl if hists[u.device][c] / sum(hists[u.device]) >= 0.05] for c in range(4)}
    num = den = 0.0
    for c in range(4):
        share = hists["b"][c] / 100
        if share >= 0.05 and len(holders[c]) >= 3:
            ref = np.median(np.stack([u.delta[1][:, c] for u in holders[c]]).astype(np.float64), axis=0)
            a = fl[1].delta[1][:, c].astype(np.float64)
            num += share * a @ ref / (np.linalg.norm(a) * np.linalg.norm(ref))
            den += share
    assert s["b"] == pytest.approx(num / den, rel=1e-9)
    # class 3 has one holder (d): no reference, so it does not count; a device without a histogram has no score
    assert "x" not in robust.class_scores(fl + [FLUpdate("x", fl[0].delta, 10)], hists, 4)
    assert robust.class_scores(fl, hists, 7) == {}   # no layer with 7 columns: no score


def test_anomaly_uses_the_class_score_where_there_is_one():
    fl, hists = class_round(seed=1)
    whole = robust.anomaly(fl)
    # the whole-update cosine flags the honest non-IID device c (its first layer dominates it)
    assert {d for d, a in whole.items() if a["outlier"]} == {"c", "flip"}
    a = robust.anomaly(fl, hists=hists, n_classes=4)
    assert {d for d, x in a.items() if x["outlier"]} == {"flip"}
    assert all("class_cosine" in x for x in a.values())
    # masks: a pruned entry is no vote and not compared (a device whose copy pruned a column is scored on the rest)
    masks = [[np.ones_like(d[0], bool), np.ones_like(d[1], bool)] for d in (u.delta for u in fl)]
    masks[0][1][:, 0] = False
    fl_m = [FLUpdate(u.device, u.delta, u.n, m) for u, m in zip(fl, masks)]
    am = robust.anomaly(fl_m, hists=hists, n_classes=4)
    assert {d for d, x in am.items() if x["outlier"]} == {"flip"}


def test_cl_check_catches_duplicates_and_a_label_histogram_that_is_not_the_devices():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (60, 784), dtype=np.uint8)
    y = np.full(60, 3)
    hist = [0, 0, 0, 600] + [0] * 6
    assert robust.cl_check(x, y, hist, 10) is None
    assert "duplicate" in robust.cl_check(np.concatenate([x[:30], x[:30]]), y, hist, 10)
    assert "histogram" in robust.cl_check(x, 9 - y, hist, 10)


def test_quarantine_needs_outlier_rounds_in_a_row_and_zombies_sit_out_longer_each_time():
    q = robust.Quarantine(3)
    for rnd, struck in enumerate([True, True, False, True, True, True], 1):
        q.strike("a", "update") if struck else q.clean("a")
        new = q.close(rnd)
    assert new == ["a"] and q.quarantined["a"]["round"] == 6
    z = Zombies(after=2)
    z.missed("p", 1)
    assert z.benched(2) == {}
    z.missed("p", 2)
    assert "p" in z.benched(3) and "p" in z.benched(4) and z.benched(5) == {}
    z.missed("p", 5)
    assert "p" in z.benched(9) and z.benched(10) == {}
    z.delivered("p")
    assert z.benched(6) == {}


# --- in-process attacks: the real round object and device code over MemoryBroker ---------------------
def run(fashion, attackers=None, store=None, **kw):
    cfg = RunConfig.make(**{"rounds": 5, "int8_every": 0, **kw})
    ms = []
    run_inprocess(cfg, fashion, on_round=ms.append, attackers=attackers, store=store)
    return ms


def test_x100_device_is_contained_and_quarantined(fashion):
    clean = run(fashion, aggregation="norm_bound")
    ms = run(fashion, {"pi-05": "scale100"}, aggregation="norm_bound")
    assert all("pi-05" not in m["participants"]["fl"] for m in ms)   # never merged
    assert [m["quarantined"] for m in ms][2:] == [["pi-05"]] * 3     # its third outlier round in a row
    assert "quarantined" in ms[3]["idle"]["pi-05"]                   # and not planned any more
    assert ms[-1]["accuracy"] >= clean[-1]["accuracy"] - 0.02
    # under the plain mean it is merged until quarantined, and the damage shows
    mean = run(fashion, {"pi-05": "scale100"}, aggregation="mean")
    assert "pi-05" in mean[0]["participants"]["fl"] and mean[-1]["quarantined"] == ["pi-05"]
    assert mean[0]["trust"]["anomaly"]["pi-05"]["norm_ratio"] > 10


@pytest.mark.parametrize("attack", ["scale100_lie", "free_rider_zero"])
def test_a_norm_that_lies_is_refused(fashion, attack):
    # every FL client is asked for its update (under the plain mean, which does not keep a loud claim out of the top-K)
    ms = run(fashion, {"pi-05": attack}, fl_uploaders=6, aggregation="mean")
    assert sum(m["rejected"].get("claim", 0) for m in ms) >= 1
    assert all("pi-05" not in m["participants"]["fl"] for m in ms[1:])


def test_a_zombie_loses_its_slot(fashion):
    ms = run(fashion, rounds=8, silent=["pi-00"], cl_devices=0, strategy="fedavg")
    tasked = [r for r, m in enumerate(ms, 1) if "pi-00" in m["tasked"]]
    benched = [r for r, m in enumerate(ms, 1) if "benched" in m["idle"].get("pi-00", "")]
    assert tasked[:2] == [1, 2] and benched[:2] == [3, 4]   # two tasks undelivered: two rounds out
    assert all(m["participants"]["fl"] for m in ms)         # the others go on


def test_quarantine_survives_a_restart(fashion, tmp_path):
    path = str(tmp_path / "state.db")
    first = run(fashion, {"pi-05": "scale100"}, store=Store(path), rounds=4)
    assert first[-1]["quarantined"] == ["pi-05"]
    after = run(fashion, {"pi-05": "scale100"}, store=Store(path), rounds=6)
    assert [m["round"] for m in after] == [5, 6]
    assert all(m["quarantined"] == ["pi-05"] and "quarantined" in m["idle"]["pi-05"] for m in after)


DIRICHLET20 = dict(strategy="fedavg", fl_devices=20, cl_devices=0, partition="dirichlet", alpha=0.5, fl_uploaders=10)


@pytest.mark.parametrize("attack", [None, "sign_flip", "label_flip"])
def test_non_iid_attackers_are_quarantined_by_the_class_score_and_honest_devices_are_not(fashion, attack):
    # the bench's dirichlet20 workload at 20 % Byzantine (pi-16..19); pi-16 is the one that wins upload slots
    bad = {d: attack for d in ("pi-16", "pi-17", "pi-18", "pi-19")} if attack else None
    ms = run(fashion, bad, rounds=6, aggregation="norm_bound", **DIRICHLET20)
    if attack is None:
        assert all(m["quarantined"] == [] for m in ms)
        return
    assert ms[-1]["quarantined"] == ["pi-16"]
    assert ms[2]["trust"]["anomaly"]["pi-16"]["class_cosine"] < -0.15


def test_an_honest_single_class_update_always_raises_its_class_bias():
    """Cross-entropy's bias gradient on samples of one class c is sum_i (p_c - 1) < 0 whatever the model:
    an honest step raises b_c, a sign-flipped one or one trained on other labels lowers it."""
    from semifl.device.fl import local_update
    from semifl.learn import mlp

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (40, 784), dtype=np.uint8)
    for seed in range(5):   # models from anywhere, even ones that already favour the class
        params = mlp.init_params(seed=seed)
        params[-1][4] += 0.5 * seed
        task = {"seed": seed, "fraction": 1.0, "epochs": 2, "lr": 0.5}
        honest, _, _ = local_update(params, x, np.full(40, 4, np.uint8), task)
        flipped = [-d for d in honest]
        other, _, _ = local_update(params, x, np.full(40, 7, np.uint8), task)   # trained on labels it does not hold
        hist = [0] * 10
        hist[4] = 40
        fl = [FLUpdate("honest", honest, 40), FLUpdate("flip", flipped, 40), FLUpdate("other", other, 40)]
        assert robust.bias_raised(fl, {d: hist for d in ("honest", "flip", "other")}, 10) == {
            "honest": True, "flip": False, "other": False}
    # not judged: a device of two classes, or a bias its pruned copy does not hold
    assert robust.bias_raised(fl, {"honest": [20, 20] + [0] * 8}, 10) == {}
    masks = [np.ones(a.shape, bool) for a in honest]
    masks[-1][4] = False
    assert robust.bias_raised([FLUpdate("honest", flipped, 40, masks)], {"honest": hist}, 10) == {}


def test_a_sign_flipping_device_of_the_seed_fleet_is_never_merged_and_is_quarantined(fashion):
    ms = run(fashion, {"pi-05": "sign_flip"}, rounds=30)   # the default rule (norm_bound)
    assert not any("pi-05" in m["participants"]["fl"] for m in ms)
    scored = [m["trust"]["anomaly"]["pi-05"]["bias_raised"] for m in ms if "pi-05" in m["trust"]["anomaly"]]
    assert scored and not any(scored)             # caught each time its update came in
    assert ms[-1]["quarantined"] == ["pi-05"]
    assert all(a.get("bias_raised", True) for m in ms for d, a in m["trust"]["anomaly"].items() if d != "pi-05")
