"""The IoTSL table assembled from runs of one cell each (`bench_iotsl.py --cells`)."""
import importlib.util
import json
import os
from pathlib import Path
from unittest import mock

import pytest

spec = importlib.util.spec_from_file_location("bench_iotsl", Path(__file__).parents[1] / "benchmarks" / "bench_iotsl.py")
bench = importlib.util.module_from_spec(spec)
# the script pins BLAS to one thread for its runs; that must not reach the processes later tests start
# (a host on one BLAS thread sums in another order than this process: test_restart compares bit for bit)
with mock.patch.dict(os.environ):
    spec.loader.exec_module(bench)

SETTINGS = {"block": 300, "epochs": 8, "gen_steps": 3000, "gen_dim": 32, "gen_batch": 16, "sigma": 1.5,
            "test_n": 2000, "lr": 0.05, "max_epsilon": 10.0}


def cell(k, sl, iotsl, eps, settings=None):
    c = {"k": k, "sl": {"best": sl, "epoch_to_target": 8}, "iotsl": {"best": iotsl, "epoch_to_target": 1},
         "comm_params_to_target": {"sl": 100, "iotsl": 30}, "comm_reduction": 0.7, "pretrain_accuracy": 0.6,
         "generators": [{"device": f"D{i}", "epsilon": eps, "delta": 1e-5} for i in (1, 2)]}
    return {**c, "settings": settings} if settings else c


def run_dir(root, name, dataset, cells, settings=SETTINGS, seconds=60.0):
    d = root / name
    d.mkdir()
    (d / f"iotsl_{dataset}.json").write_text(json.dumps(
        {"dataset": dataset, "settings": {**settings, "dataset": dataset}, "seconds": seconds, "cells": cells}))
    return d


def test_cells_of_separate_runs_make_one_table_each_at_its_own_scale(tmp_path):
    # a run from before cells carried their settings, and one that ran smaller blocks
    a = run_dir(tmp_path, "a", "mnist", [cell(4, 0.75, 0.88, 2.5)])
    b = run_dir(tmp_path, "b", "mnist", [cell(8, 0.9, 0.93, 1.2, {**SETTINGS, "block": 215})], seconds=90.0)
    c = run_dir(tmp_path, "c", "fashion", [cell(2, 0.3, 0.7, 5.0)])
    out = tmp_path / "out"
    out.mkdir()
    # a summary already there: its MNIST generators belong to cells the new table replaces
    (out / "iotsl.json").write_text(json.dumps({"epsilon_by_generator": {"mnist/2/D1": 9.0}}))
    bench.main(["--cells", str(b), str(c), str(a), "--out", str(out)])

    merged = json.loads((out / "iotsl.json").read_text())
    m = merged["mnist"]
    assert m["classes_per_device"] == [4, 8] and m["sl"] == [0.75, 0.9] and m["iotsl"] == [0.88, 0.93]
    assert m["scale"]["block"] == [300, 215] and m["scale"]["gen_steps"] == 3000
    assert merged["fashion"]["classes_per_device"] == [2]
    assert sorted(merged["epsilon_by_generator"]) == ["fashion/2/D1", "fashion/2/D2", "mnist/4/D1", "mnist/4/D2",
                                                      "mnist/8/D1", "mnist/8/D2"]
    full = json.loads((out / "iotsl_mnist.json").read_text())
    assert full["seconds"] == 150.0 and len(full["settings"]["assembled_from"]) == 2
    assert [c["settings"]["block"] for c in full["cells"]] == [300, 215]


def test_two_runs_of_one_cell_are_refused(tmp_path):
    a = run_dir(tmp_path, "a", "mnist", [cell(4, 0.75, 0.88, 2.5)])
    b = run_dir(tmp_path, "b", "mnist", [cell(4, 0.7, 0.9, 2.5, {**SETTINGS, "gen_steps": 8000})])
    with pytest.raises(SystemExit, match="mnist with 4 classes per device is in both"):
        bench.main(["--cells", str(a), str(b), "--out", str(tmp_path / "out")])
