"""Working with latents: interpolation, per-channel statistics, and generation from the DiT."""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from .dit import DiT
from .tokenizer import DecodeOutput, HieraTok

INTERPOLATIONS = ("linear", "spherical")


def interpolate(z0: torch.Tensor, z1: torch.Tensor, steps: int, method: str = "spherical") -> torch.Tensor:
    """Latents along the path z0 -> z1 at `steps` evenly spaced points: (steps, *z0.shape).

    spherical: slerp on each latent flattened to a vector (norms are interpolated linearly), which keeps the
    midpoints at a typical norm instead of shrinking them as linear interpolation of two independent codes does.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"latents must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    if method not in INTERPOLATIONS:
        raise ValueError(f"method must be one of {INTERPOLATIONS}, got {method!r}")
    t = torch.linspace(0, 1, steps, device=z0.device, dtype=torch.float64)
    a, b = z0.double().flatten(), z1.double().flatten()
    if method == "linear":
        out = (1 - t)[:, None] * a + t[:, None] * b
    else:
        na, nb = a.norm(), b.norm()
        cos = torch.dot(a, b) / (na * nb).clamp_min(1e-12)
        omega = torch.arccos(cos.clamp(-1.0, 1.0))
        if omega.abs() < 1e-6:  # (nearly) the same direction: slerp degenerates to lerp
            out = (1 - t)[:, None] * a + t[:, None] * b
        else:
            ua, ub = a / na, b / nb
            so = torch.sin(omega)
            direction = (torch.sin((1 - t) * omega) / so)[:, None] * ua + (torch.sin(t * omega) / so)[:, None] * ub
            out = direction * ((1 - t) * na + t * nb)[:, None]
    return out.to(z0.dtype).view(steps, *z0.shape)


def channel_stats(latents: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel mean and std over batches of (B, C, h, w) latents: (mean (C,), std (C,), number of latents).

    Accumulates in float64 so large datasets stay exact.
    """
    total = total_sq = None
    count = elems = 0
    for z in latents:
        z = z.double().cpu()
        s, sq = z.sum(dim=(0, 2, 3)), z.pow(2).sum(dim=(0, 2, 3))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += z.shape[0]
        elems += z.shape[0] * z.shape[2] * z.shape[3]
    if count == 0:
        raise ValueError("no latents to compute statistics from")
    mean = total / elems
    std = (total_sq / elems - mean.pow(2)).clamp_min(0).sqrt()
    return mean.float(), std.float(), count


@torch.no_grad()
def compute_latent_stats(tokenizer: HieraTok, images: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel mean and std of the posterior-mean latent over batches of images in [-1, 1]."""
    device = tokenizer.latent_mean.device
    return channel_stats(tokenizer.encode(x.to(device)) for x in images)


@torch.no_grad()
def generate(dit: DiT, tokenizer: HieraTok, labels, *, steps: int = 50, guidance: float = 2.0,
             sampler: str = "heun", seed: int | None = None,
             progress: Callable[[int, int], None] | None = None,
             guidance_interval: tuple[float, float] | None = None,
             precision: str = "fp32") -> tuple[torch.Tensor, DecodeOutput]:
    """Class-conditional samples: (latents z (B, C, S, S), per-scale decode of those latents).

    The DiT models the normalised finest latent; coarse scales are re-derived by the tokenizer's downsampler.
    `precision` is the DiT's sampling precision (`DiT.sample`); the decode is fp32.
    """
    if (dit.config.latent_channels, dit.config.latent_size) != tokenizer.config.latent_shape[:2]:
        raise ValueError(f"DiT latent ({dit.config.latent_channels}, {dit.config.latent_size}) does not match the "
                         f"tokenizer latent {tokenizer.config.latent_shape}")
    device = tokenizer.latent_mean.device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    labels = torch.as_tensor(labels, dtype=torch.long, device=device)
    z_norm = dit.sample(labels, steps=steps, guidance=guidance, sampler=sampler, generator=generator,
                        progress=progress, guidance_interval=guidance_interval, precision=precision)
    z = tokenizer.denormalize_latent(z_norm)
    return z, tokenizer.decode(z)


def sample_plan(num_samples: int, num_classes: int, seed: int = 0):
    """The labels and noise seeds of an evaluation's samples: (labels, noise_seed), `noise_seed(i)` the generator
    seed of the batch starting at sample i. Class-balanced labels (each class num_samples / num_classes times, +-1);
    seed 0 in the order 0, 1, ..., K - 1, 0, ... (what every report before seeds were added used), other seeds in
    their own permutation. Noise: batch i of seed s draws from `s * 1_000_003 + i`, so no two seeds share a batch's
    noise (batch starts stay below 1,000,003 samples)."""
    if num_samples >= 1_000_003:
        raise ValueError(f"{num_samples} samples: the per-seed noise streams hold at most 1,000,002")
    labels = torch.arange(num_samples) % num_classes
    if seed:
        labels = labels[torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))]
    return labels, lambda i: seed * 1_000_003 + i


@torch.no_grad()
def score_samples(dit: DiT, tokenizer: HieraTok, num_samples: int, *, steps: int, guidance: float,
                  batch_size: int = 50, seed: int = 0, fd=None, classifier: torch.nn.Module | None = None,
                  batches: Callable[[Iterable], Iterable] = iter,
                  guidance_interval: tuple[float, float] | None = None,
                  precision: str = "fp32") -> torch.Tensor | None:
    """Generate `num_samples` class-balanced samples and score them: each decoded image is added to `fd` (a
    torchmetrics Fréchet accumulator holding the real set, as fake) and classified by `classifier`. Returns the
    per-sample correctness (1.0 / 0.0) under `classifier`, or None without one. `batches` may wrap the batch starts
    (e.g. in a progress bar); `guidance_interval`, `precision`: see `DiT.sample`.

    Every DiT scored with the same `seed` gets the same labels and noise (a paired comparison); each seed gets its
    own (`sample_plan`), so repeating with seeds 0, 1, 2 measures the sampling noise."""
    from .metrics import to_unit
    labels, noise_seed = sample_plan(num_samples, dit.config.num_classes, seed)
    correct = []
    for i in batches(range(0, num_samples, batch_size)):
        y = labels[i:i + batch_size]
        _, out = generate(dit, tokenizer, y, steps=steps, guidance=guidance, seed=noise_seed(i),
                          guidance_interval=guidance_interval, precision=precision)
        images = out.reconstruction.float().clamp(-1, 1)
        if fd is not None:
            fd.update(to_unit(images), real=False)
        if classifier is not None:
            correct.append((classifier(images).argmax(1).cpu() == y).float())
    return torch.cat(correct) if correct else None


def place_by_neighbours(query: torch.Tensor, reference: torch.Tensor, coords: torch.Tensor, k: int = 10):
    """Place a new latent in a precomputed 2D map: the distance-weighted mean of the map coordinates of its `k`
    nearest reference latents (Euclidean, on flattened latents). Returns ((2,) coordinates, neighbour indices).

    The same idea as UMAP's `transform`, without keeping (or unpickling) a fitted UMAP object.
    """
    ref = reference.flatten(1).float()
    d = torch.cdist(query.flatten()[None].float(), ref)[0]
    dist, idx = d.topk(min(k, len(ref)), largest=False)
    w = 1.0 / (dist + 1e-6)
    return (coords[idx].float() * w[:, None]).sum(0) / w.sum(), idx
