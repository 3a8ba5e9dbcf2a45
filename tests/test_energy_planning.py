"""Energy-aware planning: the planner's battery thresholds, the simulated Pi battery (drained by the
board profile's numbers, the virtual meter's), and a real run in which a Pi's battery crosses them."""
import pytest

from semifl.config import RunConfig
from semifl.energy import load_profile
from semifl.fleet.planner import PlannerConfig, plan_round
from semifl.app.run import run_experiment
from semifl.device import link
from semifl.sim.fleet import fleet_for, pi_battery
from semifl.device.link import SimBattery

PI_ROLES = ["fl", "sl"]   # what the Pi agent reports (firmware/pi/semifl_agent/agent.py)


def caps(cls, battery, raw_ok=False, roles=None, rssi=-50.0):
    c = {"class": cls, "rssi": rssi, "raw_ok": raw_ok, "battery": battery, "cpu_score": 1000.0, "ram": 1 << 30}
    if roles is not None:
        c["roles"] = roles
    return c


def test_battery_thresholds_decide_each_pis_role():
    devices = {"pi-full": caps("pi", 0.9, roles=PI_ROLES),
               "pi-at": caps("pi", 0.5, roles=PI_ROLES),                  # exactly at the threshold: trains
               "pi-low": caps("pi", 0.49, roles=PI_ROLES),                # private data: sits out
               "pi-low-open": caps("pi", 0.3, raw_ok=True, roles=PI_ROLES),   # may send raw data, but cannot
               "pi-flat": caps("pi", 0.04, roles=PI_ROLES),
               "mcu-1": caps("mcu", 0.2, raw_ok=True, roles=["cl", "infer"])}
    plan = plan_round(3, devices, PlannerConfig(fl_min_battery=0.5))
    assert plan.fl == ["pi-at", "pi-full"]
    assert plan.cl == ["mcu-1"]                    # an MCU's low battery does not stop CL, only min_battery
    assert plan.idle == {"pi-low": "battery too low to train", "pi-low-open": "battery too low to train",
                         "pi-flat": "battery"}
    # a device that says it can upload samples does so instead of training (issue 8's example)
    open_pi = dict(devices, **{"pi-low-open": caps("pi", 0.3, raw_ok=True, roles=["fl", "cl"])})
    assert plan_round(3, open_pi, PlannerConfig(fl_min_battery=0.5)).cl == ["mcu-1", "pi-low-open"]
    # no threshold: every Pi with charge above min_battery trains
    assert plan_round(3, devices, PlannerConfig()).fl == ["pi-at", "pi-full", "pi-low", "pi-low-open"]


def test_a_computing_limited_device_that_cannot_send_samples_is_not_given_cl():
    slow = dict(caps("pi", 1.0, raw_ok=True, roles=PI_ROLES), cpu_score=1.0)
    plan = plan_round(1, {"pi-slow": slow}, PlannerConfig())
    assert plan.cl == [] and plan.idle["pi-slow"] == "cannot upload samples (roles: fl, sl)"


def test_pi_battery_takes_the_virtual_meters_numbers():
    p = load_profile("rpi4")
    sim = pi_battery("rpi4", 100.0, 0.5)
    assert sim["compute_w"] == p.voltage_v * p.current_a["cpu_active"]
    assert sim["tx_j_per_byte"] == p.voltage_v * p.current_a["wifi_tx"] * 8 / p.throughput_bps
    assert sim["idle_w"] == p.voltage_v * p.current_a["idle"]
    assert pi_battery("rpi4", 100.0, idle=False)["idle_w"] == 0.0


def test_run_config_cycles_capacity_and_charge_over_the_pis(fashion):
    specs = fleet_for(RunConfig.make(rounds=2, fl_devices=3, cl_devices=1, pi_battery_j="50,0", pi_charge="0.3,0.9"), fashion)
    sims = {s.id: s.sim for s in specs}
    assert sims["pi-00"]["battery_j"] == 50.0 and sims["pi-00"]["charge"] == 0.3
    assert sims["pi-01"]["battery_j"] == 0.0            # 0: mains powered, as before
    assert sims["pi-02"]["battery_j"] == 50.0 and sims["pi-02"]["charge"] == 0.3
    assert sims["mcu-03"]["battery_j"] == 2000.0        # the MCUs' batteries are untouched


def test_sim_battery_drains_by_work_and_idle_time(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(link, "_now", lambda: clock[0])
    b = SimBattery({"battery_j": 10.0, "charge": 0.8, "compute_w": 4.0, "tx_j_per_byte": 1e-6,
                    "idle_w": 2.0, "tx_bps": 8e6})
    assert b.level() == 0.8                 # capabilities at connect: idle not counted yet
    clock[0] += 50.0                        # waiting for the run to start is not charged
    assert b.level() == 0.8                 # first round's ready: idle counts from here
    b.compute(0.5)                          # 2 J
    b.transmit(1_000_000)                   # 1 J, radio on for 1 s
    clock[0] += 2.0                         # 2 s of which 1.5 busy: 0.5 s idle = 1 J
    assert b.level() == pytest.approx(0.8 - 4.0 / 10.0)
    clock[0] += 100.0
    assert b.level() == 0.0                 # flat, never negative
    sleeper = SimBattery({"battery_j": 10.0, "compute_w": 4.0})
    sleeper.level(), sleeper.level()
    clock[0] += 1000.0
    assert sleeper.level() == 1.0           # idle_w 0: time alone costs nothing
    assert SimBattery({}).level() == 1.0    # mains


def test_a_draining_pi_stops_training_at_the_threshold(tmp_path, fashion, embedded):
    """Pis on 2 J batteries that sleep between tasks, fl_min_battery 0.6: pi-00 starts at 0.65 and
    its first round (training and its update upload) takes it below 0.6; pi-02 starts flat."""
    th, cap = 0.6, 2.0
    cfg = RunConfig.make(rounds=4, fl_devices=3, cl_devices=1, out=str(tmp_path / "run"), broker=embedded, plot=False,
                    int8_every=0, pi_battery_j=str(cap), pi_charge="0.65,1.0,0.04", pi_battery_sleeps=True,
                    fl_min_battery=th)
    s = run_experiment(cfg, ds=fashion)
    rounds = s["rounds"]
    sim = pi_battery("rpi4", cap, idle=False)
    assert rounds[0]["device_battery"]["pi-00"] == pytest.approx(0.65, abs=1e-3)   # less its connect messages
    for m in rounds:
        for d in ("pi-00", "pi-01"):
            lvl = m["device_battery"][d]
            assert (d in m["trained"]) == (lvl >= th), (m["round"], d, lvl)
            if lvl < th:
                assert m["idle"][d] == "battery too low to train"
        assert m["idle"]["pi-02"] == "battery" and "pi-02" not in m["trained"]
    assert "pi-00" in rounds[0]["trained"] and all("pi-00" not in m["trained"] for m in rounds[1:])
    # the level falls by what the meter's profile charges the work the host saw: measured training
    # seconds at cpu_active power plus every byte sent at the Wi-Fi TX rate
    for m, nxt in zip(rounds, rounds[1:]):
        for d in ("pi-00", "pi-01"):
            spent = (m["device_battery"][d] - nxt["device_battery"][d]) * cap
            work = m["device_times_s"].get(d, {}).get("local", 0.0) * sim["compute_w"] + \
                m["device_bytes"][d][0] * sim["tx_j_per_byte"]
            assert spent == pytest.approx(work, abs=2e-4 * cap + 1e-4), (m["round"], d)
    # flat or not, nothing else about the run broke
    assert all(m["rejected"] == {} and m["device_errors"] == {} for m in rounds)
