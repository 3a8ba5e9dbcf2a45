"""`semifl sweep`: SemiFL over sample-selection ratio S × pruning rate P (the seed's Figures 5-6),
with heatmaps of final accuracy and uplink bytes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from semifl.experiments.reproduce import run_baseline
from semifl.learn.data import Dataset

S_GRID = (0.0, 0.05, 0.1, 0.3, 0.5, 1.0)
P_GRID = (0.0, 0.3, 0.6, 0.8)


def sweep(ds: Dataset, rounds: int, out: Path, s_grid=S_GRID, p_grid=P_GRID, seed: int = 0, on_cell=None,
          on_round=None) -> dict:
    """on_cell(s, p, accuracy, bytes up) after each cell; on_round((s, p), metrics) after each round."""
    out.mkdir(parents=True, exist_ok=True)
    acc = np.full((len(s_grid), len(p_grid)), np.nan)
    up = np.full_like(acc, np.nan)
    for i, s in enumerate(s_grid):
        for j, p in enumerate(p_grid):
            # S = 0: the CL devices send nothing, so none is asked to
            extra = {"cl_fraction": s, "prune": p} if s > 0 else {"cl_uploaders": 0, "prune": p}
            c = run_baseline("semifl", rounds, ds, seed, (lambda _, m, cell=(s, p): on_round(cell, m)) if on_round else None,
                             **extra)
            acc[i, j], up[i, j] = c["accuracy"][-1], sum(c["bytes_up"])
            if on_cell:
                on_cell(s, p, acc[i, j], up[i, j])
            result = {"dataset": ds.name, "rounds": rounds, "S": list(s_grid), "P": list(p_grid),
                      "final_accuracy": acc.tolist(), "bytes_up": up.tolist()}
            (out / "sweep.json").write_text(json.dumps(result))
    heatmaps(result, out)
    return result


def heatmaps(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, title, scale, fmt in ((axes[0], "final_accuracy", "final test accuracy (%)", 100, "{:.1f}"),
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
    fig.suptitle(f"SemiFL on {result['dataset']}, {result['rounds']} rounds")
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=100)
    plt.close(fig)
