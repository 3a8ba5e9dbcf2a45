"""`semifl reproduce semifl`: the seed's four baselines (and semifl+) in-process, with results.json,
plots and a markdown table of the seed's numbers against ours. `init`: the seed's initial weights
(code/get_initial_model.mat) or another file, else Glorot-uniform; `seed_curves`: the seed's published
curves (its data/*.mat as JSON), drawn beside ours and compared over the same rounds."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from semifl.app.inprocess import run_inprocess
from semifl.config import ConfigError, RunConfig
from semifl.experiments.baselines import BASELINES, SEED_CURVE, SEED_FINALS, SEED_LAST50, SEED_LR
from semifl.learn import initial, mlp
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
              lr: float | None = None, init: str | None = None, seed_curves: str | None = None,
              command: str | None = None) -> dict:
    """init: an initial-model file (`semifl.learn.initial`), else Glorot-uniform from `seed`; recorded
    in results.json as "init". seed_curves: a JSON of the seed's curves ({name: {"accuracy": [...]}}).
    command: the command line, kept in results.json."""
    if init:
        initial.load(init)   # a file that does not fit is refused before anything is written
    curves = load_curves(seed_curves) if seed_curves else None
    out.mkdir(parents=True, exist_ok=True)
    names = names or list(BASELINES)
    lr = SEED_LR if lr is None else lr
    how = initial.describe(init, seed)
    results = {"dataset": ds.name, "rounds": rounds, "seed": seed, "lr": lr, "init": how, "command": command,
               "baselines": {}}
    old = out / "results.json"
    if old.exists():   # a run of some baselines adds to (or replaces) those of an earlier run of the same setup
        prev = json.loads(old.read_text())
        same = lambda r: (r.get("dataset"), r.get("rounds"), r.get("seed"), r.get("lr", SEED_LR),
                          {k: v for k, v in r.get("init", initial.describe(None, r.get("seed"))).items() if k != "path"})
        if same(prev) == same(results):
            results["baselines"], results["command"] = prev["baselines"], prev.get("command") or command
    for name in names:
        results["baselines"][name] = run_baseline(name, rounds, ds, seed, on_round, lr=lr, init=init)
        results["baselines"][name]["command"] = command   # a later run may add or replace single baselines
        (out / "results.json").write_text(json.dumps(results))   # partial results survive an interrupt
    plot(results, out, curves)
    (out / "table.md").write_text(table(results, curves))
    return results


def load_curves(path: str) -> dict[str, list[float]]:
    """The seed's published accuracy curves by baseline name, as fractions."""
    try:
        d = json.loads(Path(path).read_text())
        return {name: [float(a) for a in c["accuracy"]] for name, c in d.items()}
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"--seed-curves {path}: not a JSON of {{baseline: {{\"accuracy\": [...]}}}} ({e})") from None


WINDOW = 50   # rounds a comparison averages over: one SemiFL round moves 1.5 points on the seed's own curve


def last_mean(acc: list[float], n: int | None = None) -> float:
    """Mean accuracy (%) over rounds n-49..n (n: the last round given)."""
    n = len(acc) if n is None else n
    return 100 * sum(acc[max(0, n - WINDOW):n]) / len(acc[max(0, n - WINDOW):n])


SEED_ROUNDS = 1000   # the round SEED_FINALS and SEED_LAST50 were read at


def seed_mean(name: str, n: int, curves: dict | None) -> float | None:
    """The seed's mean accuracy (%) over rounds n-49..n: from its curve, or at round 1000 its known mean."""
    name = SEED_CURVE.get(name, name)
    if curves and name in curves and len(curves[name]) >= n:
        return last_mean(curves[name], n)
    return SEED_LAST50.get(name) if n == SEED_ROUNDS else None


def init_text(how: dict | None) -> str:
    if not how or how.get("kind") != "file":
        return f"Glorot-uniform weights (seed {how.get('seed', 0) if how else 0})"
    return f"the initial model in {Path(how['path']).name} (sha256 {how['sha256'][:12]})"


def table(results: dict, curves: dict | None = None) -> str:
    """Ours against the seed, each as the mean over the last 50 rounds (a single round is too noisy:
    the seed's SemiFL curve moves 1.5 points round to round): against the seed's curve over the same
    rounds, or without its curves at round SEED_ROUNDS against its known means; a sentence otherwise."""
    n = results["rounds"]
    w = f"{max(1, n - WINDOW + 1)}–{n}"
    rows = [f"| baseline | seed, mean of rounds {w} | ours, mean of rounds {w} | Δ (points) | ours at round {n} | "
            f"ours max | uplink total |", "|---|---|---|---|---|---|---|"]
    compared = False
    for name, c in results["baselines"].items():
        ours, seed = last_mean(c["accuracy"]), seed_mean(name, n, curves)
        compared |= seed is not None
        at = SEED_FINALS.get(SEED_CURVE.get(name, name)) if n == SEED_ROUNDS else None
        rows.append(f"| {name} | {f'{seed:.2f} %' if seed is not None else '—'} | {ours:.2f} % | "
                    f"{f'{ours - seed:+.2f}' if seed is not None else '—'} | {100 * c['accuracy'][-1]:.2f} %"
                    f"{f' (seed {at:.2f} %)' if at else ''} | {100 * max(c['accuracy']):.2f} % | "
                    f"{sum(c['bytes_up']) / 1e9:.2f} GB |")
    head = (f"Fashion-MNIST, {n} rounds from {init_text(results.get('init'))}, test accuracy on the official "
            f"10,000 images (seed {results['seed']}, lr {results.get('lr', SEED_LR)} on the per-sample mean loss).")
    if not compared:
        head += (f" The seed's published means are over rounds {SEED_ROUNDS - WINDOW + 1}–{SEED_ROUNDS}; give "
                 f"--seed-curves (its curves as JSON) to compare at round {n}, or run --rounds {SEED_ROUNDS}.")
    return head + "\n\n" + "\n".join(rows) + "\n"


def plot(results: dict, out: Path, curves: dict | None = None) -> None:
    """accuracy.png: ours per round and against cumulative uplink; with the seed's curves, also one
    panel per baseline with the seed's curve beside ours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    names = list(results["baselines"])
    paired = [n for n in names if curves and SEED_CURVE.get(n, n) in curves]
    fig = plt.figure(figsize=(12, 8.5 if paired else 4.5))
    grid = fig.add_gridspec(2 if paired else 1, max(len(paired), 2))
    half = max(len(paired), 2) // 2
    a1, a2 = fig.add_subplot(grid[0, :half]), fig.add_subplot(grid[0, half:])
    colors = {}
    for name, c in results["baselines"].items():
        acc = 100 * np.array(c["accuracy"])
        line, = a1.plot(np.arange(1, len(acc) + 1), acc, label=name, lw=1)
        colors[name] = line.get_color()
        if not curves and name in SEED_FINALS and len(acc) == SEED_ROUNDS:   # the seed's finals are at its round 1000
            a1.axhline(SEED_FINALS[name], color=line.get_color(), ls=":", lw=0.8)
        a2.plot(np.cumsum(c["bytes_up"]) / 1e6, acc, label=name, lw=1)
    same = any(len(c["accuracy"]) == SEED_ROUNDS for c in results["baselines"].values())
    a1.set(xlabel="round", ylabel="test accuracy (%)",
           title=f"accuracy vs rounds (dotted: seed's finals at round {SEED_ROUNDS})" if same and not curves
           else "accuracy vs rounds")
    a2.set(xlabel="cumulative uplink (MB)", ylabel="test accuracy (%)", xscale="log", title="accuracy vs uplink bytes")
    for k, name in enumerate(paired):
        ax = fig.add_subplot(grid[1, k], sharey=a1)
        ours = 100 * np.array(results["baselines"][name]["accuracy"])
        seed = 100 * np.array(curves[SEED_CURVE.get(name, name)][:len(ours)])
        ax.plot(np.arange(1, len(seed) + 1), seed, color="0.55", lw=0.8, label="seed (published)")
        ax.plot(np.arange(1, len(ours) + 1), ours, color=colors[name], lw=0.8, label="ours")
        sm = seed_mean(name, len(ours), curves)
        ax.set_title(f"{name}\nours {last_mean(list(ours / 100)):.1f} %, seed {'—' if sm is None else f'{sm:.1f} %'}"
                     if len(ours) >= WINDOW else name, fontsize=9)
        ax.set_xlabel("round")
        axes_extra(ax)
    for a in (a1, a2):
        axes_extra(a)
    a1.xaxis.set_major_locator(MaxNLocator(integer=True))   # rounds are whole: no tick at round 1.5
    fig.suptitle(f"{results.get('dataset', 'Fashion-MNIST')}, from {init_text(results.get('init'))}"
                 + (f"; bottom: mean of the last {WINDOW} rounds" if paired else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)


def axes_extra(ax) -> None:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
