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


def energy_table(runs: list[Path]) -> list[dict]:
    """One row per run directory: its strategy, final accuracy and device energy, total and per class."""
    rows = []
    for run in runs:
        s = json.loads((Path(run) / "summary.json").read_text())
        by_class: dict[str, float] = {}
        for d in s["devices"]:
            by_class[d["device_class"]] = by_class.get(d["device_class"], 0.0) + d.get("energy_j", 0.0)
        rows.append({"run": str(run), "strategy": s["strategy"], "rounds": len(s["rounds"]),
                     "final_accuracy": s["final_accuracy"], "energy_j": round(sum(by_class.values()), 3),
                     "energy_j_by_class": {k: round(v, 3) for k, v in sorted(by_class.items())},
                     "meter": sorted({d.get("meter") for d in s["devices"] if d.get("meter")})})
    return rows


def plot_energy_vs_accuracy(rows: list[dict], path: Path) -> Path:
    """Device joules spent against final accuracy, one point per run, labelled by strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rows:
        ax.scatter(r["energy_j"], 100 * r["final_accuracy"])
        ax.annotate(f"{r['strategy']} ({Path(r['run']).name})", (r["energy_j"], 100 * r["final_accuracy"]),
                    textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set(xlabel="device energy, all devices (J)", ylabel="final test accuracy (%)", title="energy vs accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
