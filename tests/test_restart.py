"""Kill the host (SIGKILL) mid-round and start it again: it resumes at the interrupted round, keeps
every update it had accepted, and ends with the very model an uninterrupted run computes, for a
stateless strategy (SemiFL) and for one with state (semifl+: server Adam, sample and update memories)."""
import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from semifl.config import RunConfig
from semifl.service.store import Store
from semifl.sim.fleet import LinkProfile, VirtualFleet, seed_fleet
from semifl.app.inprocess import run_inprocess

from conftest import kill_mid_round_and_restart

ROUNDS, SEED = 6, 3


def serve(url, state, log, strategy, *extra):
    cmd = [sys.executable, "-m", "semifl.cli", "serve", "--broker", url, "--rounds", str(ROUNDS), "--seed", str(SEED),
           "--strategy", strategy,
           "--state", str(state), "--wait-devices", "10", "--wait-s", "60", *extra]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("strategy", ["semifl", "semifl+"])
def test_host_restart_mid_round_loses_no_accepted_update(tmp_path, fashion, mosquitto, strategy):
    state = tmp_path / "state.db"
    specs = seed_fleet(6, 4, 10, SEED, ROUNDS, LinkProfile(latency_s=0.002))
    with VirtualFleet(tmp_path / "fleet", specs, fashion, mosquitto):
        before = kill_mid_round_and_restart(lambda log: serve(mosquitto, state, log, strategy), state, tmp_path / "host.log")
    killed_round = before[0][0]

    store = Store(str(state))
    metrics = {m["round"]: m for m in store.round_metrics()}
    assert sorted(metrics) == list(range(1, ROUNDS + 1))
    # the restarted service ends like `semifl run`: the summary of every round, the plot, the model
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [m["round"] for m in summary["rounds"]] == list(range(1, ROUNDS + 1))
    assert summary["final_accuracy"] == metrics[ROUNDS]["accuracy"] and len(summary["devices"]) == 10
    assert {d["role"] for d in summary["devices"]} == {"fl", "cl"} and all(d["energy_j"] > 0 for d in summary["devices"])
    assert (tmp_path / "rounds.png").stat().st_size > 0 and (tmp_path / "final_model.npz").exists()
    rows = sqlite3.connect(str(state)).execute("SELECT device, kind, accepted FROM contributions WHERE round=?",
                                               (killed_round,)).fetchall()
    accepted_at = {(d, k): t for d, k, t in rows}
    for _, dev, kind, t in before:
        assert accepted_at[(dev, kind)] == t, "an update accepted before the crash was received again or lost"
        role = "fl" if kind == "update" else "cl"
        assert dev in metrics[killed_round]["participants"][role]
    # and the resumed run computes exactly what an uninterrupted run computes
    expected = run_inprocess(RunConfig.make(rounds=ROUNDS, seed=SEED, strategy=strategy), fashion).params
    final = store.checkpoint(ROUNDS)
    for a, b in zip(final, expected):
        assert np.array_equal(a, b)


def test_a_restarted_host_merges_the_buffer_it_had_accepted(tmp_path, fashion, mosquitto):
    """Buffered rounds (--mode async): the updates accepted into the open version's buffer before a
    SIGKILL are merged into that version after the restart, none received twice."""
    state = tmp_path / "state.db"
    specs = seed_fleet(6, 4, 10, SEED, ROUNDS, LinkProfile(latency_s=0.002))
    async_flags = ["--mode", "async", "--buffer", "4"]
    with VirtualFleet(tmp_path / "fleet", specs, fashion, mosquitto):
        before = kill_mid_round_and_restart(lambda log: serve(mosquitto, state, log, "fedavg", *async_flags), state,
                                            tmp_path / "host.log", poll_s=0.002)
    store = Store(str(state))
    metrics = {m["round"]: m for m in store.round_metrics()}
    store.close()
    assert sorted(metrics) == list(range(1, ROUNDS + 1))
    killed = before[0][0]
    rows = sqlite3.connect(str(state)).execute("SELECT device, kind, accepted FROM contributions WHERE round=?",
                                               (killed,)).fetchall()
    accepted_at = {(d, k): t for d, k, t in rows}
    for _, dev, kind, t in before:   # kept as accepted before the crash, and merged into that version
        assert accepted_at[(dev, kind)] == t and dev in metrics[killed]["participants"]["fl"]
    assert all(len(m["participants"]["fl"]) >= 4 for m in metrics.values())
