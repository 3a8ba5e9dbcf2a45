"""The SemiFL MLP (784-50-100-50-10, tanh hidden layers, softmax output, cross-entropy) over numpy.

Parameters travel as one list in a fixed order, [W1, b1, W2, b2, ...] with W_i of shape (in, out);
every side (host, Pi agent, wire, checkpoints) uses this order. Everything is float32 so a model
round-trips the wire bit for bit and the in-process and MQTT runs agree exactly.
"""
from __future__ import annotations

import numpy as np

SEMIFL_LAYERS = (784, 50, 100, 50, 10)
Params = list  # list[np.ndarray], float32


def init_params(layers=SEMIFL_LAYERS, seed: int = 0, dtype=np.float32) -> Params:
    """Glorot-uniform weights, zero biases, seeded."""
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(layers[:-1], layers[1:]):
        lim = np.sqrt(6.0 / (fan_in + fan_out))
        params.append(rng.uniform(-lim, lim, (fan_in, fan_out)).astype(dtype))
        params.append(np.zeros(fan_out, dtype))
    return params


def activation(z, act: str):
    """A hidden layer's activation: "tanh" (SemiFL's MLP) or "sigmoid" (seed 001's)."""
    if act == "tanh":
        return np.tanh(z)
    return 1 / (1 + np.exp(-z))   # sigmoid (seed 001's MLP)


def _act_grad(h, act):
    """d act / d z from the activation's output h."""
    return 1 - h * h if act == "tanh" else h * (1 - h)


def shapes(layers=SEMIFL_LAYERS) -> list[tuple[int, ...]]:
    out = []
    for a, b in zip(layers[:-1], layers[1:]):
        out += [(a, b), (b,)]
    return out


def forward(params: Params, x: np.ndarray, act: str = "tanh") -> tuple[np.ndarray, list[np.ndarray]]:
    """-> (softmax probabilities, activations per layer input). Computes in the params' dtype."""
    acts = [x]
    h = x
    n_layers = len(params) // 2
    for i in range(n_layers):
        z = h @ params[2 * i] + params[2 * i + 1]
        if i < n_layers - 1:
            h = activation(z, act)
            acts.append(h)
        else:
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            h = e / e.sum(axis=1, keepdims=True)
    return h, acts


def loss_and_grad(params: Params, x: np.ndarray, y: np.ndarray, act: str = "tanh") -> tuple[float, Params]:
    """Mean cross-entropy over the batch and its gradient (same order as params). y: int labels."""
    p, acts = forward(params, x, act)
    n = x.shape[0]
    loss = float(-np.log(np.maximum(p[np.arange(n), y], 1e-12)).mean())
    delta = p.copy()
    delta[np.arange(n), y] -= 1.0
    delta /= delta.dtype.type(n)
    grads: Params = [None] * len(params)
    for i in range(len(params) // 2 - 1, -1, -1):
        grads[2 * i] = acts[i].T @ delta
        grads[2 * i + 1] = delta.sum(axis=0)
        if i > 0:
            delta = (delta @ params[2 * i].T) * _act_grad(acts[i], act)
    return loss, grads


def predict(params: Params, x: np.ndarray, act: str = "tanh") -> np.ndarray:
    return forward(params, x, act)[0].argmax(axis=1)


def evaluate(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """-> (accuracy, mean cross-entropy)."""
    p, _ = forward(params, x)
    n = len(y)
    return float((p.argmax(axis=1) == y).mean()), float(-np.log(np.maximum(p[np.arange(n), y], 1e-12)).mean())


def prune_mask(params: Params, rate: float) -> list[np.ndarray]:
    """Magnitude pruning over all parameters jointly, as the seed's get_pruned_model: the
    ceil(rate*Q) smallest |w| (weights and biases) are pruned. Returns keep-masks (bool)."""
    a = np.abs(np.concatenate([p.ravel() for p in params]))
    k = int(np.ceil(rate * a.size))
    keep = np.ones(a.size, bool)
    if k:
        # what a stable argsort's first k would prune, in O(n): everything below the k-th smallest
        # |w|, then as many of the values equal to it as are left to prune, in index order
        thr = np.partition(a, k - 1)[k - 1]
        keep = a >= thr
        keep[np.flatnonzero(a == thr)[:k - (a.size - int(keep.sum()))]] = False
    out, off = [], 0
    for p in params:
        out.append(keep[off:off + p.size].reshape(p.shape))
        off += p.size
    return out
