"""IoTSL's privacy module (seed 002, Section IV-D, eq. 4-5), the GS-WGAN way.

Only the generator is released, and the only path from the private data into it is the gradient the
discriminator sends back into the generated samples. That gradient is sanitized per example:
clip(g_i, C) + N(0, sigma^2 C^2 I) for each generated sample i (eq. 4; the noise on the batch's stacked
gradient), before it flows into the generator's weights; the discriminator keeps its plain gradient
(eq. 5). The privacy spent is the Poisson-subsampled Gaussian mechanism (rate q = batch / N, noise
multiplier sigma) composed over the generator's steps, computed by Google's `dp-accounting`.

Caveat (as in GS-WGAN and the seed): the accounting takes each generator step as one subsampled
Gaussian query with sensitivity C per example; it does not re-derive that for a discriminator that
saw the whole local set.
"""
from __future__ import annotations

import torch

from semifl.learn import dp as client_dp

CLIP = 1.0      # the seed's C: WGAN-GP keeps the discriminator's input gradients near norm 1
DELTA = 1e-5


def sanitize(grad: torch.Tensor, clip: float = CLIP, sigma: float = 0.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """eq. 4 per example: each row of `grad` (batch first) scaled to L2 norm <= clip, plus
    N(0, sigma^2 clip^2) on every entry. sigma = 0 clips only."""
    flat = grad.reshape(len(grad), -1)
    norms = flat.norm(dim=1, keepdim=True)
    clipped = flat * torch.clamp(clip / (norms + 1e-12), max=1.0)
    if sigma > 0:
        clipped = clipped + sigma * clip * torch.randn(clipped.shape, generator=generator, dtype=clipped.dtype)
    return clipped.reshape(grad.shape)


def sanitized(x: torch.Tensor, clip: float = CLIP, sigma: float = 0.0,
              generator: torch.Generator | None = None, scale: float = 1.0) -> torch.Tensor:
    """x unchanged forward; on the way back its gradient is `sanitize`d, then times `scale` (1/batch
    for a mean over a summed loss). Put it between G(z) and D so the generator only ever sees the
    sanitized gradient."""
    if x.requires_grad:
        x.register_hook(lambda g: sanitize(g, clip, sigma, generator) * scale)
    return x


def epsilon(sigma: float, steps: int, q: float, delta: float = DELTA, accountant: str = "rdp") -> float:
    """(epsilon, delta)-DP of `steps` Poisson-subsampled Gaussian steps (rate q, noise multiplier sigma),
    by dp-accounting's RDP (or PLD) accountant (learn/dp.py's, which FL clients' DP counts with too).
    sigma = 0 (no noise) is infinite epsilon."""
    return client_dp.epsilon(sigma, steps, q, delta, accountant)
