"""The numpy layer engine every model definition runs on: exact gradients (against finite differences),
the MLP it replaces bit for bit, split learning's f_b(f_a(x)) = f(x) with the same gradients, and the
parameter counts of the seeds' models."""
import numpy as np
import pytest

from semifl.learn import mlp, nn

SMALL = nn.Net((6, 5, 2), [("conv", 3, "tanh"), ("pool",), ("conv", 4, "relu"), ("flatten",),
                           ("dense", 5, "sigmoid"), ("dense", 3, "none")])


def _perturbed(net, seed=1):
    rng = np.random.default_rng(seed)
    return [p + rng.normal(0, 0.3, p.shape) for p in net.init(seed, np.float64)]


def test_gradients_match_finite_differences():
    p = _perturbed(SMALL)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 6, 5, 2)), np.array([0, 1, 2, 1])
    _, g = SMALL.loss_and_grad(p, x, y)
    for k in range(len(p)):
        for idx in list(np.ndindex(p[k].shape))[::max(1, p[k].size // 6)]:
            q = [a.copy() for a in p]
            q[k][idx] += 1e-6
            lp = SMALL.loss_and_grad(q, x, y)[0]
            q[k][idx] -= 2e-6
            lm = SMALL.loss_and_grad(q, x, y)[0]
            assert (lp - lm) / 2e-6 == pytest.approx(g[k][idx], abs=1e-7)


def test_input_gradient_is_what_split_learning_sends_back():
    p = _perturbed(SMALL)
    x = np.random.default_rng(2).normal(size=(3, 6, 5, 2))
    y = np.array([2, 0, 1])
    out, caches = SMALL.forward(p, x, keep=True)
    _, dlogits = nn.softmax_xent(out, y)
    _, dx = SMALL.backward(p, caches, dlogits, need_dx=True)
    for idx in [(0, 0, 0, 0), (1, 2, 3, 1), (2, 5, 4, 0)]:
        q = x.copy()
        q[idx] += 1e-6
        lp = nn.softmax_xent(SMALL.forward(p, q), y)[0]
        q[idx] -= 2e-6
        lm = nn.softmax_xent(SMALL.forward(p, q), y)[0]
        assert (lp - lm) / 2e-6 == pytest.approx(dx[idx], abs=1e-7)


def test_split_parts_compose_to_the_whole_with_the_same_gradients():
    net = nn.Net((8, 8, 1), [("conv", 4, "relu"), ("conv", 4, "relu"), ("pool",), ("flatten",), ("dense", 3, "none")])
    f_a, f_b = net.split(3)
    assert f_a.out_shapes[-1] == (4, 4, 4) and f_b.input_shape == (4, 4, 4)
    p = net.init(3)
    na = len(f_a.shapes())
    x = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    y = np.array([0, 1, 2, 0, 1])
    smashed, ca = f_a.forward(p[:na], x, keep=True)
    logits, cb = f_b.forward(p[na:], smashed, keep=True)
    np.testing.assert_array_equal(logits, net.forward(p, x))
    _, dlogits = nn.softmax_xent(logits, y)
    g_b, d_cut = f_b.backward(p[na:], cb, dlogits, need_dx=True)   # the host
    g_a = f_a.backward(p[:na], ca, d_cut)                           # the device, given the cut's gradient
    whole = net.loss_and_grad(p, x, y)[1]
    for a, b in zip(g_a + g_b, whole):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_dense_net_is_the_mlp_bit_for_bit():
    net = nn.Net((784,), [("dense", 50, "tanh"), ("dense", 100, "tanh"), ("dense", 50, "tanh"), ("dense", 10, "none")])
    p = net.init(0)
    assert all(np.array_equal(a, b) for a, b in zip(p, mlp.init_params(seed=0)))
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 784), dtype=np.float32), rng.integers(0, 10, 32)
    l1, g1 = net.loss_and_grad(p, x, y)
    l2, g2 = mlp.loss_and_grad(p, x, y)
    assert l1 == pytest.approx(l2, rel=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_max_pool_routes_the_gradient_to_one_winner_per_window():
    net = nn.Net((2, 3, 1), [("pool",)])
    x = np.array([[[[1.0], [5.0], [9.0]], [[5.0], [2.0], [9.0]]]])   # a tie (5, 5) and a dropped odd column
    out, caches = net.forward([], x, keep=True)
    assert out.reshape(-1).tolist() == [5.0]
    _, dx = net.backward([], caches, np.array([[[[7.0]]]]), need_dx=True)
    assert dx.reshape(2, 3).tolist() == [[0, 7, 0], [0, 0, 0]]


def test_the_seeds_models_have_the_seeds_sizes():
    # PerFit (seed 003): 3NN 400-100-10 on 1200 inputs, 521,510 parameters; CNN 33,698 on 20x20x3
    assert nn.Net((1200,), [("dense", 400, "relu"), ("dense", 100, "relu"), ("dense", 10, "none")]).n_params == 521_510
    cnn = nn.Net((20, 20, 3), [("conv", 32, "relu"), ("pool",), ("conv", 16, "relu"), ("pool",), ("conv", 8, "relu"),
                               ("flatten",), ("dense", 128, "relu"), ("dense", 10, "none")])
    assert cnn.n_params == 33_698
    # IoTSL (seed 002): VGG-16's first block on the device, smashed data 64x14x14
    f_a = nn.Net((28, 28, 1), [("conv", 64, "relu"), ("conv", 64, "relu"), ("pool",)])
    assert f_a.n_params == 37_568 and f_a.out_shapes[-1] == (14, 14, 64)


def test_bad_definitions_say_what_is_wrong():
    with pytest.raises(ValueError, match="flatten first"):
        nn.Net((4, 4, 1), [("conv", 2, "relu"), ("dense", 3, "none")])
    with pytest.raises(ValueError, match="activation"):
        nn.Net((4,), [("dense", 3, "gelu")])
    with pytest.raises(ValueError, match="unknown layer"):
        nn.Net((4,), [("lstm", 3)])


def test_sgd_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4, 4, 1)).astype(np.float32)
    y = (x[:, :2].sum(axis=(1, 2, 3)) > x[:, 2:].sum(axis=(1, 2, 3))).astype(int)
    net = nn.Net((4, 4, 1), [("conv", 4, "relu"), ("flatten",), ("dense", 2, "none")])
    p = nn.sgd(net, net.init(0), x, y, epochs=30, batch=20, lr=0.1, momentum=0.9)
    assert (net.predict(p, x) == y).mean() > 0.95
