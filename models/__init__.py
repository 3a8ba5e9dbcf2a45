"""Model definitions every side agrees on, and their int8 export (`semifl models export NAME`).

Installed as `semifl.models` (this folder). Parameters travel as one list of float32 arrays in the
order [W1, b1, W2, b2, ...], W as (in, out): the host, the Pi agent, the wire and the exporters use
it; `semifl.learn.mlp` runs it in numpy.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: tuple[int, ...]   # dense layer widths, input first
    hidden: str               # hidden activation, tanh or sigmoid (the output is linear logits)
    dataset: str              # what `semifl models export` trains it on when no --params are given
    input: str                # how raw data becomes the float input
    train: dict = field(default_factory=dict)   # epochs, batch (0: full batch), lr, momentum


MODELS = {
    # SemiFL's (seed 000) MLP on Fashion-MNIST
    "mlp-fmnist": ModelSpec("mlp-fmnist", (784, 50, 100, 50, 10), "tanh", "fashion-mnist",
                            "the 784 pixels scaled to [0, 1] (pixel / 255)",
                            dict(epochs=8, batch=128, lr=0.05, momentum=0.9)),
    # seed 001's MLP: 5 hidden layers of 10 sigmoid neurons on 5 Gaussian features, binary (2 logits)
    "mlp-seed001": ModelSpec("mlp-seed001", (5, 10, 10, 10, 10, 10, 2), "sigmoid", "gaussian5",
                             "5 features, N(-1, 1) for class 0 and N(+1, 1) for class 1",
                             dict(epochs=300, batch=0, lr=1.0, momentum=0.0)),
}


def get(name: str) -> ModelSpec:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]
