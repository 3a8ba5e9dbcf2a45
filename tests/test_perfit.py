"""Personalized FL (PerFit, seed 003) over arrays: what each method keeps on the device, what it sends,
and what the host refuses. Small synthetic devices so the whole file runs in seconds."""
import numpy as np
import pytest

from semifl.config import RunConfig
from semifl.experiments import perfit as ex
from semifl.learn import nn, perfit
from semifl.learn.har import as_grid, load_har

CLASSES, FEATS = 4, 9
MLP = nn.Net((FEATS,), [("dense", 12, "relu"), ("dense", 8, "relu"), ("dense", CLASSES, "none")])
CNN = nn.Net((3, 3, 1), [("conv", 4, "relu"), ("flatten",), ("dense", CLASSES, "none")])
CFG = perfit.Local(epochs=2, batch=8, lr=0.05)


def device(i, net=MLP, n=40):
    """A device whose labels depend on its own feature shift: non-IID, as subjects are."""
    rng = np.random.default_rng(100 + i)
    x = rng.normal(size=(n + 12, FEATS)).astype(np.float32)
    y = ((x[:, 0] + 0.5 * i > 0).astype(int) + 2 * (x[:, 1] > 0)).astype(np.int64)
    v = (lambda a: as_grid(a, 3)) if net is CNN else (lambda a: a)
    return perfit.Device(f"d{i}", net, v(x[:n]), y[:n], v(x[n:]), y[n:], view=v)


def run_rounds(method, devs, plan):
    """plan: the participating devices per round; returns every round's uploads."""
    out = []
    for r, part in enumerate(plan, 1):
        method.begin_round(r)
        ups = [method.local(devs[d], method.send(devs[d].id), seed=1000 * r + d) for d in part]
        method.aggregate(ups)
        out.append(ups)
    return out


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_train_is_nn_sgd_step_for_step():
    d = device(0)
    p0 = MLP.init(3)
    for mom in (0.0, 0.9):
        cfg = perfit.Local(epochs=2, batch=8, lr=0.05, momentum=mom)
        assert same(perfit.train(MLP, p0, d.x, d.y, cfg, seed=7),
                    nn.sgd(MLP, p0, d.x, d.y, epochs=2, batch=8, lr=0.05, momentum=mom, seed=7))


def test_fedavg_counts_exactly_the_weights_it_sends():
    devs = [device(i) for i in range(3)]
    m = perfit.FedAvg(MLP, CFG)
    (ups,) = run_rounds(m, devs, [[0, 1, 2]])
    assert [u.values for u in ups] == [MLP.n_params] * 3 == [9 * 12 + 12 + 12 * 8 + 8 + 8 * 4 + 4] * 3
    assert m.params and same(m.params, nn_avg([u.arrays for u in ups], [u.n for u in ups]))


def nn_avg(lists, w):
    return [sum(np.float32(wi / sum(w)) * a[k] for a, wi in zip(lists, w)) for k in range(len(lists[0]))]


def test_fedper_head_never_leaves_the_device_nor_enters_the_aggregate():
    devs = [device(i) for i in range(3)]
    m = perfit.FedPer(MLP, CFG, head_arrays=2)
    base_shapes = MLP.shapes()[:-2]
    assert [p.shape for p in m.params] == base_shapes        # the host never holds a head
    assert [a.shape for a in m.send("d0").arrays] == base_shapes    # nor sends one
    ups = run_rounds(m, devs, [[0, 1], [1, 2]])
    for u in (u for r in ups for u in r):
        assert u.kind == "base" and [a.shape for a in u.arrays] == base_shapes
        assert u.values == MLP.n_params - (8 * CLASSES + CLASSES)
    assert [p.shape for p in m.params] == base_shapes
    # aggregation touches no head: the heads after a round are bit for bit what the devices trained
    heads = {d.id: [a.copy() for a in d.personal] for d in devs}
    m.begin_round(3)
    up = m.local(devs[0], m.send("d0"), seed=5)
    trained = [a.copy() for a in devs[0].personal]
    m.aggregate([up])
    assert same(devs[0].personal, trained) and same(devs[1].personal, heads["d1"]) and same(devs[2].personal, heads["d2"])
    # and the device's personal model is the new base with its own head
    assert same(m.personalize(devs[0], 0), m.params + trained)
    # a device that tries to send its head too is refused
    leaky = perfit.Upload("d1", "base", up.arrays + trained, up.n)
    with pytest.raises(ValueError, match="expected"):
        m.aggregate([leaky])


def test_fedper_device_back_after_missed_rounds_keeps_its_head():
    devs = [device(i) for i in range(3)]
    m = perfit.FedPer(MLP, CFG)
    run_rounds(m, devs, [[0, 1, 2]])
    stored = [a.copy() for a in devs[2].personal]
    run_rounds(m, devs, [[0, 1]] * 3)                 # d2 misses three rounds
    assert same(devs[2].personal, stored)
    m.begin_round(5)
    msg = m.send("d2")
    up = m.local(devs[2], msg, seed=9)
    expect = perfit.train(MLP, list(msg.arrays) + stored, devs[2].x, devs[2].y, CFG, 9)   # stored head, not a fresh one
    assert same(up.arrays + devs[2].personal, expect)


def test_fedper_host_state_survives_a_restart_without_heads():
    devs = [device(i) for i in range(3)]
    m = perfit.FedPer(MLP, CFG)
    run_rounds(m, devs, [[0, 1], [1, 2]])
    meta, arrays = m.state()
    assert meta == {"round": 2} and [a.shape for a in arrays["global"]] == MLP.shapes()[:-2]
    m2 = perfit.FedPer(MLP, CFG, seed=5)
    m2.load_state(meta, arrays)
    assert same(m2.params, m.params) and m2.round == 2


def test_ftl_fine_tunes_from_the_global_model():
    devs = [device(i) for i in range(3)]
    m = perfit.FTL(MLP, CFG, ft_epochs=0)
    run_rounds(m, devs, [[0, 1, 2]] * 2)
    devs[0].personal = MLP.init(99)                   # an older personal copy must not matter
    assert same(m.personalize(devs[0], 1), m.params)  # zero epochs: exactly the global model
    m.ft_epochs = 3
    assert same(m.personalize(devs[0], 4),
                nn.sgd(MLP, m.params, devs[0].x, devs[0].y, epochs=3, batch=8, lr=0.05, seed=4))
    m.ft_arrays = 2                                   # head-only fine-tuning: the body is the global's
    p = m.personalize(devs[0], 4)
    assert same(p[:-2], m.params[:-2]) and not same(p[-2:], m.params[-2:])


def test_ditto_lambda_limits():
    d = device(1)
    w = MLP.init(5)
    msg = perfit.Message(1, w)
    # lambda = 0: the personal model is plain local training from the global model (seed + 1)
    m0 = perfit.Ditto(MLP, CFG, lam=0.0)
    m0.local(d, msg, seed=3)
    assert same(d.personal, nn.sgd(MLP, w, d.x, d.y, epochs=2, batch=8, lr=0.05, seed=4))
    # lambda -> infinity: the proximal pull leaves exactly the global model (to float32 rounding)
    d.personal = MLP.init(77)
    mi = perfit.Ditto(MLP, CFG, lam=1e12)
    up = mi.local(d, msg, seed=3)
    assert all(np.allclose(v, g, rtol=1e-6, atol=1e-7) for v, g in zip(d.personal, w))
    # what Ditto sends is the FedAvg update, whatever lambda
    assert same(up.arrays, nn.sgd(MLP, w, d.x, d.y, epochs=2, batch=8, lr=0.05, seed=3))
    # in between the personal model lies between local training and the global model
    d.personal = None
    perfit.Ditto(MLP, CFG, lam=1.0).local(d, msg, seed=3)
    local = nn.sgd(MLP, w, d.x, d.y, epochs=2, batch=8, lr=0.05, seed=4)
    dist = lambda a, b: sum(float(np.square(x - y).sum()) for x, y in zip(a, b))   # noqa: E731
    assert 0 < dist(d.personal, w) < dist(local, w)


def test_ditto_device_back_after_missed_rounds_keeps_its_personal_model():
    devs = [device(i) for i in range(3)]
    m = perfit.Ditto(MLP, CFG, lam=0.5)
    run_rounds(m, devs, [[0, 1, 2]])
    stored = [a.copy() for a in devs[2].personal]
    run_rounds(m, devs, [[0, 1]] * 3)
    assert same(devs[2].personal, stored) and same(m.personalize(devs[2], 0), stored)
    m.begin_round(5)
    msg = m.send("d2")
    m.local(devs[2], msg, seed=11)
    c = np.float32(CFG.lr * 0.5)
    inv = np.float32(1) / (np.float32(1) + c)
    expect = perfit.train(MLP, stored, devs[2].x, devs[2].y, CFG, 12,
                          step=lambda v: [(vi + c * wi) * inv for vi, wi in zip(v, msg.arrays)])
    assert same(devs[2].personal, expect)             # continued from the stored v, not from w


def fd_setup(n_pub=20):
    pub = np.random.default_rng(0).normal(size=(60, FEATS)).astype(np.float32)
    devs = [device(0), device(1, CNN), device(2), device(3, CNN)]    # 3NN-like and CNN devices mix
    return perfit.FD(pub, CLASSES, CFG, public_n=n_pub, distil_epochs=1, T=2.0), devs


def test_fd_sends_only_logits_and_the_host_averages_them_exactly():
    m, devs = fd_setup()
    ups = run_rounds(m, devs, [[0, 1, 2, 3]] * 2)
    for u in (u for r in ups for u in r):
        assert u.kind == "logits" and len(u.arrays) == 1 and u.arrays[0].shape == (20, CLASSES)
        assert u.values == 20 * CLASSES
    # what goes down: this version's indices, last version's indices and its consensus
    m.begin_round(3)
    msg = m.send("d0")
    assert [a.shape for a in msg.arrays] == [(20,), (20,), (20, CLASSES)] and msg.version == 3
    # the host's consensus is the exact mean (integer logits: every mean is representable)
    fake = [perfit.Upload(f"d{i}", "logits", [np.full((20, CLASSES), v, np.float32)], 1, version=3)
            for i, v in enumerate([1.0, 2.0, 6.0])]
    m.aggregate(fake)
    assert np.array_equal(m.consensus, np.full((20, CLASSES), 3.0, np.float32))
    assert np.array_equal(m.consensus_indices, msg.arrays[0])
    real = [u.arrays[0] for u in ups[1]]
    m.begin_round(4)
    m.aggregate([perfit.Upload(f"d{i}", "logits", [a], 1, version=4) for i, a in enumerate(real)])
    assert np.array_equal(m.consensus, (np.stack(real).astype(np.float64).sum(0) / 4).astype(np.float32))


def test_fd_rejects_wrong_shape_unsent_version_and_weights():
    m, devs = fd_setup()
    run_rounds(m, devs, [[0, 1]])
    m.begin_round(2)
    good = m.local(devs[2], m.send("d2"), seed=1)
    before = m.consensus.copy()
    with pytest.raises(ValueError, match=r"logits of shapes \[\(20, 5\)\], expected \[\(20, 4\)\]"):
        m.aggregate([perfit.Upload("d2", "logits", [np.zeros((20, 5), np.float32)], 1, version=2)])
    with pytest.raises(ValueError, match=r"expected \[\(20, 4\)\]"):
        m.aggregate([perfit.Upload("d2", "logits", [np.zeros((19, 4), np.float32)], 1, version=2)])
    with pytest.raises(ValueError, match="logits for public set version 1, the host sent version 2"):
        m.aggregate([perfit.Upload("d2", "logits", good.arrays, 1, version=1)])
    with pytest.raises(ValueError, match="public set version 7"):
        m.aggregate([perfit.Upload("d2", "logits", good.arrays, 1, version=7)])
    with pytest.raises(ValueError, match="takes logits only"):
        m.aggregate([perfit.Upload("d2", "weights", MLP.init(0), 1, version=2)])
    with pytest.raises(ValueError, match="non-finite"):
        m.aggregate([perfit.Upload("d2", "logits", [np.full((20, 4), np.nan, np.float32)], 1, version=2)])
    assert np.array_equal(m.consensus, before)        # nothing refused reached the consensus
    m.aggregate([good])
    assert np.array_equal(m.consensus, good.arrays[0])


def test_fd_device_keeps_its_own_model_between_rounds_and_restart_state():
    m, devs = fd_setup()
    run_rounds(m, devs, [[0, 1, 2, 3]])
    stored = [a.copy() for a in devs[3].personal]
    assert [a.shape for a in stored] == CNN.shapes()  # its own architecture, not the others'
    run_rounds(m, devs, [[0, 1]] * 2)
    assert same(devs[3].personal, stored) and same(m.personalize(devs[3], 0), stored)
    meta, arrays = m.state()
    m2, _ = fd_setup()
    m2.load_state(meta, arrays)
    assert m2.version == m.version and np.array_equal(m2.consensus, m.consensus)
    m.begin_round(4)
    m2.begin_round(4)
    assert np.array_equal(m.send("d3").arrays[0], m2.send("d3").arrays[0])


def test_perfedavg_personalizes_from_the_global_model():
    devs = [device(i) for i in range(3)]
    m = perfit.PerFedAvg(MLP, CFG, alpha=0.05, adapt_steps=0)
    run_rounds(m, devs, [[0, 1, 2]])
    assert same(m.personalize(devs[0], 1), m.params)
    m.adapt_steps = 2
    p = m.personalize(devs[0], 1)
    rng = np.random.default_rng(1)
    q = m.params
    for _ in range(2):
        idx = rng.choice(40, 8, replace=False)
        _, g = MLP.loss_and_grad(q, devs[0].x[idx], devs[0].y[idx])
        q = [a - np.float32(0.05) * b for a, b in zip(q, g)]
    assert same(p, q)


def test_runner_participation_and_values(har_dir):
    devs = [device(i) for i in range(6)]
    picks = [ex.participants(r, [d.id for d in devs], 2, seed=0) for r in range(1, 30)]
    assert all(len(set(p)) == 2 for p in picks) and len({tuple(p) for p in picks}) > 3
    assert picks == [ex.participants(r, [d.id for d in devs], 2, seed=0) for r in range(1, 30)]
    assert ex.participants(1, ["b", "a"], 0, 0) == ["b", "a"]
    har = load_har(har_dir)
    cfg = RunConfig.make(strategy="ftl", rounds=6, subjects=6, per_round=2, ft_epochs=2, batch=8, lr=0.05, epochs=2)
    res = ex.run(cfg, har, log=None)
    net = ex.network("3nn")
    assert res["values_per_round"] == net.n_params and sum(res["participation"].values()) == 12
    devices = ex.make_devices(har, 6, "3nn")
    assert set(res["per_device"]) == {d.id for d in devices} and res["p10_acc"] <= res["mean_acc"]
    assert set(res["global"]["per_device"]) == set(res["per_device"])
    # FTL's fine-tuned copies beat the global model on the devices' own windows
    assert res["mean_acc"] >= res["global"]["mean_acc"]
