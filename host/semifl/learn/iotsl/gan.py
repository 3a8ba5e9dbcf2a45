"""The conditional WGAN-GP of IoTSL (seed 002, Section V-D), as GS-WGAN implements it for 28x28.

Generator: a 10-D Bernoulli noise vector spliced with the one-hot label -> FC 256x4x4 (ReLU, pixel-norm)
-> transposed conv 128 (k5, s1; 4 -> 8, cropped to 7x7) -> transposed conv 64 (k5, s1; 7 -> 11)
-> transposed conv 1 (k8, s2; 11 -> 28), sigmoid. The shapes work out without padding.
Discriminator: conv 64, 128, 256 (k5, s2), spectral norm, ReLU, then a spectrally normalized FC to one
score. The seed pads only "before the second conv", which does not reach 4x4 from 28x28; we pad 2 on
every conv (28 -> 14 -> 7 -> 4), as GS-WGAN does. The label enters the discriminator by projection
(an embedding dotted with the features, GS-WGAN's choice): D(x|y) = w.h(x) + e_y.h(x).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

torch.set_num_threads(1)   # shared 2-core hosts and boards: one thread, reproducible sums

Z_DIM, N_CLASSES = 10, 10


class PixelNorm(nn.Module):
    """x / sqrt(mean over channels of x^2 + eps) at every position (ProGAN's pixel-norm)."""

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class Generator(nn.Module):
    def __init__(self, z_dim: int = Z_DIM, n_classes: int = N_CLASSES, dim: int = 64):
        super().__init__()
        self.z_dim, self.n_classes = z_dim, n_classes
        self.fc = nn.Linear(z_dim + n_classes, 4 * dim * 4 * 4)
        self.up1 = nn.ConvTranspose2d(4 * dim, 2 * dim, 5)   # 4 -> 8, cropped to 7
        self.up2 = nn.ConvTranspose2d(2 * dim, dim, 5)       # 7 -> 11
        self.out = nn.ConvTranspose2d(dim, 1, 8, stride=2)   # 11 -> 28
        self.norm, self.dim = PixelNorm(), dim

    def forward(self, z, y):
        h = self.fc(torch.cat([z, nn.functional.one_hot(y, self.n_classes).to(z.dtype)], 1))
        h = self.norm(torch.relu(h.view(-1, 4 * self.dim, 4, 4)))
        h = self.norm(torch.relu(self.up1(h)))[:, :, :7, :7]
        h = self.norm(torch.relu(self.up2(h)))
        return torch.sigmoid(self.out(h))   # (n, 1, 28, 28) in [0, 1]


class Discriminator(nn.Module):
    def __init__(self, n_classes: int = N_CLASSES, dim: int = 64):
        super().__init__()
        self.convs = nn.ModuleList([spectral_norm(nn.Conv2d(c_in, c_out, 5, stride=2, padding=2))
                                    for c_in, c_out in ((1, dim), (dim, 2 * dim), (2 * dim, 4 * dim))])
        self.fc = spectral_norm(nn.Linear(4 * dim * 4 * 4, 1))
        self.embed = spectral_norm(nn.Embedding(n_classes, 4 * dim * 4 * 4))

    def forward(self, x, y):
        h = x
        for conv in self.convs:
            h = torch.relu(conv(h))
        h = h.flatten(1)
        return self.fc(h)[:, 0] + (self.embed(y) * h).sum(1)


def noise(n: int, z_dim: int = Z_DIM, generator: torch.Generator | None = None) -> torch.Tensor:
    """The seed's generator input: n x z_dim Bernoulli(1/2) bits."""
    return torch.bernoulli(torch.full((n, z_dim), 0.5), generator=generator)


@torch.no_grad()
def generate(generator: Generator, histogram, seed: int = 0, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """A data set with exactly `histogram[c]` samples of class c: x (n, 28, 28, 1) float32 in [0, 1]
    (NHWC, what `semifl.learn.nn` nets take), y (n,) int64, classes in order. Deterministic by seed."""
    counts = np.asarray(histogram, np.int64)
    if counts.ndim != 1 or (counts < 0).any() or len(counts) > generator.n_classes:
        raise ValueError(f"histogram must be {generator.n_classes} non-negative counts, got {histogram!r}")
    y = np.repeat(np.arange(len(counts)), counts)
    if not len(y):
        return np.zeros((0, 28, 28, 1), np.float32), y
    rng = torch.Generator().manual_seed(seed)
    was_training = generator.training
    generator.eval()
    parts = [generator(noise(len(yb), generator.z_dim, rng), torch.as_tensor(yb))
             for yb in np.array_split(y, -(-len(y) // batch))]
    generator.train(was_training)
    return np.ascontiguousarray(torch.cat(parts).permute(0, 2, 3, 1).numpy(), np.float32), y
