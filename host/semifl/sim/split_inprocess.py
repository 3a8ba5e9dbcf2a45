"""Split learning without a broker: the devices' `SplitClient` and the host's `SplitServer` called
directly, in the order and with the tasks the MQTT engine uses, so both end in the same model
(tests/test_split.py). Reproductions use this path for speed; it counts the values the seed counts.
"""
from __future__ import annotations

import numpy as np

from semifl.config import RunConfig
from semifl.fleet.planner import task_seed
from semifl.learn import compress
from semifl.learn.data import Dataset, to_float
from semifl.learn.split import SplitServer
from semifl.models import get
from semifl.sim.fleet import fleet_for, shard
from semifl_agent.split import SplitClient


def run_split_inprocess(cfg: RunConfig, ds: Dataset, on_round=None, params=None) -> SplitServer:
    """cfg.strategy "sl" (sequential, sorted device order) or "splitfed"; returns the server (f_a, f_b,
    values per device). `params`: start from these instead of the model's seeded init (e.g. θ_pre)."""
    spec = get(cfg.model)
    net = spec.network()
    f_a, f_b = net.split(spec.cut)
    params = params or net.init(cfg.seed)
    na = len(f_a.shapes())
    server = SplitServer(f_b, list(params[na:]), list(params[:na]), lr=cfg.lr)
    clients = {}
    for s in fleet_for(cfg, ds):
        if s.device_class == "pi":
            x, y = shard(ds, s)
            clients[s.id] = SplitClient(f_a, to_float(x).reshape((-1,) + f_a.input_shape), y)
    for rnd in range(1, cfg.rounds + 1):
        split_round(server, clients, rnd, cfg.seed, cfg.sl_batch, cfg.lr, cfg.smashed, cfg.strategy)
        if on_round:
            on_round(rnd, server)
    return server


def split_round(server: SplitServer, clients: dict, rnd: int, seed: int, batch: int, lr: float,
                smashed: str = "float32", variant: str = "sl", relay: bool = True):
    """One round over `clients` (device id -> SplitClient), in sorted id order, with the tasks the MQTT
    engine sends. relay: count the host -> device hop of f_a (the seed's Table I sends it device to
    device and does not)."""
    for dev in sorted(clients):
        c = clients[dev]
        c.begin({"round": rnd, "seed": task_seed(seed, rnd, dev), "batch": batch, "lr": lr, "smashed": smashed},
                server.params_a)
        if relay:
            server.handed(dev)
        if variant == "splitfed":   # every client starts from the round's f_a; batches interleave
            continue
        _epoch(server, dev, c)
        server.hand_over(dev, c.params)
    if variant == "splitfed":
        _interleaved(server, clients)
        for dev in sorted(clients):
            server.take_back(dev, clients[dev].params)
        server.average_a([(clients[d].params, len(clients[d].y)) for d in sorted(clients)])


def _exchange(server: SplitServer, dev: str, c: SplitClient):
    batch, ((a, scale),), labels = c.smashed()
    # as the wire carries it: the scale travels as float32 and the host dequantizes
    smashed = compress.decode_delta([(a, float(np.float32(scale)))], [a.shape])[0]
    grad, _ = server.step(dev, smashed, labels)
    c.gradient(batch, grad)


def _epoch(server, dev, c):
    while not c.done:
        _exchange(server, dev, c)


def _interleaved(server, clients):
    """SplitFed over one f_b: batches served in the order the MQTT host sees them when every client
    answers at once is timing-dependent, so in-process takes them round-robin (sorted ids)."""
    while not all(c.done for c in clients.values()):
        for dev in sorted(clients):
            if not clients[dev].done:
                _exchange(server, dev, clients[dev])
