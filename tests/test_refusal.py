"""A model a device cannot run is refused before any work, said, logged and counted, and nothing
else is lost: an int8 graph with an op the node's runtime lacks, or more working memory than it has
free; an FL task whose training would not fit the device's RAM."""
import numpy as np

from semifl.config import RunConfig
from semifl.fleet.planner import PlannerConfig, cannot_run, plan_round
from semifl.learn import int8, mlp
from semifl.app import run as experiment


def test_cannot_run_names_the_missing_ops_and_the_memory():
    caps = {"ops": ["FULLY_CONNECTED", "TANH"], "ram": 50_000}
    assert cannot_run(caps, ["FULLY_CONNECTED", "TANH"], 40_000) is None
    reason, detail = cannot_run(caps, ["FULLY_CONNECTED", "LOGISTIC", "CONV_2D"], 1)
    assert reason == "model_ops" and "CONV_2D, LOGISTIC" in detail
    reason, detail = cannot_run(caps, ["TANH"], 60_000)
    assert reason == "arena" and "60,000" in detail and "50,000" in detail
    assert cannot_run({"ops": ["*"], "ram": 1 << 30}, ["CONV_2D"], 10) is None
    assert cannot_run({"ram": 1 << 30}, ["CONV_2D"], 10) is None   # no ops reported: a full runtime


def test_int8_model_states_its_ops_and_working_memory():
    params = mlp.init_params()
    m = int8.quantize(params, np.random.default_rng(0).random((64, 784), dtype=np.float32))
    assert m.ops() == ["FULLY_CONNECTED", "TANH"] * 3 + ["FULLY_CONNECTED"]
    assert m.working_bytes() == 2 * 784 + 50 + 12 * 50 + 256   # the first layer is the largest


def test_planner_refuses_training_that_does_not_fit_and_falls_back():
    caps = lambda ram, raw_ok: {"class": "pi", "cpu_score": 100, "ram": ram, "raw_ok": raw_ok, "n_samples": 100}
    devices = {"big": caps(1 << 30, False), "small": caps(16 << 20, False), "small-raw": caps(16 << 20, True)}
    plan = plan_round(1, devices, PlannerConfig(), train_bytes=lambda c: 20 << 20)
    assert plan.fl == ["big"] and set(plan.refused) == {"small", "small-raw"}
    assert plan.refused["small"].startswith("arena: the model needs 20,971,520 bytes")
    assert plan.idle["small"] == "model does not fit to train"
    assert plan.cl == ["small-raw"]   # it may not train, but its policy lets it upload samples
    assert plan_round(1, devices, PlannerConfig()).fl == ["big", "small", "small-raw"]


def test_refused_over_mqtt_and_the_rest_of_the_round_goes_on(tmp_path, fashion, embedded, monkeypatch):
    fleet_for = experiment.fleet_for

    def fleet(cfg, ds):
        specs = fleet_for(cfg, ds)
        mcus = [s for s in specs if s.device_class == "mcu"]
        mcus[0].config["ops"] = ["FULLY_CONNECTED", "LOGISTIC"]   # an older kernel: no TANH
        mcus[1].config["ram"] = 2_000                                # too little heap for the tanh MLP
        return specs

    monkeypatch.setattr(experiment, "fleet_for", fleet)
    # full-batch training on all 6,000 samples needs ~24 MB: the 16 MB Pis are refused the task
    cfg = RunConfig.make(rounds=3, fl_devices=2, cl_devices=3, fl_uploaders=2, cl_uploaders=3, fl_fraction=1.0,
                    pi_ram="4e9,16e6", int8_every=1, out=str(tmp_path / "run"), broker=embedded, plot=False)
    summary = experiment.run_experiment(cfg, ds=fashion)
    for r in summary["rounds"]:
        refused = r["refused"]
        assert refused["mcu-02"].startswith("model_ops: its runtime lacks TANH")
        assert refused["mcu-03"].startswith("arena: the model needs")
        assert refused["pi-01"].startswith("arena:") and "pi-01" not in r["participants"]["fl"]
        assert r["participants"]["fl"] == ["pi-00"]
        assert r["rejected"] == {} and r["device_errors"] == {}
    # evals arrive asynchronously (a round later): only the device that could run the model ran it; the
    # others got the broadcast too and refused it on arrival themselves, keeping the model they had
    assert set().union(*(r["device_evals"] for r in summary["rounds"])) == {"mcu-04"}
    refused = {}
    for r in summary["rounds"]:
        refused.update(r["device_refused"])
    assert refused == {"mcu-02": "model_ops", "mcu-03": "arena"}
    assert summary["refused"] == {"model_ops": 3, "arena": 6}
    assert summary["final_accuracy"] > 0.1
