import pytest

from semifl.fleet.channel import ChannelModel
from semifl.fleet.planner import PlannerConfig, plan_round, select_fl_uploaders, task_seed


def caps(cls, rssi, raw_ok=True, battery=1.0, cpu=1000.0, ram=1 << 30):
    return {"class": cls, "rssi": rssi, "raw_ok": raw_ok, "battery": battery, "cpu_score": cpu, "ram": ram}


def test_roles_follow_capabilities_channel_and_policy():
    devices = {
        "pi-a": caps("pi", -50), "pi-b": caps("pi", -80),
        "pi-slow": caps("pi", -40, cpu=10.0),              # too slow to train: computing-limited
        "mcu-1": caps("mcu", -60), "mcu-2": caps("mcu", -45), "mcu-3": caps("mcu", -70),
        "mcu-private": caps("mcu", -30, raw_ok=False),       # strongest channel, but raw data may not leave
        "mcu-flat": caps("mcu", -20, battery=0.01),
    }
    plan = plan_round(4, devices, PlannerConfig(cl_uploaders=2))
    assert plan.fl == ["pi-a", "pi-b"]
    assert plan.cl == ["mcu-2", "pi-slow"]  # top-2 by RSSI among allowed CL candidates
    assert plan.idle["mcu-private"].startswith("privacy")
    assert plan.idle["mcu-flat"] == "battery"
    assert plan.idle["mcu-1"] == plan.idle["mcu-3"] == "weaker channel"


def test_fedavg_plans_no_cl_uploaders():
    plan = plan_round(1, {"pi": caps("pi", -50), "mcu": caps("mcu", -40)}, PlannerConfig(), use_cl=False)
    assert plan.fl == ["pi"] and plan.cl == [] and "mcu" in plan.idle


def test_top_k_by_norm_with_deterministic_ties():
    assert select_fl_uploaders({"a": 1.0, "b": 3.0, "c": 2.0, "d": 3.0}, 2) == ["b", "d"]
    assert select_fl_uploaders({"a": 1.0}, 3) == ["a"]


def test_task_seed_is_stable_and_distinct():
    assert task_seed(0, 1, "pi-00") == task_seed(0, 1, "pi-00")
    seeds = {task_seed(s, r, d) for s in range(2) for r in range(50) for d in ("pi-00", "mcu-06")}
    assert len(seeds) == 200


def test_channel_model_is_seeded_and_follows_path_loss():
    ch = ChannelModel(10, seed=3)
    assert (ch.gains(5) == ChannelModel(10, seed=3).gains(5)).all()
    assert not (ch.gains(5) == ch.gains(6)).all()
    assert ((ch.distance >= 30) & (ch.distance <= 42)).all()
    # averaged over many rounds, Rician fading has unit mean power: gain ~ C0 * d^-2.2
    mean = sum(ch.gains(r) for r in range(2000)) / 2000
    assert mean == pytest.approx(ch.large_scale, rel=0.1)


def test_energy_aware_a_low_battery_board_uploads_samples_instead_of_training():
    devices = {"pi-full": caps("pi", -50, battery=0.9),
               "pi-low": caps("pi", -30, battery=0.2),                    # may send raw data: becomes a CL uploader
               "pi-low-private": caps("pi", -30, battery=0.2, raw_ok=False),   # may not: sits out
               "mcu-1": caps("mcu", -60)}
    off = plan_round(1, devices, PlannerConfig(cl_uploaders=2))
    assert off.fl == ["pi-full", "pi-low", "pi-low-private"]            # default: battery only below 5 %
    on = plan_round(1, devices, PlannerConfig(cl_uploaders=2, fl_min_battery=0.3))
    assert on.fl == ["pi-full"] and on.cl == ["mcu-1", "pi-low"]
    assert on.idle["pi-low-private"] == "battery too low to train"


def test_a_round_tasks_only_the_clients_it_can_use_drawn_in_turn():
    devices = {f"pi-{i:02d}": caps("pi", -50) for i in range(30)}
    plans = [plan_round(r, devices, PlannerConfig(), fl_budget=6, seed=1) for r in range(1, 41)]
    assert all(len(p.fl) == 6 and len(p.idle) == 24 for p in plans)
    assert all(p.idle[d] == "not drawn to train this round" for p in plans for d in p.idle)
    assert plans[0].fl == plan_round(1, devices, PlannerConfig(), fl_budget=6, seed=1).fl   # seeded: the same again
    assert len({tuple(p.fl) for p in plans}) > 30                                           # a new draw each round
    assert {d for p in plans for d in p.fl} == set(devices)                                 # everyone's turn comes
    assert plan_round(1, devices, PlannerConfig(), fl_budget=None).fl == sorted(devices)
