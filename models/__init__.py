"""Model definitions every side agrees on, and their int8 export (`semifl models export NAME`).

Installed as `semifl.models` (this folder). Parameters travel as one list of float32 arrays in the
order [W1, b1, W2, b2, ...], W as (in, out): the host, the Pi agent, the wire and the exporters use
it; `semifl.learn.mlp` runs it in numpy.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: tuple[int, ...]   # dense layer widths, input first
    hidden: str               # hidden activation (the output is linear logits)
    dataset: str              # what `semifl models export` trains it on when no --params are given
    input: str                # how raw data becomes the float input


MODELS = {
    "mlp-fmnist": ModelSpec("mlp-fmnist", (784, 50, 100, 50, 10), "tanh", "fashion-mnist",
                            "the 784 pixels scaled to [0, 1] (pixel / 255)"),
}


def get(name: str) -> ModelSpec:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]
