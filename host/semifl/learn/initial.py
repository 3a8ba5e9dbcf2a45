"""Initial global models from a file (`--init PATH`), so a run can start where the SemiFL seed's code
does: its `code/get_initial_model.mat`, a MATLAB v7.3 file (HDF5, read with h5py), or an `.npz`.

The .mat holds three cells of object references to arrays under `#refs#`: `global_net_IW` (IW{1,1}, the
input layer's weights), `global_net_LW` (LW{2,1}, LW{3,2}, ...) and `global_net_b` (b{1}, b{2}, ...).
MATLAB stores a layer's weights (out, in), column-major, so h5py shows them transposed: (in, out),
which is our layout (`mlp`: x @ W). An .npz holds either `W1..Wn`, `b1..bn` in MATLAB's orientation
(out, in), the seed files' `initial_model.npz`, or `arr_0..` in ours, as `semifl run` writes its
`final_model.npz`. Either way every array is checked against the architecture, and a mismatch names
the layer in the seed's terms.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from . import mlp


class InitError(ValueError):
    """The initial-model file cannot be read or does not fit the model; the message names the layer."""


def seed_name(i: int, kind: str) -> str:
    """MATLAB's name of layer i's (1-based) weights or bias: IW{1,1}, LW{i,i-1}, b{i}."""
    if kind == "b":
        return f"b{{{i}}}"
    return "IW{1,1}" if i == 1 else f"LW{{{i},{i - 1}}}"


def _arch(layers) -> str:
    return "-".join(str(n) for n in layers)


def load(path: str | Path, layers=mlp.SEMIFL_LAYERS) -> list[np.ndarray]:
    """The initial parameters in `path` as the model's list [W1 (in, out), b1, ...], float32."""
    p = Path(path)
    if not p.is_file():
        raise InitError(f"{p}: no such file (--init takes the seed's get_initial_model.mat or an .npz)")
    suffix = p.suffix.lower()
    if suffix == ".mat":
        weights, biases = _read_mat(p, len(layers) - 1)
    elif suffix == ".npz":
        weights, biases = _read_npz(p, layers)
    else:
        raise InitError(f"{p}: --init reads a MATLAB v7.3 .mat in the SemiFL seed's layout or an .npz, not {suffix or 'a file without a suffix'}")
    params = []
    for i, (fan_in, fan_out) in enumerate(zip(layers[:-1], layers[1:]), start=1):
        w, b = weights[i - 1], biases[i - 1].reshape(-1)
        if w.shape != (fan_in, fan_out):   # shown as MATLAB sees it, (out, in), the seed's own terms
            raise InitError(f"{p}: layer {i}'s weights {seed_name(i, 'W')} (W{i}) are {w.shape[1]}x{w.shape[0]} "
                            f"(out x in); the {_arch(layers)} MLP needs {fan_out}x{fan_in}")
        if b.size != fan_out:
            raise InitError(f"{p}: layer {i}'s bias {seed_name(i, 'b')} (b{i}) has {b.size} entries; the "
                            f"{_arch(layers)} MLP needs {fan_out}")
        for name, a in ((f"W{i}", w), (f"b{i}", b)):
            if not np.all(np.isfinite(a)):
                raise InitError(f"{p}: {name} holds {int((~np.isfinite(a)).sum())} non-finite values")
        params += [np.ascontiguousarray(w, np.float32), np.ascontiguousarray(b, np.float32)]
    return params


def _read_mat(p: Path, n: int) -> tuple[list, list]:
    try:
        import h5py
    except ImportError:
        raise InitError(f"{p}: reading a MATLAB v7.3 .mat needs h5py (pip install h5py)") from None
    try:
        f = h5py.File(p, "r")
    except OSError:
        raise InitError(f"{p}: not a MATLAB v7.3 (HDF5) file; save it in MATLAB with save(..., '-v7.3'), "
                        f"or give the weights as an .npz") from None
    with f:
        cells = {}
        for key in ("global_net_IW", "global_net_LW", "global_net_b"):
            if key not in f:
                raise InitError(f"{p}: no {key}; the seed's get_initial_model.mat holds global_net_IW, "
                                f"global_net_LW and global_net_b")
            # a cell is an array of object references; a vector cell reads the same in either order
            cells[key] = [_deref(f, ref, p, key) for ref in f[key][()].ravel()]
        iw, lw, b = cells["global_net_IW"], cells["global_net_LW"], cells["global_net_b"]
        if len(lw) + 1 != n or len(b) != n or len(iw) != 1:
            raise InitError(f"{p}: {len(lw) + len(iw)} weight layers and {len(b)} biases; the MLP has {n} of each")
        return iw[:1] + lw, b   # h5py shows MATLAB's (out, in) as (in, out): already our orientation


def _deref(f, ref, p: Path, key: str) -> np.ndarray:
    try:
        d = f[ref]
    except (ValueError, KeyError, TypeError):
        raise InitError(f"{p}: {key} is not a cell of arrays") from None
    if d.attrs.get("MATLAB_empty", 0):
        raise InitError(f"{p}: {key} holds an empty array at {d.name}")
    return np.asarray(d[()], np.float64)


def _read_npz(p: Path, layers) -> tuple[list, list]:
    n = len(layers) - 1
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InitError(f"{p}: not a readable .npz ({e})") from None
    with z:
        keys = set(z.files)
        if {f"W{i}" for i in range(1, n + 1)} <= keys:   # the seed's names, MATLAB's (out, in)
            extra = sorted(k for k in keys if k.startswith("W") and k[1:].isdigit() and int(k[1:]) > n)
            if extra:
                raise InitError(f"{p}: {', '.join(extra)} beyond the {_arch(layers)} MLP's {n} layers")
            missing = [f"b{i}" for i in range(1, n + 1) if f"b{i}" not in keys]
            if missing:
                raise InitError(f"{p}: no {', '.join(missing)}")
            weights = []
            for i in range(1, n + 1):
                w = z[f"W{i}"]
                want = (layers[i], layers[i - 1])
                # (out, in) as documented; (in, out) is taken too where it cannot be mistaken for it
                weights.append(w.T if w.shape == want or w.shape[::-1] != (layers[i - 1], layers[i]) else w)
            return weights, [z[f"b{i}"] for i in range(1, n + 1)]
        arrs = sorted((k for k in keys if k.startswith("arr_")), key=lambda k: int(k[4:]))
        if arrs and len(arrs) == len(keys):   # ours, as np.savez(*params): [W1 (in, out), b1, ...]
            if len(arrs) != 2 * n:
                raise InitError(f"{p}: {len(arrs)} arrays; the {_arch(layers)} MLP has {2 * n} (a weight and a bias "
                                f"per layer)")
            return [z[f"arr_{2 * i}"] for i in range(n)], [z[f"arr_{2 * i + 1}"] for i in range(n)]
        raise InitError(f"{p}: holds {', '.join(sorted(keys)) or 'nothing'}; an initial model is W1..W{n} and "
                        f"b1..b{n} (MATLAB's orientation) or arr_0..arr_{2 * n - 1} (a run's final_model.npz)")


def describe(path: str | Path | None, seed: int = 0) -> dict:
    """What a run started from, for its results: the file (and its sha256) or the seeded Glorot weights."""
    if path is None:
        return {"kind": "glorot-uniform", "seed": seed}
    p = Path(path)
    return {"kind": "file", "path": str(path), "format": p.suffix.lower().lstrip("."),
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
