"""Layered networks over numpy: the engine every model definition in `semifl.models` runs on, on the
host and on the Pi agent (no framework: numpy and BLAS).

A network is an input shape and a tuple of layer descriptors, the same tuple the exporter turns into
Keras layers:
  ("dense", units, act)     fully connected, act in relu | tanh | sigmoid | none
  ("conv", filters, act)    3x3, stride 1, zero "same" padding (Keras Conv2D(filters, 3, padding="same"))
  ("pool",)                 2x2 max-pool, stride 2, odd edges dropped (Keras MaxPooling2D())
  ("flatten",)              NHWC -> N x (H*W*C), Keras's order
Parameters travel as one list of float32 arrays, [W, b] per dense or conv layer in layer order; W is
(in, out) for dense and (3, 3, in, out) for conv (Keras's HWIO), so a dense-only net's list is exactly
`semifl.learn.mlp`'s. `split(cut)` gives split learning's device part f_a and host part f_b.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTS = ("relu", "tanh", "sigmoid", "none")


def _act(z, act):
    if act == "relu":
        return np.maximum(z, 0)
    if act == "tanh":
        return np.tanh(z)
    if act == "sigmoid":
        return 1 / (1 + np.exp(-z))
    return z


def _act_grad(h, act):
    """d act / d z, from the activation's output h."""
    if act == "relu":
        return (h > 0).astype(h.dtype)
    if act == "tanh":
        return 1 - h * h
    if act == "sigmoid":
        return h * (1 - h)
    return None   # identity


def _im2col(x):
    """(N, H, W, C) -> (N*H*W, 9*C) zero-padded 3x3 patches in (kh, kw, C) order, matching HWIO.reshape(9C, F)."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = np.empty((n, h, w, 3, 3, c), x.dtype)
    for i in range(3):
        for j in range(3):
            cols[:, :, :, i, j, :] = xp[:, i:i + h, j:j + w, :]
    return cols.reshape(n * h * w, 9 * c)


def _col2im(dcols, shape):
    n, h, w, c = shape
    dcols = dcols.reshape(n, h, w, 3, 3, c)
    dxp = np.zeros((n, h + 2, w + 2, c), dcols.dtype)
    for i in range(3):
        for j in range(3):
            dxp[:, i:i + h, j:j + w, :] += dcols[:, :, :, i, j, :]
    return dxp[:, 1:-1, 1:-1, :]


@dataclass(frozen=True)
class Net:
    input_shape: tuple
    layers: tuple

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "layers", tuple(tuple(L) for L in self.layers))
        shape, shapes, outs = self.input_shape, [], []
        for L in self.layers:
            kind = L[0]
            if kind == "dense":
                if len(shape) != 1:
                    raise ValueError(f"dense layer after a {shape} output: flatten first")
                shapes.append([(shape[0], L[1]), (L[1],)])
                shape = (L[1],)
            elif kind == "conv":
                if len(shape) != 3:
                    raise ValueError(f"conv layer needs an (H, W, C) input, got {shape}")
                shapes.append([(3, 3, shape[2], L[1]), (L[1],)])
                shape = shape[:2] + (L[1],)
            elif kind == "pool":
                shapes.append([])
                shape = (shape[0] // 2, shape[1] // 2, shape[2])
            elif kind == "flatten":
                shapes.append([])
                shape = (int(np.prod(shape)),)
            else:
                raise ValueError(f"unknown layer {L!r}")
            if kind in ("dense", "conv") and L[2] not in ACTS:
                raise ValueError(f"unknown activation {L[2]!r} (known: {ACTS})")
            outs.append(shape)
        object.__setattr__(self, "_shapes", shapes)
        object.__setattr__(self, "out_shapes", tuple(outs))

    # ---- the parameter list
    def shapes(self) -> list[tuple]:
        """Every parameter array's shape, in wire order."""
        return [s for per in self._shapes for s in per]

    @property
    def n_params(self) -> int:
        return int(sum(np.prod(s) for s in self.shapes()))

    def init(self, seed: int = 0, dtype=np.float32) -> list[np.ndarray]:
        """Glorot-uniform weights (Keras's default; fan = 9 x channels for conv), zero biases, seeded.
        A dense-only net draws exactly what `mlp.init_params` draws."""
        rng = np.random.default_rng(seed)
        out = []
        for w, b in (per for per in self._shapes if per):
            rf = int(np.prod(w[:-2])) if len(w) > 2 else 1
            lim = np.sqrt(6.0 / (rf * w[-2] + rf * w[-1]))
            out += [rng.uniform(-lim, lim, w).astype(dtype), np.zeros(b, dtype)]
        return out

    def _per_layer(self, params):
        it = iter(params)
        return [(next(it), next(it)) if per else () for per in self._shapes]

    def split(self, cut: int) -> tuple["Net", "Net"]:
        """(f_a, f_b): the first `cut` layers (the device's) and the rest (the host's). Their parameter
        lists are params[:n_a] and params[n_a:] with n_a = len(f_a.shapes())."""
        return Net(self.input_shape, self.layers[:cut]), Net(self.out_shapes[cut - 1], self.layers[cut:])

    # ---- compute
    def forward(self, params, x, keep: bool = False):
        """-> output (logits of the last layer; a split part's output is its smashed data) and, with
        keep, what backward needs."""
        caches = []
        h = x
        for L, p in zip(self.layers, self._per_layer(params)):
            kind = L[0]
            if kind == "dense":
                z = h @ p[0] + p[1]
                out = _act(z, L[2])
                caches.append((h, out))
            elif kind == "conv":
                cols = _im2col(h)
                z = (cols @ p[0].reshape(-1, L[1]) + p[1]).reshape(h.shape[:3] + (L[1],))
                out = _act(z, L[2])
                caches.append((cols if keep else None, h.shape, out))
            elif kind == "pool":
                n, hh, ww, c = h.shape
                r = h[:, :hh // 2 * 2, :ww // 2 * 2, :].reshape(n, hh // 2, 2, ww // 2, 2, c)
                r = r.transpose(0, 1, 3, 5, 2, 4).reshape(n, hh // 2, ww // 2, c, 4)
                idx = r.argmax(axis=-1)
                out = np.take_along_axis(r, idx[..., None], axis=-1)[..., 0]
                caches.append((idx, h.shape))
            else:   # flatten
                out = h.reshape(h.shape[0], -1)
                caches.append(h.shape)
            h = out
        return (h, caches) if keep else h

    def backward(self, params, caches, dout, need_dx: bool = False):
        """Gradients of the parameters (wire order) given d loss / d output; with need_dx also d loss /
        d input (split learning's gradient at the cut, for the part below)."""
        grads = [None] * len(self._shapes)
        d = dout
        per = self._per_layer(params)
        for i in range(len(self.layers) - 1, -1, -1):
            L, p, cache = self.layers[i], per[i], caches[i]
            first = i == 0 and not need_dx
            kind = L[0]
            if kind == "dense":
                x, out = cache
                g = _act_grad(out, L[2])
                dz = d * g if g is not None else d
                grads[i] = (x.T @ dz, dz.sum(axis=0))
                d = None if first else dz @ p[0].T
            elif kind == "conv":
                cols, xshape, out = cache
                g = _act_grad(out, L[2])
                dz = (d * g if g is not None else d).reshape(-1, L[1])
                grads[i] = ((cols.T @ dz).reshape(p[0].shape), dz.sum(axis=0))
                d = None if first else _col2im(dz @ p[0].reshape(-1, L[1]).T, xshape)
            elif kind == "pool":
                idx, xshape = cache
                n, hh, ww, c = xshape
                r = np.zeros(idx.shape + (4,), d.dtype)
                np.put_along_axis(r, idx[..., None], d[..., None], axis=-1)
                r = r.reshape(n, hh // 2, ww // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(n, hh // 2 * 2, ww // 2 * 2, c)
                d = np.zeros(xshape, d.dtype)
                d[:, :r.shape[1], :r.shape[2], :] = r
            else:
                d = d.reshape(cache)
        flat = [a for g in grads if g for a in g]
        return (flat, d) if need_dx else flat

    def loss_and_grad(self, params, x, y):
        """Mean softmax cross-entropy over the batch and its gradient (wire order). y: int labels."""
        logits, caches = self.forward(params, x, keep=True)
        loss, dlogits = softmax_xent(logits, y)
        return loss, self.backward(params, caches, dlogits)

    def predict(self, params, x, batch: int = 512) -> np.ndarray:
        return np.concatenate([self.forward(params, x[i:i + batch]).argmax(axis=1) for i in range(0, len(x), batch)])

    def train_bytes(self, batch: int) -> int:
        """float32 bytes one SGD step holds: parameters, gradients, momentum, every layer's output for
        the batch and the largest conv's im2col patches. What the host checks against a device's RAM."""
        acts = sum(int(np.prod(s)) for s in self.out_shapes)
        cols = max([9 * int(np.prod(self._in_shape(i))) for i, L in enumerate(self.layers) if L[0] == "conv"], default=0)
        return 4 * (3 * self.n_params + batch * (acts + cols + int(np.prod(self.input_shape))))

    def _in_shape(self, i):
        return self.input_shape if i == 0 else self.out_shapes[i - 1]


def softmax_xent(logits, y):
    """-> (mean cross-entropy, d loss / d logits)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.log(np.maximum(p[np.arange(n), y], 1e-12)).mean())
    p[np.arange(n), y] -= 1.0
    return loss, p / p.dtype.type(n)


def sgd(net: Net, params, x, y, epochs: int = 1, batch: int = 64, lr: float = 0.01, momentum: float = 0.0,
        seed: int = 0, trainable: int = 0, grad=None, step=None):
    """Minibatch SGD (with momentum) over (x, y): the local training every role uses. Returns params.
    Hooks for personalization: `trainable` = k > 0 updates only the last k arrays (a head), `grad(params,
    g)` edits each gradient, `step(params)` post-processes each step (a proximal pull)."""
    params = [p.copy() for p in params]
    vel = [np.zeros_like(p) for p in params] if momentum else None
    rng = np.random.default_rng(seed)
    y = np.asarray(y, np.int64)
    batch = batch or len(y)
    first = len(params) - trainable if trainable else 0
    for _ in range(epochs):
        order = rng.permutation(len(y)) if batch < len(y) else np.arange(len(y))
        for i in range(0, len(y), batch):
            idx = order[i:i + batch]
            _, g = net.loss_and_grad(params, x[idx], y[idx])
            if grad is not None:
                g = grad(params, g)
            for k in range(first, len(params)):
                if vel is not None:
                    vel[k] = np.float32(momentum) * vel[k] - np.float32(lr) * g[k]
                    params[k] = params[k] + vel[k]
                else:
                    params[k] = params[k] - np.float32(lr) * g[k]
            if step is not None:
                params = step(params)
    return params
