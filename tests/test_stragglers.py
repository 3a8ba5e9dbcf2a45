"""Rounds that do not wait for the slowest (docs/protocol.md §5c), on the virtual fleet over a real
broker with simulated stragglers (every third Pi 8x slower in compute and link) and a device that
answers every announcement and never does its task: no round waits on the silent device past its
deadline, late work is counted, not rejected, and buffered rounds merge every B updates."""
import json

from semifl.app.run import run_experiment
from semifl.config import RunConfig

STRAGGLERS = dict(fl_devices=6, cl_devices=2, pi_train_s=0.3, pi_slowdown=[1, 1, 8], silent=["pi-00"], int8_every=0,
                  plot=False, ready_timeout_s=10.0, collect_timeout_s=15.0)


def test_quorum_and_deadline_close_rounds_without_the_slow_and_the_silent(tmp_path, fashion, mosquitto):
    cfg = RunConfig.make(rounds=4, fl_uploaders=2, over_select=2.0, quorum=2, deadline_s=1.0, out=str(tmp_path / "q"),
                         broker=mosquitto, **STRAGGLERS)
    s = run_experiment(cfg, ds=fashion)
    assert len(s["rounds"]) == 4 and s["rejected"] == {}
    assert "pi-00" in s["rounds"][0]["tasked"]   # in round 1 nobody is busy: the silent device is tasked
    for m in s["rounds"]:
        # a round with a tasked client that never reported went on at its deadline with its quorum: neither
        # the silent pi-00 nor a straggler held it. (A device still busy with an earlier task is not waited
        # for at the announcement, so whether the silent one is tasked again is a race: a round that tasked
        # only clients which all reported closes as soon as they have.)
        if set(m["tasked"]) - set(m["trained"]):
            assert 1.0 <= m["phases_s"]["train"] < 1.0 + 1.5, m["phases_s"]
        else:
            assert m["phases_s"]["train"] < 1.0 + 1.5, m["phases_s"]
        assert len(m["participants"]["fl"]) == 2 and "pi-00" not in m["trained"]
        assert not {"pi-02", "pi-05"} & set(m["trained"])   # 8 x 0.3 s of training: never in time
        assert len(m["participants"]["cl"]) == 2
    # the stragglers' reports came after their rounds had moved on: counted as late, not rejected
    assert s["late"].get("trained", 0) >= 1
    assert s["final_accuracy"] > 0.2


def test_buffered_rounds_merge_every_b_updates_and_never_wait_for_the_silent_device(tmp_path, fashion, mosquitto):
    # the silent device's task is given up on after 2.5 s; a straggler (3 x 0.3 s) delivers stale updates
    cfg = RunConfig.make(rounds=12, mode="async", buffer=3, max_staleness=20, out=str(tmp_path / "a"), broker=mosquitto,
                         **{**STRAGGLERS, "pi_slowdown": [1, 1, 3], "collect_timeout_s": 2.5})
    s = run_experiment(cfg, ds=fashion)
    rounds = s["rounds"]
    assert [m["round"] for m in rounds] == list(range(1, 13)) and s["rejected"] == {}
    for m in rounds:
        assert len(m["participants"]["fl"]) == 3 and "pi-00" not in m["participants"]["fl"]
        assert set(m["staleness"]) == set(m["participants"]["fl"])
        assert m["phases_s"]["train"] < 5.0, m["phases_s"]   # merges come as updates do, not at anyone's deadline
    # updates trained on an older version are merged with it (FedBuff's staleness), and the silent
    # device's task expired (its slot went to others) instead of holding a merge
    assert any(t > 0 for m in rounds for t in m["staleness"].values())
    assert any(m["device_errors"].get("pi-00") == "timeout" for m in rounds)
    assert s["mode"] == "async" and s["final_accuracy"] > 0.15
    on_disk = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert on_disk["config"]["federated"]["mode"] == "async"
