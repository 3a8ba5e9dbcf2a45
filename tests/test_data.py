"""Data loading (IDX, CSV, dispatch) and partitioners. Fast: no Fashion-MNIST needed."""
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from semifl.learn import partition as P
from semifl.learn.data import (DataNotFound, Dataset, load_csv, load_dataset, load_idx_dataset,
                               partition_by_class, partition_iid, read_idx, to_float)

SHARED = Path(__file__).parents[2] / "shared" / "data"
MNIST = SHARED / "mnist"


def _labels(n=3000, n_classes=10, seed=1):
    return np.random.default_rng(seed).integers(0, n_classes, n).astype(np.uint8)


def _write_idx(path, arr, dims=None, magic=b"\x00\x00\x08"):
    dims = arr.shape if dims is None else dims
    raw = magic + bytes([len(dims)]) + struct.pack(">" + "I" * len(dims), *dims) + arr.astype(np.uint8).tobytes()
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(raw)


def _assert_disjoint(parts):
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx)


def _assert_sorted(parts):
    for p in parts:
        assert np.all(np.diff(p) > 0)


# ---------------------------------------------------------------- IDX

@pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST subset not available at {MNIST} (../shared/data/mnist)")
def test_mnist_idx():
    ds = load_idx_dataset(str(MNIST))
    assert ds.x_train.shape == (10000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.uint8
    assert ds.y_train[0] == 5 and int(ds.x_train[0].sum(dtype=np.int64)) == 27525
    assert ds.n_classes == 10 and ds.classes is None
    assert load_dataset(str(MNIST)).y_test.tolist() == ds.y_test.tolist()
    f = to_float(ds.x_train[:2])
    assert f.dtype == np.float32 and 0.0 <= f.min() and f.max() <= 1.0


def test_idx_roundtrip_and_malformed(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "ok.gz", a)
    assert np.array_equal(read_idx(str(tmp_path / "ok.gz")), a)
    _write_idx(tmp_path / "magic", a, magic=b"\x00\x00\x0d")  # float32 type code
    with pytest.raises(ValueError, match="not a uint8 IDX"):
        read_idx(str(tmp_path / "magic"))
    (tmp_path / "junk").write_bytes(b"PK\x03\x04hello")
    with pytest.raises(ValueError, match="not a uint8 IDX"):
        read_idx(str(tmp_path / "junk"))
    _write_idx(tmp_path / "short", a, dims=(3, 3, 4))  # header claims more than there is
    with pytest.raises(ValueError, match="header says"):
        read_idx(str(tmp_path / "short"))
    (tmp_path / "hdr").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(str(tmp_path / "hdr"))


def test_idx_dir_missing_files(tmp_path):
    with pytest.raises(DataNotFound, match="dataset-fashion-mnist"):
        load_idx_dataset(str(tmp_path))
    with pytest.raises(DataNotFound):
        load_idx_dataset(str(tmp_path / "nope"))


# ---------------------------------------------------------------- partitioners

def test_one_class():
    y = _labels()
    parts = P.one_class(y, 6, 10)
    assert len(parts) == 6
    for i, p in enumerate(parts):
        assert np.array_equal(p, np.flatnonzero(y == i))
    _assert_disjoint(parts)
    parts = P.one_class(y, 10, 10)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(y)))
    assert np.array_equal(P.one_class(y, 12, 10)[11], parts[1])  # wraps round
    assert [p.tolist() for p in partition_by_class(y, [[k] for k in range(6)])] == [p.tolist() for p in P.one_class(y, 6, 10)]


def test_iid():
    parts = P.iid(1003, 7, seed=3)
    assert [p.tolist() for p in parts] == [p.tolist() for p in P.iid(1003, 7, seed=3)]
    assert [p.tolist() for p in parts] != [p.tolist() for p in P.iid(1003, 7, seed=4)]
    _assert_disjoint(parts)
    _assert_sorted(parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1003))
    assert {len(p) for p in parts} <= {143, 144}
    assert [p.tolist() for p in partition_iid(1003, 7, 3)] == [p.tolist() for p in parts]


def test_k_classes():
    y = _labels()
    parts = P.k_classes(y, 10, 2, seed=0)
    assert [p.tolist() for p in parts] == [p.tolist() for p in P.k_classes(y, 10, 2, seed=0)]
    assert [p.tolist() for p in parts] != [p.tolist() for p in P.k_classes(y, 10, 2, seed=1)]
    _assert_disjoint(parts)
    _assert_sorted(parts)
    for i, p in enumerate(parts):  # round-robin: device i holds (2i, 2i+1) % 10
        assert set(np.unique(y[p]).tolist()) == {(2 * i) % 10, (2 * i + 1) % 10}
    # every class held by 2 devices, split in near-equal halves covering the class
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(y)))
    for c in range(10):
        counts = [int((y[p] == c).sum()) for p in parts if (y[p] == c).any()]
        assert len(counts) == 2 and abs(counts[0] - counts[1]) <= 1 and sum(counts) == (y == c).sum()
    # fixed blocks (IoTSL style): exactly `block` samples per class per device
    blocked = P.k_classes(y, 10, 2, seed=0, block=100)
    _assert_disjoint(blocked)
    for i, p in enumerate(blocked):
        assert np.bincount(y[p], minlength=10)[[(2 * i) % 10, (2 * i + 1) % 10]].tolist() == [100, 100]
        assert len(p) == 200
    with pytest.raises(ValueError, match="fewer than block"):
        P.k_classes(y, 10, 2, seed=0, block=1000)
    with pytest.raises(ValueError, match="k must be"):
        P.k_classes(y, 3, 11, seed=0)
    # fewer devices than classes: unheld classes left out
    few = P.k_classes(y, 2, 3, seed=0)
    assert [sorted(np.unique(y[p]).tolist()) for p in few] == [[0, 1, 2], [3, 4, 5]]
    assert all(len(p) == (np.isin(y, np.unique(y[p]))).sum() for p in few)


def _max_share(parts, y):
    return float(np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in parts]))


def test_dirichlet():
    y = _labels(5000)
    parts = P.dirichlet(y, 20, 0.5, seed=0)
    assert [p.tolist() for p in parts] == [p.tolist() for p in P.dirichlet(y, 20, 0.5, seed=0)]
    assert [p.tolist() for p in parts] != [p.tolist() for p in P.dirichlet(y, 20, 0.5, seed=1)]
    _assert_disjoint(parts)
    _assert_sorted(parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(y)))
    skewed, flat = P.dirichlet(y, 20, 0.1, seed=0), P.dirichlet(y, 20, 100.0, seed=0)
    assert _max_share(skewed, y) > 0.5 > 0.2 > _max_share(flat, y)
    for mins in (10, 60):
        assert min(len(p) for p in P.dirichlet(y, 20, 0.1, seed=2, min_size=mins)) >= mins
    with pytest.raises(ValueError, match="cannot give"):
        P.dirichlet(y[:100], 20, 0.1, seed=0, min_size=10)
    with pytest.raises(ValueError, match="no split"):
        P.dirichlet(y[:250], 20, 0.01, seed=0, min_size=12, max_tries=3)
    with pytest.raises(ValueError, match="alpha"):
        P.dirichlet(y, 4, 0, seed=0)


def test_dispatch_and_describe():
    y = _labels()
    assert [p.tolist() for p in P.partition("class", y, 4, 0)] == [p.tolist() for p in P.one_class(y, 4, 10)]
    assert [p.tolist() for p in P.partition("k-classes", y, 5, 7, k=2)] == \
        [p.tolist() for p in P.k_classes(y, 5, 2, 7)]
    assert [p.tolist() for p in P.partition("dirichlet", y, 5, 7, alpha=0.3)] == \
        [p.tolist() for p in P.dirichlet(y, 5, 0.3, 7)]
    assert [p.tolist() for p in P.partition("iid", y, 5, 7)] == [p.tolist() for p in P.iid(len(y), 5, 7)]
    with pytest.raises(ValueError, match="unknown partition"):
        P.partition("shards", y, 5, 0)
    parts = P.partition("k-classes", y, 5, 0, k=2)
    d = P.describe(parts, y, 10)
    assert list(d) == [0, 1, 2, 3, 4]
    assert d[0]["n"] == len(parts[0]) == sum(d[0]["hist"]) and len(d[0]["hist"]) == 10
    assert [c for c, v in enumerate(d[1]["hist"]) if v] == [2, 3]
    json.dumps(d)


# ---------------------------------------------------------------- CSV

CSV = """temp,humidity,label
21.5,40,hot
19.0,45,cold
22.1,38,hot
18.2,50,cold
25.0,30,hot
17.5,55,cold
23.3,35,hot
16.0,60,cold
20.0,42,mild
20.5,41,mild
"""


def test_csv_roundtrip(tmp_path):
    p = tmp_path / "weather.csv"
    p.write_text(CSV)
    ds = load_csv(str(p), test_fraction=0.25, seed=0)
    assert isinstance(ds, Dataset) and ds.name == "weather"
    assert ds.classes == ["cold", "hot", "mild"] and ds.n_classes == 3
    assert ds.x_train.dtype == np.float32 and ds.x_train.shape[1] == 2
    assert len(ds.y_train) + len(ds.y_test) == 10
    assert sorted(ds.y_test.tolist()) == [0, 1, 2]  # stratified: every class in test
    # rows round-trip: every (features, label) pair is in the file
    lines = [ln.split(",") for ln in CSV.strip().splitlines()[1:]]
    orig = {(float(a), float(b), c) for a, b, c in lines}
    got = {(float(np.float32(a)), float(np.float32(b)), ds.classes[c])
           for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)) for (a, b), c in zip(x, y)}
    assert got == {(float(np.float32(a)), float(np.float32(b)), c) for a, b, c in orig}
    assert to_float(ds.x_train) is ds.x_train or np.array_equal(to_float(ds.x_train), ds.x_train)
    # deterministic by seed, gz gives the same, label by name / index
    again = load_csv(str(p), test_fraction=0.25, seed=0)
    assert np.array_equal(again.x_test, ds.x_test)
    gz = tmp_path / "weather.csv.gz"
    gz.write_bytes(gzip.compress(CSV.encode()))
    assert np.array_equal(load_csv(str(gz), test_fraction=0.25).x_train, ds.x_train)
    by_name = load_csv(str(p), label_col="label", test_fraction=0.25)
    assert np.array_equal(by_name.y_train, ds.y_train)


def test_csv_int_labels_first_col_no_header(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("".join(f"{i % 3};{i}.5;{2 * i}\n" for i in range(30)))
    ds = load_csv(str(p), label_col=0, delimiter=";", name="d3")
    assert ds.name == "d3" and ds.classes is None and ds.n_classes == 3
    assert ds.y_train.dtype == np.uint8 and len(ds.y_test) == 6
    for x, y in zip(ds.x_train, ds.y_train):
        i = int(x[0])
        assert y == i % 3 and x[1] == 2 * i


def test_csv_errors(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("a,b,y\n1,2,x\n3,4,y\n5,6\n7,8,x\n")
    with pytest.raises(ValueError, match=r"bad\.csv:4: 2 fields, expected 3"):
        load_csv(str(p))
    p.write_text("1,2,x\n3,4,y\n5,oops,y\n")
    with pytest.raises(ValueError, match=r"bad\.csv:3: column 2 is not a finite number: 'oops'"):
        load_csv(str(p))
    p.write_text("a,b,y\n1,2,x\n3,nan,y\n")
    with pytest.raises(ValueError, match=r":3: column 2 \('b'\)"):
        load_csv(str(p))
    p.write_text("a,b,y\n")
    with pytest.raises(ValueError, match="no data rows"):
        load_csv(str(p))
    with pytest.raises(DataNotFound):
        load_csv(str(tmp_path / "missing.csv"))


def test_load_dataset_dispatch(tmp_path, monkeypatch):
    csvp = tmp_path / "w.csv"
    csvp.write_text(CSV)
    assert load_dataset(str(csvp)).classes == ["cold", "hot", "mild"]
    idx = tmp_path / "idx"
    idx.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        _write_idx(idx / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 4, 4)))
        _write_idx(idx / f"{split}-labels-idx1-ubyte", np.arange(n) % 3)
    ds = load_dataset(str(idx))
    assert ds.x_train.shape == (20, 16) and ds.n_classes == 3 and ds.name == "idx"
    with pytest.raises(DataNotFound):
        load_dataset(str(tmp_path / "nope"))
    with pytest.raises(DataNotFound):
        load_dataset(str(tmp_path / "nope.csv.gz"))
    (tmp_path / "x.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match="unsupported"):
        load_dataset(str(tmp_path / "x.txt"))
    import semifl.learn.data as data
    seen = []
    monkeypatch.setattr(data, "load_idx_dataset", lambda root=None, name=None: seen.append(root) or "fm")
    assert data.load_dataset(None) == "fm" and seen == [None]
