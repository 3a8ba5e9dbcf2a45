"""The virtual meter against hand-computed joules, and its profiles' sources."""
import pytest

from semifl.energy import PHASES, PROFILES, VirtualMeter, fleet_energy, load_profile


def test_round_joules_by_hand():
    p = load_profile("esp32")   # 3.3 V; cpu 68 mA, idle 30 mA, tx 180 mA, rx 100 mA; 2 Mbit/s
    j = VirtualMeter(p).round_joules(wall_s=10.0, train_s=0.0, infer_s=0.5, bytes_up=250_000, bytes_down=50_000)
    assert j["infer"] == pytest.approx(0.5 * 3.3 * 0.068)
    assert j["upload"] == pytest.approx(1.0 * 3.3 * 0.180)        # 2 Mbit at 2 Mbit/s
    assert j["download"] == pytest.approx(0.2 * 3.3 * 0.100)
    assert j["idle"] == pytest.approx((10 - 0.5 - 1.0 - 0.2) * 3.3 * 0.030)
    assert set(j) == set(PHASES)


def test_fleet_energy_sums_rounds_and_skips_unknown_boards():
    rounds = [{"wall_s": 2.0, "device_bytes": {"pi-0": [0, 0]}, "device_times_s": {"pi-0": {"local": 1.0}}},
              {"wall_s": 2.0, "device_bytes": {}, "device_times_s": {}}]
    e = fleet_energy(rounds, {"pi-0": "rpi4", "x": "no-such-board"})
    assert set(e) == {"pi-0"} and e["pi-0"]["meter"] == "virtual"
    # round 1: 1 s at 5.1 V x 0.725 A + 1 s idle at 5.1 x 0.54; round 2: 2 s idle
    assert e["pi-0"]["energy_j"] == pytest.approx(5.1 * 0.725 + 5.1 * 0.54 * 3, abs=1e-3)


def test_every_profile_cites_its_source():
    for path in PROFILES.glob("*.toml"):
        text = path.read_text()
        assert "Source" in text, path
        p = load_profile(path.stem)
        assert {"cpu_active", "idle", "wifi_tx", "wifi_rx"} <= set(p.current_a) and p.throughput_bps > 0
    with pytest.raises(FileNotFoundError, match="no power profile"):
        load_profile("pdp11")


def test_report_energy_vs_accuracy(tmp_path, capsys):
    import json

    from semifl.cli import main

    for name, strategy, acc, joules in (("a", "semifl", 0.40, [3.0, 1.5]), ("b", "semifl+", 0.80, [2.0, 2.0])):
        (tmp_path / name).mkdir()
        devices = [{"id": "pi-0", "device_class": "pi", "energy_j": joules[0], "meter": "virtual"},
                   {"id": "mcu-1", "device_class": "mcu", "energy_j": joules[1], "meter": "virtual"}]
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"strategy": strategy, "rounds": [{}] * 5, "final_accuracy": acc, "devices": devices}))
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "e.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["run", "strategy", "rounds", "final", "accuracy", "%", "energy", "J", "J", "per",
                              "class", "meter"]
    assert out[2].split() == [str(tmp_path / "a"), "semifl", "5", "40.00", "4.5", "mcu", "1.5,", "pi", "3.0", "virtual"]
    assert out[3].split()[1:5] == ["semifl+", "5", "80.00", "4.0"]
    assert (tmp_path / "e.png").stat().st_size > 5_000


def test_rp2040w_profile_cites_a_source_for_every_number():
    """Pico W: each number's line names a source defined in the header ([M1], [C1], ...) or says it is
    derived from them or an assumption; the derived currents add up as their lines say."""
    import re

    text = (PROFILES / "rp2040w.toml").read_text()
    header = {m for m in re.findall(r"^#\s+(\[[A-Z]\d\])", text, re.M)}
    assert {"[M1]", "[C1]", "[M2]"} <= header
    numbers = [line for line in text.splitlines() if re.match(r"^\w+\s*=\s*[\d_.]+", line)]
    assert len(numbers) == 7   # voltage, five currents, throughput
    for line in numbers:
        note = line.partition("#")[2]
        cited = set(re.findall(r"\[[A-Z]\d\]", note))
        assert cited <= header and (cited or "ASSUMPTION" in note), line
    p = load_profile("rp2040w")
    assert p.board == "rp2040w" and p.voltage_v == 5.0
    mA = {k: v * 1000 for k, v in p.current_a.items()}
    assert mA["cpu_active"] == pytest.approx(20.94 + 2) and mA["idle"] == pytest.approx(18.35 + 2)
    assert mA["wifi_rx"] == pytest.approx(20.94 + 36) and mA["wifi_tx"] >= mA["wifi_rx"]
    assert mA["deep_sleep"] < mA["idle"] < mA["cpu_active"] < mA["wifi_rx"]
