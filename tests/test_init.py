"""`--init`: a run starts from the SemiFL seed's own initial weights (its get_initial_model.mat, MATLAB
v7.3 = HDF5, or the same as an .npz), a file that does not fit the model is refused naming the layer,
and `semifl reproduce` records what it started from."""
import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from semifl.app.inprocess import run_inprocess
from semifl.cli import main
from semifl.config import RunConfig
from semifl.experiments.baselines import BASELINES, SEED_LAST50, SEED_LR
from semifl.learn import initial, mlp

SEED_FILES = Path(__file__).resolve().parents[2] / "shared" / "data" / "semifl-seed"
needs_seed_files = pytest.mark.skipif(not (SEED_FILES / "get_initial_model.mat").exists(),
                                      reason=f"the SemiFL seed's files are not at {SEED_FILES} (CI has ../shared "
                                             "beside the checkout)")
LAYERS = mlp.SEMIFL_LAYERS


def seed_like(rng) -> dict[str, np.ndarray]:
    """Weights in the seed's .npz layout: W_i (out, in) as MATLAB holds them, b_i (out,)."""
    out = {}
    for i, (a, b) in enumerate(zip(LAYERS[:-1], LAYERS[1:]), start=1):
        out[f"W{i}"], out[f"b{i}"] = rng.normal(0, 0.1, (b, a)), rng.normal(0, 0.1, b)
    return out


def write_mat(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file as the seed's: cells of object references into #refs#, each array stored as
    MATLAB does (column-major: h5py sees the transpose)."""
    n = len([k for k in arrays if k.startswith("W")])
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")

        def cell(name, keys):
            r = [refs.create_dataset(k, data=arrays[k].T if arrays[k].ndim == 2 else arrays[k][None, :]).ref
                 for k in keys]
            d = f.create_dataset(name, data=np.array([r], dtype=h5py.ref_dtype))
            d.attrs["MATLAB_class"] = np.bytes_(b"cell")
        cell("global_net_IW", ["W1"])
        cell("global_net_LW", [f"W{i}" for i in range(2, n + 1)])
        cell("global_net_b", [f"b{i}" for i in range(1, n + 1)])


@needs_seed_files
def test_the_seed_mat_holds_the_npz_arrays():
    mat = initial.load(SEED_FILES / "get_initial_model.mat")
    z = np.load(SEED_FILES / "initial_model.npz")
    for i in range(1, 5):
        w, b = mat[2 * (i - 1)], mat[2 * (i - 1) + 1]
        # the .npz is MATLAB's (out, in); the model's layers are (in, out)
        assert w.shape == z[f"W{i}"].shape[::-1]
        np.testing.assert_array_equal(w, z[f"W{i}"].T.astype(np.float32), err_msg=f"W{i}")
        np.testing.assert_array_equal(b, z[f"b{i}"].astype(np.float32), err_msg=f"b{i}")
    # read without the loader too: every array the cells reference, against the .npz, in float64
    with h5py.File(SEED_FILES / "get_initial_model.mat", "r") as f:
        got = [f[r][()] for key in ("global_net_IW", "global_net_LW") for r in f[key][()].ravel()]
        bias = [f[r][()] for r in f["global_net_b"][()].ravel()]
    for i in range(4):
        np.testing.assert_array_equal(got[i].T, z[f"W{i + 1}"])
        np.testing.assert_array_equal(bias[i].ravel(), z[f"b{i + 1}"])
    np.testing.assert_array_equal(np.concatenate([p.ravel() for p in initial.load(SEED_FILES / "initial_model.npz")]),
                                  np.concatenate([p.ravel() for p in mat]))
    # what makes these weights matter for SemiFL: pruning at P = 0.3 takes first-layer entries only
    masks = mlp.prune_mask(mat, 0.3)
    assert (~masks[0]).sum() == int(np.ceil(0.3 * sum(p.size for p in mat)))
    assert all(m.all() for m in masks[1:])


@needs_seed_files
def test_the_seed_curves_give_the_means_a_reproduction_is_held_to():
    curves = json.loads((SEED_FILES / "published_curves.json").read_text())
    for name, mean in SEED_LAST50.items():
        assert 100 * np.mean(curves[name]["accuracy"][950:1000]) == pytest.approx(mean, abs=0.005)


def test_a_mat_in_the_seed_layout_reads_as_the_npz(tmp_path):
    arrays = seed_like(np.random.default_rng(1))
    write_mat(tmp_path / "init.mat", arrays)
    np.savez(tmp_path / "init.npz", **arrays)
    a, b = initial.load(tmp_path / "init.mat"), initial.load(tmp_path / "init.npz")
    order = [k for i in range(1, 5) for k in (f"W{i}", f"b{i}")]   # the model's [W1, b1, W2, ...]
    for x, y, k in zip(a, b, order):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, (arrays[k].T if k[0] == "W" else arrays[k]).astype(np.float32), err_msg=k)
    # a run's own final_model.npz (arr_0.., our orientation) reads back as the same parameters
    np.savez(tmp_path / "final_model.npz", *a)
    for x, y in zip(initial.load(tmp_path / "final_model.npz"), a):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("fmt", ["npz", "mat"])
def test_a_file_that_does_not_fit_names_the_layer(tmp_path, fmt):
    arrays = seed_like(np.random.default_rng(2))
    arrays["W3"] = arrays["W3"][:, :40]   # LW{3,2}: 50 x 40 where the MLP has 50 x 100
    path = tmp_path / f"bad.{fmt}"
    np.savez(path, **arrays) if fmt == "npz" else write_mat(path, arrays)
    with pytest.raises(initial.InitError, match=r"layer 3's weights LW\{3,2\} \(W3\) are 50x40 .* needs 50x100"):
        initial.load(path)
    del arrays["b4"]
    np.savez(tmp_path / "short.npz", **{k: v for k, v in arrays.items() if k != "W3"} | {"W3": np.zeros((50, 100))})
    with pytest.raises(initial.InitError, match="no b4"):
        initial.load(tmp_path / "short.npz")


def test_semifl_run_refuses_a_wrong_init_before_writing_anything(tmp_path, capsys):
    arrays = seed_like(np.random.default_rng(3))
    arrays["W2"] = np.zeros((90, 50))
    np.savez(tmp_path / "bad.npz", **arrays)
    out = tmp_path / "run"
    assert main(["run", "--rounds", "1", "--init", str(tmp_path / "bad.npz"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "LW{2,1} (W2) are 90x50" in err and "needs 100x50" in err
    assert not out.exists()
    assert main(["run", "--rounds", "1", "--init", str(tmp_path / "missing.mat"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err and not out.exists()


def test_init_is_the_model_a_run_starts_from(tmp_path, fashion):
    arrays = seed_like(np.random.default_rng(4))
    np.savez(tmp_path / "init.npz", **arrays)
    glorot_cfg = RunConfig.make(**{**BASELINES["fl"], "rounds": 1, "lr": SEED_LR})
    by_config = run_inprocess(glorot_cfg.replace(init=str(tmp_path / "init.npz")), fashion).params
    given = run_inprocess(glorot_cfg, fashion, init=initial.load(tmp_path / "init.npz")).params
    glorot = run_inprocess(glorot_cfg, fashion).params
    assert all(np.array_equal(a, b) for a, b in zip(by_config, given))
    assert not np.array_equal(by_config[0], glorot[0])


def test_reproduce_records_its_init_and_sets_ours_against_the_seed_curve(tmp_path, fashion):
    arrays = seed_like(np.random.default_rng(5))
    np.savez(tmp_path / "init.npz", **arrays)
    curves = {"fl": {"accuracy": [0.1, 0.2, 0.3, 0.4]}}
    (tmp_path / "curves.json").write_text(json.dumps(curves))
    out = tmp_path / "rep"
    assert main(["reproduce", "semifl", "--rounds", "3", "--baselines", "fl", "--init", str(tmp_path / "init.npz"),
                 "--seed-curves", str(tmp_path / "curves.json"), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["init"]["kind"] == "file" and res["init"]["format"] == "npz"
    assert res["command"].startswith("semifl reproduce semifl --rounds 3 --baselines fl --init ")
    assert res["init"]["sha256"] == hashlib.sha256((tmp_path / "init.npz").read_bytes()).hexdigest()
    assert res["baselines"]["fl"]["config"]["init"] == str(tmp_path / "init.npz")
    ours = 100 * np.mean(res["baselines"]["fl"]["accuracy"])
    row = next(r for r in (out / "table.md").read_text().splitlines() if r.startswith("| fl |"))
    assert row.startswith(f"| fl | 20.00 % | {ours:.2f} % | {ours - 20:+.2f} |")   # the seed's rounds 1-3 mean
    # the same folder from Glorot weights is another setup: its results replace these, not join them
    assert main(["reproduce", "semifl", "--rounds", "3", "--baselines", "semifl", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["init"] == {"kind": "glorot-uniform", "seed": 0} and set(res["baselines"]) == {"semifl"}
