"""The seed's Section V-F allocation for the IoTSL reproduction: device i holds classes 2i..2i+k-1
(mod 10), `block` distinct images of each, no image on two devices."""
import numpy as np
import pytest

from semifl.experiments.iotsl import allocate


@pytest.mark.parametrize("k", [2, 4, 6, 8])
def test_blocks_of_distinct_images(k):
    y = np.repeat(np.arange(10), 50)
    alloc = allocate(y, k, block=12, seed=3)
    assert list(alloc) == ["D1", "D2", "D3", "D4", "D5"]
    seen = np.concatenate(list(alloc.values()))
    assert len(seen) == len(set(seen.tolist())) == 5 * k * 12        # nobody shares an image
    for i, idx in enumerate(alloc.values()):
        classes, counts = np.unique(y[idx], return_counts=True)
        assert sorted(classes.tolist()) == sorted({(2 * i + j) % 10 for j in range(k)})
        assert set(counts.tolist()) == {12}
    if k == 2:   # the extreme non-IID case: no class on two devices
        assert len({c for idx in alloc.values() for c in set(y[idx].tolist())}) == 10


def test_a_class_too_small_for_its_blocks_is_refused():
    y = np.repeat(np.arange(10), 20)
    with pytest.raises(ValueError, match="a block needs 12"):
        allocate(y, 8, block=12)    # k = 8: each class in 4 devices, 48 images needed, 20 there
