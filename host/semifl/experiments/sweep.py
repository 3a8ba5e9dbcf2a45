"""`semifl sweep`: SemiFL over sample-selection ratio S × pruning rate P (the seed's Figures 5-6),
with heatmaps of accuracy (the mean over the last 50 rounds, and the final round's) and uplink bytes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from semifl.experiments.reproduce import last_mean, run_baseline
from semifl.learn import initial
from semifl.learn.data import Dataset

S_GRID = (0.0, 0.05, 0.1, 0.3, 0.5, 1.0)
P_GRID = (0.0, 0.3, 0.6, 0.8)


def sweep(ds: Dataset, rounds: int, out: Path, s_grid=S_GRID, p_grid=P_GRID, seed: int = 0, on_cell=None,
          on_round=None, init: str | None = None, command: str | None = None) -> dict:
    """on_cell(s, p, accuracy, bytes up) after each cell; on_round((s, p), metrics) after each round;
    init: an initial-model file (`semifl.learn.initial`), else Glorot-uniform from `seed`."""
    if init:
        initial.load(init)   # a file that does not fit is refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    acc = np.full((len(s_grid), len(p_grid)), np.nan)
    mean = np.full_like(acc, np.nan)
    up = np.full_like(acc, np.nan)
    for i, s in enumerate(s_grid):
        for j, p in enumerate(p_grid):
            # S = 0: the CL devices send nothing, so none is asked to
            extra = {"cl_fraction": s, "prune": p} if s > 0 else {"cl_uploaders": 0, "prune": p}
            c = run_baseline("semifl", rounds, ds, seed, (lambda _, m, cell=(s, p): on_round(cell, m)) if on_round else None,
                             init=init, **extra)
            acc[i, j], mean[i, j], up[i, j] = c["accuracy"][-1], last_mean(c["accuracy"]) / 100, sum(c["bytes_up"])
            if on_cell:
                on_cell(s, p, acc[i, j], up[i, j])
            result = {"dataset": ds.name, "rounds": rounds, "seed": seed, "init": initial.describe(init, seed),
                      "command": command,
                      "S": list(s_grid), "P": list(p_grid), "final_accuracy": acc.tolist(),
                      "last50_accuracy": mean.tolist(), "bytes_up": up.tolist()}
            (out / "sweep.json").write_text(json.dumps(result))
    heatmaps(result, out)
    return result


def heatmaps(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc_key, acc_title = (("last50_accuracy", "test accuracy, mean of the last 50 rounds (%)")
                          if "last50_accuracy" in result else ("final_accuracy", "final test accuracy (%)"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, title, scale, fmt in ((axes[0], acc_key, acc_title, 100, "{:.1f}"),
                                       (axes[1], "bytes_up", "uplink (GB)", 1e-9, "{:.2f}")):
        m = np.array(result[key], float) * scale
        im = ax.imshow(m, cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(len(result["P"])), [str(p) for p in result["P"]])
        ax.set_yticks(range(len(result["S"])), [str(s) for s in result["S"]])
        ax.set(xlabel="pruning rate P", ylabel="sample selection S", title=title)
        for (i, j), v in np.ndenumerate(m):
            if np.isfinite(v):
                ax.text(j, i, fmt.format(v), ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax)
    start = result.get("init", {})
    fig.suptitle(f"SemiFL on {result['dataset']}, {result['rounds']} rounds, from "
                 f"{Path(start['path']).name if start.get('kind') == 'file' else 'Glorot-uniform weights'}")
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=100)
    plt.close(fig)
