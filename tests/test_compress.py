"""Compressed local models (seed 001): the host's derivation of each device's copy, the encodings of
their deltas and the mask-aware merge, against values worked out by hand."""
import numpy as np
import pytest

from semifl.learn import compress
from semifl.learn.compress import Compression


def test_masked_average_by_hand():
    # two devices, one 2x2 tensor; device a pruned entry (0,1), device b pruned (1,1)
    a = [np.array([[1.0, 0.0], [3.0, 4.0]], np.float32)]
    b = [np.array([[3.0, 6.0], [5.0, 0.0]], np.float32)]
    ma = [np.array([[1, 0], [1, 1]], bool)]
    mb = [np.array([[1, 1], [1, 0]], bool)]
    out = compress.masked_average([a, b], [ma, mb], [1.0, 3.0])[0]
    # (0,0): (1*1 + 3*3)/4 = 2.5; (0,1): only b -> 6; (1,0): (3 + 15)/4 = 4.5; (1,1): only a -> 4
    np.testing.assert_allclose(out, [[2.5, 6.0], [4.5, 4.0]])
    # plain weighted mean would have pulled (0,1) to 4.5 and (1,1) to 1: the zeros of a pruned copy
    both_pruned = compress.masked_average([a, b], [ma, [np.array([[1, 0], [1, 1]], bool)]], [1.0, 1.0])[0]
    assert both_pruned[0, 1] == 0.0   # nobody kept it: no change


def test_without_masks_it_is_the_weighted_mean():
    rng = np.random.default_rng(0)
    ds = [[rng.normal(size=(3, 2)).astype(np.float32)] for _ in range(3)]
    w = [1.0, 2.0, 5.0]
    want = sum(wi * d[0] for wi, d in zip(w, ds)) / sum(w)
    np.testing.assert_allclose(compress.masked_average(ds, [None] * 3, w)[0], want, rtol=1e-6)


def test_int8_and_fp16_deltas_round_trip_within_their_step():
    d = [np.array([0.5, -0.25, 0.01, 0.0], np.float32)]
    (q, scale), = compress.encode_delta(d, "int8")
    assert q.dtype == np.int8 and q.tolist() == [127, -64, 3, 0] and scale == pytest.approx(0.5 / 127)
    back = compress.decode_delta([(q, scale)], [(4,)])[0]
    assert np.abs(back - d[0]).max() <= scale / 2 + 1e-9
    (h, _), = compress.encode_delta(d, "float16")
    assert h.dtype == np.float16
    with pytest.raises(ValueError, match="expected"):
        compress.decode_delta([(q, scale)], [(5,)])   # a mismatched update is refused, not merged


def test_local_model_prunes_clusters_and_rounds():
    w = [np.array([[0.1, -0.9], [0.5, 0.02]], np.float32), np.array([0.3, -0.01], np.float32)]
    local, masks = compress.local_model(w, Compression(prune=0.5))
    # the 3 smallest |w| of 6 (ceil(0.5*6) = 3): 0.02, -0.01, 0.1
    assert local[0].tolist() == [[0.0, pytest.approx(-0.9)], [pytest.approx(0.5), 0.0]] and local[1][1] == 0
    assert masks[0].tolist() == [[False, True], [True, False]]
    c, _ = compress.local_model([np.array([0.0, 0.1, 0.9, 1.0], np.float32)], Compression(clusters=2))
    np.testing.assert_allclose(c[0], [0.05, 0.05, 0.95, 0.95], rtol=1e-6)
    h, none = compress.local_model([np.array([1 / 3], np.float32)], Compression(dtype="float16"))
    assert none is None and h[0][0] == np.float32(np.float16(1 / 3))


def test_policy_from_capabilities():
    mb = 200_000
    assert compress.for_device({"ram": 4 << 30}, mb) == Compression()
    assert compress.for_device({"ram": 64 << 20}, mb) == Compression(prune=0.3, dtype="float16")
    assert compress.for_device({"ram": 16 << 20}, mb) == Compression(prune=0.6, dtype="int8")
    assert compress.for_device({"ram": 64 << 20}, 40 << 20) == Compression(prune=0.6, dtype="int8")   # a 10x bigger model
    with pytest.raises(ValueError):
        Compression(dtype="int4")
