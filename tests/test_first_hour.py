"""A stranger's first commands fail early, in one line, and write nothing they did not ask for."""
import importlib.util
from pathlib import Path

import pytest

from semifl.cli import main as cli

REPO = Path(__file__).resolve().parents[1]


def tracked_cards():
    return {p.name: p.read_bytes() for p in (REPO / "models" / "cards").glob("*.md")}


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed")
def test_export_without_tensorflow_says_so_at_once_and_writes_nothing(tmp_path, capsys):
    cards = tracked_cards()
    out = tmp_path / "export"
    assert cli(["models", "export", "mlp-fmnist", "--out", str(out)]) == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert cap.out == "" and len(lines) == 1 and "tensorflow" in lines[0] and "pip install -e .[export" in lines[0]
    assert "Traceback" not in cap.err
    assert not out.exists() and list(tmp_path.iterdir()) == [] and tracked_cards() == cards


@pytest.fixture
def export_modules_present(monkeypatch):
    """What export checks before it trains, with TensorFlow and the runtimes taken as installed."""
    import semifl.models.export as export

    monkeypatch.setattr(export, "missing_modules", lambda: [])
    calls = []
    monkeypatch.setattr(export, "export", lambda *a, **kw: calls.append(a) or pytest.fail("export ran"))
    return calls


def test_export_requires_out(capsys, export_modules_present):
    assert cli(["models", "export", "mlp-fmnist"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and export_modules_present == []


def test_export_refuses_a_non_empty_out_without_overwrite(tmp_path, capsys, export_modules_present):
    (tmp_path / "mine.txt").write_text("keep me")
    assert cli(["models", "export", "mlp-fmnist", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "--overwrite" in err[0]
    assert (tmp_path / "mine.txt").read_text() == "keep me" and export_modules_present == []


def test_export_of_an_unknown_model_is_one_line(tmp_path, capsys):
    assert cli(["models", "export", "nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'nope'" in err[0] and not (tmp_path / "x").exists()


def finished_run(folder: Path, strategy: str, accuracy: float, joules: tuple[float, float]) -> Path:
    import json

    folder.mkdir(parents=True)
    devices = [{"id": "pi-0", "device_class": "pi", "energy_j": joules[0], "meter": "virtual"},
               {"id": "mcu-1", "device_class": "mcu", "energy_j": joules[1], "meter": "virtual"}]
    (folder / "summary.json").write_text(json.dumps(
        {"strategy": strategy, "rounds": [{}] * 12, "final_accuracy": accuracy, "devices": devices}))
    return folder


def test_report_prints_an_aligned_table(tmp_path, capsys):
    a = finished_run(tmp_path / "a", "semifl", 0.4, (3.0, 1.5))
    b = finished_run(tmp_path / "a-much-longer-name", "fedavg", 0.8125, (20.25, 2.0))
    assert cli(["report", str(a), str(b), "--out", str(tmp_path / "e.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rule, row_a, row_b, wrote = lines
    cols = ["run", "strategy", "rounds", "final accuracy %", "energy J", "J per class", "meter"]
    starts = [header.index(c) for c in cols]
    assert starts == sorted(starts) and set(rule) == {"-", " "}
    for row in (row_a, row_b):   # every cell sits in its column: left-aligned text, right-aligned numbers
        assert row[starts[1]:].split()[0] in ("semifl", "fedavg")
        ends = [header.index(c) + len(c) for c in ("rounds", "final accuracy %", "energy J")]
        assert all(row[e - 1] != " " and row[e] == " " for e in ends), (row, ends)
    assert row_a.split() == [str(a), "semifl", "12", "40.00", "4.5", "mcu", "1.5,", "pi", "3.0", "virtual"]
    assert row_b.split()[1:5] == ["fedavg", "12", "81.25", "22.2"]
    assert wrote == f"wrote {tmp_path / 'e.png'}" and (tmp_path / "e.png").exists()


def test_report_of_an_unfinished_run_is_one_line(tmp_path, capsys):
    a = finished_run(tmp_path / "a", "semifl", 0.4, (3.0, 1.5))
    (tmp_path / "b").mkdir()
    assert cli(["report", str(a), str(tmp_path / "b"), "--out", str(tmp_path / "e.png")]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == f"semifl report: {tmp_path / 'b'} has no summary.json (the run did not finish?)\n"
    assert not (tmp_path / "e.png").exists()


def test_round_axes_have_whole_round_ticks(tmp_path, monkeypatch):
    """Three rounds used to be ticked 1.0, 1.25, 1.5, ...: a plot over rounds ticks whole rounds only."""
    import matplotlib.figure

    from semifl.experiments.reproduce import plot
    from semifl.service.report import plot_rounds

    ticks = []
    save = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **kw):
        fig.canvas.draw()
        ticks.append([ax.get_xticks() for ax in fig.axes])
        return save(fig, *a, **kw)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    plot_rounds(tmp_path, [{"round": i, "accuracy": 0.1 * i, "bytes_up": 1e6, "bytes_down": 2e6} for i in (1, 2, 3)], "t")
    plot({"baselines": {"semifl": {"accuracy": [0.1, 0.2, 0.3], "bytes_up": [1, 2, 3]}}}, tmp_path)
    (a1, a2), (b1, _) = ticks   # rounds.png's two panels share the round axis; accuracy.png's left one
    for t in (a1, a2, b1):
        assert len(t) >= 2 and all(float(v).is_integer() for v in t), t


@pytest.mark.parametrize("command", [["reproduce", "semifl"], ["sweep"]])
@pytest.mark.parametrize("rounds", ["0", "-5"])
def test_reproduce_and_sweep_refuse_fewer_than_one_round(tmp_path, capsys, command, rounds):
    with pytest.raises(SystemExit) as e:
        cli(command + ["--rounds", rounds, "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.strip().splitlines()[-1].endswith(f"argument --rounds: must be >= 1, got {rounds}")
    assert not (tmp_path / "out").exists()


def test_reproduce_table_sets_the_seed_only_against_its_own_round():
    """The seed's published accuracies are at round 1000: a 50-round table names round 50 and leaves them
    out; a 1000-round table sets them against ours at round 1000."""
    from semifl.experiments.baselines import SEED_FINALS, SEED_LAST50 as SEED_MEANS
    from semifl.experiments.reproduce import table

    def results(n):
        c = {"accuracy": [0.5] * (n - 1) + [0.7], "bytes_up": [1e6] * n}
        return {"rounds": n, "seed": 0, "baselines": {"cl": c, "semifl": c}}

    short = table(results(50))
    assert "ours at round 50" in short and "rounds 951–1000" in short and "| cl | — | 50.40 % | — |" in short
    assert all(f"{v:.2f}" not in short for v in list(SEED_FINALS.values()) + list(SEED_MEANS.values()))
    full = table(results(1000))   # the seed's mean over its last 50 rounds against ours, and its final beside ours
    assert "| baseline | seed, mean of rounds 951–1000 | ours, mean of rounds 951–1000 |" in full
    assert f"| cl | {SEED_MEANS['cl']:.2f} % | 50.40 % | {50.40 - SEED_MEANS['cl']:.2f} | 70.00 % (seed {SEED_FINALS['cl']:.2f} %) |" in full
