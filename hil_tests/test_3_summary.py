"""The bench's summary.json: the DUT's entry carries the joules per phase that its meter's samples,
aligned to the phases it marked, give (meters.align), and "meter" names the driver that took them.
Without hardware the same path runs with recorded PPK2 and INA219 streams (tests/data/meters) played
back as the DUT's meter while the real MicroPython node runs its rounds."""
import json
from pathlib import Path

import numpy as np
import pytest

from semifl.meters import integrate, open_meter
from semifl.meters.align import PHASES, attribute, clock_offset, roll_up
from semifl.meters.replay import load_recording

pytestmark = pytest.mark.timeout(300)
RECORDED = Path(__file__).resolve().parents[1] / "tests" / "data" / "meters"


def expected_from_samples(run, dut_id):
    """What align.py gives for the run's samples and the DUT's marks, computed here step by step."""
    marks, received = run.watch.marks()
    roles = {m["round"]: "cl" for m in run.rounds if dut_id in m["participants"]["cl"]}
    return roll_up(attribute(run.t, run.w, marks, offset_s=clock_offset(marks, received)), roles), marks


def check_summary(run, root, dut_id, meter_name):
    on_disk = json.loads((root / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(run.summary))
    dut = next(d for d in on_disk["devices"] if d["id"] == dut_id)
    r, marks = expected_from_samples(run, dut_id)
    assert dut["meter"] == meter_name
    assert set(dut["energy_by_phase"]) == set(PHASES)
    assert dut["energy_by_phase"] == pytest.approx(r["by_phase"], rel=1e-12, abs=1e-12)
    assert dut["energy_j"] == pytest.approx(r["energy_j"], rel=1e-12)
    assert {int(k): v for k, v in dut["energy_by_round"].items()} == pytest.approx(r["by_round"], rel=1e-12)
    # every joule the meter saw from the DUT's first mark on, once
    offset = dut["clock_offset_s"]
    assert dut["energy_j"] == pytest.approx(integrate(run.t, run.w, marks[0][0] + offset, None), rel=1e-9)
    # the other devices (the virtual Pi) keep the virtual model of their board profile
    assert all(d["meter"] == "virtual" for d in on_disk["devices"] if d["id"] != dut_id)
    assert on_disk["final_accuracy"] == run.rounds[-1]["accuracy"] and on_disk["meter_error"] == run.meter_error
    return dut


def test_summary_carries_the_dut_measured_energy(bench, dut, hil):
    expected = hil.meter.replace("replay-", "replay:")   # the driver's name (virtual: the process meter)
    d = check_summary(bench, bench.dut_dir.parents[1], dut.id, expected)
    assert d["board"] == dut.board


@pytest.mark.parametrize("driver,recording,kw", [("ppk2", "ppk2_source_3v3.bin", {"vdd_mv": 3300}),
                                                 ("ina219", "ina219_registers.csv", {})])
def test_a_recorded_stream_as_the_meter_fills_the_summary(hil, dataset, tmp_path, driver, recording, kw):
    """The simulated bench with a recorded stream as the DUT's meter: the summary's joules are the
    recording's samples (decoded by the driver's parser, not the virtual model) split by the real
    MicroPython node's phase marks."""
    if hil.hil_port is not None:
        pytest.skip("a board on the bench is measured by its own meter")
    from hil_bench import SimDUT, run_bench

    from semifl.sim.fleet import micropython_ready
    from semifl.transport.broker import EmbeddedBroker

    if micropython_ready():
        pytest.skip(f"simulated DUT: {micropython_ready()}")
    path = RECORDED / recording
    rec_t, rec_w, _ = load_recording(path, driver, **kw)
    sim = SimDUT(hil.hil_board)
    with EmbeddedBroker(host="127.0.0.1") as b:
        run = run_bench(sim, lambda d: open_meter(f"replay-{driver}", path=path, **kw), b.url, dataset,
                        tmp_path / "bench", rounds=2)
    assert run.meter_error is None, run.meter_error
    assert len(run.t) > len(rec_t) and np.isin(run.w, rec_w).all()   # the recording, looped
    d = check_summary(run, tmp_path / "bench", sim.id, f"replay:{driver}")
    assert d["energy_j"] != 0
