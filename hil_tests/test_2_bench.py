"""Boot, join, N rounds on the bench; the DUT reported, its int8 model is the one the host sent, and
its meter's energy was recorded, lies within the board profile and splits over the phases it marked."""
import os
import zlib

import numpy as np
import pytest

from semifl.fleet.registry import validate_caps
from semifl.meters import integrate
from semifl.meters.align import attribute, clock_offset, roll_up
from semifl.meters.process import power_bounds

pytestmark = pytest.mark.timeout(300)


def test_dut_boots_and_joins(bench, dut):
    assert any(p == b"online" for _, p in bench.watch.presence), dut.log()
    caps = validate_caps(dut.id, bench.watch.caps)
    assert caps["class"] == "mcu" and caps["board"] == dut.board and "cl" in caps["roles"]
    if dut.simulated:
        assert caps["runtime"] == "micropython"


def test_dut_reported_every_round(bench, dut, hil):
    n = hil.hil_rounds
    assert [m["round"] for m in bench.rounds] == list(range(1, n + 1))
    assert sorted(s["round"] for s in bench.watch.of_kind("ready")) == list(range(1, n + 1))
    for m in bench.rounds:   # the only CL device: chosen every round, its samples accepted
        assert m["participants"]["cl"] == [dut.id], m
        assert m["device_errors"] == {} and m["rejected"] == {}, m


def test_dut_model_crc_matches_the_hosts(bench, dut):
    evals = bench.watch.of_kind("eval")
    assert evals, "the DUT never evaluated the int8 model"
    for e in evals:
        assert e["crc"] == bench.watch.int8_crc[e["round"]], e
        assert 0 <= e["accuracy"] <= 1
    if dut.simulated:   # and what landed in its flash is that blob
        assert zlib.crc32((bench.dut_dir / "model.bin").read_bytes()) == evals[-1]["crc"]


def test_energy_recorded_within_the_profile(bench, profile, hil):
    assert bench.meter_error is None, bench.meter_error
    if hil.meter.startswith("replay-"):
        pytest.skip("a replayed recording is another rail's draw: the DUT's profile does not bound it")
    t, w = bench.t, bench.w
    assert len(t) > 10 and np.all(np.diff(t) > 0)
    span = t[-1] - t[0]
    joules = integrate(t, w)
    if hil.meter == "virtual":
        lo, hi = power_bounds(profile)
    else:   # a real rail: between the profile's deepest sleep and CPU and radio both at full draw
        lo = profile.voltage_v * min(profile.current_a.values())
        hi = profile.voltage_v * (profile.current_a["cpu_active"] + profile.current_a["wifi_tx"])
    assert lo * span * 0.999 <= joules <= hi * span * 1.001, (joules, lo * span, hi * span)
    assert joules > 0


def test_phase_marks_split_the_energy(bench, hil):
    marks, received = bench.watch.marks()
    phases = {p for _, _, p in marks}
    assert {"idle", "upload", "download", "infer"} <= phases, phases
    offset = clock_offset(marks, received)
    per = attribute(bench.t, bench.w, marks, offset_s=offset)
    cl_rounds = {m["round"]: "cl" for m in bench.rounds}
    r = roll_up(per, roles=cl_rounds)
    # every joule from the first mark on is attributed once
    assert r["energy_j"] == pytest.approx(integrate(bench.t, bench.w, marks[0][0] + offset, None), rel=1e-9)
    assert r["by_phase"]["train"] == 0
    if not hil.meter.startswith("replay-"):   # a recording's watts may dip below zero (reverse current)
        assert r["by_phase"]["upload"] > 0 and r["by_phase"]["infer"] > 0
    assert set(range(1, hil.hil_rounds + 1)) <= set(r["by_round"]) and r["by_role"]["cl"] > 0
    # an upload is radio time: the virtual meter must read more power while uploading than idling
    if hil.meter == "virtual":
        up_s = sum(b - a for (a, _, p), (b, _, _) in zip(marks, marks[1:]) if p == "upload")
        idle_s = sum(b - a for (a, _, p), (b, _, _) in zip(marks, marks[1:]) if p == "idle")
        assert r["by_phase"]["upload"] / up_s > r["by_phase"]["idle"] / idle_s


def test_a_busy_serial_port_fails_clearly(tmp_path):
    """A DUT's port held by another program: the bench says so at once instead of hanging."""
    from hil_bench import BoardDUT

    master, slave = os.openpty()
    port = os.ttyname(slave)
    first = BoardDUT(port, "esp32", "mcu-01")
    try:
        with pytest.raises(RuntimeError, match="busy or missing"):
            BoardDUT(port, "esp32", "mcu-01")
    finally:
        first.close()
        os.close(master)
        os.close(slave)
