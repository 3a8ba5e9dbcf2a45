"""Meter drivers' parsing against recorded streams (tests/data/meters), the interface's integration,
and what a meter that fails mid-run does: a clear error, the samples so far kept, no hang."""
import struct
import time

import numpy as np
import pytest

from semifl.energy import load_profile
from semifl.meters import Meter, MeterError, integrate, open_meter
from semifl.meters import ina219, joulescope, ppk2, usb_meter
from semifl.meters.align import attribute, clock_offset, roll_up
from semifl.meters.process import power_bounds, process_watts

from pathlib import Path

DATA = Path(__file__).parent / "data" / "meters"


def test_usb_meter_records_decode_and_a_cut_record_is_an_error():
    raw = (DATA / "um34c_um25c_records.bin").read_bytes()
    assert usb_meter.decode_record(raw[:130]) == ("UM34C", 5.01, 0.142, 0.711)
    model, v, i, w = usb_meter.decode_record(raw[130:260])
    assert (model, v, i, w) == ("UM25C", 5.082, 0.0735, 0.373)
    with pytest.raises(MeterError, match="64 bytes"):
        usb_meter.decode_record(raw[260:])


def test_usb_meter_garbage_is_refused():
    rec = bytearray((DATA / "um34c_um25c_records.bin").read_bytes()[:130])
    with pytest.raises(MeterError, match="unknown model"):
        usb_meter.decode_record(bytes(rec[1:]) + b"\0")   # one byte slipped
    struct.pack_into(">I", rec, 6, 2000)                    # 2 W reported for 5.01 V x 0.142 A
    with pytest.raises(MeterError, match="not the 2.0 W"):
        usb_meter.decode_record(bytes(rec))


def test_ppk2_stream_decodes_with_the_lost_sample_kept_in_time():
    raw = (DATA / "ppk2_source_3v3.bin").read_bytes()
    words, rest = ppk2.split_words(raw[:23])          # a USB read can end mid-sample
    words2, rest = ppk2.split_words(raw[23:], rest)
    assert len(words) == 5 and len(words2) == 5 and rest == b""
    amps, index, nxt = ppk2.decode(np.concatenate([words, words2]), 3300)
    # ppk2-api's get_adc_result with its default calibration (GS = GI = UG = 1, O = S = I = 0):
    # x = 4 * adc * 1.8 / 163840 / R[range], A = x * (x + 1)
    x2, x4 = 4 * 2000 * 1.8 / 163840 / 10.15, 4 * 10000 * 1.8 / 163840 / 0.043
    assert amps[:6] == pytest.approx([x2 * (x2 + 1)] * 6, rel=1e-12)
    assert amps[6:] == pytest.approx([x4 * (x4 + 1)] * 4, rel=1e-12)
    assert list(index) == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10] and nxt == 7
    # split over two reads, the counter carries over
    a1, i1, n1 = ppk2.decode(words, 3300)
    a2, i2, n2 = ppk2.decode(words2, 3300, expect_counter=n1)
    assert n1 == 1 and list(i2) == [0, 2, 3, 4, 5] and np.allclose(np.concatenate([a1, a2]), amps)


def test_ppk2_garbage_is_refused():
    words = np.frombuffer((DATA / "ppk2_source_3v3.bin").read_bytes(), "<u4")
    with pytest.raises(MeterError, match="range 7"):
        ppk2.decode(np.concatenate([words, [0xFFFFFFFF]]), 3300)
    shifted = np.frombuffer((DATA / "ppk2_source_3v3.bin").read_bytes()[1:-3], "<u4")   # misaligned by a byte
    with pytest.raises(MeterError):
        ppk2.decode(shifted, 3300)


def test_ina219_registers_decode_by_the_datasheet_scaling():
    rows = [line.split(",") for line in (DATA / "ina219_registers.csv").read_text().split()[1:]]
    got = [ina219.decode(int(s, 16), int(b, 16), 0.1) for _, s, b in rows[:4]]
    assert got[0] == pytest.approx((3.300, 0.400, 1.32))
    assert got[2] == pytest.approx((3.288, 0.800, 2.6304))
    assert got[3] == pytest.approx((3.300, -0.020, -0.066))
    with pytest.raises(MeterError, match="overflow"):
        ina219.decode(int(rows[4][1], 16), int(rows[4][2], 16), 0.1)
    assert ina219.swap16(0xA00F) == 0x0FA0   # SMBus word order vs the chip's MSB first


def test_joulescope_block_drops_missing_samples_and_refuses_garbage():
    t, w = joulescope.decode_block(np.load(DATA / "joulescope_block.npy"), 10.0, 1000)
    assert t == pytest.approx([10.0, 10.001, 10.004, 10.005])
    assert w == pytest.approx([0.33, 0.33, 0.65, 0.65], rel=1e-6)
    with pytest.raises(MeterError, match="all 2 samples"):
        joulescope.decode_block(np.full((2, 2), np.nan), 0.0, 1000)
    with pytest.raises(MeterError, match="garbage"):
        joulescope.decode_block(np.array([[1e6, 3.3]]), 0.0, 1000)


def test_integrate_is_exact_on_piecewise_linear_power():
    t, w = [0, 1, 2, 3, 4], [1, 1, 3, 3, 1]
    assert integrate(t, w) == 1 + 2 + 3 + 2
    assert integrate(t, w, 0.5, 1.5) == pytest.approx(0.5 + 0.5 * (1 + 2) / 2)
    assert integrate(t, w, -5, 0) == 0 and integrate(t, w, 10, 20) == 0


def test_phase_marks_attribute_exact_joules_per_round_phase_and_role():
    t = np.arange(0, 10.01, 0.5)
    w = np.where(t < 4, 1.0, 3.0)   # 1 W until 4 s, 3 W after (a linear ramp between 3.5 and 4)
    marks = [(100.0, 1, "idle"), (101.0, 1, "download"), (102.0, 1, "train"), (106.0, 1, "upload"),
             (107.0, 2, "idle"), (109.0, 2, "train")]
    j = attribute(t, w, marks, offset_s=-100.0)
    assert j == pytest.approx({(1, "idle"): 1.0, (1, "download"): 1.0, (1, "train"): 1.5 + 0.5 * 2 + 6.0,
                               (1, "upload"): 3.0, (2, "idle"): 6.0, (2, "train"): 3.0})
    r = roll_up(j, roles={1: "fl", 2: "cl"})
    assert r["energy_j"] == pytest.approx(integrate(t, w))   # every joule once
    assert r["by_role"] == pytest.approx({"fl": 13.5, "cl": 9.0}) and r["by_round"] == pytest.approx({1: 13.5, 2: 9.0})
    assert r["by_phase"]["train"] == pytest.approx(11.5) and r["by_phase"]["infer"] == 0
    with pytest.raises(ValueError, match="sleep"):
        attribute(t, w, [(0.0, 1, "sleep")])


def test_clock_offset_takes_the_fastest_mark():
    assert clock_offset([(1.0, 1, "idle"), (2.0, 1, "train")], [51.3, 51.9]) == pytest.approx(49.9)


class FlakyMeter(Meter):
    """Two good reads, then what a broken meter does: raise, go silent, or block forever."""
    name = "flaky"

    def __init__(self, fault, **kw):
        super().__init__(**kw)
        self.fault, self.n = fault, 0

    def _read(self):
        self.n += 1
        if self.n <= 2:
            time.sleep(0.01)
            return np.array([float(self.n)]), np.array([2.0])
        if self.fault == "garbage":
            raise MeterError("flaky: garbage")
        if self.fault == "silent":
            time.sleep(0.01)
            return np.zeros(0), np.zeros(0)
        time.sleep(3600)   # a read that never returns


@pytest.mark.parametrize("fault,match", [("garbage", "garbage"), ("silent", "no samples for 0.3 s"),
                                         ("hang", "did not return")])
def test_a_meter_failing_mid_run_errors_clearly_keeps_its_samples_and_does_not_hang(fault, match):
    m = FlakyMeter(fault, timeout_s=0.3).start()
    time.sleep(0.6)
    t0 = time.monotonic()
    with pytest.raises(MeterError, match=match):
        m.stop()
    assert time.monotonic() - t0 < 2.0
    t, w = m.samples()
    assert list(t) == [1.0, 2.0] and m.joules() == 2.0


def test_a_meter_whose_package_or_port_is_missing_fails_at_start():
    with pytest.raises(MeterError, match="usb: cannot open"):
        open_meter("usb", port="/dev/nonexistent-meter").start()
    with pytest.raises(ValueError, match="unknown meter"):
        open_meter("multimeter")


def test_process_meter_power_stays_within_the_profile():
    p = load_profile("esp32")
    lo, hi = power_bounds(p)
    assert lo == pytest.approx(3.3 * 0.030) and hi == pytest.approx(3.3 * (0.068 + 0.180 - 0.030))
    assert process_watts(p, 0.02, 0.0, 0) == pytest.approx(lo)
    assert process_watts(p, 0.02, 0.05, 10**9) == pytest.approx(hi)   # clipped: busy and sending all period
    # half the period on the CPU, 5000 bytes at 2 Mbit/s = 0.02 s: the whole period on the radio
    assert process_watts(p, 0.02, 0.01, 5000) == pytest.approx(lo + 0.5 * 3.3 * 0.038 + 3.3 * 0.150)


def test_replayed_recordings_are_the_drivers_samples_looped():
    from semifl.meters.replay import ReplayMeter, load_recording

    t, w, why = load_recording(DATA / "ppk2_source_3v3.bin", "ppk2", vdd_mv=3300)
    amps, index, _ = ppk2.decode(np.frombuffer((DATA / "ppk2_source_3v3.bin").read_bytes(), "<u4"), 3300)
    assert why is None and list(t * ppk2.SAMPLE_HZ) == pytest.approx(list(index)) and w == pytest.approx(amps * 3.3)
    t, w, why = load_recording(DATA / "ina219_registers.csv", "ina219")
    assert list(t) == pytest.approx([0, 0.01, 0.02, 0.03]) and w == pytest.approx([1.32, 1.32, 2.6304, -0.066])
    assert "overflow" in why   # the last row: played up to it
    m = ReplayMeter(t, w, "ina219")
    assert m.name == "replay:ina219" and m.loop_s == pytest.approx(0.04)
    tt, ww = m.played(0, 9)   # two passes and one sample of the third
    assert tt == pytest.approx([0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08]) and list(ww[4:8]) == list(w)
    assert m.count_until(0.085) == 9 and m.count_until(0.0) == 1
    with m:   # live: sample times advance on the bench clock, values are the recording's
        time.sleep(0.15)
    lt, lw = m.samples()
    assert len(lt) >= 10 and np.all(np.diff(lt) > 0) and np.isin(lw, w).all()


def test_device_energy_is_the_aligned_split_of_a_recorded_stream():
    """summary.json's entry for a metered device: the recorded INA219 stream looped under phase marks
    (device clock 100 s behind the meter's, received 20 ms after sending)."""
    from semifl.meters.align import device_energy
    from semifl.meters.replay import ReplayMeter, load_recording

    m = ReplayMeter(*load_recording(DATA / "ina219_registers.csv", "ina219")[:2], "ina219")
    t, w = m.played(0, m.count_until(3.0))
    marks = [(100.0, 1, "idle"), (100.5, 1, "download"), (101.0, 1, "infer"), (101.25, 1, "upload"), (102.0, 2, "idle")]
    d = device_energy(t, w, marks, [t_dev - 100 + 0.02 for t_dev, _, _ in marks], m.name, roles={1: "cl"})
    assert d["meter"] == "replay:ina219" and d["clock_offset_s"] == pytest.approx(-99.98)
    assert d["energy_by_phase"]["infer"] == pytest.approx(integrate(t, w, 1.02, 1.27))
    assert d["energy_by_phase"]["idle"] == pytest.approx(integrate(t, w, 0.02, 0.52) + integrate(t, w, 2.02, None))
    assert d["energy_j"] == pytest.approx(integrate(t, w, 0.02, None)) and d["energy_by_phase"]["train"] == 0
    assert d["energy_by_role"] == pytest.approx({"cl": integrate(t, w, 0.02, 2.02), "none": integrate(t, w, 2.02, None)})
    assert set(d["energy_by_round"]) == {"1", "2"}
