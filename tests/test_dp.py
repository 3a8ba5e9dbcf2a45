"""Client-level DP (learn/dp.py): clipping, the noise it adds, its accounting and adaptive clipping."""
import itertools
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from semifl.learn import dp
from semifl.learn.aggregate import global_norm
from semifl.learn.strategy import FLUpdate


def updates(n, scale=1.0, seed=0, shapes=((20, 5), (5,))):
    rng = np.random.default_rng(seed)
    return [FLUpdate(f"d{i}", [(rng.normal(0, scale, s)).astype(np.float32) for s in shapes], n=10 + i)
            for i in range(n)]


def test_clip_bounds_the_norm_and_keeps_small_updates():
    for u in updates(8, scale=3.0):
        clipped, norm = dp.clip(u.delta, 0.7)
        assert norm > 0.7 and global_norm(clipped) <= 0.7 * (1 + 1e-6)
        assert [a.dtype for a in clipped] == [np.float32, np.float32]
    small = [np.full(4, 0.01, np.float32)]
    same, _ = dp.clip(small, 1.0)
    np.testing.assert_array_equal(same[0], small[0])


def test_without_noise_merge_is_the_mean_of_clipped_updates():
    fl = updates(5, scale=2.0)
    out = dp.ClientDP(noise=0.0, clip=0.5).merge(fl, [u.n for u in fl])
    want = np.mean([dp.clip(u.delta, 0.5)[0][0] for u in fl], axis=0)
    np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-7)


def test_noise_std_is_z_times_c_and_seeded():
    # zero updates: the merged value is pure noise / m; its std must be z C / m
    z, c, m = 1.3, 0.8, 4
    fl = [FLUpdate(f"d{i}", [np.zeros(20000, np.float32)], n=1) for i in range(m)]
    a = dp.ClientDP(noise=z, clip=c, expected_clients=m, seed=7).merge(fl, [1] * m)[0]
    std = a.astype(np.float64).std() * m
    # the sample std of 20000 normals is within 2 % of the truth with overwhelming probability
    assert std == pytest.approx(z * c, rel=0.02)
    assert abs(a.mean()) * m < 5 * z * c / math.sqrt(a.size)
    b = dp.ClientDP(noise=z, clip=c, expected_clients=m, seed=7).merge(fl, [1] * m)[0]
    np.testing.assert_array_equal(a, b)                 # same seed, same round: same bits
    other = dp.ClientDP(noise=z, clip=c, expected_clients=m, seed=8).merge(fl, [1] * m)[0]
    assert not np.array_equal(a, other)


def test_each_round_has_its_own_generator_and_state_resumes_it():
    fl = updates(3)
    one = dp.ClientDP(noise=1.0, clip=1.0, adaptive=True, expected_clients=3, seed=1)
    r1 = one.merge(fl, None)
    r2 = one.merge(fl, None)
    assert not np.array_equal(r1[0], r2[0])
    # a host restarted after round 1 ends round 2 with the same bits
    two = dp.ClientDP(noise=1.0, clip=1.0, adaptive=True, expected_clients=3, seed=1)
    two.merge(fl, None)
    meta, arrays = two.state()
    three = dp.ClientDP(noise=1.0, clip=1.0, adaptive=True, expected_clients=3, seed=1)
    three.load_state(meta, arrays)
    np.testing.assert_array_equal(three.merge(fl, None)[0], r2[0])
    assert three.rounds == {"d0": 2, "d1": 2, "d2": 2} and three.clip == one.clip


@pytest.mark.parametrize("z,q,steps", [(1.0, 0.5, 20), (0.8, 0.01, 1000), (2.0, 1.0, 30)])
def test_epsilon_matches_dp_accounting(z, q, steps):
    event = dp_accounting.GaussianDpEvent(z)
    if q < 1:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    want = rdp.RdpAccountant().compose(dp_accounting.SelfComposedDpEvent(event, steps)).get_epsilon(1e-5)
    assert dp.epsilon(z, steps, q, 1e-5) == pytest.approx(want, rel=1e-12)


def test_epsilon_decreases_with_noise_and_grows_with_rounds():
    eps = [dp.epsilon(z, 100, 0.1) for z in (0.5, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in itertools.pairwise(eps))
    assert dp.epsilon(1.0, 10, 0.1) < dp.epsilon(1.0, 100, 0.1)
    assert dp.epsilon(1.0, 100, 0.1) < dp.epsilon(1.0, 100, 1.0)     # sampling amplifies
    assert dp.epsilon(0.0, 5) == math.inf and dp.epsilon(1.0, 0) == 0.0
    # one Gaussian of multiplier z composed r times is one Gaussian of multiplier z / sqrt(r)
    assert dp.epsilon(2.0, 4) == pytest.approx(dp.epsilon(1.0, 1), rel=1e-6)


def test_run_and_device_epsilon():
    fl = updates(6)
    acc = dp.ClientDP(noise=1.1, clip=1.0, expected_clients=3, fleet_size=6)
    for r in range(4):
        picked = fl[:3] if r % 2 == 0 else fl[:2]
        acc.merge(picked, None)
    assert acc.rounds == {"d0": 4, "d1": 4, "d2": 2}
    assert acc.epsilon_run() == pytest.approx(dp.epsilon(1.1, 4, 0.5, 1e-5))
    assert acc.epsilon_device("d0") == pytest.approx(dp.epsilon(1.1, 4, 1.0, 1e-5))
    assert acc.epsilon_device("d2") < acc.epsilon_device("d0")
    assert acc.epsilon_device("never") == 0.0
    s = acc.summary()
    assert s["rounds"] == 4 and set(s["epsilon_device"]) == {"d0", "d1", "d2"}


def test_adaptive_clip_moves_to_the_target_quantile():
    # norms spread over [1, 10]: the median norm is ~5.5; start the clip far away on both sides
    rng = np.random.default_rng(3)
    for start in (0.1, 100.0):
        acc = dp.ClientDP(noise=0.5, clip=start, adaptive=True, expected_clients=50, quantile=0.5, seed=2)
        for r in range(200):
            norms = rng.uniform(1, 10, 50)
            fl = [FLUpdate(f"d{i}", [np.array([nm], np.float32)], n=1) for i, nm in enumerate(norms)]
            acc.merge(fl, None)
        assert 4.0 < acc.clip < 7.0, (start, acc.clip)
    # and it splits z between the bits and the update so the round still costs z
    zd = acc.update_noise(50)
    assert zd > 0.5 and (0.5 ** -2) == pytest.approx(zd ** -2 + (2 * acc.bit_std(50)) ** -2)


def test_adaptive_refuses_bit_noise_too_small_for_z():
    acc = dp.ClientDP(noise=5.0, clip=1.0, adaptive=True, expected_clients=20, bit_noise=1.0)   # 2 sigma_b < z
    with pytest.raises(ValueError, match="bit noise"):
        acc.merge(updates(3), None)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        dp.ClientDP(noise=-1)
    with pytest.raises(ValueError):
        dp.ClientDP(clip=0)
    with pytest.raises(ValueError):
        dp.epsilon(1.0, 10, q=0)
