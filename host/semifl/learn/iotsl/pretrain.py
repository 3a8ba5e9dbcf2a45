"""Algorithm 1, server side: the generated set D (each device's generator makes exactly that device's
class counts) and the pre-training of the whole model f = f_a ∘ f_b on it, in `semifl.learn.nn`."""
from __future__ import annotations

import numpy as np

from .. import nn
from .gan import Generator, generate


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


def pretrain(x, y, net: nn.Net, cut: int, params=None, epochs: int = 1, batch: int = 64,
             lr: float = 0.05, momentum: float = 0.9, seed: int = 0, on_step=None):
    """-> (theta_pre, theta_pre_a): f (IoTSL's split CNN, `splitcnn-mnist` in semifl.models, with the
    device part its first `cut` layers) trained on (x, y) by `nn.sgd`, and the device part's arrays
    (the first len(f_a.shapes())), which the host sends to the first device. on_step(): after each
    SGD step (a progress display)."""
    params = params if params is not None else net.init(seed)
    step = None if on_step is None else (lambda ps: (on_step(), ps)[1])
    theta_pre = nn.sgd(net, params, x, y, epochs=epochs, batch=batch, lr=lr, momentum=momentum, seed=seed, step=step)
    f_a, _ = net.split(cut)
    return theta_pre, theta_pre[:len(f_a.shapes())]
