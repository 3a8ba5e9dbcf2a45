"""Run outputs: runs/<name>/summary.json and a PNG of accuracy and bytes per round."""
from __future__ import annotations

import json
from pathlib import Path


def write_summary(out: Path, summary: dict) -> Path:
    path = Path(out) / "summary.json"
    path.write_text(json.dumps(summary, indent=1))
    return path


def plot_rounds(out: Path, rounds: list[dict], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = [m["round"] for m in rounds]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    a1.plot(r, [100 * m["accuracy"] for m in rounds], color="k")
    a1.set_ylabel("test accuracy (%)")
    a1.grid(alpha=0.3)
    a1.set_title(title)
    a2.bar(r, [m["bytes_up"] / 1e6 for m in rounds], label="up", color="tab:blue")
    a2.bar(r, [m["bytes_down"] / 1e6 for m in rounds], bottom=[m["bytes_up"] / 1e6 for m in rounds],
           label="down", color="tab:orange")
    a2.set_ylabel("MB per round")
    a2.set_xlabel("round")
    a2.legend(loc="lower right", framealpha=0.9)
    fig.tight_layout()
    path = Path(out) / "rounds.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
