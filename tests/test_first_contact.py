"""What a new user meets first: every ordinary mistake gets one line and exit code 2, no run deletes
what it did not write, Ctrl-C stops with 130 and the run resumes, a run nobody took part in fails."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from semifl.cli import main
from semifl.transport.broker import free_port

SMALL = ["--fl-devices", "2", "--cl-devices", "1", "--fl-uploaders", "1", "--cl-uploaders", "1", "--int8-every", "0",
         "--no-plot"]


def one_line_error(capsys, argv) -> str:
    """Runs `semifl ARGV`; asserts exit code 2, nothing on stdout beyond the run's header, and exactly
    one line on stderr with no traceback. -> that line."""
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("argv, says", [
    (["--rounds", "0"], "rounds: must be >= 1, got 0"),
    (["--rounds", "-3"], "rounds: must be >= 1, got -3"),
    (["--prune", "1.5"], "federated.prune: must be >= 0 and < 1, got 1.5"),
    (["--lr", "-1"], "lr: must be > 0"),
    (["--fl-devices", "0", "--cl-devices", "0"], "at least one device"),
    (["--broker", "http://somewhere"], "broker: must look like mqtt://"),
])
def test_a_bad_setting_is_one_line_naming_it(capsys, tmp_path, argv, says):
    assert says in one_line_error(capsys, ["run", "--out", str(tmp_path / "r"), *argv])
    assert not (tmp_path / "r").exists()   # refused before anything was written


def test_resume_needs_an_interrupted_run_and_its_own_settings(capsys, tmp_path):
    assert "holds no interrupted run" in one_line_error(capsys, ["run", "--resume", str(tmp_path)])
    line = one_line_error(capsys, ["run", "--resume", str(tmp_path), "--lr", "0.5"])
    assert "only --rounds may change (also given: --lr)" in line


def test_a_bad_config_file_is_one_line(capsys, tmp_path):
    cases = {"typo.toml": ("rounds = 2\nbogus = 1\n", "unknown setting 'bogus'"),
             "syntax.toml": ("rounds = \n", "not valid TOML"),
             "two.toml": ('rounds = "two"\n', "rounds: must be an integer, got 'two'"),
             "sect.toml": ("[federated]\nprune = 2.0\n", "federated.prune: must be >= 0 and < 1")}
    for name, (text, says) in cases.items():
        (tmp_path / name).write_text(text)
        assert says in one_line_error(capsys, ["run", "--config", str(tmp_path / name)])
    assert "no such config file" in one_line_error(capsys, ["run", "--config", str(tmp_path / "missing.toml")])


def test_flags_out_of_range_are_refused_by_the_parser(capsys):
    for argv in (["run", "--devices", "0"], ["serve", "--wait-devices", "0"], ["run", "--strategy", "bogus"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert "Traceback" not in capsys.readouterr().err


def test_an_unreachable_broker_is_one_line_and_leaves_nothing(capsys, tmp_path, monkeypatch, fashion):
    monkeypatch.chdir(tmp_path)
    port = free_port()   # nothing listens there
    line = one_line_error(capsys, ["run", "--broker", f"mqtt://127.0.0.1:{port}", *SMALL])
    assert f"cannot reach the broker at 127.0.0.1:{port}: Connection refused" in line
    line = one_line_error(capsys, ["run", "--broker", "mqtt://no-such-host.invalid:1883", *SMALL])
    assert "cannot reach the broker at no-such-host.invalid:1883" in line
    assert not any((tmp_path / "runs").iterdir())   # the run folders it had made are taken back


def test_a_user_folder_is_never_emptied(capsys, tmp_path, fashion, embedded):
    mine = tmp_path / "out" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("my notes")
    argv = ["run", "--rounds", "1", "--broker", embedded, "--out", str(mine.parent), *SMALL]
    line = one_line_error(capsys, argv)
    assert f"out: {mine.parent} is not empty" in line and "--overwrite" in line
    assert mine.read_text() == "my notes" and sorted(os.listdir(mine.parent)) == ["notes.txt"]
    # --overwrite: the run's own outputs go in beside it; a second --overwrite replaces only those
    assert main([*argv, "--overwrite"]) == 0
    first = json.loads((mine.parent / "summary.json").read_text())
    assert main([*argv, "--overwrite", "--seed", "3"]) == 0
    again = json.loads((mine.parent / "summary.json").read_text())
    assert (first["seed"], again["seed"]) == (0, 3) and len(again["rounds"]) == 1
    assert mine.read_text() == "my notes"
    # --out at a file: refused, the file untouched
    assert "is a file" in one_line_error(capsys, ["run", "--broker", embedded, "--out", str(mine), *SMALL])
    assert mine.read_text() == "my notes"


def test_each_run_gets_a_new_folder_by_default(capsys, tmp_path, monkeypatch, fashion, embedded):
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--rounds", "1", "--broker", embedded, "--strategy", "fedavg", *SMALL]
    assert main(argv) == 0 and main(argv) == 0
    out = capsys.readouterr().out
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.startswith("fedavg-") for r in runs), runs
    for r in runs:
        assert f"runs/{r}/summary.json" in out
        assert json.loads((tmp_path / "runs" / r / "summary.json").read_text())["strategy"] == "fedavg"
    assert "after 1 round;" in out   # not "1 rounds"


def test_a_run_nobody_took_part_in_says_so_and_fails(capsys, tmp_path, fashion, embedded):
    argv = ["run", "--rounds", "1", "--broker", embedded, "--out", str(tmp_path / "r"), "--fl-devices", "1",
            "--cl-devices", "0", "--fl-uploaders", "1", "--silent", "pi-00", "--collect-timeout-s", "2",
            "--int8-every", "0", "--no-plot"]
    assert main(argv) == 1
    assert "no device took part in any round" in capsys.readouterr().err


def completed_rounds(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as c:
            return c.execute("SELECT COUNT(*) FROM rounds WHERE state = 'done'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_ctrl_c_stops_with_130_and_the_run_resumes(tmp_path, fashion, mosquitto):
    out = tmp_path / "r"
    # the terminal's Ctrl-C: SIGINT to the whole process group (host and every device)
    # each training task takes at least 0.5 s, so rounds 2..4 cannot all be over before the signal lands
    p = subprocess.Popen([sys.executable, "-m", "semifl.cli", "run", "--rounds", "4", "--broker", mosquitto,
                          "--out", str(out), "--pi-train-s", "0.5", *SMALL], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True,
                         # as from a terminal: a shell's background job (how CI may run us) ignores SIGINT
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    end = time.monotonic() + 120
    while completed_rounds(out / "state.db") < 1 and p.poll() is None and time.monotonic() < end:
        time.sleep(0.1)
    assert p.poll() is None, p.communicate()
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert f"go on with: semifl run --resume {out}" in err and "Traceback" not in err, err
    done = completed_rounds(out / "state.db")
    assert 1 <= done < 4
    assert main(["run", "--resume", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [m["round"] for m in summary["rounds"]] == [1, 2, 3, 4]
    assert summary["config"]["sim"]["fl_devices"] == 2   # the interrupted run's own settings


def test_verbose_says_who_joined_and_what_each_round_did(capsys, tmp_path, fashion, embedded):
    argv = ["run", "--rounds", "2", "--broker", embedded, "--out", str(tmp_path / "r"), *SMALL]
    assert main(argv) == 0
    quiet = capsys.readouterr().err
    assert main([*argv[:-len(SMALL)], *SMALL, "--overwrite", "-v"]) == 0
    loud = capsys.readouterr().err
    assert "joined" not in quiet and "round 1: accuracy" not in quiet
    for dev in ("pi-00", "pi-01", "mcu-02"):
        assert f"{dev} joined" in loud
    assert "round 1: accuracy" in loud and "round 2: accuracy" in loud and "merged 1 FL, 1 CL" in loud


def test_reproduce_sweep_and_report_never_replace_a_users_files(capsys, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "accuracy.png").write_bytes(b"my picture")
    for argv, says in ((["reproduce", "semifl", "--rounds", "2", "--out", str(mine)], "holds no results.json"),
                       (["sweep", "--rounds", "2", "--out", str(mine)], "holds no sweep.json")):
        assert says in one_line_error(capsys, argv)
    assert (mine / "accuracy.png").read_bytes() == b"my picture" and len(os.listdir(mine)) == 1
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"strategy": "semifl", "rounds": [{"round": 1}], "final_accuracy": 0.5,
                                                  "devices": []}))
    assert "exists; give --overwrite" in one_line_error(capsys, ["report", str(run), "--out", str(mine / "accuracy.png")])
    assert (mine / "accuracy.png").read_bytes() == b"my picture"
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--s", "0.3,2"])
    assert e.value.code == 2 and "each value must be in [0, 1]" in capsys.readouterr().err


def test_a_fleet_smaller_than_its_uploader_counts_is_said_before_the_run(capsys, tmp_path, fashion, embedded):
    from semifl.config import RunConfig

    notes = RunConfig.make(fl_devices=1, cl_devices=0).notes()
    assert notes == ["federated.fl_uploaders is 3 but the fleet has 1 FL device(s): every FL device uploads",
                     "federated.cl_uploaders is 2 but the fleet has 0 CL device(s): every CL device uploads"]
    assert RunConfig.make().notes() == [] and RunConfig.make(strategy="fedavg", cl_devices=0).notes() == []
    assert main(["run", "--devices", "1", "--rounds", "1", "--broker", embedded, "--out", str(tmp_path / "r"),
                 "--int8-every", "0", "--no-plot"]) == 0
    err = capsys.readouterr().err
    assert "note: federated.fl_uploaders is 3 but the fleet has 1 FL device(s)" in err
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["rounds"][0]["participants"]["fl"] == ["pi-00"]
