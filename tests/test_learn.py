"""MLP gradients, pruning, aggregation and strategies against hand-computed values."""
import numpy as np
import pytest

from semifl.learn import aggregate, mlp
from semifl.learn.strategy import CLBatch, FedAvg, FLUpdate, SemiFL


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_gradient_matches_finite_differences(act):
    layers = (6, 4, 3, 3)
    params = mlp.init_params(layers, seed=1, dtype=np.float64)
    rng = np.random.default_rng(2)
    x, y = rng.random((5, 6)), rng.integers(0, 3, 5)
    _, grads = mlp.loss_and_grad(params, x, y, act)
    eps = 1e-6
    for i in range(len(params)):
        for j in range(params[i].size):
            p_plus = [p.copy() for p in params]
            p_minus = [p.copy() for p in params]
            p_plus[i].flat[j] += eps
            p_minus[i].flat[j] -= eps
            num = (mlp.loss_and_grad(p_plus, x, y, act)[0] - mlp.loss_and_grad(p_minus, x, y, act)[0]) / (2 * eps)
            assert grads[i].flat[j] == pytest.approx(num, abs=1e-6)


def test_prune_mask_drops_the_smallest_magnitudes_jointly():
    params = [np.array([[0.5, -0.1], [0.05, 2.0]], np.float32), np.array([-0.01, 0.3], np.float32)]
    masks = mlp.prune_mask(params, 0.5)   # ceil(0.5 * 6) = 3 smallest: -0.01, 0.05, -0.1
    assert masks[0].tolist() == [[True, False], [False, True]]
    assert masks[1].tolist() == [False, True]


def test_weighted_average_by_hand():
    a = [np.array([1.0, 2.0], np.float32)]
    b = [np.array([4.0, -1.0], np.float32)]
    out = aggregate.weighted_average([a, b], [1, 2])
    np.testing.assert_allclose(out[0], [3.0, 0.0])


def test_fedavg_applies_the_sample_weighted_delta():
    params = [np.array([10.0, 10.0], np.float32)]
    fl = [FLUpdate("b", [np.array([3.0, 0.0], np.float32)], 300),
          FLUpdate("a", [np.array([-1.0, 4.0], np.float32)], 100)]
    out = FedAvg().aggregate(params, fl, [])
    # (300*3 + 100*-1)/400 = 2, (0 + 400)/400 = 1
    np.testing.assert_allclose(out[0], [12.0, 11.0])


def test_semifl_mixes_fl_updates_and_the_host_gradient_by_sample_count():
    layers = (784, 3, 2)
    params = mlp.init_params(layers, seed=0)
    fl_delta = [np.full(p.shape, 0.5, np.float32) for p in params]
    x = np.random.default_rng(0).integers(0, 256, (4, 784), dtype=np.uint8)
    y = np.array([0, 1, 1, 0], np.uint8)
    out = SemiFL(lr=0.1).aggregate(params, [FLUpdate("pi", fl_delta, 12)], [CLBatch("mcu", x, y)])
    _, g = mlp.loss_and_grad(params, x.astype(np.float32) / 255, y.astype(np.int64))
    for p, o, gi in zip(params, out, g):
        # seed: combined = n_fl/(n_fl+n_cl) * fl + n_cl/(n_fl+n_cl) * (-lr * g_cl) = 0.75*0.5 - 0.25*0.1*g
        np.testing.assert_allclose(o, p + 0.75 * 0.5 - 0.25 * 0.1 * gi, rtol=1e-5, atol=1e-6)


def test_semifl_with_only_cl_is_a_central_gradient_step():
    params = mlp.init_params((784, 3, 2), seed=0)
    x = np.random.default_rng(1).integers(0, 256, (6, 784), dtype=np.uint8)
    y = np.array([0, 1, 1, 0, 1, 1], np.uint8)
    out = SemiFL(lr=0.5).aggregate(params, [], [CLBatch("m1", x[:2], y[:2]), CLBatch("m0", x[2:], y[2:])])
    # batches are concatenated in device order: m0 first
    xs, ys = np.concatenate([x[2:], x[:2]]), np.concatenate([y[2:], y[:2]])
    _, g = mlp.loss_and_grad(params, xs.astype(np.float32) / 255, ys.astype(np.int64))
    for p, o, gi in zip(params, out, g):
        np.testing.assert_allclose(o, p - 0.5 * gi, rtol=1e-5, atol=1e-7)
