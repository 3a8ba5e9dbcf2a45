"""The fresh-samples rule (docs/protocol.md §5): where the host keeps every CL sample it is sent (semifl+),
a CL uploader sends only those it does not hold yet. The model is the same bit for bit, the uplink smaller;
the host's record of what it holds survives its restart. The node's side under MicroPython:
tests/test_mcu_node.py."""
import numpy as np
import pytest

from semifl.app.inprocess import run_inprocess
from semifl.config import RunConfig
from semifl.service.store import Store


def run(fashion, rounds=8, **kw):
    mcu_up = []
    cfg = RunConfig.make(strategy="semifl+", rounds=rounds, int8_every=0, cl_uploaders=4, **kw)
    r = run_inprocess(cfg, fashion, on_round=lambda m: mcu_up.append(m["bytes_by_class"]["mcu"][0]))
    return r.params, mcu_up


def test_cl_uploaders_send_only_new_samples_and_the_model_is_the_same(fashion):
    p_all, up_all = run(fashion, fresh_samples=False)
    p_new, up_new = run(fashion)
    for a, b in zip(p_all, p_new):
        assert np.array_equal(a, b)   # the host's memory holds the same samples in the same order
    assert abs(up_new[0] - up_all[0]) < 1000   # round 1: nothing held yet (statuses carry timings)
    # every later round: only what the 4 MCUs' selections add (each selects 30 % of its 6,000)
    assert all(n < a for n, a in zip(up_new[1:], up_all[1:]))
    assert sum(up_new) < 0.5 * sum(up_all)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_uploader_with_nothing_new_sends_an_empty_batch(fashion, mode):
    """S = 1: from its second upload on an MCU's every sample is held; it says so with n = 0, which the
    host takes (a round waits for every tasked uploader). Buffered (async) rounds keep the rule too."""
    rounds = 3 if mode == "sync" else 6   # async: CL uploads every other version
    p_all, up_all = run(fashion, rounds=rounds, fresh_samples=False, cl_fraction=1.0, mode=mode)
    p_new, up_new = run(fashion, rounds=rounds, cl_fraction=1.0, mode=mode)
    for a, b in zip(p_all, p_new):
        assert np.array_equal(a, b)
    assert up_new[0] > 4 * 6000 * 784 and max(up_new[1:]) < 10_000 < max(up_all[1:])


def test_only_a_host_that_keeps_the_samples_asks_for_fresh_ones(fashion):
    for strategy, fresh in (("semifl", False), ("semifl+", True)):
        r = run_inprocess(RunConfig.make(strategy=strategy, rounds=1, int8_every=0), fashion)
        task = r.cl_task(2, "mcu-06")
        assert ("fresh" in task) == fresh and (not fresh or task["got"] == 1 and task["fresh"] == r.fresh > 0)


def test_what_the_host_holds_is_read_back_from_its_store(tmp_path):
    store = Store(str(tmp_path / "state.db"))
    store.accept(3, "mcu-06", "samples", 5, b"x")
    store.accept(4, "mcu-06", "update", 5, b"x")
    store.accept(5, "mcu-07", "samples", 5, b"x")
    store.accept(7, "mcu-07", "late_samples", 5, b"x")   # round 6's, taken in round 7
    store.accept(7, "mcu-08", "late_samples", 5, b"x")
    store.accept(9, "mcu-09", "samples/8", 5, b"x")        # an async run's: version 8's, taken at version 9
    store.close()
    assert Store(str(tmp_path / "state.db")).last_samples_rounds() == {"mcu-06": 3, "mcu-07": 6, "mcu-08": 6,
                                                                       "mcu-09": 8}
