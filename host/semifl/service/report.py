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
    from matplotlib.ticker import MaxNLocator

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
    a2.xaxis.set_major_locator(MaxNLocator(integer=True))   # rounds are whole: no tick at round 1.5
    a2.legend(loc="lower right", framealpha=0.9)
    fig.tight_layout()
    path = Path(out) / "rounds.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class NotARun(ValueError):
    """A RUN given to `semifl report` that has no finished summary; the message is the one line to show."""


def read_summary(run: Path) -> dict:
    run = Path(run)
    if not run.is_dir():
        raise NotARun(f"{run} is not a folder (give the run's output folder, e.g. runs/<name>)")
    path = run / "summary.json"
    if not path.is_file():
        raise NotARun(f"{run} has no summary.json (the run did not finish?)")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NotARun(f"{path} cannot be read ({e})") from None


def energy_table(runs: list[Path]) -> list[dict]:
    """One row per run directory: its strategy, final accuracy and device energy, total and per class.
    Every run is read before any row is returned: one unfinished run raises NotARun."""
    rows = []
    for run in runs:
        s = read_summary(run)
        by_class: dict[str, float] = {}
        for d in s["devices"]:
            by_class[d["device_class"]] = by_class.get(d["device_class"], 0.0) + d.get("energy_j", 0.0)
        rows.append({"run": str(run), "strategy": s["strategy"], "rounds": len(s["rounds"]),
                     "final_accuracy": s["final_accuracy"], "energy_j": round(sum(by_class.values()), 3),
                     "energy_j_by_class": {k: round(v, 3) for k, v in sorted(by_class.items())},
                     "meter": sorted({d.get("meter") for d in s["devices"] if d.get("meter")})})
    return rows


TABLE = (("run", "<"), ("strategy", "<"), ("rounds", ">"), ("final accuracy %", ">"), ("energy J", ">"),
         ("J per class", "<"), ("meter", "<"))


def format_table(rows: list[dict]) -> str:
    """energy_table's rows as an aligned text table, one line per run under a header."""
    cells = [[r["run"], r["strategy"], str(r["rounds"]),
              "-" if r["final_accuracy"] is None else f"{100 * r['final_accuracy']:.2f}", f"{r['energy_j']:.1f}",
              ", ".join(f"{k} {v:.1f}" for k, v in r["energy_j_by_class"].items()) or "-",
              "/".join(r["meter"]) or "none"] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(TABLE)]

    def line(values):
        return "  ".join(f"{v:{align}{w}}" for v, (_, align), w in zip(values, TABLE, widths)).rstrip()

    return "\n".join([line([h for h, _ in TABLE]), line(["-" * w for w in widths])] + [line(c) for c in cells])


def plot_energy_vs_accuracy(rows: list[dict], path: Path) -> Path:
    """Device joules spent against final accuracy, one point per run, labelled by strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in (r for r in rows if r["final_accuracy"] is not None):
        ax.scatter(r["energy_j"], 100 * r["final_accuracy"])
        ax.annotate(f"{r['strategy']} ({Path(r['run']).name})", (r["energy_j"], 100 * r["final_accuracy"]),
                    textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set(xlabel="device energy, all devices (J)", ylabel="final test accuracy (%)", title="energy vs accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
