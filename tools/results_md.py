"""Write docs/results.md from the JSON the experiments produced, so every number there has a source.

    python tools/results_md.py --reproduce benchmarks/results/semifl_seed_init \
        --seed-curves ../shared/data/semifl-seed/published_curves.json \
        --step-check benchmarks/results/semifl_seed_init_lr0.1_r10 \
        --matlab-check benchmarks/results/semifl_bare_matlab_s0.json benchmarks/results/semifl_bare_matlab_s1.json \
        --ablation benchmarks/results/semifl_plus_seed_init.json --sweep benchmarks/results/semifl_sweep_seed_init \
        --perfit benchmarks/results/perfit.json

The SemiFL sections are from the seed's own initial weights; the earlier runs from Glorot-uniform weights
are kept as docs/data/*_glorot.json and shown after them. Copies the plots into docs/img/ and slim copies
of the JSON into docs/data/ next to the page.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
sys.path.insert(0, str(REPO / "host"))
from semifl.experiments.baselines import SEED_CURVE, SEED_FINALS, SEED_LAST50  # noqa: E402

CLASSES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]
GLOROT = {"reproduce": DOCS / "data" / "semifl_reproduce_glorot.json",
          "nominal": DOCS / "data" / "semifl_reproduce_glorot_lr0.1.json",
          "sweep": DOCS / "data" / "semifl_sweep_glorot.json",
          "ablation": DOCS / "data" / "semifl_plus_ablation_glorot.json"}

ABLATION_ROWS = [   # run name -> what it changes against semifl+ as `reproduce` runs it from the seed's weights
    ("semifl", "SemiFL as the seed's script reads: the devices' work and the host's single sample-weighted step, "
               "the host's model unpruned"),
    ("semifl-pruned-host", "SemiFL with the host's model pruned each round too (`--prune-global`)"),
    ("semifl-fresh", "SemiFL, but CL devices send only samples the host does not hold yet (traffic only)"),
    ("plus", "**semifl+ from the seed's weights** (`--prune-global --server-lr 0.003 --server-beta2 0.999`): all "
             "of the below"),
    ("plus-shipped", "`--strategy semifl+` with its defaults (masked step, Adam 0.005 / 0.99: chosen from "
                     "Glorot-uniform weights)"),
    ("plus-masked", "the host's step masked to the clients' unpruned entries instead of pruning the host's model"),
    ("plus-sgd", "without the server Adam step (SemiFL's step on the same mix)"),
    ("plus-constlr", "without the cosine schedule"),
    ("plus-no-clmem", "without the CL sample memory (gradient on this round's uploads only)"),
    ("plus-no-flmem", "without the FL update memory (this round's top-K only)"),
    ("plus-no-decay", "FL memory without staleness decay"),
    ("plus-no-floor", "staleness decay without the 0.1 floor"),
    ("plus-unbalanced", "sample-count weights (SemiFL's) instead of each device's dataset size"),
    ("plus-no-prune", "host step not prune-consistent (CL gradient on the full model)"),
]


def pct(v):
    return f"{100 * v:.2f} %"


def last50(acc: list[float]) -> float:
    return 100 * float(np.mean(acc[-50:]))


def rel(path: Path) -> str:
    """A path as the page shows it: from the repository's root where it lies inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def slim(r: dict) -> dict:
    keep = ("accuracy", "bytes_up", "bytes_down", "wall_s", "per_class_accuracy", "pruned_model")
    return {**{k: r.get(k) for k in ("dataset", "rounds", "seed", "lr", "init", "command") if k in r},
            "baselines": {k: {f: v[f] for f in keep if f in v} for k, v in r["baselines"].items()}}


def seed_cell(name: str) -> float | None:
    return SEED_LAST50.get(SEED_CURVE.get(name, name))


def reproduce_section(rep: Path, ab: dict | None, lines: list[str], reading: str) -> dict:
    """The seed's baselines from its initial weights against its curves (means over rounds 951-1000)."""
    res = json.loads((rep / "results.json").read_text())
    shutil.copy(rep / "accuracy.png", DOCS / "img" / "semifl_accuracy.png")
    (DOCS / "data" / "semifl_reproduce.json").write_text(json.dumps(slim(res)))
    n, b = res["rounds"], res["baselines"]
    lines += [f"## SemiFL seed (Ni et al.) on Fashion-MNIST from its own initial weights, {n} rounds", "",
              f"`{res['command']}` → `{rel(rep)}/results.json` (slim copy: `docs/data/semifl_reproduce.json`). "
              f"Initial model: the seed's `code/get_initial_model.mat` (sha256 {res['init']['sha256'][:12]}); one step "
              f"size for every row, lr {res['lr']} on our per-sample mean loss.", "",
              f"| baseline | seed, mean of rounds {n - 49}–{n} | ours, same rounds | Δ (points) | ours at round {n} "
              f"(seed) | uplink total |", "|---|---|---|---|---|---|"]
    for name, c in b.items():
        seed, ours = seed_cell(name), last50(c["accuracy"])
        at = SEED_FINALS.get(SEED_CURVE.get(name, name))
        lines.append(f"| {name} | {f'{seed:.2f} %' if seed else '—'} | {ours:.2f} % | "
                     f"{f'{ours - seed:+.2f}' if seed else '—'} | {pct(c['accuracy'][-1])}"
                     f"{f' ({at:.2f} %)' if at else ''} | {sum(c['bytes_up']) / 1e9:.2f} GB |")
    lines.append("")
    if ab:
        lines += plus_summary(ab, b) + [""]
    lines += ["![accuracy vs rounds and uplink, and each baseline beside the seed's curve](img/semifl_accuracy.png)", "",
              reading, ""]
    return res


def plus_summary(ab: dict, b: dict) -> list[str]:
    """semifl+ over its seeds: the means, round 300, the first round at 82 % and what it cost to get there."""
    by = {r["run"]: r for r in ab["runs"]}
    seeds = [(i, by[k]) for i, k in enumerate(("plus", "plus.s1", "plus.s2")) if k in by]
    if not seeds:
        return []
    cl_up = sum(b["cl"]["bytes_up"]) if "cl" in b else None
    rows = ["| semifl+ | mean of rounds 951–1000 | at round 300 | first round ≥ 82 % | uplink to it | device joules "
            "to it (Pis / MCUs) | uplink, whole run | % of CL's uplink |", "|---|---|---|---|---|---|---|---|"]
    for i, r in seeds:
        t = r.get("to_82") or {}
        rows.append(f"| seed {i} | {100 * r['last50']:.2f} % | {pct(r['acc@300'])} | {r['first_round_82'] or '—'} | "
                    + (f"{t['uplink_bytes'] / 1e6:.0f} MB | {t['joules']:.0f} J ({t['joules_pi']:.0f} / {t['joules_mcu']:.0f}) | "
                       if t else "— | — | ")
                    + f"{r['uplink_bytes'] / 1e9:.2f} GB | "
                    + (f"{100 * r['uplink_bytes'] / cl_up:.2f} %" if cl_up else "—") + " |")
    mean = 100 * float(np.mean([r["last50"] for _, r in seeds]))
    text = (f"semifl+ from the same weights, seeds {', '.join(str(i) for i, _ in seeds)} (`tools/semifl_plus_experiments.py "
            f"--runs plus --seed N --init ...`, its runs in `{ab.get('folder', '')}`): mean over rounds 951–1000 "
            f"{mean:.2f} % over the three. The host prunes its own model each round instead of masking its step "
            "(`--prune-global`) and its server Adam takes smaller, smoother steps (`--server-lr 0.003 --server-beta2 "
            "0.999`); `semifl run --strategy semifl+` keeps its defaults (masked step, 0.005, 0.99), chosen from "
            "Glorot-uniform weights: the `plus-shipped` row of the ablation below." + glorot_settings()
            + " Uplink under the fresh-samples rule (semifl+'s CL devices keep it: docs/protocol.md §5), "
            "against the `cl` row above; joules: the virtual meter's active energy to that round (Pis as rpi4, MCUs as "
            "esp32; training seconds measured on this machine, no idle: in-process rounds take no simulated time).")
    return [text, ""] + rows


def glorot_settings() -> str:
    """The seed-weight settings from Glorot-uniform weights: why they are not the defaults."""
    path = DOCS / "data" / "semifl_plus_seed_settings_glorot.json"
    if not path.exists() or not GLOROT["ablation"].exists():
        return ""
    mine = {r["run"]: r for r in json.loads(path.read_text())["runs"]}.get("plus")
    shipped = {r["run"]: r for r in json.loads(GLOROT["ablation"].read_text())["runs"]}.get("plus")
    if not (mine and shipped):
        return ""
    return (f" From Glorot-uniform weights these settings give {100 * mine['last50']:.2f} % over rounds 951–1000 "
            f"where the defaults give {100 * shipped['last50']:.2f} % (seed 0; `{rel(path)}`), so each start keeps "
            "its own.")


def pruning_table(res: dict) -> str:
    b = res["baselines"]
    cols = [("SemiFL, global model", b.get("semifl", {}).get("per_class_accuracy")),
            ("SemiFL, the pruned copy FL clients train", b.get("semifl", {}).get("pruned_model", {}).get("per_class_accuracy")),
            ("SemiFL, host model pruned", b.get("semifl-pruned-host", {}).get("per_class_accuracy")),
            ("semifl+, global model", b.get("semifl+", {}).get("per_class_accuracy"))]
    cols = [(t, v) for t, v in cols if v]
    rows = ["| class | device | " + " | ".join(t for t, _ in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for k in range(10):
        dev = f"FL pi-{k:02d}" if k < 6 else f"CL mcu-{k:02d}"
        rows.append(f"| {k} {CLASSES[k]} | {dev} | " + " | ".join(f"{100 * v[k]:.0f} %" for _, v in cols) + " |")
    return "\n".join(rows)


def ablation_section(ab: dict, path: str, title: str) -> list[str]:
    n = ab["rounds"]
    by = {r["run"]: r for r in ab["runs"]}
    ran = sorted({r["command"] for r in ab["runs"] if r.get("command")})
    if len(ran) > 2:   # one command a row and seed: show their common form; each run's JSON keeps its own
        ran = [ran[0].split(" --runs ")[0] + " --runs RUN [--seed N]"]
    out = [f"## {title}", "",
           (" and ".join(f"`{c}`" for c in ran) if ran else f"`python tools/semifl_plus_experiments.py --rounds {n} "
                                                               "--runs ablation`")
           + (" for each row and seed (each run's JSON in the folder keeps its exact command)" if len(ran) == 1 and
              "RUN [--seed N]" in ran[0] else "")
           + f", then `{ab.get('command') or '--table --summary'}` (summary: `{path}`). Uplink under the fresh-samples rule (a CL device never re-sends a sample the host "
           "holds: semifl+'s devices keep it, `--fresh-samples`; SemiFL keeps no samples, so for `semifl-fresh` it is "
           "what the rule would save) except where the row keeps SemiFL's re-sends; % of CL's uplink (all 60,000 samples every round).", "",
           f"| run | what it changes | mean of rounds {n - 49}–{n} | acc @300 | acc @{n} | best | first round ≥ 82 % | "
           "uplink | % of CL |", "|---|---|---|---|---|---|---|---|---|"]
    for name, what in ABLATION_ROWS:
        r = by.get(name)
        if r:
            out.append(f"| {name} | {what} | {100 * r['last50']:.2f} % | {pct(r['acc@300'])} | {pct(r[f'acc@{n}'])} | "
                       f"{pct(r['best'])} | {r['first_round_82'] or '—'} | {r['uplink_bytes'] / 1e9:.2f} GB | "
                       f"{r['pct_cl_per_round']:.2f} % |")
    for run, label in (("plus", "semifl+"), ("semifl", "SemiFL"), ("semifl-pruned-host", "SemiFL with the host's model pruned")):
        seeds = [by[k] for k in (run, f"{run}.s1", f"{run}.s2") if k in by]
        if len(seeds) > 1:
            out += ["", f"{label} over seeds {', '.join(str(i) for i in range(len(seeds)))}: "
                    + ", ".join(f"{100 * r['last50']:.2f} %" for r in seeds) + f" over rounds {n - 49}–{n}; "
                    + ", ".join(pct(r['acc@300']) for r in seeds) + " at round 300."]
    return out + [""]


def sweep_table(sweep: dict, key: str) -> list[str]:
    out = ["| S \\ P | " + " | ".join(str(p) for p in sweep["P"]) + " |", "|---" * (len(sweep["P"]) + 1) + "|"]
    for i, sv in enumerate(sweep["S"]):
        out.append(f"| {sv} | " + " | ".join(pct(v) for v in sweep[key][i]) + " |")
    return out


def sweep_section(folder: Path) -> list[str]:
    sweep = json.loads((folder / "sweep.json").read_text())
    shutil.copy(folder / "sweep.png", DOCS / "img" / "semifl_sweep.png")
    (DOCS / "data" / "semifl_sweep.json").write_text(json.dumps(sweep))
    return [f"## Sample selection S × pruning P from the seed's weights ({sweep['rounds']} rounds)", "",
            f"`{sweep['command']}` → `{rel(folder)}/sweep.json` (copy: `docs/data/semifl_sweep.json`). "
            "SemiFL as the `semifl` row above (the host's model unpruned); mean test accuracy over the last 50 rounds:", ""] \
        + sweep_table(sweep, "last50_accuracy") + ["", "![sweep heatmaps](img/semifl_sweep.png)", ""]


def glorot_section(lines: list[str], note: str) -> None:
    """The earlier runs from Glorot-uniform weights, kept: how much the seed's result owes its initialisation."""
    if not GLOROT["reproduce"].exists():
        return
    res = json.loads(GLOROT["reproduce"].read_text())
    nom = json.loads(GLOROT["nominal"].read_text()) if GLOROT["nominal"].exists() else None
    n = res["rounds"]
    lines += [f"## The same from Glorot-uniform weights ({n} rounds, earlier runs)", "",
              f"`semifl reproduce semifl --rounds {n}` without `--init` (`{rel(GLOROT['reproduce'])}`"
              + (f"; at lr 0.1: `{rel(GLOROT['nominal'])}`" if nom else "") + "). " + note, "",
              f"| baseline | seed, mean of rounds {n - 49}–{n} | Glorot, lr 0.01 | Δ | " + ("Glorot, lr 0.1 | Δ |" if nom else ""),
              "|---|---|---|---|" + ("---|---|" if nom else "")]
    for name, c in res["baselines"].items():
        seed, ours = seed_cell(name), last50(c["accuracy"])
        row = f"| {name} | {f'{seed:.2f} %' if seed else '—'} | {ours:.2f} % | {f'{ours - seed:+.2f}' if seed else '—'} |"
        if nom:
            m = nom["baselines"].get(name)
            row += (f" {last50(m['accuracy']):.2f} % | {last50(m['accuracy']) - seed:+.2f} |" if m and seed else " — | — |")
        lines.append(row)
    lines += ["", "![accuracy from Glorot-uniform weights](img/semifl_accuracy_glorot.png)", ""]
    if GLOROT["sweep"].exists():
        sw = json.loads(GLOROT["sweep"].read_text())
        lines += [f"S × P from Glorot-uniform weights, final accuracy at round {sw['rounds']} "
                  f"(`{rel(GLOROT['sweep'])}`):", ""] + sweep_table(sw, "final_accuracy") + [""]
        if (DOCS / "img" / "semifl_sweep_glorot.png").exists():
            lines += ["![sweep heatmaps from Glorot-uniform weights](img/semifl_sweep_glorot.png)", ""]
    if GLOROT["ablation"].exists():
        ab = json.loads(GLOROT["ablation"].read_text())
        by, m = {r["run"]: r for r in ab["runs"]}, ab["rounds"]
        for run, label in (("plus", "semifl+"), ("semifl", "SemiFL")):
            seeds = [by[k] for k in (run, f"{run}.s1", f"{run}.s2") if k in by]
            if seeds:
                lines.append(f"{label} from Glorot-uniform weights over seeds 0–{len(seeds) - 1}: "
                             + ", ".join(f"{100 * r['last50']:.2f} %" for r in seeds) + f" over rounds {m - 49}–{m} "
                             f"(`{rel(GLOROT['ablation'])}`).")
        lines.append("")


READING = """**Reading it.** Same code path as the service (`semifl.app.inprocess` runs the round object of an MQTT
run over the in-memory broker, with the Pi's device code and the MCU node's `cl` role in-process;
`tests/test_baselines.py` checks each baseline gives the same model over MQTT). One step size for every
row: the seed's lr 0.1 is on MATLAB's `crossentropy`, which averages over samples *and* the 10 outputs
(`perf = sum(ce(:))/numel(ce)`), so it is lr 0.01 on our per-sample mean. The fleet is the seed's as its
scripts simulate it (`semifl.experiments.baselines.SEED_FLEET`): every selected update merged as it is
(`--aggregation mean --quarantine-after 0`: our trust defaults strike and quarantine one-class FL clients
whose update norms stray from the round's median) and mains-powered MCUs (`--mcu-battery-j 0`: at the
default 2000 J, 1 uJ a byte, an MCU that sends all 6,000 of its samples every round runs flat after about
400 rounds, and CL and SemiFL-ideal stop learning there). CL uplink is counted as the seed models it:
every sample, every round."""


def step_check(res: dict, check: Path, published: dict) -> list[str]:
    """Which step size is the seed's: CL from its weights, rounds 1-5, at ours and at its nominal lr."""
    other = json.loads((check / "results.json").read_text())
    ours, nominal, seed = res["baselines"]["cl"], other["baselines"]["cl"], published["cl"]
    k = 5
    row = lambda name, c, acc: (f"| {name} | " + " | ".join(f"{v:.2f}" for v in c["loss"][:k])
                                + f" | {100 * acc[min(9, len(acc) - 1)]:.1f} % |")
    return [f"**Which step size.** Checked, not assumed: CL from the seed's weights, one full-batch step a round, "
            f"loss on the 60,000 training images (the seed's) or the 10,000 test images (ours) after each of rounds "
            f"1–{k}, and test accuracy at round 10 (`{other['command']}` → `{rel(check)}/results.json`):", "",
            "| run | " + " | ".join(f"round {i}" for i in range(1, k + 1)) + " | accuracy at round 10 |",
            "|---|" + "---|" * (k + 1),
            row("the seed (MATLAB, lr 0.1 on `crossentropy`)", seed, seed["accuracy"]),
            row(f"ours, lr {res['lr']}", ours, ours["accuracy"]),
            row(f"ours, lr {other['lr']}", nominal, nominal["accuracy"]), ""]


def pruning_text(res: dict, curves: dict | None, checks: list[dict]) -> str:
    """SemiFL at P = 0.3 with the host's model unpruned (the script as it reads) and pruned (prune_global)."""
    b = res["baselines"]
    plain, host = last50(b["semifl"]["accuracy"]), last50(b["semifl-pruned-host"]["accuracy"]) if "semifl-pruned-host" in b else None
    seed = SEED_LAST50["semifl"]
    out = ["**SemiFL at P = 0.3: whose model is pruned.** The seed's script prunes only the FL clients' copy "
           "(`get_pruned_model` returns a pruned copy of the global network, which is then updated unpruned). Run "
           f"that way from the seed's weights, SemiFL's mean over the last 50 rounds is {plain:.2f} % "
           f"({plain - seed:+.2f} against the seed's {seed:.2f} %): the host's CL gradient is the only thing that moves "
           "the entries the clients cannot see, and it moves them towards the CL classes alone, so the full model "
           "drifts from the pruned one the clients train, which keeps the FL classes the global model loses."]
    if host is not None:
        out.append(f"With the host's model pruned each round too (`--prune-global`, row `semifl-pruned-host`) the "
                   f"mean is {host:.2f} % ({host - seed:+.2f}).")
    if curves and "semifl" in curves:
        win = [(151, 200), (451, 500), (951, 1000)]
        cells = []
        for lo, hi in win:
            m = lambda a: 100 * float(np.mean(a[lo - 1:hi]))
            cells.append(f"rounds {lo}–{hi}: seed {m(curves['semifl']):.1f} %, ours {m(b['semifl']['accuracy']):.1f} %"
                         + (f" / {m(b['semifl-pruned-host']['accuracy']):.1f} %" if host is not None else ""))
        near = "pruned" if host is not None and abs(host - seed) < abs(plain - seed) else "unpruned"
        out.append("The seed's curve follows both until they part, then lies between them (" + "; ".join(cells)
                   + ", host unpruned / pruned). " + ("Neither" if min(abs(plain - seed), abs((host or plain) - seed)) > 3
                                                       else "Only one") + f" reading of its code lands within 3 points "
                   f"of it over rounds 951–1000; the {near} host is the nearer. We cannot run its MATLAB here to say "
                   "which its published curve came from.")
    if checks:
        runs = ", ".join(f"{100 * c['last50_accuracy']:.2f} %" for c in checks)
        undone = sum(c["steps_undone"]["undone"] for c in checks)
        steps = sum(c["steps_undone"]["steps"] for c in checks)
        out.append(f"The script as MATLAB would run it, outside the service (`{checks[0]['command']}` and the same "
                   f"for the other seeds: float64, each device's step as MATLAB's `train` takes it, on a random 70 % "
                   f"of the batch and undone where the loss on another 15 % did not fall) gives {runs} over rounds "
                   f"951–1000 for seeds {', '.join(str(i) for i in range(len(checks)))}, {undone} of {steps:,} "
                   "steps undone: neither float32 nor MATLAB's data division closes the gap.")
    out += ["", "Per class (test accuracy at round 1000):", "", pruning_table(res)]
    return "\n".join(out)


GLOROT_NOTE = ("These runs predate `--init`, `SEED_FLEET` and the MCU batteries' drain by bytes: they merged with "
               "the trust defaults of their time, and their MCUs did not run flat. From Glorot-uniform weights SemiFL "
               "at P = 0.3 stalls whatever the step size, where from the seed's weights it learns (above): the seed's "
               "result owes much to its initialisation, whose first layer is tiny (standard deviation 0.0019), so "
               "that pruning at 0.3 takes first-layer entries only.")


def render(sec: dict, result: str) -> list[str]:
    """A benchmark's section: title, the command and its JSON, an intro, one or more tables, a closing text."""
    out = [f"## {sec['title']}", "",
           f"`python benchmarks/{sec['script']}` → `benchmarks/results/{result}`. {sec['intro']}", ""]
    for header, rows in sec["tables"]:
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        out.append("")
    return out + list(sec.get("after", [])) + ([""] if sec.get("after") else [])


def mcu_section(m: dict) -> dict:
    return {"title": "MCU node budget (MicroPython)", "script": "bench_mcu.py", "intro": f"{m['what']}; {m['note']}.",
            "tables": [(["S", "heap a round needs", "CL upload on air", "int8 model download on air", "int8 inference (unix port)"],
                        [[s, f"{r['heap_needed_bytes'] / 1000:.1f} kB", f"{r['cl_upload_bytes_on_air'] / 1e6:.2f} MB",
                          f"{r['model_int8_download_bytes_on_air'] / 1000:.1f} kB", f"{r['infer_ms_per_sample_unix']:.1f} ms/sample"]
                         for s, r in m["by_fraction"].items()]),
                       (["board", "free heap", "fits S = 0.05 / 0.3 / 1", "margin at S = 0.3"],
                        [[b, f"{r['free_heap_bytes'] / 1000:.0f} kB", " / ".join("yes" if v else "no" for v in r["fits"].values()),
                          f"{r['margin_bytes_at_S0.3'] / 1000:.0f} kB"] for b, r in m["boards"].items()])]}


def seed001_section(d: dict) -> dict:
    def seed_cell(k):
        sp = d["seed_paper"].get(k)
        return f"{sp['ms_per_epoch']} / {sp['mb_per_epoch']}" if sp else "—"
    ra = d["ratios"]
    return {"title": "Seed 001: training in float64, float32, float16; int8 weights", "script": "bench_seed001.py",
            "intro": f"{d['setup']}, {d['epochs']} epochs, lr {d['lr']}, one core of this machine (the seed: a Raspberry Pi-class device).",
            "tables": [(["row", "ms / epoch", "MB / epoch (peak allocated)", "test accuracy", "model bytes", "seed ms / MB"],
                        [[k, r.get("ms_per_epoch", "—"), r.get("mb_per_epoch", "—"), pct(r["test_accuracy"]), r["model_bytes"], seed_cell(k)]
                         for k, r in d["rows"].items()])],
            "after": [f"float32 / float64: time {ra['float32_vs_float64_time']:.2f}x (seed {ra['seed_float32_vs_float64_time']:.2f}x), "
                      f"memory {ra['float32_vs_float64_memory']:.2f}x (seed {ra['seed_float32_vs_float64_memory']:.2f}x). numpy has no "
                      "native float16 arithmetic on this CPU, so float16 is emulated (slower) and, at the same step size, "
                      "unstable by the end of training."]}


def compression_section(d: dict) -> dict:
    return {"title": f"SemiFL with per-device compression ({d['rounds']} rounds)", "script": "bench_compression.py",
            "intro": d["setup"],
            "tables": [(["strategy", "FL clients", "final accuracy", "best", "FL uplink", "total uplink"],
                        [k.split(" | ") + [pct(r["final_accuracy"]), pct(r["best"]), f"{r['fl_uplink_bytes'] / 1e6:.0f} MB",
                                           f"{r['uplink_bytes'] / 1e6:.0f} MB"] for k, r in d["runs"].items()])],
            "after": ["By default pruned updates travel dense (pruned entries as float32 zeros), so uniform P alone "
                      "saves no uplink; `--sparse-updates` sends only the entries a client's copy holds (the host knows "
                      "the mask), the same model for P fewer bytes; per-device compression adds fp16/int8 deltas."]}


def energy_section(d: dict) -> dict:
    return {"title": f"Energy against accuracy ({d['rounds']} rounds, virtual meter)", "script": "bench_energy.py",
            "intro": "`semifl run` on the seed's fleet (6 Pi 4 FL clients, 4 ESP32 CL uploaders under MicroPython), joules "
                     "from each device's measured CPU time and counted bytes with the board profiles in `hil_tests/profiles/`.",
            "tables": [(["strategy", "final accuracy", "device energy", "Pis", "MCUs"],
                        [[r["strategy"], pct(r["final_accuracy"]), f"{r['energy_j']:.0f} J",
                          f"{r['energy_j_by_class'].get('pi', 0):.0f} J", f"{r['energy_j_by_class'].get('mcu', 0):.0f} J"]
                         for r in d["runs"]])],
            "after": ["![energy vs accuracy](img/energy_vs_accuracy.png)"]}


def round_time_section(d: dict) -> dict:
    cell = lambda t, k: f"{t[k]:.3f}" if t.get(k) is not None else "—"
    return {"title": "Seed 001: where a round's time goes, per device class", "script": "bench_round_time.py",
            "intro": f"`semifl run`, {d['rounds']} rounds, the virtual fleet (Pi agents; MCU nodes under MicroPython at an "
                     "ESP32 heap). T_download and T_local measured on the device, T_upload by the host from its request to "
                     "the last chunk, T_global = the host's aggregation. Mean seconds per participating device and round. "
                     "The simulated link delays what a device sends (uplink); downloads run at loopback speed.",
            "tables": [(["link", "class", "T_download", "T_local", "T_upload", "T_global", "mean round"],
                        [[link, cls] + [cell(t, k) for k in ("download", "local", "upload", "global")]
                         + [f"{r['mean_round_wall_s']:.2f}"] for link, r in d["links"].items() for cls, t in r["round_time_s"].items()])]}


def clustering_section(d: dict) -> dict:
    return {"title": "Weight clustering: ours against tensorflow-model-optimization", "script": "bench_clustering_tfmot.py",
            "intro": f"{d['model']} (float {pct(d['float_accuracy'])} on {d['dataset']}), {d['note']}; tfmot {d['tfmot']} "
                     "in the export venv.",
            "tables": [(["k", "tfmot accuracy", "ours accuracy", "tfmot weight MSE", "ours weight MSE"],
                        [[r["k"], pct(r["tfmot"]["accuracy"]), pct(r["semifl"]["accuracy"]), f"{r['tfmot']['weight_mse']:.2e}",
                          f"{r['semifl']['weight_mse']:.2e}"] for r in d["rows"]])],
            "after": ["tfmot's clustering is a training-time wrapper (centroids initialised LINEAR, then learned by "
                      "fine-tuning in Keras). The host derives a device's clustered copy every round without training "
                      "and without TensorFlow in the round path, so it starts from the same linear centroids and refines "
                      "them by k-means (`learn/compress.py`): the same or better weights one-shot, far better at small k."]}


def iotsl_cell(d: dict, name: str, i: int) -> tuple[dict, list, int]:
    """Cell i of an iotsl.json's dataset: its scale (a per-cell list picked at i), its generators'
    epsilons, and its column in the seed's table (2/4/6/8 classes per device)."""
    k = d[name]["classes_per_device"][i]
    scale = {key: v[i] if isinstance(v, list) else v for key, v in d[name]["scale"].items()}
    eps = [v for g, v in d.get("epsilon_by_generator", {}).items() if g.startswith(f"{name}/{k}/")]
    return scale, eps, [2, 4, 6, 8].index(k)


def setting(d: dict, key: str) -> str:
    """A scale setting over every cell of the table: its value, or each value where cells differ."""
    vals = sorted({v for n in ("mnist", "fashion") if n in d
                   for v in (d[n]["scale"][key] if isinstance(d[n]["scale"][key], list) else [d[n]["scale"][key]])})
    return "/".join(str(v) for v in vals)


def iotsl_section(d: dict) -> dict:
    """The seed's Table II beside ours, one row per (data, classes per device), each at the scale it ran."""
    rows, pre, gap = [], {}, []
    for name in ("mnist", "fashion"):
        r = d.get(name)
        if not r:
            continue
        sp = r["seed_paper"]
        for i, k in enumerate(r["classes_per_device"]):
            at, eps, j = iotsl_cell(d, name, i)
            red, hit = r["comm_reduction"][i], r["epoch_to_target"]
            rows.append([name, k, at["block"], at["gen_steps"], f"{max(eps):.2f}" if eps else "—",
                         pct(sp["sl"][j]), pct(r["sl"][i]), pct(sp["iotsl"][j]), f"**{pct(r['iotsl'][i])}**",
                         f"{100 * (r['iotsl'][i] - r['sl'][i]):+.1f} / {100 * (sp['iotsl'][j] - sp['sl'][j]):+.1f}",
                         pct(r["pretrain_accuracy"][i]), f"{hit['sl'][i] or '—'} / {hit['iotsl'][i] or '—'}",
                         f"{'—' if red is None else f'{100 * red:.1f} %'} / {100 * sp['comm_reduction']:.1f} %"])
            pre.setdefault(name, []).append(r["pretrain_accuracy"][i])
            gap.append(100 * (r["iotsl"][i] - sp["iotsl"][j]))
    eps = d.get("epsilon", [])
    return {"title": "IoTSL against split learning (seed 002)",
            "script": "bench_iotsl.py --cells benchmarks/results/iotsl_k*_gen3000",
            "intro": "Each cell: `python benchmarks/bench_iotsl.py --dataset D --k K --block B --epochs "
                     f"{setting(d, 'epochs')} --gen-steps S --out benchmarks/results/iotsl_kK_D_genS` (about an hour of "
                     "one core), then `--cells` assembles them unchanged. 5 devices holding 2/4/6/8 classes in blocks of "
                     "distinct images per class (*block*; the seed: 1200), SL from a random model against IoTSL (DP "
                     f"generators of width {setting(d, 'gen_dim')} trained *steps* steps, batch {setting(d, 'gen_batch')}, "
                     f"sigma {setting(d, 'sigma')}, clip 1; the host's pre-training on their generated set; imputation "
                     f"of missing classes), {setting(d, 'epochs')} SL epochs each, best accuracy on "
                     f"{setting(d, 'test_n')} test images; in-process, the split-learning round object and device code "
                     "`semifl run --strategy sl|iotsl` runs over MQTT. The device part is the seed's (VGG-16's first "
                     "block: two 3x3 convolutions of 64, smashed data 64x14x14); the host part is one 128-channel "
                     "convolution, a pool and a dense layer (136,586 parameters, 14.5 M multiply-adds an image) in "
                     "place of the rest of VGG-16 (11 convolutions, 14.7 M parameters, 176 M multiply-adds an image "
                     "at 28x28), so that an SL epoch takes under a minute of one core. "
                     "MNIST here is the first 10,000 training images "
                     "(class 5 has 863), so its blocks shrink where 5 devices need three or four blocks of a class. "
                     "Seed: its Table II and Section V-B.",
            "tables": [(["data", "classes / device", "block", "steps", "epsilon", "SL seed", "SL ours", "IoTSL seed",
                         "IoTSL ours", "IoTSL − SL, points (ours / seed)", "pre-trained", "epoch to SL's best (SL / IoTSL)",
                         "fewer values to SL's best (ours / seed)"], rows)],
            "after": [f"Every generator's (epsilon, delta): epsilon {min(eps):.2f} to {max(eps):.2f} at delta "
                      f"{d.get('delta')} (dp-accounting RDP), {len(eps)} generators. *Pre-trained*: the full model "
                      "trained on the generated set alone, scored on real images; it measures the generators ("
                      + ", ".join(f"{100 * min(v):.0f}–{100 * max(v):.0f} % on {n}" for n, v in pre.items())
                      + f"). IoTSL ours minus the seed's: {min(gap):+.1f} to {max(gap):+.1f} points. The communication "
                      "columns count the seed's values (N(2F+1)+w per device and epoch, generators included for "
                      "IoTSL) until IoTSL is within a point of SL's best (negative: IoTSL moved more)." if eps else "",
                      "", scaled_runs(), "", iotsl_plot()]}


def iotsl_plot() -> str:
    """SL and IoTSL test accuracy against the values moved (the seed's communication measure), per
    dataset and classes per device, from bench_iotsl.py's full JSON -> docs/img/iotsl.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {n: json.loads(p.read_text()) for n in ("mnist", "fashion")
            if (p := REPO / "benchmarks" / "results" / f"iotsl_{n}.json").exists()}
    if not runs:
        return ""
    ks = sorted({c["k"] for r in runs.values() for c in r["cells"]})
    fig, axes = plt.subplots(len(runs), len(ks), figsize=(3.2 * len(ks), 2.8 * len(runs)), squeeze=False, sharey=True)
    for row, (name, r) in zip(axes, runs.items()):
        for ax, c in zip(row, sorted(r["cells"], key=lambda c: c["k"])):
            for m, color in (("sl", "tab:gray"), ("iotsl", "tab:blue")):
                x = np.cumsum(c[m]["values_per_epoch"]) / 1e6
                ax.plot(x, 100 * np.asarray(c[m]["accuracy"]), marker=".", color=color, label=m.upper().replace("IOTSL", "IoTSL"))
            ax.set_title(f"{name}, {c['k']} classes / device", fontsize=9)
            ax.grid(alpha=0.3)
            ax.set_xlabel("values moved (millions)", fontsize=8)
        row[0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    (DOCS / "img").mkdir(exist_ok=True)
    fig.savefig(DOCS / "img" / "iotsl.png", dpi=90)
    plt.close(fig)
    return "![SL and IoTSL accuracy against values moved](img/iotsl.png)"


def scaled_runs() -> str:
    """IoTSL at the other scales tried (shorter or longer generators, smaller or larger blocks): one row
    per (data, classes per device) of each benchmarks/results/iotsl_*/iotsl.json that is not a cell of
    the main table, beside the main table's row for the same cell."""
    results = REPO / "benchmarks" / "results"
    fed = {Path(p).parent.name for n in ("mnist", "fashion") if (f := results / f"iotsl_{n}.json").exists()
           for p in json.loads(f.read_text())["settings"].get("assembled_from", [])}
    runs = {path: json.loads(path.read_text()) for path in [results / "iotsl.json"] + sorted(results.glob("iotsl_*/iotsl.json"))
            if path.parent == results or path.parent.name not in fed}
    cells = {(n, k) for path, d in runs.items() if path.parent != results
             for n in ("mnist", "fashion") for k in d.get(n, {}).get("classes_per_device", [])}
    rows = []
    for path, d in runs.items():
        for n in ("mnist", "fashion"):
            for i, k in enumerate(d.get(n, {}).get("classes_per_device", [])):
                if (n, k) not in cells:
                    continue
                sc, eps, j = iotsl_cell(d, n, i)
                seed, red = d[n]["seed_paper"], d[n]["comm_reduction"][i]
                rows.append(((n, k, sc["block"], sc["gen_steps"]),
                             f"| {n} | {k} | {sc['block']} | {sc['epochs']} | {sc['gen_steps']} | {max(eps):.2f} | "
                             f"{pct(d[n]['sl'][i])} | {pct(d[n]['iotsl'][i])} | {pct(seed['sl'][j])} | {pct(seed['iotsl'][j])} | "
                             f"{pct(d[n]['pretrain_accuracy'][i])} | {'—' if red is None else f'{100 * red:.1f} %'} | "
                             f"`{path.relative_to(results)}` |"))
    if not cells:
        return ""
    return "\n".join(["The other scales tried (`bench_iotsl.py --k K --block B --gen-steps S --out DIR`), beside the main "
                      "table's cell (`iotsl.json`):", "",
                      "| data | classes per device | block | SL epochs | generator steps | epsilon | SL | IoTSL | seed SL | seed IoTSL | "
                      "pre-trained | fewer values to SL's best | results |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"] + [r for _, r in sorted(rows)] + [
                      "", "IoTSL rises with its generators' training (pre-trained accuracy) and with the data they "
                      "learn from (block); SL only with the block. Fashion-MNIST runs up to the seed's 1200-image blocks; "
                      "MNIST here has 10,000 training images, about 1,000 a class."])


def sl_smashed_section(d: dict) -> dict:
    return {"title": "Split learning: compressed smashed data", "script": "bench_sl_smashed.py",
            "intro": f"{d['devices']} devices x {d['per_device']} {d['dataset']} images ({d['partition']}), sequential SL, "
                     f"{d['epochs']} epochs, {d['model']}; gradients stay float32.",
            "tables": [(["smashed dtype", "final accuracy", "best", "accuracy cost", "smashed bytes / device / epoch", "saving"],
                        [[k, pct(r["final"]), pct(r["best"]), f"{d['accuracy_cost_points'][k]:+.2f} points",
                          f"{r['smashed_bytes_per_device_epoch'] / 1e6:.1f} MB", f"{100 * d['uplink_saving'][k]:.0f} %"]
                         for k, r in d["runs"].items()])]}


def sl_energy_section(d: dict) -> dict:
    sp = d["seed_paper"]
    return {"title": "Split learning against IoTSL: device energy (virtual bench)", "script": "bench_sl_energy.py",
            "intro": f"`semifl run --strategy sl` and `--strategy iotsl` over the embedded broker: {d['setup']}; joules "
                     "from the virtual meter (each Pi's own CPU seconds and counted bytes at the Pi 4 profile). Target: "
                     f"within a point of SL's best ({pct(d['target_accuracy'])}).",
            "tables": [(["strategy", "accuracy per round", "round to target", "energy to target", "energy, whole run",
                         "train / upload / download / idle"],
                        [[k, " ".join(f"{100 * a:.1f}" for a in r["accuracy"]), r["round_to_target"] or "—",
                          "—" if r["energy_j_to_target"] is None else f"{r['energy_j_to_target']:.0f} J", f"{r['energy_j']:.0f} J",
                          " / ".join(f"{r['energy_by_phase'][p]:.0f}" for p in ("train", "upload", "download", "idle"))]
                         for k, r in d["runs"].items()])],
            "after": [f"The seed measured SL {sp['sl_j']:.3g} J against IoTSL {sp['iotsl_j']:.3g} J on five Pi 4s at full "
                      "scale, where pre-training saves most epochs. At this toy scale IoTSL reaches SL's best in its "
                      "first round, but that round carries the generator training and each device's imputed set (its "
                      "missing classes, five times its own data with two classes of ten), so it spends more joules to "
                      "the same accuracy; its advantage here is accuracy, not energy."]}


def perfit_int8_section(d: dict) -> dict:
    return {"title": "Personalised models in int8 on the device", "script": "bench_perfit_int8.py",
            "intro": f"{d['method']} on WISDM-2019 ({d['clients']} subjects, K = {d['k']}, {d['rounds']} rounds, "
                     f"{d['ft_epochs']} fine-tuning epochs), then (in the export venv, with TensorFlow) every device's personal model converted to a "
                     f"full-integer .tflite calibrated on {d['calibration']}, run in LiteRT and TFLite-Micro "
                     f"(arena {d['arena_bytes']:,} B) on the device's own test windows.",
            "tables": [(["", "mean accuracy", "worst decile"],
                        [["float32 (numpy engine)", pct(d["mean_fp32"]), pct(d["p10_fp32"])],
                         ["int8, LiteRT", pct(d["mean_int8"]), pct(d["p10_int8"])],
                         ["int8, TFLite-Micro", pct(d["mean_int8_tflm"]), "—"]])],
            "after": [f"Mean change {d['mean_drop_points']:+.2f} points (float − int8), the largest on one device "
                      f"{d['max_drop_points']:.2f} points (one test window of its ~70)."]}


def perfit_mqtt_section(d: dict) -> dict:
    st = d["settings"]
    rows = [[name, pct(r["mean_acc"]), pct(r["p10_acc"]), pct(r["in_process"]["mean_acc"]),
             "yes" if r["same_as_in_process"] else f"no (max {r['max_abs_diff']:.4f})", f"{r['values_per_round']:,}",
             f"{r['bytes_up_per_round']:,} / {r['bytes_down_per_round']:,}", f"{r['seconds']:.0f} s / {r['in_process']['seconds']:.0f} s",
             sum(r["rejected"].values())] for name, r in d["methods"].items()]
    return {"title": "PerFit over the broker", "script": "bench_perfit_mqtt.py",
            "intro": f"`semifl run --strategy ftl | fedper | fd | perfedavg | ditto`: {st['subjects']} WISDM-2019 subjects as "
                     f"{st['subjects']} virtual Pi agents (real processes on the embedded broker), K = {st['k']}, "
                     f"{st['rounds']} rounds, the case study's settings (above). Each device runs the method's device step "
                     "on its own windows, keeps its personal state in its flash and reports its personal model's accuracy "
                     "on its own test windows; the in-process run is `semifl.experiments.perfit` (the same round object, in-memory broker) on the same data and seeds.",
            "tables": [(["method", "mean (devices' reports)", "worst decile", "in-process mean", "same on every device",
                         "values up / participant / round", "bytes up / down per participant and round", "wall: MQTT / in-process",
                         "rejected"], rows)],
            "after": ["Bytes include the chunk and blob headers and the statuses; down is the method's message plus the "
                      "task (FD: the public-set indices and last round's consensus). FedPer's uploads carry the base only "
                      "and FD's one logits tensor; tests/test_perfit_mqtt.py inspects the chunks on the wire."]}


def models_section() -> list[str]:
    """The exported models, from each models/NAME/NAME.json that `semifl models export` wrote."""
    rows = []
    for path in sorted((REPO / "models").glob("*/*.json")):
        c = json.loads(path.read_text())
        if "int8_accuracy" not in c:
            continue
        rows.append(f"| {c['name']} | {c['source']} | {c['params']:,} | {c['dataset']} | {pct(c['fp32_accuracy'])} | "
                    f"{pct(c['int8_accuracy'])} | {c['size_bytes'] / 1000:.1f} kB | {c['arena_bytes']:,} B | "
                    f"{c['max_lsb_tflm_vs_litert']} / {c.get('max_lsb_tflm_vs_litert_xnnpack', '—')} | "
                    f"{', '.join(dict.fromkeys(c['ops']))} |")
    return ["## Models: int8 export", "", "`semifl models export NAME` → `models/NAME/NAME.json` (and .tflite, .h, card). "
            "Float accuracy from the numpy engine the host and the Pi agent run; int8 from LiteRT on the whole held-out "
            "set; the arena is the smallest TFLite-Micro allocates (to 256 B); the drift is the largest |TFLite-Micro − "
            "LiteRT| on 64 golden inputs, against LiteRT's builtin kernels / its XNNPACK delegate (the Pi's default).", "",
            "| model | from | parameters | data | fp32 | int8 | size | TFLM arena | LSB drift | ops |",
            "|---|---|---|---|---|---|---|---|---|---|"] + rows + [
            "", "PerFit's CNN runs over WISDM-2019's 91 features as a 10x10 grid (the dataset ships features, not the raw "
            "20 Hz series); on the seed's 20x20x3 input the same layers have the seed's 33,698 parameters, and the 3NN "
            "on 1200 inputs its 521,510 (tests/test_nn.py). IoTSL's device part is VGG-16's first block without batch "
            "norm: 37,568 parameters (the seed's 37,824 count VGG-16-BN's 256 scales and shifts). MNIST here is the "
            "first 10,000 training images (`../shared/data/mnist`), 2 epochs.", ""]


PERFIT_ORDER = ["FL-3NN", "FTL-3NN", "FL-CNN", "FTL-CNN", "FD-CNN", "FD-1", "FD-2", "FedPer", "Per-FedAvg", "Ditto",
                "Local-3NN", "Local-CNN"]


def perfit_section(d: dict, path: str) -> list[str]:
    """PerFit's case study (seed 003): ours beside the seed's, from benchmarks/bench_perfit.py's JSON."""
    sp, c = d["seed_paper"], d["config"]
    by = d["by_clients"]
    other = [n for n in by if n != str(d["clients"])]

    def model(r):
        m = r["model"]
        return m.upper() if isinstance(m, str) else " + ".join(f"{v} {k.upper()}" for k, v in m.items())

    def vals(r):
        return f"{r['values_per_round']:,}"

    head = ["method", "model", "seed mean", f"ours mean ({d['clients']})", f"ours p10 ({d['clients']})",
            "values up / round: seed", "ours"]
    head += [h for n in other for h in (f"ours mean ({n})", f"ours p10 ({n})")]
    rows = []
    for name in PERFIT_ORDER:
        r = d["methods"].get(name)
        if not r:
            continue
        s = sp.get(name, {})
        row = [name, model(r), pct(s["mean_acc"]) + (" *" if "derived" in s else "") if "mean_acc" in s else "—",
               pct(r["mean_acc"]), pct(r["p10_acc"]),
               f"{s['values_per_round']:,}" if "values_per_round" in s else "—", vals(r)]
        for n in other:
            o = by[n]["methods"].get(name)
            row += [pct(o["mean_acc"]), pct(o["p10_acc"])] if o else ["—", "—"]
        rows.append(row)
    g, out = d.get("gains", {}), []
    fp = d.get("full_participation") or {}
    out += ["## Personalized FL on HAR: PerFit's case study (seed 003)", "",
            f"`OPENBLAS_NUM_THREADS=1 python benchmarks/bench_perfit.py` → `{path}` ({d['seconds'] / 60:.0f} min on one "
            f"core). {d['dataset']}; one subject = one device, its windows split 75/25 stratified (seeded). "
            f"{d['clients']} subjects as the seed's 30 MobiAct clients"
            + (f", and all {', '.join(other)}" if other else "") + f"; K = {d['k']} devices per round (the seed's K), "
            f"{d['rounds']} rounds, SGD lr {c['lr']} (the seed's) with momentum {c['momentum']}, {c['epochs']} local "
            f"epochs of batch {c['batch']} per round. Mean and worst decile (10th percentile) of the per-device test "
            "accuracy of each device's own model; values: what one participating device sends per round, counted "
            "from the arrays it sends. `*`: the seed gives this one as a difference (FL-3NN = 95.37 − 11.12, "
            "FD-CNN = 85.22 + 5.69).", ""]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    if g:
        out += ["Personalised gain, points of mean accuracy, ours (seed): " + "; ".join(
            f"{k} {100 * v:+.2f}" + (f" ({100 * sp[key]:+.2f})" if key else "")
            for k, v in g.items() for key in [{"FTL-3NN over FL-3NN": "gain_ftl_3nn",
                                               "FD-CNN over FL-CNN": "gain_fd_cnn"}.get(k)]) + ".", ""]
    m = d["methods"]
    if all(k in m for k in ("Local-3NN", "FTL-3NN", "FL-3NN")):
        loc, ftl = m["Local-3NN"], m["FTL-3NN"]
        out += [f"Read against Local-3NN: a WISDM-2019 subject's training windows cover nearly every activity, so "
                f"a device training alone already reaches {pct(loc['mean_acc'])} (worst decile "
                f"{pct(loc['p10_acc'])}); the global model is what falls short ({pct(m['FL-3NN']['mean_acc'])}). "
                f"Personalization recovers the local accuracy and adds to it a little: FTL-3NN "
                f"{100 * (ftl['mean_acc'] - loc['mean_acc']):+.2f} points mean, "
                f"{100 * (ftl['p10_acc'] - loc['p10_acc']):+.2f} worst decile over Local-3NN.", ""]
    if fp.get("methods"):
        out += [f"Full participation ({fp['clients']} of {fp['clients']} devices every round, {fp['rounds']} rounds):", "",
                "| method | mean | p10 |", "|---|---|---|"]
        out += [f"| {k} | {pct(r['mean_acc'])} | {pct(r['p10_acc'])} |" for k, r in fp["methods"].items()] + [""]
    out += [f"FL-* is the global model of the FTL-* run on every device; FTL fine-tunes it {c['ft_epochs']} epochs on "
            "the device's own windows (all layers). FD: the host draws a fresh version of a "
            f"{c['public_n']}-window public set every round and sends its indices with the last version's consensus "
            f"(mean logits); a device distils towards it ({c['distil_epochs']} epoch, T = {c['temperature']}), trains on "
            f"its own windows and answers with its logits: {c['public_n']} × {d['methods'].get('FD-CNN', {}).get('values_per_round', 0) // max(c['public_n'], 1)} "
            "activities (the seed's 500 × 10 = 5,000). The public pool is the training windows of the subjects outside "
            "the federation (for 30 clients, the other 20) or, with all 50 as clients, 10 % of every client's windows, "
            "used unlabeled. FD-1/FD-2 mix the two architectures (a third / two thirds 3NN, as the seed's 10/20). "
            "FedPer keeps the last layer (2 arrays) on the device; Per-FedAvg is first-order MAML (inner step "
            f"{c['alpha']}, outer step lr {c['lr']} without momentum; a device adapts with {c['adapt_steps']} inner "
            f"steps on batches of its own windows); Ditto's lambda is {c['lam']}, its personal model trained as many "
            "epochs as the global copy. Local-*: each device "
            f"alone, {c['local_epochs']} epochs, nothing sent. The CNN is the seed's layers over the 91 features as a "
            "zero-padded 10x10 grid (WISDM-2019 ships features, not the raw 20 Hz series): "
            f"{d['models']['cnn']:,} parameters here, the seed's 33,698 on its 20x20x3 input; the 3NN has "
            f"{d['models']['3nn']:,} on 91 inputs (the seed's 521,510 on 1200). Transport-free classes (`semifl.learn.perfit`), "
            "run by `semifl.experiments.perfit` in-process with the personalization round object a broker run uses "
            "(next section).", ""]
    return out


def energy_planning_section(d: dict) -> dict:
    """Energy-aware planning (issue 8): per battery model, one row per fl_min_battery."""
    flat = lambda r: ", ".join(f"{k} @{v}" for k, v in r["flat_at_round"].items()) or "none"
    life = lambda r: str(r["lifetime_rounds"]) if r["lifetime_rounds"] is not None else f"> {d['rounds']}"
    tables, after = [], []
    for model, m in d["models"].items():
        runs = m["runs"]
        pis = list(runs[0]["rounds_trained"])
        tables.append(([f"{model}: fl_min_battery", "final acc.", "best acc.", "device energy", "Pis", "MCUs",
                        "Pi batteries gave", "FL clients / round", "rounds trained (" + ", ".join(pis) + ")",
                        "ran flat (round)", "lifetime"],
                       [[r["fl_min_battery"], pct(r["final_accuracy"]), pct(r["best_accuracy"]), f"{r['energy_j']:.0f} J",
                         f"{r['energy_j_by_class'].get('pi', 0):.0f} J", f"{r['energy_j_by_class'].get('mcu', 0):.0f} J",
                         f"{r['pi_battery_j_drawn']:.0f} J", r["fl_clients_per_round"],
                         " / ".join(str(r["rounds_trained"][p]) for p in pis), flat(r), life(r)] for r in runs]))
        lo, hi = runs[0], runs[-1]
        rj = m["role_joules"]
        after.append(f"- **{model}** (capacity {d['capacity_j'][model]:.0f} J): fl_min_battery {lo['fl_min_battery']} → "
                     f"{hi['fl_min_battery']} takes FL clients per round from {lo['fl_clients_per_round']} to "
                     f"{hi['fl_clients_per_round']}, the Pis' batteries from {lo['pi_battery_j_drawn']:.0f} J to "
                     f"{hi['pi_battery_j_drawn']:.0f} J, the first flat battery from round {life(lo)} to {life(hi)}, and "
                     f"final accuracy from {pct(lo['final_accuracy'])} to {pct(hi['final_accuracy'])}. A Pi's FL round "
                     f"cost {rj['fl_round_j']:.2f} J for its training and upload (at CPU-active and Wi-Fi TX power); a "
                     f"CL upload of the fleet's samples (S = 0.3) would cost it {rj['cl_upload_j']:.2f} J; idle is "
                     f"{rj['idle_w']:.2f} W.")
    after += ["", "A Pi below the threshold sits out: it cannot upload samples (the agent plays fl and sl) and its data is "
                 "private; and since a CL upload would cost a Pi more than training, the battery threshold, not a choice "
                 "between roles, is the policy. With idle power drawn (a Pi 4 cannot sleep) a round's idle energy dwarfs "
                 "its work, so the threshold buys little lifetime for its accuracy; only a board that sleeps between tasks "
                 "turns skipped rounds into lifetime. Device energy is the virtual meter's (it keeps charging a flat "
                 "Pi's idle); \"Pi batteries gave\" is what their SimBatteries lost up to the last round's report. "
                 "Idle joules follow wall time, so rounds on a loaded machine cost more."]
    return {"title": f"Energy-aware planning: accuracy, energy and lifetime ({d['rounds']} rounds)",
            "script": "bench_energy_planning.py",
            "intro": f"`semifl run` on {d['fleet']}; the Pis on batteries charged {d['pi_charge_start']} at the start "
                     "(pi-00 … pi-05), drained by the Pi 4 profile's numbers (the virtual meter's); a Pi below "
                     "`--fl-min-battery` does not train, one below min_battery "
                     f"({d['min_battery']}) has run flat and sits out for good. Lifetime: the first round a device "
                     "reports a flat battery. Battery models: *idle* (the battery pays the Pi 4's idle power too) and "
                     "*sleep* (only work drains it: a board that sleeps between tasks).",
            "tables": tables, "after": after}


def async_section(b: dict) -> dict:
    f = b["fleet"]
    rows = []
    for name, m in b["modes"].items():
        sp = b.get("speedup_vs_sync_all", {}).get(name)
        rows.append([name, m["rounds"], m["updates"], f"{m['round_s_mean']:.2f} s", f"{m['longest_train_phase_s']:.1f} s",
                     "—" if m["time_to_target_s"] is None else f"{m['time_to_target_s']:.1f} s",
                     "—" if sp is None else f"{sp:.2f}x",
                     "—" if m["joules_to_target"] is None else f"{m['joules_to_target']:,.0f} J",
                     pct(m["final_accuracy"]), ", ".join(f"{k} {v}" for k, v in m["late"].items()) or "—"])
    st = b["settings"]
    return {"title": "Stragglers: sync-all vs quorum and deadline vs buffered async (FedBuff)", "script": "bench_async.py",
            "intro": f"{f['devices']} virtual Pis (the real Pi agent as processes) over {b['broker']}, Fashion-MNIST split "
                     f"{f['partition']}, FedAvg; every third Pi {max(f['slowdown_cycle']):.0f}x slower in compute and link, "
                     f"{f['silent']} answers every announcement and never does its task; a training task takes "
                     f"{st['train_s']} s on a fast Pi, links {st['bandwidth_bps'] / 1e6:.0f} Mbit/s. Each mode gets "
                     f"{st['budget_s']:.0f} s of rounds (a merge in async). sync-all: every device tasked, a round waits "
                     f"for all of them up to its hard limit ({st['deadline_all_s']:.0f} s); quorum: 10 of 20 tasked, a "
                     f"round closes once 10 reported and {st['deadline_s']:.0f} s passed; async: merges of 10 updates "
                     f"weighted 1/sqrt(1 + staleness), at most {st['max_staleness']} versions stale. Target: a point "
                     f"under sync-all's final accuracy ({pct(b['target_accuracy'])}); joules: the virtual meter "
                     "(rpi4 profile) over every device, idle time included.",
            "tables": [(["mode", "rounds", "updates merged", "round", "longest wait for training", "to target", "speed-up",
                         "device-joules to target", "final accuracy", "late"], rows)]}


BENCH_SECTIONS = [("async.json", async_section), ("mcu.json", mcu_section), ("seed001_dtypes.json", seed001_section),
                  ("compression.json", compression_section), ("energy.json", energy_section),
                  ("round_time.json", round_time_section), ("clustering_tfmot.json", clustering_section),
                  ("iotsl.json", iotsl_section), ("sl_smashed.json", sl_smashed_section),
                  ("sl_energy.json", sl_energy_section), ("perfit_int8.json", perfit_int8_section), ("energy_planning.json", energy_planning_section)]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--reproduce", required=True, help="`semifl reproduce semifl --init ...` output folder")
    ap.add_argument("--sweep", help="`semifl sweep --init ...` output folder")
    ap.add_argument("--ablation", help="JSON from tools/semifl_plus_experiments.py --table --summary")
    ap.add_argument("--seed-curves", help="the seed's published curves (../shared/data/semifl-seed/published_curves.json): "
                                          "window means beside ours in the text")
    ap.add_argument("--step-check", help="`semifl reproduce semifl --rounds 10 --lr 0.1 --baselines cl --init ...` "
                                         "output folder: CL's first rounds at the seed's nominal step beside ours")
    ap.add_argument("--matlab-check", nargs="*", help="JSON of `benchmarks/bare_semifl_loop.py --matlab --init ...` "
                                                      "(one a seed): the script as MATLAB runs it, outside the service")
    ap.add_argument("--perfit", help="JSON from benchmarks/bench_perfit.py (benchmarks/results/perfit.json)")
    a = ap.parse_args(argv)
    (DOCS / "img").mkdir(parents=True, exist_ok=True)
    (DOCS / "data").mkdir(parents=True, exist_ok=True)
    lines = ["# Results", "",
             "Every number here comes from a JSON file written by the command next to it; "
             "`python tools/results_md.py` rebuilds this page from them.", ""]
    ab = json.loads(Path(a.ablation).read_text()) if a.ablation else None
    published = json.loads(Path(a.seed_curves).read_text()) if a.seed_curves else None
    curves = {k: v["accuracy"] for k, v in published.items()} if published else None
    res = reproduce_section(Path(a.reproduce).resolve(), ab, lines, READING)
    if a.step_check and published:
        lines += step_check(res, Path(a.step_check).resolve(), published)
    if "pruned_model" in res["baselines"].get("semifl", {}):
        checks = [json.loads(Path(p).read_text()) for p in a.matlab_check or []]
        lines += [pruning_text(res, curves, checks), ""]
    if ab:
        shutil.copy(a.ablation, DOCS / "data" / "semifl_plus_ablation.json")
        lines += ablation_section(ab, "docs/data/semifl_plus_ablation.json",
                                  f"semifl+ ablation from the seed's weights ({ab['rounds']} rounds, seed 0)")
    if a.sweep:
        lines += sweep_section(Path(a.sweep).resolve())
    glorot_section(lines, GLOROT_NOTE)
    for name, title in (("semifl_repro.json", "In-process speed: strategies vs a bare numpy loop, FL vs Flower"),
                        ("fl_baseline_rounds.json", "Over MQTT: rounds end to end vs Flower")):
        p = REPO / "benchmarks" / "results" / name
        if not p.exists():
            continue
        b = json.loads(p.read_text())
        script = {"semifl_repro.json": "bench_semifl_repro.py", "fl_baseline_rounds.json": "bench_rounds.py"}[name]
        lines += [f"## {title}", "", f"`python benchmarks/{script}` → `benchmarks/results/{name}` ({b['rounds']} rounds)", "",
                  "| run | wall | peak RSS (process tree) | final accuracy |", "|---|---|---|---|"]
        for k, r in b["results"].items():
            lines.append(f"| {k} | {r['wall_s']:.1f} s | {r['peak_rss_bytes'] / 2**20:.0f} MiB | {pct(r['final_accuracy'])} |")
        ratios = b.get("ratios") or {f"{k}/flower {m}": v for k, r in b["results"].items()
                                     for m, v in r.get("vs_flower", {}).items()}
        lines += [""] + [f"- {k}: {v:.2f}x" for k, v in ratios.items()] + [""]
    for name, build in BENCH_SECTIONS:
        path = REPO / "benchmarks" / "results" / name
        if path.exists():
            lines += render(build(json.loads(path.read_text())), name)
    if a.perfit:
        lines += perfit_section(json.loads(Path(a.perfit).read_text()), a.perfit)
    path = REPO / "benchmarks" / "results" / "perfit_mqtt.json"
    if path.exists():
        lines += render(perfit_mqtt_section(json.loads(path.read_text())), path.name)
    lines += models_section()
    (DOCS / "results.md").write_text("\n".join(lines))
    print(f"wrote {DOCS / 'results.md'}")


if __name__ == "__main__":
    main()
