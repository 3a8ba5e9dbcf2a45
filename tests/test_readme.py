"""The README is what a stranger runs: its two set-up commands are the ones CI runs, and every example
in its table states the time and result that benchmarks/bench_examples.py measured for it."""
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_examples  # noqa: E402


def readme() -> str:
    return (REPO / "README.md").read_text()


def test_exactly_two_setup_commands_and_ci_runs_the_test_one():
    blocks = re.findall(r"```bash\n(.*?)```", readme(), re.S)
    assert blocks[:2] == ["bash tools/install.sh && .venv/bin/semifl run --rounds 20\n",
                          "bash tools/install.sh --dev && .venv/bin/python -m pytest -q\n"]
    assert blocks[1].strip() in (REPO / ".ci" / "run").read_text()


def test_every_example_states_what_it_measured():
    measured = json.loads(bench_examples.RESULTS.read_text())["examples"]
    rows = [ln for ln in readme().splitlines() if ln.startswith("| `semifl ")]
    assert set(measured) == set(bench_examples.EXAMPLES)
    for name, cmd in bench_examples.EXAMPLES.items():
        r = measured[name]
        assert r["command"] == cmd and r["rc"] == 0, (name, r)
        row = [ln for ln in rows if ln.startswith(f"| `{cmd}` |")]
        assert len(row) == 1, f"README's examples table has no row for `{cmd}`"
        assert bench_examples.cell(r) in row[0], (row[0], bench_examples.cell(r))
        accs = r["final_accuracy"].values() if isinstance(r["final_accuracy"], dict) else [r["final_accuracy"]]
        if name not in ("reproduce", "sweep"):   # a run example ends clearly above chance (10 classes)
            assert min(accs) > 0.30, (name, r["final_accuracy"])
        assert r["max_progress_gap_s"] < 30, (name, "the live display stood still for", r["max_progress_gap_s"])
