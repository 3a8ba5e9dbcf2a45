"""Every strategy by name: its family (which kind of round runs it), a one-line description, and how
to build it. The CLI's choices, the configuration's validation and the docs all read this table.

Families: `federated` (FL updates and CL samples merged into one global model; rounds run
synchronously or buffered), `split` (the device keeps the first layers; smashed data and gradients),
`personal` (PerFit: personal state stays on the device).
"""
from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("federated", "split", "personal")


@dataclass(frozen=True)
class StrategySpec:
    name: str
    family: str
    help: str
    uses_cl: bool = False        # CL uploaders send raw samples (federated family only)
    sequential: bool = False     # split family: clients one after another, f_a handed on (else f_a averaged)
    generators: bool = False     # split family: IoTSL's DP generator stage before the first epoch
    carries_late: bool = False   # federated: a late update is merged into a later step (else dropped)


STRATEGIES: dict[str, StrategySpec] = {s.name: s for s in (
    StrategySpec("fedavg", "federated", "FedAvg of the FL clients' updates; CL uploaders unused"),
    StrategySpec("semifl", "federated", "SemiFL (seed 000): FL updates and the host's step on CL samples, mixed",
                 uses_cl=True),
    StrategySpec("semifl+", "federated", "SemiFL with server Adam, sample and update memories (docs/results.md)",
                 uses_cl=True, carries_late=True),
    StrategySpec("sl", "split", "split learning (seed 002): clients one after another, f_a handed on",
                 sequential=True),
    StrategySpec("splitfed", "split", "split learning with all clients at once, f_a averaged"),
    StrategySpec("iotsl", "split", "IoTSL (seed 002): DP generators, pre-training and imputation, then SL",
                 sequential=True, generators=True),
    StrategySpec("ftl", "personal", "PerFit FTL: FedAvg, then fine-tuning on each device"),
    StrategySpec("fedper", "personal", "PerFit FedPer: the head never leaves the device"),
    StrategySpec("fd", "personal", "PerFit FD: only logits on a public set travel; models may differ"),
    StrategySpec("perfedavg", "personal", "PerFit Per-FedAvg: a meta-learned model each device adapts"),
    StrategySpec("ditto", "personal", "PerFit Ditto: a personal model pulled towards the global one"),
)}


def spec(name: str) -> StrategySpec:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def names(family: str | None = None) -> list[str]:
    return [n for n, s in STRATEGIES.items() if family is None or s.family == family]


# semifl+'s ingredients as chosen by the ablation in docs/results.md (tools/semifl_plus_experiments.py)
SEMIFL_PLUS = dict(server_opt="adam", server_lr=0.005, cl_memory=True, fl_memory=True, fl_decay=0.8,
                   fl_floor=0.1, balanced=True, schedule="cosine")


def federated(name: str, lr: float, rounds: int = 1000, prune: float = 0.0, seed: int = 0,
              server_lr: float | None = None, beta2: float | None = None):
    """The aggregation strategy of a federated-family run; server_lr, beta2: semifl+'s server Adam's instead of
    its own."""
    from .semifl_plus import SemiFLPlus
    from .strategy import FedAvg, SemiFL

    s = spec(name)
    if s.family != "federated":
        raise ValueError(f"{name} is a {s.family} strategy, not a federated one")
    if name == "fedavg":
        return FedAvg()
    if name == "semifl":
        return SemiFL(lr=lr)
    given = {k: v for k, v in (("server_lr", server_lr), ("beta2", beta2)) if v}
    return SemiFLPlus(lr=lr, rounds=rounds, prune=prune, seed=seed, **{**SEMIFL_PLUS, **given})
