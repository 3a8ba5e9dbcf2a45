"""`semifl reproduce semifl`: the seed's four baselines (and semifl+) in-process, with results.json,
plots and a markdown table of the seed's numbers against ours."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from semifl.app.inprocess import run_inprocess
from semifl.config import RunConfig
from semifl.experiments.baselines import BASELINES, SEED_FINALS, SEED_LR, SEED_MAX
from semifl.learn import mlp
from semifl.learn.data import Dataset, to_float


def per_class_accuracy(params, ds: Dataset) -> list[float]:
    pred = mlp.predict(params, to_float(ds.x_test))
    return [round(float((pred[ds.y_test == k] == k).mean()), 4) for k in range(int(ds.y_test.max()) + 1)]


def run_baseline(name: str, rounds: int, ds: Dataset, seed: int = 0, on_round=None, **overrides) -> dict:
    """One baseline in-process. Besides the curves, the final model's per-class test accuracy and,
    where FL clients prune, that of the pruned copy they train on (the two can differ a lot: the host
    steps the pruned entries with the CL gradient alone)."""
    cfg = RunConfig.make(**{"rounds": rounds, "seed": seed, "lr": SEED_LR, **BASELINES[name], **overrides})
    curve = {"accuracy": [], "loss": [], "bytes_up": [], "bytes_down": [], "bytes_up_by_role": {"fl": [], "cl": []}}

    def record(m):
        curve["accuracy"].append(m["accuracy"])
        curve["loss"].append(m["loss"])
        curve["bytes_up"].append(m["bytes_up"])
        curve["bytes_down"].append(m["bytes_down"])
        # every byte as it crossed the in-memory broker: Pis are the FL clients, MCUs the CL uploaders
        for role, cls in (("fl", "pi"), ("cl", "mcu")):
            curve["bytes_up_by_role"][role].append(m["bytes_by_class"].get(cls, [0, 0])[0])
        if on_round:
            on_round(name, m)
    t0 = time.perf_counter()
    params = run_inprocess(cfg, ds, on_round=record).params
    curve["wall_s"] = round(time.perf_counter() - t0, 2)
    curve["per_class_accuracy"] = per_class_accuracy(params, ds)
    if cfg.federated.prune > 0:
        pruned = [p * m for p, m in zip(params, mlp.prune_mask(params, cfg.federated.prune))]
        curve["pruned_model"] = {"accuracy": mlp.evaluate(pruned, to_float(ds.x_test), ds.y_test.astype(np.int64))[0],
                                 "per_class_accuracy": per_class_accuracy(pruned, ds)}
    curve["config"] = cfg.to_dict()
    return curve


def reproduce(ds: Dataset, rounds: int, out: Path, names: list[str] | None = None, seed: int = 0, on_round=None,
              lr: float | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    names = names or list(BASELINES)
    lr = SEED_LR if lr is None else lr
    results = {"dataset": ds.name, "rounds": rounds, "seed": seed, "lr": lr, "baselines": {}}
    old = out / "results.json"
    if old.exists():   # a run of some baselines adds to (or replaces) those of an earlier run of the same setup
        prev = json.loads(old.read_text())
        if (prev.get("dataset"), prev.get("rounds"), prev.get("seed"), prev.get("lr", SEED_LR)) == (ds.name, rounds, seed, lr):
            results["baselines"] = prev["baselines"]
    for name in names:
        results["baselines"][name] = run_baseline(name, rounds, ds, seed, on_round, lr=lr)
        (out / "results.json").write_text(json.dumps(results))   # partial results survive an interrupt
    plot(results, out)
    (out / "table.md").write_text(table(results))
    return results


SEED_ROUNDS = 1000   # the round SEED_FINALS (and SEED_MAX, over rounds 1..1000) were read at


def table(results: dict) -> str:
    """Ours at the last round against the seed's published accuracy, which is at round SEED_ROUNDS: a
    column of the seed's numbers only when ours stopped at that same round, a sentence otherwise."""
    n = results["rounds"]
    same = n == SEED_ROUNDS
    if same:
        rows = [f"| baseline | seed at round {n} | ours at round {n} | ours max (rounds 1-{n}) | Δ (points) | uplink total |",
                "|---|---|---|---|---|---|"]
    else:
        rows = [f"| baseline | ours at round {n} | ours max (rounds 1-{n}) | uplink total |", "|---|---|---|---|"]
    for name, c in results["baselines"].items():
        ours = 100 * c["accuracy"][-1]
        cells = [name, f"{ours:.2f} %", f"{100 * max(c['accuracy']):.2f} %", f"{sum(c['bytes_up']) / 1e9:.2f} GB"]
        if same:
            seed = SEED_FINALS.get(name)
            cells[1:1] = [f"{f'{seed:.2f} %' if seed else '—'}"
                          f"{f' (max {SEED_MAX[name]:.2f})' if name in SEED_MAX else ''}"]
            cells.insert(4, f"{ours - seed:+.2f}" if seed else "—")
        rows.append("| " + " | ".join(cells) + " |")
    head = (f"Fashion-MNIST, {n} rounds, test accuracy on the official 10,000 images at round {n} "
            f"(seed {results['seed']}, lr {results.get('lr', SEED_LR)} on the per-sample mean loss).")
    if not same:
        head += (f" The seed's published accuracies are at round {SEED_ROUNDS}, so they are not set against "
                 f"round {n} here; `semifl reproduce semifl --rounds {SEED_ROUNDS}` compares them.")
    return head + "\n\n" + "\n".join(rows) + "\n"


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, c in results["baselines"].items():
        acc = 100 * np.array(c["accuracy"])
        line, = a1.plot(np.arange(1, len(acc) + 1), acc, label=name, lw=1)
        if name in SEED_FINALS and len(acc) == SEED_ROUNDS:   # the seed's finals are at its round 1000
            a1.axhline(SEED_FINALS[name], color=line.get_color(), ls=":", lw=0.8)
        a2.plot(np.cumsum(c["bytes_up"]) / 1e6, acc, label=name, lw=1)
    same = any(len(c["accuracy"]) == SEED_ROUNDS for c in results["baselines"].values())
    a1.set(xlabel="round", ylabel="test accuracy (%)",
           title=f"accuracy vs rounds (dotted: seed's finals at round {SEED_ROUNDS})" if same else "accuracy vs rounds")
    a1.xaxis.set_major_locator(MaxNLocator(integer=True))   # rounds are whole: no tick at round 1.5
    a2.set(xlabel="cumulative uplink (MB)", ylabel="test accuracy (%)", xscale="log", title="accuracy vs uplink bytes")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)
