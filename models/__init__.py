"""Model definitions every side agrees on, and their int8 export (`semifl models export NAME`).

Installed as `semifl.models` (this folder). A definition is an input shape and a tuple of layer
descriptors (`semifl.learn.nn`): the host trains it and the Pi agent runs it with `spec.network()`,
the exporter builds the same layers in Keras. Parameters travel as one list of float32 arrays, [W, b]
per dense or conv layer in layer order (W: (in, out) or (3, 3, in, out)); for dense-only models that
is `semifl.learn.mlp`'s order. `cut` marks split learning's device part: layers [0, cut).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from semifl.learn import nn


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple
    net: tuple                # layer descriptors, see semifl.learn.nn
    dataset: str              # what `semifl models export` trains it on when no --params are given
    input: str                # how raw data becomes the float input
    train: dict = field(default_factory=dict)   # epochs, batch (0: full batch), lr, momentum
    cut: int = 0              # split learning: the device keeps layers [0, cut); 0: not split
    source: str = ""          # the paper the architecture comes from

    def network(self) -> nn.Net:
        return nn.Net(self.input_shape, self.net)

    def describe(self) -> str:
        layers = ", ".join(" ".join(str(v) for v in L if v != "none") for L in self.net)
        cut = f", device part: first {self.cut} layers" if self.cut else ""
        return f"{self.name}: {self.input_shape} -> {layers} ({self.network().n_params:,} parameters{cut}); {self.dataset}"

    @property
    def is_mlp(self) -> bool:
        return all(L[0] == "dense" for L in self.net)

    @property
    def layers(self) -> tuple[int, ...]:
        """Dense widths, input first (MLPs: what `semifl.learn.mlp` takes)."""
        if not self.is_mlp:
            raise ValueError(f"{self.name} is not an MLP")
        return self.input_shape + tuple(L[1] for L in self.net)

    @property
    def hidden(self) -> str:
        return self.net[0][2]


def mlp(name, widths, hidden, **kw) -> ModelSpec:
    """An MLP spec from its widths (input first): hidden layers `hidden`, linear logits."""
    layers = tuple(("dense", w, hidden) for w in widths[1:-1]) + (("dense", widths[-1], "none"),)
    return ModelSpec(name, (widths[0],), layers, **kw)


HAR_CLASSES = 18   # WISDM-2019's activities (PerFit's MobiAct had 10: the output adapts)

MODELS = {m.name: m for m in [
    # SemiFL's (seed 000) MLP on Fashion-MNIST
    mlp("mlp-fmnist", (784, 50, 100, 50, 10), "tanh", dataset="fashion-mnist",
        input="the 784 pixels scaled to [0, 1] (pixel / 255)", train=dict(epochs=8, batch=128, lr=0.05, momentum=0.9),
        source="seed 000 (SemiFL)"),
    # seed 001's MLP: 5 hidden layers of 10 sigmoid neurons on 5 Gaussian features, binary (2 logits)
    mlp("mlp-seed001", (5, 10, 10, 10, 10, 10, 2), "sigmoid", dataset="gaussian5",
        input="5 features, N(-1, 1) for class 0 and N(+1, 1) for class 1",
        train=dict(epochs=300, batch=0, lr=1.0, momentum=0.0), source="seed 001 (compressed local models)"),
    # PerFit's (seed 003) 3NN: fully connected 400-100-out (521,510 parameters on its 1200 inputs)
    ModelSpec("3nn-har", (91,), (("dense", 400, "relu"), ("dense", 100, "relu"), ("dense", HAR_CLASSES, "none")),
              dataset="wisdm", input="the 91 WISDM-2019 features, standardized by the training set's mean and "
              "standard deviation (in NAME.json)", train=dict(epochs=30, batch=64, lr=0.01, momentum=0.9),
              source="seed 003 (PerFit), 3NN"),
    # PerFit's CNN (33,698 parameters on its 20x20x3 input) over WISDM's features as a 10x10 grid:
    # WISDM-2019 ships 10-second windows as 91 features, not the raw 20 Hz series
    ModelSpec("cnn-har", (10, 10, 1), (("conv", 32, "relu"), ("pool",), ("conv", 16, "relu"), ("pool",),
                                       ("conv", 8, "relu"), ("flatten",), ("dense", 128, "relu"),
                                       ("dense", HAR_CLASSES, "none")),
              dataset="wisdm", input="the 91 standardized WISDM-2019 features, zero-padded to 100, as a 10x10x1 grid",
              train=dict(epochs=30, batch=64, lr=0.01, momentum=0.9), source="seed 003 (PerFit), CNN"),
    # IoTSL (seed 002): VGG-16's first block on the device (two 3x3 convs of 64, max-pool: 37,568
    # parameters without VGG-16-BN's 256 batch-norm scales and shifts; smashed data 14x14x64); the host
    # part is one VGG-style block and a linear classifier, small enough to train on a CPU
    ModelSpec("splitcnn-mnist", (28, 28, 1), (("conv", 64, "relu"), ("conv", 64, "relu"), ("pool",),
                                              ("conv", 128, "relu"), ("pool",), ("flatten",), ("dense", 10, "none")),
              dataset="mnist", input="the 28x28 pixels scaled to [0, 1] (pixel / 255)",
              train=dict(epochs=2, batch=64, lr=0.05, momentum=0.9), cut=3, source="seed 002 (IoTSL)"),
]}


def get(name: str) -> ModelSpec:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]
