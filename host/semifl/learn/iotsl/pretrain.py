"""Algorithm 1, server side: the generated set D (each device's generator makes exactly that device's
class counts) and the pre-training of the whole model f = f_a ∘ f_b on it, in `semifl.learn.nn`."""
from __future__ import annotations

import numpy as np

from semifl.models import get

from .. import nn
from .gan import Generator, generate

# IoTSL's split CNN is the model definition `splitcnn-mnist` (semifl.models): one definition, here too
SPLIT_CNN = get("splitcnn-mnist")
CUT = SPLIT_CNN.cut


def split_cnn() -> nn.Net:
    return SPLIT_CNN.network()


def generated_dataset(generators: list[tuple[Generator, list[int]]], seed: int = 0):
    """D: the union of every (generator, its device's histogram) pair's generated set, shuffled.
    -> (x (n, 28, 28, 1) float32 in [0, 1], y (n,) int64, log: the counts each generator made)."""
    xs, ys, log = [], [], []
    for i, (gen, hist) in enumerate(generators):
        x, y = generate(gen, hist, seed=seed + i)
        xs.append(x), ys.append(y), log.append([int(c) for c in hist])
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = np.random.default_rng(seed).permutation(len(y))
    return x[order], y[order], log


def pretrain(x, y, net: nn.Net | None = None, cut: int = CUT, params=None, epochs: int = 1, batch: int = 64,
             lr: float = 0.05, momentum: float = 0.9, seed: int = 0):
    """-> (theta_pre, theta_pre_a): f trained on (x, y) by `nn.sgd`, and the device part's arrays (the
    first len(f_a.shapes())), which the host sends to the first device."""
    net = net or split_cnn()
    params = params if params is not None else net.init(seed)
    theta_pre = nn.sgd(net, params, x, y, epochs=epochs, batch=batch, lr=lr, momentum=momentum, seed=seed)
    f_a, _ = net.split(cut)
    return theta_pre, theta_pre[:len(f_a.shapes())]
