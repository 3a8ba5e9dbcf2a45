"""SecAgg+ (learn/secagg.py): the host sees only masked vectors and the sum, dropouts, tampering, Shamir."""
import itertools
import json

import numpy as np
import pytest
from semifl.learn import secagg as sa


def through_masked(server, clients, xs):
    """Stages setup, keys and shares, and every client's masked input (xs[i - 1] for client i)."""
    for i, m in server.setup().items():
        server.receive_keys(clients[i].setup(m))
    for i, m in server.keys_out().items():
        server.receive_shares(clients[i].share_keys(m))
    for i, m in server.shares_out().items():
        server.receive_masked(i, clients[i].masked_input(m, xs[i - 1]))


def inputs(n, dim=500, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-scale, scale, dim) for _ in range(n)]


# --- Shamir ----------------------------------------------------------------------------------------
def test_shamir_textbook_vector():
    # Wikipedia's "Shamir's secret sharing" example: p = 1613, f(x) = 1234 + 166 x + 94 x^2
    shares = sa.shamir_split(1234, [1, 2, 3, 4, 5, 6], 3, prime=1613, coeffs=[166, 94])
    assert shares == [(1, 1494), (2, 329), (3, 965), (4, 176), (5, 1188), (6, 775)]
    for sub in itertools.combinations(shares, 3):
        assert sa.shamir_combine(list(sub), prime=1613) == 1234
    assert sa.shamir_combine([(2, 1942 % 1613), (4, 3402 % 1613), (5, 4414 % 1613)], prime=1613) == 1234


def test_shamir_threshold_properties():
    secret = int.from_bytes(bytes(range(32)), "big")
    shares = sa.shamir_split(secret, list(range(1, 8)), 4)
    for sub in itertools.combinations(shares, 4):          # any t reconstruct
        assert sa.shamir_combine(list(sub)) == secret
    assert sa.shamir_combine(shares) == secret              # more than t too
    for sub in itertools.combinations(shares, 3):           # t - 1 do not
        assert sa.shamir_combine(list(sub)) != secret
    # and t - 1 shares say nothing about the secret: over all coefficients, the pair of shares (x = 1, 2)
    # of a degree-2 polynomial is uniform on GF(31)^2 whatever the secret
    for secret in (0, 7, 30):
        pairs = [tuple(y for _, y in sa.shamir_split(secret, [1, 2, 3], 3, prime=31, coeffs=[a, b])[:2])
                 for a in range(31) for b in range(31)]
        assert len(set(pairs)) == 31 * 31
    with pytest.raises(ValueError):
        sa.shamir_split(5, [1, 2], 3)
    with pytest.raises(ValueError):
        sa.shamir_split(5, [1, 1, 2], 2)


# --- the sum ---------------------------------------------------------------------------------------
def test_sum_equals_the_plain_sum_up_to_the_bound():
    xs = inputs(10)
    r = sa.secure_sum(xs, clip=1.0)
    err = np.abs(r["sum"] - np.sum(xs, axis=0)).max()
    assert err <= sa.error_bound(1.0, 10) and r["survivors"] == list(range(1, 11))
    # the secure sum is exact in the field: fresh keys and masks give the same bits
    again = sa.secure_sum(xs, clip=1.0)
    np.testing.assert_array_equal(again["sum"], r["sum"])
    assert again["server"].sum.tobytes() == r["server"].sum.tobytes()


def test_inputs_beyond_the_range_are_clipped_not_wrapped():
    xs = [np.full(50, 3.0), np.full(50, -3.0), np.full(50, 0.25)]
    r = sa.secure_sum(xs, clip=0.5)
    np.testing.assert_allclose(r["sum"], 0.5 - 0.5 + 0.25, atol=sa.error_bound(0.5, 3))


def test_a_third_dropping_mid_round_yields_the_survivors_sum():
    xs = inputs(9, seed=1)
    # 2 go silent after sharing (their pairwise masks are rebuilt), 1 after its masked input (its self mask is)
    r = sa.secure_sum(xs, clip=1.0, drop_before={2, 7}, drop_after={5})
    assert r["survivors"] == [1, 3, 4, 5, 6, 8, 9]
    want = np.sum([x for i, x in enumerate(xs, 1) if i not in (2, 7)], axis=0)
    assert np.abs(r["sum"] - want).max() <= sa.error_bound(1.0, 9)


def test_k_regular_graph_with_a_third_dropping():
    n, k = 36, 16
    g = sa.neighbours(n, k, seed=3)
    assert all(len(v) == k and all(i in g[j] for j in v) for i, v in g.items())   # k-regular, symmetric
    assert sa.neighbours(n, k, seed=3) == g and sa.neighbours(n, k, seed=4) != g
    xs = inputs(n, dim=64, seed=2)
    # 12 = n / 3 drop, spread so that every neighbourhood keeps t = 9 of its 17 holders (on a k-regular
    # graph that holds for random dropouts only with high probability: choose_k sizes k for it)
    t = sa.threshold(k)
    for s in range(100):
        dropped = [int(i) for i in np.random.default_rng(s).choice(np.arange(1, n + 1), 12, replace=False)]
        if all(len((set(g[i]) | {i}) - set(dropped)) >= t for i in g):
            break
    r = sa.secure_sum(xs, clip=1.0, k=k, seed=3, drop_before=set(dropped[:6]), drop_after=set(dropped[6:]))
    want = np.sum([x for i, x in enumerate(xs, 1) if i not in dropped[:6]], axis=0)
    assert np.abs(r["sum"] - want).max() <= sa.error_bound(1.0, n)
    # each client sent shares to its k neighbours only
    assert max(len(v) for v in r["server"].ct.values()) == k


def test_too_many_dropouts_fail_cleanly():
    xs = inputs(9, dim=20)
    with pytest.raises(sa.SecAggError, match="too_many_dropouts: 4 masked inputs < t = 5"):
        sa.secure_sum(xs, clip=1.0, drop_before={1, 2, 3, 4, 5})
    with pytest.raises(sa.SecAggError, match="too_many_dropouts") as e:
        sa.secure_sum(xs, clip=1.0, drop_after={1, 2, 3, 4, 5})
    assert e.value.reason == "too_many_dropouts"
    with pytest.raises(sa.SecAggError, match="too_few_clients"):
        sa.SecAggServer(2, 10, 1.0)


# --- what the host sees ----------------------------------------------------------------------------
def test_the_hosts_view_holds_no_individual_update():
    dim = 4096
    xs = [np.zeros(dim), np.linspace(-1, 1, dim), np.full(dim, 0.9)] + inputs(5, dim, seed=4, scale=1.0)
    seen = {}

    def spy(stage, msgs):
        seen[stage] = json.loads(json.dumps(msgs))    # every host -> client message is JSON text

    server = sa.SecAggServer(len(xs), dim, 1.0)
    clients = {i: sa.SecAggClient() for i in server.graph}
    through_masked(server, clients, xs)
    stored = dict(server.masked)
    plain = {i: sa.quantize(x, 1.0, server.range) for i, x in enumerate(xs, 1)}
    # what the server holds: public keys, commitments, ciphertexts and the masked vectors, nothing else
    arrays = [v for v in vars(server).values() if isinstance(v, np.ndarray)]
    assert arrays == [] and set(stored) == set(plain)
    for i, y in stored.items():
        q = plain[i].astype(np.float64)
        assert not np.array_equal(y, plain[i])
        # the masked vector is uniform on [0, 2^32) whatever the input (even all zeros or a ramp):
        # chi-square of its top 4 bits against uniform, 15 degrees of freedom, p < 1e-4 at 45
        counts = np.bincount(y >> 28, minlength=16)
        chi2 = ((counts - dim / 16) ** 2 / (dim / 16)).sum()
        assert chi2 < 45, (i, chi2)
        if q.std() > 0:                 # and uncorrelated with it (|r| < 5 / sqrt(dim))
            assert abs(np.corrcoef(y.astype(np.float64), q)[0, 1]) < 5 / np.sqrt(dim)
        # not even the difference of two masked vectors gives the difference of the inputs
        if i > 1:
            d = (y - stored[1]).astype(np.int64)
            assert not np.array_equal(d, plain[i].astype(np.int64) - plain[1].astype(np.int64))
    for i, m in server.unmask_out().items():
        server.receive_unmask(clients[i].unmask(m))
    total, _ = server.aggregate()
    assert np.abs(total - np.sum(xs, axis=0)).max() <= sa.error_bound(1.0, len(xs))
    assert server.masked == {}          # dropped once the sum is out


def test_an_honest_client_never_reveals_both_shares_of_one_client():
    xs = inputs(5, dim=10)

    def both(stage, msgs):
        if stage == "unmask_out":
            for m in msgs.values():
                m["dropped"] = [j for j in m["survivors"] if j != 1]   # ask for sk1 of survivors too
    with pytest.raises(sa.SecAggError, match="bad_unmask"):
        sa.secure_sum(xs, clip=1.0, tamper=both)


# --- tampering -------------------------------------------------------------------------------------
def flip(s: str, at: int = 20) -> str:
    raw = bytearray(sa.unb64(s, "x"))
    raw[at] ^= 1
    return sa.b64(bytes(raw))


def test_a_tampered_ciphertext_is_detected():
    def tamper(stage, msgs):
        if stage == "shares_out":
            ct = msgs[3]["ct"]
            ct["1"] = flip(ct["1"])
    with pytest.raises(sa.SecAggError, match="bad_ciphertext: shares from 1 fail authentication"):
        sa.secure_sum(inputs(5, dim=10), clip=1.0, tamper=tamper)

    def swap(stage, msgs):                  # the host re-routes 2's ciphertext for 3 to 4
        if stage == "shares_out":
            msgs[4]["ct"]["2"] = msgs[3]["ct"]["2"]
    with pytest.raises(sa.SecAggError, match="bad_ciphertext"):
        sa.secure_sum(inputs(5, dim=10), clip=1.0, tamper=swap)


def test_repeated_public_keys_are_refused():
    def dup(stage, msgs):
        if stage == "keys_out":
            m = msgs[1]["keys"]
            m["3"] = m["2"]
    with pytest.raises(sa.SecAggError, match="bad_keys"):
        sa.secure_sum(inputs(5, dim=10), clip=1.0, tamper=dup)


def run_with_bad_shares(n_bad):
    xs = inputs(10, dim=30)
    server = sa.SecAggServer(10, 30, 1.0)
    clients = {i: sa.SecAggClient() for i in server.graph}
    through_masked(server, clients, xs)
    for i, m in server.unmask_out().items():
        r = clients[i].unmask(m)
        if i <= n_bad:                      # clients 1..n_bad lie about their share of 7's self-mask seed
            r["b"]["7"] = sa.b64(np.random.default_rng(i).bytes(sa.SHARE_BYTES - 1).rjust(sa.SHARE_BYTES, b"\0"))
        server.receive_unmask(r)
    return server.aggregate()[0], xs


def test_tampered_shares_are_detected_and_outvoted_when_enough_are_honest():
    total, xs = run_with_bad_shares(1)      # 9 honest shares, t = 6: another subset rebuilds the commitment
    assert np.abs(total - np.sum(xs, axis=0)).max() <= sa.error_bound(1.0, 10)
    with pytest.raises(sa.SecAggError, match="bad_share: the shares of client 7's b"):
        run_with_bad_shares(5)              # every 6-subset holds a bad share


def test_messages_out_of_stage_or_malformed_are_refused():
    server = sa.SecAggServer(4, 8, 1.0)
    c = sa.SecAggClient()
    with pytest.raises(sa.SecAggError, match="bad_stage"):
        c.share_keys({"stage": "keys_out", "keys": {}})
    setup = server.setup()
    bad = dict(setup[1], range=2 ** 32)
    with pytest.raises(sa.SecAggError, match="malformed"):
        sa.SecAggClient().setup(bad)
    keys = c.setup(setup[1])
    with pytest.raises(sa.SecAggError, match="malformed"):
        server.receive_keys(dict(keys, pk1="not base64!"))
    with pytest.raises(sa.SecAggError, match="malformed"):
        server.receive_keys(dict(keys, idx=99))
    server.receive_keys(keys)
    with pytest.raises(sa.SecAggError, match="bad_stage"):
        server.receive_masked(1, np.zeros(8, np.uint32))      # no shares from 1 yet


def test_choose_k_and_threshold():
    assert sa.choose_k(10) == 9 and sa.threshold(9) == 6      # complete graph, survives 4 dropouts
    for n in (3, 4, 9, 30):
        k = sa.choose_k(n)
        assert n - sa.threshold(k) >= n // 3                    # tolerates a third on the complete graph
    k = sa.choose_k(1000)
    assert k < 999 and k % 2 == 0 and 1000 * sa._binom_tail_below(k + 1, 2 / 3, sa.threshold(k)) <= 1e-6


# --- with FedAvg and client DP -------------------------------------------------------------------------
def fl_updates(n, seed=0):
    from semifl.learn.strategy import FLUpdate
    rng = np.random.default_rng(seed)
    return [FLUpdate(f"d{i}", [rng.normal(0, 0.05, (30, 4)).astype(np.float32),
                               rng.normal(0, 0.05, 4).astype(np.float32)], n=20 + 7 * i) for i in range(n)]


def test_secure_fedavg_is_plain_fedavg_up_to_the_bound():
    from semifl.learn.strategy import average_fl
    fl = fl_updates(6)
    cap = max(u.n for u in fl)
    r = sa.secure_sum([sa.pack(u.delta, u.n / cap, 1.0) for u in fl], clip=1.0)
    parts, w, _ = sa.unpack(r["sum"], [a.shape for a in fl[0].delta], 1.0)
    secure = [p / w for p in parts]
    plain = average_fl(fl, [u.n for u in fl])
    bound = sa.error_bound(1.0, 6) * (1 + 1 / w) / w      # numerator and weight sum both carry the error
    for a, b in zip(secure, plain):
        assert np.abs(a - b).max() <= bound + 1e-7       # + float32 rounding of the plain mean


def test_client_dp_on_the_secure_sum_is_client_dp_on_the_plain_updates():
    from semifl.learn import dp
    fl = fl_updates(5, seed=1)
    c = 0.2
    # devices clip and report their clip bit inside the masked input; the host noises the sum
    packed = []
    for u in fl:
        clipped, norm = dp.clip(u.delta, c)
        packed.append(sa.pack(clipped, 1.0, 1.0, bit=float(norm <= c)))
    r = sa.secure_sum(packed, clip=1.0)
    parts, w, bits = sa.unpack(r["sum"], [a.shape for a in fl[0].delta], 1.0, bit=True)
    assert round(w) == 5 and round(bits) == sum(dp.clip(u.delta, c)[1] <= c for u in fl)
    secure = dp.ClientDP(noise=1.0, clip=c, adaptive=True, expected_clients=5, seed=3)
    out = secure.release(parts, 5, round(bits))
    plain = dp.ClientDP(noise=1.0, clip=c, adaptive=True, expected_clients=5, seed=3)
    want = plain.merge(fl, None)
    for a, b in zip(out, want):
        assert np.abs(a - b).max() <= sa.error_bound(1.0, 5) / 5 + 1e-6
    assert secure.clip == plain.clip
