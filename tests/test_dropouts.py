"""Devices that vanish (killed: the broker sends their last will) or miss rounds (a lossy link): the
rounds go on with the others, without waiting out the collection deadline."""
import contextlib
import subprocess
import sys

from semifl.app.build import limits, make_round
from semifl.app.run import run_experiment
from semifl.config import RunConfig
from semifl.service.session import Session
from semifl.service.store import Store
from semifl.sim.fleet import VirtualFleet, seed_fleet
from semifl.transport.mqtt import HostLink


def test_killed_devices_drop_out_and_rounds_go_on(tmp_path, fashion, mosquitto):
    cfg = RunConfig.make(rounds=5, collect_timeout_s=60)
    specs = seed_fleet(6, 4, 10, cfg.seed, cfg.rounds)
    with contextlib.ExitStack() as stack:
        store = Store(str(tmp_path / "state.db"))
        link = HostLink(mosquitto, client_id="host-dropout").connect()
        stack.callback(link.close)
        session = Session(link, store, limits(cfg))
        rounds_obj = make_round(cfg, session, fashion)
        fleet = stack.enter_context(VirtualFleet(tmp_path / "fleet", specs, fashion, mosquitto))
        assert session.wait_for_devices(10, 60)
        walls = []

        def on_round(m):
            walls.append(m["wall_s"])
            if m["round"] == 2:   # power cut on one Pi and one sensor
                fleet.kill("pi-00")
                fleet.kill("mcu-07")
        session.run(rounds_obj, cfg.rounds, on_round=on_round)
        session.stop_fleet()
    rounds = store.round_metrics()
    assert [m["round"] for m in rounds] == [1, 2, 3, 4, 5]
    for m in rounds[3:]:
        assert "pi-00" not in m["trained"] and "mcu-07" not in m["participants"]["cl"]
        assert len(m["participants"]["fl"]) == 3 and len(m["participants"]["cl"]) == 2
    assert max(walls) < 20, f"a round waited for a dead device: {walls}"
    assert not store.devices()["pi-00"]["online"]


def test_lossy_links_thin_out_rounds_but_the_run_completes(tmp_path, fashion, embedded):
    cfg = RunConfig.make(rounds=6, drop=0.3, ready_timeout_s=1.0, out=str(tmp_path / "lossy"), broker=embedded, plot=False)
    summary = run_experiment(cfg, ds=fashion)
    rounds = summary["rounds"]
    assert len(rounds) == 6
    trained = [len(m["trained"]) for m in rounds]
    assert min(trained) < 6, "with 30 % loss some FL client should miss a round"
    assert summary["final_accuracy"] > 0.15


def test_missing_data_says_what_to_install(tmp_path):
    r = subprocess.run([sys.executable, "-m", "semifl.cli", "run", "--data", str(tmp_path / "nowhere"), "--rounds", "1",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "apt-get install dataset-fashion-mnist" in r.stderr and "--data" in r.stderr
    assert not (tmp_path / "run").exists()
