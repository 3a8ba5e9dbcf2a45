"""What the SemiFL seed's simulation has and ours adds, as settings its reproduction turns off or on:
MCU batteries (`sim.mcu_battery_j`; the seed's devices never run flat) and the host's own model pruned
like its FL clients' copy (`federated.prune_global`)."""
import numpy as np

from semifl.app.inprocess import run_inprocess
from semifl.config import RunConfig
from semifl.experiments.baselines import BASELINES, SEED_LR
from semifl.learn import mlp


def test_mcus_on_a_small_battery_run_flat_and_mains_powered_ones_do_not(fashion):
    base = dict(BASELINES["semifl-ideal"], rounds=6, lr=SEED_LR, fl_devices=1, cl_devices=2, fl_uploaders=1,
                cl_uploaders=2, cl_fraction=0.3, int8_every=0)
    # 1,800 samples of 785 bytes a round at 1 uJ a byte: ~1.4 J, so 5 J runs flat (under 5 %) by round 4
    small, mains = [], []
    run_inprocess(RunConfig.make(**{**base, "mcu_battery_j": 5.0}), fashion, on_round=small.append)
    run_inprocess(RunConfig.make(**{**base, "mcu_battery_j": 0.0}), fashion, on_round=mains.append)
    assert small[0]["participants"]["cl"] == ["mcu-01", "mcu-02"]
    assert small[-1]["participants"]["cl"] == [] and small[-1]["idle"] == {"mcu-01": "battery", "mcu-02": "battery"}
    assert all(m["participants"]["cl"] == ["mcu-01", "mcu-02"] for m in mains)


def test_a_pruned_host_model_holds_zeros_where_its_clients_copy_does(fashion):
    cfg = RunConfig.make(**dict(BASELINES["fl"], rounds=1, lr=SEED_LR, int8_every=0))
    init = mlp.init_params(seed=0)
    masks = mlp.prune_mask(init, cfg.federated.prune)
    plain = run_inprocess(cfg, fashion, init=[p.copy() for p in init]).params
    pruned = run_inprocess(cfg.replace(prune_global=True), fashion, init=[p.copy() for p in init]).params
    for p0, keep, a, b in zip(init, masks, plain, pruned):
        # FedAvg's clients never move a pruned entry: the plain host keeps its value, the pruned host zero
        np.testing.assert_array_equal(a[~keep], p0[~keep])
        assert not b[~keep].any()
        np.testing.assert_array_equal(a[keep], b[keep])
    assert sum(int((~k).sum()) for k in masks) == int(np.ceil(0.3 * sum(p.size for p in init)))


def test_semifl_plus_takes_its_server_step_and_the_hosts_pruning_from_the_settings(fashion):
    cfg = RunConfig.make(**dict(BASELINES["semifl+"], rounds=1, lr=SEED_LR, int8_every=0))
    s = run_inprocess(cfg, fashion).strategy
    assert (s.server_lr, s.beta2) == (0.003, 0.999)
    assert s.prune == 0.0   # the host prunes its own model: its step needs no mask
    shipped = run_inprocess(RunConfig.make(strategy="semifl+", rounds=1, lr=SEED_LR, int8_every=0), fashion).strategy
    assert (shipped.server_lr, shipped.beta2, shipped.prune) == (0.005, 0.99, 0.3)
