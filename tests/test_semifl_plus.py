"""semifl+ arithmetic on tiny arrays against hand-computed values (no training; well under a second)."""
import math

import numpy as np
import pytest

from semifl.learn import mlp
from semifl.learn.data import to_float
from semifl.learn.semifl_plus import SemiFLPlus
from semifl.learn.strategy import CLBatch, FLUpdate, SemiFL

LAYERS = (3, 4, 2)


def const(v):
    """A one-parameter-tensor 'model' delta/params: a (2,) array."""
    return [np.array(v, np.float32)]


def fl(device, v, n=1):
    return FLUpdate(device, const(v), n)


def tiny():
    params = mlp.init_params(LAYERS, seed=1)
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (6, 3), dtype=np.uint8)
    y = np.array([0, 1, 1, 0, 1, 0], np.uint8)
    deltas = [[rng.normal(0, 0.01, p.shape).astype(np.float32) for p in params] for _ in range(2)]
    return params, x, y, deltas


def test_flags_off_is_semifl():
    params, x, y, (d1, d2) = tiny()
    fls = [FLUpdate("pi-01", d1, 3), FLUpdate("pi-00", d2, 5)]
    cls = [CLBatch("mcu-07", x[3:], y[3:]), CLBatch("mcu-06", x[:3], y[:3])]
    want = SemiFL(lr=0.05).aggregate(params, fls, cls)
    got = SemiFLPlus(lr=0.05).aggregate(params, fls, cls)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def test_adam_two_steps_by_hand():
    s = SemiFLPlus(lr=0.5, server_opt="adam", server_lr=0.1, beta1=0.9, beta2=0.99, eps=0.0)
    p = s.aggregate(const([0.0, 0.0]), [fl("a", [1.0, -0.25])], [])    # g = delta / lr = [2, -0.5]
    np.testing.assert_allclose(p[0], [0.1, -0.1], rtol=1e-6)              # first Adam step: eta * sign(g)
    p = s.aggregate(p, [fl("a", [-0.5, -0.25])], [])                      # g = [-1, -0.5]
    # m = 0.9*0.1*g1 + 0.1*g2, v = 0.99*0.01*g1^2 + 0.01*g2^2; bias corrections 1-0.9^2, 1-0.99^2
    m0, v0 = 0.09 * 2 + 0.1 * -1, 0.0099 * 4 + 0.01 * 1
    step0 = (m0 / 0.19) / math.sqrt(v0 / 0.0199)                          # 0.26670...
    m1, v1 = 0.09 * -0.5 + 0.1 * -0.5, 0.0099 * 0.25 + 0.01 * 0.25
    step1 = (m1 / 0.19) / math.sqrt(v1 / 0.0199)                          # -1.0 (g constant)
    np.testing.assert_allclose(p[0], [0.1 + 0.1 * step0, -0.1 + 0.1 * step1], rtol=1e-5)
    assert step0 == pytest.approx(0.266699, abs=1e-6) and step1 == pytest.approx(-1.0)


def test_yogi_second_moment_by_hand():
    s = SemiFLPlus(lr=1.0, server_opt="yogi", server_lr=1.0, beta1=0.0, beta2=0.9, eps=0.0)
    s.aggregate(const([0.0]), [fl("a", [2.0])], [])
    np.testing.assert_allclose(s.v[0], [0.4], rtol=1e-6)                        # 0 - 0.1*4*sign(0-4)
    s.aggregate(const([0.0]), [fl("a", [1.0])], [])
    np.testing.assert_allclose(s.v[0], [0.4 + 0.1 * 1], rtol=1e-6)     # v < g^2: grows by (1-b2) g^2
    s.aggregate(const([0.0]), [fl("a", [0.5])], [])
    np.testing.assert_allclose(s.v[0], [0.5 - 0.1 * 0.25], rtol=1e-6)  # v > g^2: shrinks by (1-b2) g^2


def test_momentum_by_hand():
    s = SemiFLPlus(lr=0.5, server_opt="avgm", server_lr=0.1, beta1=0.9)
    p = s.aggregate(const([1.0]), [fl("a", [0.5])], [])                 # g1 = 1, m = 1
    np.testing.assert_allclose(p[0], [1.1])
    p = s.aggregate(p, [fl("a", [-1.0])], [])                           # g2 = -2, m = 0.9 - 2
    np.testing.assert_allclose(p[0], [1.1 + 0.1 * (0.9 - 2.0)], rtol=1e-6)


def test_balanced_weights_by_dataset_size():
    sizes = {"a": 100, "b": 300}
    plain = SemiFLPlus(lr=1.0).aggregate(const([0.0]), [fl("a", [1.0], n=3), fl("b", [5.0], n=1)], [])
    np.testing.assert_allclose(plain[0], [(3 * 1 + 1 * 5) / 4])         # by samples used: 2.0
    bal = SemiFLPlus(lr=1.0, balanced=True, dataset_sizes=sizes)
    p = bal.aggregate(const([0.0]), [fl("a", [1.0], n=3), fl("b", [5.0], n=1)], [])
    np.testing.assert_allclose(p[0], [(100 * 1 + 300 * 5) / 400])      # by dataset size: 4.0
    with pytest.raises(ValueError):   # balanced weighting of a device whose size the fleet never told
        SemiFLPlus(balanced=True).aggregate(const([0.0]), [fl("a", [1.0], n=3)], [])
    late = SemiFLPlus(balanced=True)
    late.observe_fleet({"a": 100, "b": 300})
    np.testing.assert_allclose(late.aggregate(const([0.0]), [fl("a", [1.0], n=3), fl("b", [5.0], n=1)], [])[0], [4.0])


def test_fl_memory_and_decay():
    off = SemiFLPlus(lr=1.0)
    off.aggregate(const([0.0]), [fl("a", [2.0])], [])
    np.testing.assert_allclose(off.aggregate(const([0.0]), [fl("b", [4.0])], [])[0], [4.0])
    on = SemiFLPlus(lr=1.0, fl_memory=True)
    on.aggregate(const([0.0]), [fl("a", [2.0])], [])
    np.testing.assert_allclose(on.aggregate(const([0.0]), [fl("b", [4.0])], [])[0], [3.0])    # (2+4)/2
    dec = SemiFLPlus(lr=1.0, fl_memory=True, fl_decay=0.5)
    dec.aggregate(const([0.0]), [fl("a", [2.0])], [])
    np.testing.assert_allclose(dec.aggregate(const([0.0]), [fl("b", [4.0])], [])[0], [(0.5 * 2 + 4) / 1.5])
    p = dec.aggregate(const([0.0]), [fl("b", [1.0])], [])                 # a is 2 steps old now
    np.testing.assert_allclose(p[0], [(0.25 * 2 + 1) / 1.25])


def test_age_counts_in_scheduled_steps():
    s = SemiFLPlus(lr=1.0, server_lr=1.0, fl_memory=True, fl_decay=0.5, schedule="cosine", rounds=2)
    s.aggregate(const([0.0]), [fl("a", [2.0])], [])    # step 1 at eta 1.0: clock 1
    s.aggregate(const([0.0]), [fl("b", [4.0])], [])    # step 2 at eta 0.5 (half-way): clock 1.5
    assert s.clock == pytest.approx(1.5)
    assert s.fl_mem["a"][1] == 0.0 and s.fl_mem["b"][1] == 1.0


def test_cosine_schedule():
    s = SemiFLPlus(lr=1.0, server_lr=0.2, schedule="cosine", rounds=4, min_lr_ratio=0.1)
    etas = []
    for _ in range(5):
        s.t += 1
        etas.append(s.step_size())
    want = [0.2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 4))) for k in (0, 1, 2, 3, 4)]
    np.testing.assert_allclose(etas, want)
    assert etas[0] == pytest.approx(0.2) and etas[-1] == pytest.approx(0.02)


def test_cl_memory_keeps_distinct_samples_and_uses_them_all():
    params, x, y, _ = tiny()
    s = SemiFLPlus(lr=0.1, cl_memory=True)
    assert s.remember([CLBatch("mcu-06", x[:3], y[:3])]) == 3
    assert s.remember([CLBatch("mcu-06", x[1:5], y[1:5])]) == 2          # x[1], x[2] already held
    assert s.remember([CLBatch("mcu-06", x[:5], y[:5])]) == 0
    got = s.aggregate(params, [], [CLBatch("mcu-06", x[5:], y[5:])])       # memory: all 6 samples
    _, g = mlp.loss_and_grad(params, to_float(x), y.astype(np.int64))
    for p, gi, w in zip(params, g, got):
        np.testing.assert_allclose(w, p - np.float32(0.1) * gi, rtol=1e-5, atol=1e-7)


def test_cl_minibatch_is_seeded():
    params, x, y, _ = tiny()
    runs = []
    for _ in range(2):
        s = SemiFLPlus(lr=0.1, cl_memory=True, cl_batch=2, seed=7)
        runs.append(s.aggregate(params, [], [CLBatch("mcu-06", x, y)]))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    full = SemiFLPlus(lr=0.1, cl_memory=True).aggregate(params, [], [CLBatch("mcu-06", x, y)])
    assert not np.allclose(full[0], runs[0][0])


def test_prune_consistent_host_step():
    params, x, y, _ = tiny()
    masks = mlp.prune_mask(params, 0.3)
    got = SemiFLPlus(lr=0.1, prune=0.3).aggregate(params, [], [CLBatch("mcu-06", x, y)])
    pruned = [p * m for p, m in zip(params, masks)]
    _, g = mlp.loss_and_grad(pruned, to_float(x), y.astype(np.int64))
    for p, m, gi, w in zip(params, masks, g, got):
        np.testing.assert_array_equal(w[~m], p[~m])                        # pruned entries do not move
        np.testing.assert_allclose(w[m], (p - np.float32(0.1) * gi)[m], rtol=1e-5, atol=1e-7)


def test_state_survives_a_restart_through_the_store(tmp_path):
    """Every piece of semifl+'s state (Adam moments, step count and clock, FL and CL memories, the
    minibatch generator) goes through SQLite and back: the restored strategy continues bit for bit."""
    from semifl.service.store import Store

    rng = np.random.default_rng(5)
    params = mlp.init_params(LAYERS, seed=1)
    kw = dict(lr=0.05, server_opt="adam", server_lr=0.01, cl_memory=True, cl_batch=4, fl_memory=True, fl_decay=0.8,
              balanced=True, dataset_sizes={"pi-00": 10, "pi-01": 20, "mcu-06": 8, "mcu-07": 8},
              schedule="cosine", rounds=8, prune=0.25, seed=3)

    def inputs(r):
        d = "pi-00" if r % 2 else "pi-01"
        fls = [FLUpdate(d, [rng.normal(0, 0.01, p.shape).astype(np.float32) for p in params], 5)]
        x = rng.integers(0, 4, (3, 3), dtype=np.uint8)   # few distinct values: repeats test the dedup
        cls = [CLBatch(f"mcu-0{6 + r % 2}", x, (x[:, 0] % 2).astype(np.uint8))]
        return fls, cls

    rounds = [inputs(r) for r in range(8)]
    a = SemiFLPlus(**kw)
    p = params
    store = Store(str(tmp_path / "state.db"))
    for r in range(4):
        p = a.aggregate(p, *rounds[r])
        store.finish_round(r + 1, p, {}, ({"strategy": a.name, "state": a.state()[0]}, a.state()[1]))
    store.close()

    store = Store(str(tmp_path / "state.db"))
    meta, arrays = store.strategy_state()
    assert meta["round"] == 4 and meta["strategy"] == "semifl+"
    b = SemiFLPlus(**kw)
    b.load_state(meta["state"], arrays)
    pa = pb = store.checkpoint(4)
    for r in range(4, 8):
        pa, pb = a.aggregate(pa, *rounds[r]), b.aggregate(pb, *rounds[r])
    for x, y in zip(pa, pb):
        assert np.array_equal(x, y)
    assert sum(len(xs[0]) for xs, _, _ in b.cl_mem.values()) == sum(len(xs[0]) for xs, _, _ in a.cl_mem.values())


def test_unchanged_strategy_arrays_are_not_rewritten(tmp_path):
    from semifl.service.store import Store

    store = Store(str(tmp_path / "state.db"))
    big = [np.arange(1000, dtype=np.float32)]
    store.finish_round(1, big, {}, ({}, {"cl/a": big, "opt/m": [np.zeros(3, np.float32)]}))
    rowid = lambda: dict(store.db.execute("SELECT name, rowid FROM strategy_state"))   # REPLACE makes a new row
    before = rowid()
    store.finish_round(2, big, {}, ({}, {"cl/a": big, "opt/m": [np.ones(3, np.float32)]}))
    after = rowid()
    assert after["cl/a"] == before["cl/a"] and after["opt/m"] != before["opt/m"]
    store.finish_round(3, big, {}, ({}, {"opt/m": [np.ones(3, np.float32)]}))   # a memory that is gone goes
    assert dict(store.db.execute("SELECT name, digest FROM strategy_state")).keys() == {"opt/m"}
    assert store.strategy_state()[1]["opt/m"][0].tolist() == [1.0, 1.0, 1.0]
