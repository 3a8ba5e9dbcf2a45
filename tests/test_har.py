"""ARFF loading for HAR data (WISDM-2019's per-subject files): labels as the union of declared
activities, per-subject stratified 75/25 splits, standardization, malformed files refused."""
import os

import numpy as np
import pytest

from semifl.learn import har

ARFF = """% a comment
@relation person_activities_labeled
@attribute "ACTIVITY" { {acts} }
@attribute "X0" numeric
@attribute "XAVG" numeric
@attribute "class" { {sid} }
@data
{rows}
"""


def write(tmp, sid, acts, rows):
    body = "\n".join(f"{a},{x0},{xa},{sid}" for a, x0, xa in rows)
    (tmp / f"data_{sid}_accel_watch.arff").write_text(
        ARFF.replace("{acts}", ", ".join(acts)).replace("{sid}", str(sid)).replace("{rows}", body))


def test_subjects_splits_and_union_of_labels(tmp_path):
    write(tmp_path, 1600, ["A", "B"], [("A", i, 1.0) for i in range(8)] + [("B", 10 + i, 2.0) for i in range(4)])
    write(tmp_path, 1601, ["A", "C"], [("A", 3, 1.0), ("C", 7, 5.0), ("C", 8, 5.0), ("C", 9, 5.0)])
    d = har.load_har(str(tmp_path), standardize=False)
    assert d.classes == ["A", "B", "C"] and d.features == ["X0", "XAVG"]
    a, b = d.subjects
    assert (a.id, b.id) == ("1600", "1601")
    assert len(a.y_test) == 2 + 1 and len(a.y_train) == 6 + 3           # 25 % of 8 A's and of 4 B's
    assert sorted(b.y_train.tolist() + b.y_test.tolist()) == [0, 2, 2, 2]
    assert 0 in b.y_train.tolist()                                          # a lone window stays in train
    rows = np.concatenate([a.x_train, a.x_test])
    assert sorted(rows[:, 0].tolist()) == list(range(8)) + list(range(10, 14))
    s = har.load_har(str(tmp_path))
    xtr, _ = s.pooled()
    np.testing.assert_allclose(xtr.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(xtr.std(axis=0), 1, atol=1e-5)


def test_malformed_files_are_refused(tmp_path):
    (tmp_path / "bad.arff").write_text("@relation x\n@attribute a numeric\n@attribute c {A}\n@data\n1,A,3\n")
    with pytest.raises(ValueError, match="3 fields, the header declares 2"):
        har.load_har(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        har.load_har(str(tmp_path / "missing"))


def test_grid_view_pads_features():
    g = har.as_grid(np.arange(6, dtype=np.float32)[None], har.grid_side(6))
    assert g.shape == (1, 3, 3, 1) and g.reshape(-1).tolist() == [0, 1, 2, 3, 4, 5, 0, 0, 0]
    assert har.grid_side(91) == 10 and har.grid_side(100) == 10


@pytest.mark.skipif(not os.path.isdir(har.WISDM_DIR), reason="../shared/data/wisdm-2019 not here")
def test_wisdm_2019_loads_50_subjects_18_activities():
    d = har.load_har()
    assert len(d.subjects) == 50 and d.n_classes == 18 and len(d.features) == 91
    assert sum(len(s.y_train) + len(s.y_test) for s in d.subjects) == 18_211
