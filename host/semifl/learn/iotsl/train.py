"""Algorithm 1, device side: train G_i on the local data (X_i, Y_i) with the WGAN-GP losses (eq. 6, 7)
and the sanitized generator gradient (eq. 5), and report the privacy spent."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import dp
from .gan import Discriminator, Generator, noise

GP_LAMBDA = 10.0   # the gradient penalty's lambda (WGAN-GP's default; the seed leaves it open)


@dataclass
class TrainedGenerator:
    """A device's generator and what the host needs with it: its label histogram and privacy spent."""
    generator: Generator
    histogram: list[int]
    epsilon: float
    delta: float
    sigma: float
    steps: int
    q: float
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)


def images(x) -> torch.Tensor:
    """Local samples as (n, 1, 28, 28) float32 in [0, 1]: uint8 pixels are scaled, floats kept."""
    a = np.asarray(x)
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    if a.ndim == 4 and a.shape[-1] == 1:   # NHWC, as semifl.learn.nn takes it
        a = a[..., 0]
    return torch.from_numpy(np.ascontiguousarray(a.reshape(len(a), 1, 28, 28)))


def gradient_penalty(disc: Discriminator, real, fake, y, lam: float = GP_LAMBDA, rng=None) -> torch.Tensor:
    """lam * E[(||grad D(alpha x + (1 - alpha) G(z) | y)|| - 1)^2], alpha ~ U[0, 1] per sample (eq. 6)."""
    alpha = torch.rand(len(real), 1, 1, 1, generator=rng)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    g, = torch.autograd.grad(disc(mix, y).sum(), mix, create_graph=True)
    return lam * ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


def train_generator(x, y, steps: int, batch: int = 64, n_critic: int = 5, sigma: float = 1.0,
                    clip: float = dp.CLIP, delta: float = dp.DELTA, lam: float = GP_LAMBDA,
                    lr: float = 1e-4, n_classes: int = 10, seed: int = 0, dim: int = 64,
                    log_every: int = 0, deadline_s: float | None = None) -> TrainedGenerator:
    """`steps` generator steps, each after `n_critic` discriminator steps on a uniformly drawn real batch.
    sigma = 0 trains without noise (clipping kept; epsilon is then infinite). deadline_s: stop after the
    step that ends past this many seconds (at least one step); `steps` and epsilon count the steps taken."""
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    real_x = images(x)
    real_y = torch.as_tensor(np.asarray(y, np.int64))
    n = len(real_y)
    batch = min(batch, n)
    hist = np.bincount(real_y.numpy(), minlength=n_classes)
    label_p = torch.as_tensor(hist / n, dtype=torch.float32)
    gen, disc = Generator(n_classes=n_classes, dim=dim), Discriminator(n_classes=n_classes, dim=dim)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.9))
    history, t0 = [], time.perf_counter()
    taken = 0
    for step in range(steps):
        if deadline_s is not None and step and time.perf_counter() - t0 >= deadline_s:
            break
        taken = step + 1
        # discriminator: the plain WGAN-GP update on real data (it never leaves the device)
        disc.requires_grad_(True)
        for _ in range(n_critic):
            idx = torch.randperm(n, generator=rng)[:batch]
            xr, yr = real_x[idx], real_y[idx]
            with torch.no_grad():
                xf = gen(noise(batch, gen.z_dim, rng), yr)
            loss_d = disc(xf, yr).mean() - disc(xr, yr).mean() + gradient_penalty(disc, xr, xf, yr, lam, rng)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        # generator: its gradient only through the sanitized per-sample gradient of D's score (eq. 5, 7)
        disc.requires_grad_(False)
        yf = torch.multinomial(label_p, batch, replacement=True, generator=rng)
        # a summed loss, so each sample's own gradient is what gets clipped to C; the mean's 1/batch
        # is applied after sanitizing
        xf = dp.sanitized(gen(noise(batch, gen.z_dim, rng), yf), clip, sigma, rng, scale=1 / batch)
        loss_g = -disc(xf, yf).sum()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            history.append({"step": step, "loss_d": loss_d.item(), "loss_g": loss_g.item() / batch,
                            "seconds": round(time.perf_counter() - t0, 2)})
    q = batch / n
    return TrainedGenerator(gen.eval(), [int(c) for c in hist], dp.epsilon(sigma, taken, q, delta), delta,
                            sigma, taken, q, time.perf_counter() - t0, history)
