"""The seed's baselines run the service's code path: a few rounds of each in-process and over MQTT with
the same seed end in the same global model, and the reproduction writes its output contract."""
import json

import numpy as np
import pytest

from semifl.config import RunConfig
from semifl.experiments.baselines import BASELINES, SEED_LR
from semifl.app.inprocess import run_inprocess
from semifl.app.run import run_experiment
from semifl.experiments.reproduce import reproduce


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_same_model_in_process_and_over_mqtt(name, tmp_path, fashion, embedded):
    cfg = RunConfig.make(**{**BASELINES[name], "rounds": 2, "lr": SEED_LR, "seed": 5, "out": str(tmp_path / name),
                       "broker": embedded, "plot": False})
    summary = run_experiment(cfg, ds=fashion)
    over_mqtt = np.load(tmp_path / name / "final_model.npz")
    hist = []
    in_process = run_inprocess(cfg, fashion, on_round=hist.append).params
    for i, p in enumerate(in_process):
        assert np.array_equal(over_mqtt[f"arr_{i}"], p), f"{name}: tensor {i} differs"
    for r_mqtt, r_local in zip(summary["rounds"], hist):
        assert r_mqtt["participants"]["fl"] == r_local["participants"]["fl"]
        assert r_mqtt["participants"]["cl"] == sorted(r_local["participants"]["cl"])
        # the same messages crossed both brokers: only the devices' timings in their statuses and the run's
        # random id in the announcement and the task nonces differ in length, by a few digits a message
        assert abs(r_mqtt["bytes_up"] - r_local["bytes_up"]) <= 10 * 20
        assert abs(r_mqtt["bytes_down"] - r_local["bytes_down"]) <= 10 * 20


def test_reproduce_writes_the_output_contract(tmp_path, fashion):
    reproduce(fashion, 3, tmp_path, ["fl", "semifl"])
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["dataset"] == "fashion-mnist" and res["rounds"] == 3
    for name in ("fl", "semifl"):
        c = res["baselines"][name]
        assert all(len(c[k]) == 3 for k in ("accuracy", "loss", "bytes_up", "bytes_down"))
    # FL sends 6 updates of 49,910 float32 per round; SemiFL 3 updates + 2 x 1,800 raw samples
    assert res["baselines"]["fl"]["bytes_up"][0] == pytest.approx(6 * 49_910 * 4, rel=0.01)
    assert res["baselines"]["semifl"]["bytes_up"][0] == pytest.approx(3 * 49_910 * 4 + 2 * 1800 * 785, rel=0.01)
    assert "| semifl |" in (tmp_path / "table.md").read_text()
    # per-class accuracy of the final model agrees with its overall accuracy (1,000 test images a class)
    for name in ("fl", "semifl"):
        c = res["baselines"][name]
        assert len(c["per_class_accuracy"]) == 10
        assert np.mean(c["per_class_accuracy"]) == pytest.approx(c["accuracy"][-1], abs=1e-4)
        pm = c["pruned_model"]   # both prune at 0.3: the copy the FL clients train on is evaluated too
        assert np.mean(pm["per_class_accuracy"]) == pytest.approx(pm["accuracy"], abs=1e-4)
    # a later run of another baseline with the same setup adds to the results instead of dropping them
    reproduce(fashion, 3, tmp_path, ["semifl-ideal"])
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["baselines"]) == {"fl", "semifl", "semifl-ideal"}
    assert "pruned_model" not in res["baselines"]["semifl-ideal"]   # P = 0
    # another step size is another setup: its results do not mix with these
    reproduce(fashion, 3, tmp_path, ["fl"], lr=0.1)
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["baselines"]) == {"fl"} and res["lr"] == 0.1 and res["baselines"]["fl"]["config"]["lr"] == 0.1
    assert (tmp_path / "accuracy.png").stat().st_size > 10_000
