"""From a run configuration to the round object that runs it: the strategy registry's family picks the
kind of round (federated: synchronous or buffered; split; personal), the same for a run over MQTT and
an in-process run."""
from __future__ import annotations

import math

import numpy as np

from semifl.config import RunConfig
from semifl.learn import dp, initial, mlp, nn, perfit, registry, robust
from semifl.learn.data import Dataset, to_float
from semifl.learn.har import HARData, feature_view
from semifl.models import get as get_model
from semifl.service.rounds.buffered import BufferedRound
from semifl.service.rounds.federated import FederatedRound
from semifl.service.rounds.personal import PersonalRound
from semifl.service.rounds.secure import SecureRound
from semifl.service.rounds.split import GeneratorStage, SplitRound
from semifl.service.session import Limits, Session

ARCHS = {"3nn": "3nn-har", "cnn": "cnn-har"}   # PerFit's case-study architectures (models/)


def limits(cfg: RunConfig) -> Limits:
    return Limits(ready_timeout_s=cfg.host.ready_timeout_s, collect_timeout_s=cfg.host.collect_timeout_s,
                  threads=cfg.host.threads)


def make_evaluator(ds: Dataset):
    x, y = to_float(ds.x_test), ds.y_test.astype(np.int64)
    return lambda params: mlp.evaluate(params, x, y)


def initial_params(cfg: RunConfig) -> list[np.ndarray]:
    """The global model a federated run starts from: the file `cfg.init` (the seed's .mat, an .npz), or
    Glorot-uniform weights drawn from cfg.seed."""
    return initial.load(cfg.init) if cfg.init else mlp.init_params(seed=cfg.seed)


def make_round(cfg: RunConfig, session: Session, data, ids: list[str] | None = None, strategy=None, init=None):
    """The round object of `cfg`'s strategy. data: a Dataset (federated, split) or HARData (personal,
    with `ids` the devices, one per subject); strategy: a federated strategy or a PerFit method
    object instead of the one cfg describes; init: initial parameters instead of `initial_params(cfg)`."""
    spec = registry.spec(cfg.strategy)
    if spec.family == "personal":
        return personal_round(cfg, session, data, ids, strategy)
    if spec.family == "split":
        return split_round(cfg, session, data, spec, init)
    fed = cfg.federated
    # a host that prunes its own model (prune_global) needs no prune-consistent step from semifl+
    strategy = strategy or registry.federated(cfg.strategy, cfg.lr, cfg.rounds, 0.0 if fed.prune_global else fed.prune,
                                              cfg.seed, server_lr=fed.server_lr or None, beta2=fed.server_beta2 or None)
    if cfg.trust.dp_noise > 0 or cfg.trust.dp_adaptive:   # DP-FedAvg's clip-sum-noise (learn/dp.py) clips itself
        # the clients a round merges: the top-K, or under SecAgg every tasked client (no top-K there)
        expected = math.ceil(fed.fl_uploaders * (1 + fed.over_select)) if cfg.trust.secagg else fed.fl_uploaders
        strategy.fl_merge = dp.ClientDP.from_trust(cfg.trust, expected_clients=min(expected, cfg.sim.fl_devices),
                                                   fleet_size=cfg.sim.fl_devices, seed=cfg.seed).merge
    elif cfg.trust.aggregation != "mean" and not cfg.trust.secagg:   # the robust rule (learn/robust.py)
        strategy.fl_merge = robust.from_trust(cfg.trust)
    kind = SecureRound if cfg.trust.secagg else BufferedRound if fed.mode == "async" else FederatedRound
    return kind(session, strategy, fed, init or initial_params(cfg), make_evaluator(data), seed=cfg.seed,
                lr=cfg.lr, epochs=cfg.epochs, carries_late=spec.carries_late,
                n_classes=data.n_classes, calib_x=data.x_train[::60][:1000],   # int8 ranges until CL uploads arrive
                trust=cfg.trust)


def split_round(cfg: RunConfig, session: Session, ds: Dataset, spec, init=None) -> SplitRound:
    sp = cfg.split
    model = get_model(sp.model)
    if not model.cut:
        raise ValueError(f"model {model.name} has no device part (cut); split learning needs one")
    net = model.network()
    n = sp.eval_n or len(ds.y_test)
    x, y = to_float(ds.x_test[:n]).reshape((-1,) + net.input_shape), ds.y_test[:n].astype(np.int64)

    def evaluate(params):
        logits = np.concatenate([net.forward(params, x[i:i + 500]) for i in range(0, len(x), 500)])
        return float((logits.argmax(1) == y).mean()), nn.softmax_xent(logits, y)[0]

    return SplitRound(session, spec, net, model.cut, model.name, init or net.init(cfg.seed), evaluate, seed=cfg.seed,
                      lr=sp.sl_lr or cfg.lr, batch=sp.sl_batch, smashed=sp.smashed, n_classes=ds.n_classes,
                      generators=GeneratorStage.of(sp), batches=sp.sl_batches)


def public_set(har: HARData, n: int) -> np.ndarray:
    """FD's globally shared pool: the training windows of the subjects outside the federation (30 of
    50: the other 20), or, when every subject is a client, 10 % of every client's training windows
    (drawn seeded, used unlabeled: only logits on them ever travel)."""
    if n < len(har.subjects):
        return np.concatenate([s.x_train for s in har.subjects[n:]])
    rng = np.random.default_rng(0)
    return np.concatenate([s.x_train[rng.choice(len(s.x_train), len(s.x_train) // 10, replace=False)]
                           for s in har.subjects[:n]])


def personal_models(cfg: RunConfig, ids: list[str]) -> dict[str, str]:
    """The model each device runs: one architecture for all or (FD, model-agnostic) several, cycled."""
    archs = cfg.personal.arch
    return {d: ARCHS[archs[i % len(archs)]] for i, d in enumerate(ids)}


def personal_method(cfg: RunConfig, har: HARData, net: nn.Net | None = None) -> perfit.Method:
    """The run's PerFit method with its settings from cfg (FD: its public pool and class count)."""
    p = cfg.personal
    local = perfit.Local(epochs=cfg.epochs, batch=p.batch, lr=cfg.lr, momentum=p.momentum)
    if cfg.strategy == "fd":
        return perfit.FD(public_set(har, p.subjects), har.n_classes, local, seed=cfg.seed, public_n=p.public_n)
    extra = {"ftl": {"ft_epochs": p.ft_epochs}, "fedper": {"head_arrays": p.head_arrays},
             "perfedavg": {"alpha": p.inner_lr, "adapt_steps": p.adapt_steps}, "ditto": {"lam": p.lam}}[cfg.strategy]
    return perfit.METHODS[cfg.strategy](net, local, cfg.seed, **extra)


def global_evaluator(har: HARData, subjects: int, net, view):
    xt = np.concatenate([s.x_test for s in har.subjects[:subjects]])
    yt = np.concatenate([s.y_test for s in har.subjects[:subjects]]).astype(np.int64)

    def evaluate(params):
        logits = net.forward(params, view(xt))
        return float((logits.argmax(1) == yt).mean()), nn.softmax_xent(logits, yt)[0]
    return evaluate


def personal_round(cfg: RunConfig, session: Session, har: HARData, ids: list[str], method=None) -> PersonalRound:
    """PerFit's method over the session: the same `semifl.learn.perfit` classes the devices rebuild."""
    models = personal_models(cfg, ids)
    nets = {m: get_model(m).network() for m in set(models.values())}
    nf = len(har.features)
    views = {m: feature_view(get_model(m).input_shape, nf) for m in nets}
    net = nets[models[ids[0]]]
    method = method or personal_method(cfg, har, net)
    # a global model every device could run (not FD's, not FedPer's base alone): scored on all test windows
    evaluate = None if cfg.strategy in ("fd", "fedper") else global_evaluator(har, cfg.personal.subjects, net,
                                                                              views[models[ids[0]]])
    p = cfg.personal
    return PersonalRound(session, method, models, nets, views, evaluate, har.n_classes, nf, cfg.rounds, seed=cfg.seed,
                         per_round=p.per_round, personal_every=p.personal_every)
