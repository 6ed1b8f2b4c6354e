"""What a tokenizer, the linear reference and a DiT are measured by -- one implementation behind both
`train/evaluate.py` (the shipped models' report) and `train/experiment.py` (the controlled experiment).

- `tokenizer_scores`: per image and per scale, PSNR and SSIM against the input area-downsampled to that scale; the
  latent maps of each scale (their Gini / normalised entropy, `hieratok.metrics.latent_gini_entropy`, and, from
  4 x 4 up, their high-frequency share, `hieratok.metrics.latent_spectrum`); LPIPS of the
  finest scale; the Fréchet distance between reconstructions and inputs (rFD).
- `linear_scores`: the same for a linear codec (`hieratok.linear.PatchPCA`), which has one scale;
  `fit_linear_reference` fits the codec of a tokenizer's latent size on training images.
- `real_fd`: a Fréchet accumulator holding the real set, cloned for every generator scored against it.
- `generator_scores`: class-balanced samples of a DiT, their gFD and per-sample class correctness.

Every function takes batches of [-1, 1] images -- a tensor of images (sliced here) or any iterable of batches,
including the project's data loaders, whose (images, labels, skipped) items are unpacked and empty batches skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from .losses import downsample_image
from .metrics import latent_gini_entropy, map_channels, map_spectrum, psnr, ssim, to_unit
from .stats import mean_ci


def image_batches(source, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """(B, 3, H, W) image batches from a tensor of images or an iterable of batches / loader items."""
    if isinstance(source, torch.Tensor):
        for i in range(0, len(source), batch_size):
            yield source[i:i + batch_size]
        return
    for item in source:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if x is not None and len(x):
            yield x


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass
class TokenizerScores:
    """Per-image values of one evaluation, by latent side (coarse -> fine); `summary()` / `means()` reduce them."""
    scales: list[int]
    patch_size: int
    psnr: dict[int, torch.Tensor] = field(default_factory=dict)
    ssim: dict[int, torch.Tensor] = field(default_factory=dict)
    latents: dict[int, torch.Tensor] = field(default_factory=dict)   # empty for a linear codec
    lpips: torch.Tensor | None = None
    rfd: float | None = None

    @property
    def finest(self) -> int:
        return self.scales[-1]

    @property
    def images(self) -> int:
        return len(self.psnr[self.finest])

    def density(self, scale: int) -> dict | None:
        return latent_gini_entropy(self.latents[scale]) if scale in self.latents else None

    def spectrum(self, scale: int) -> dict | None:
        """The latent map's power spectrum (`latent_spectrum`) where it has one: from 4 x 4 up, two images or more."""
        return map_spectrum(self.latents.get(scale))

    def channels(self, scale: int) -> dict | None:
        """How many of its channels the latent map uses (`channel_participation`), where it has latents."""
        return map_channels(self.latents.get(scale))

    def summary(self) -> dict:
        """Every scale's mean ± 95% CI over images (the evaluation report's format)."""
        scales = {}
        for s in self.scales:
            scales[f"{s}x{s}"] = {"pixels": s * self.patch_size, "psnr": mean_ci(self.psnr[s]),
                                  "ssim": mean_ci(self.ssim[s])}
            if s in self.latents:
                scales[f"{s}x{s}"]["latent_density"] = self.density(s)
                if (spectrum := self.spectrum(s)) is not None:
                    scales[f"{s}x{s}"]["latent_spectrum"] = spectrum
                if (channels := self.channels(s)) is not None:
                    scales[f"{s}x{s}"]["channel_participation"] = channels
        return {"scales": scales, "lpips": mean_ci(self.lpips) if self.lpips is not None else None, "rfd": self.rfd}

    def means(self) -> dict:
        """Plain means, the finest scale first (the experiment's per-run record)."""
        f = self.finest
        psnrs = {f"{s}x{s}": float(self.psnr[s].mean()) for s in self.scales}
        return {"psnr": psnrs[f"{f}x{f}"], "psnr_scales": psnrs, "ssim": float(self.ssim[f].mean()),
                "latent_density": self.density(f), "latent_spectrum": self.spectrum(f),
                "channel_participation": self.channels(f), "images": self.images,
                "rfd_cls": self.rfd}


def _accumulate(scores: TokenizerScores, parts: dict, fd, x: torch.Tensor, images: list[torch.Tensor]) -> None:
    for s, im in zip(scores.scales, images):
        target = downsample_image(x, im.shape[-1])
        parts.setdefault(("psnr", s), []).append(psnr(im, target).cpu())
        parts.setdefault(("ssim", s), []).append(ssim(im, target).cpu())
    if fd is not None:
        fd.update(to_unit(x), real=True)
        fd.update(to_unit(images[-1]), real=False)


def _finish(scores: TokenizerScores, parts: dict, fd) -> TokenizerScores:
    if not parts:
        raise ValueError("no images to evaluate")
    for (kind, s), values in parts.items():
        if kind == "lpips":
            scores.lpips = torch.cat(values)
        else:
            {"psnr": scores.psnr, "ssim": scores.ssim, "latent": scores.latents}[kind][s] = torch.cat(values)
    scores.rfd = float(fd.compute()) if fd is not None else None
    return scores


@torch.no_grad()
def tokenizer_scores(tok, batches, *, lpips: torch.nn.Module | None = None, fd=None, batch_size: int = 64,
                     progress=iter) -> TokenizerScores:
    """Evaluate a `HieraTok` (posterior mean, every scale of one decode) on `batches`; `lpips` (a module taking
    two [-1, 1] batches) scores the finest scale; `fd` (a fresh `frechet_distance_metric`) gives the rFD.
    `progress` may wrap the batches (e.g. in a progress bar)."""
    device = _device(tok)
    scores = TokenizerScores(list(tok.layout.scales), tok.config.patch_size)
    parts: dict = {}
    for x in progress(image_batches(batches, batch_size)):
        x = x.to(device)
        z = tok.encode(x)
        for s, m in zip(scores.scales, tok.latent_pyramid(z)):
            parts.setdefault(("latent", s), []).append(m.float().cpu())
        out = tok.decode(z)
        _accumulate(scores, parts, fd, x, out.images)
        if lpips is not None:
            parts.setdefault(("lpips", None), []).append(lpips(out.reconstruction.clamp(-1, 1), x).flatten().cpu())
    return _finish(scores, parts, fd)


@torch.no_grad()
def linear_scores(codec, batches, *, fd=None, batch_size: int = 64, progress=iter) -> TokenizerScores:
    """Evaluate a linear codec (`hieratok.linear.PatchPCA`) like a tokenizer at its one scale."""
    scores, parts = None, {}
    for x in progress(image_batches(batches, batch_size)):
        if scores is None:
            scores = TokenizerScores([x.shape[-1] // codec.patch_size], codec.patch_size)
        _accumulate(scores, parts, fd, x, [codec.reconstruct(x).clamp(-1, 1)])
    if scores is None:
        raise ValueError("no images to evaluate")
    return _finish(scores, parts, fd)


def fit_linear_reference(data: str, image_size: int, patch_size: int, channels: int, images: int = 2000,
                         batch_size: int = 64, num_workers: int = 0):
    """The patch-PCA codec with a tokenizer's latent size (p x p patches, C components) fitted on `images` evenly
    spaced, unflipped training images of `data` -- the same images whatever the caller. Returns (codec, images)."""
    from .training.data import build_dataset, fit_patch_pca
    return fit_patch_pca(build_dataset(data, image_size, split="train"), patch_size, channels, images,
                         batch_size, num_workers)


@torch.no_grad()
def real_fd(fd, batches, *, batch_size: int = 100, progress=iter):
    """`fd` (a fresh Fréchet accumulator) with `batches` added as the real set; clone it for each generator."""
    device = fd.device
    for x in progress(image_batches(batches, batch_size)):
        fd.update(to_unit(x.to(device)), real=True)
    return fd


@torch.no_grad()
def generator_scores(dit, tok, num_samples: int, *, steps: int, guidance: float, batch_size: int = 50,
                     seed: int = 0, fd=None, classifier=None, progress=iter, allow_few: bool = False,
                     guidance_interval: tuple[float, float] | None = None, precision: str = "fp32") -> dict:
    """`num_samples` class-balanced samples of a class-conditional DiT decoded by `tok`
    (`hieratok.latent.score_samples`; labels and noise per `seed`, `hieratok.latent.sample_plan`): their Fréchet
    distance to the real set in `fd` (a `real_fd` clone; None: not measured) and each sample's correctness under
    `classifier`.

    A Fréchet distance from fewer samples than feature dimensions rests on a singular covariance (and is biased
    upward far beyond it): refused unless `allow_few`."""
    from .latent import score_samples
    if fd is not None:
        check_fd_samples(num_samples, fd, allow_few)
    correct = score_samples(dit, tok, num_samples, steps=steps, guidance=guidance, batch_size=batch_size,
                            seed=seed, fd=fd, classifier=classifier, batches=progress,
                            guidance_interval=guidance_interval, precision=precision)
    return {"gfd": float(fd.compute()) if fd is not None else None, "correct": correct, "samples": num_samples}


@torch.no_grad()
def classifier_accuracy(classifier, batches, progress=iter) -> dict:
    """A classifier's accuracy over labelled batches (`(x, y, ...)` loader items; unreadable ones, x None, skipped):
    {"accuracy": mean ± 95%, "images": n}."""
    device = _device(classifier)
    correct = [(classifier(x.to(device)).argmax(1).cpu() == y).float()
               for x, y, *_ in progress(batches) if x is not None]
    c = torch.cat(correct)
    return {"accuracy": mean_ci(c), "images": len(c)}


def check_fd_samples(num_samples: int, fd, allow_few: bool = False) -> int:
    """The feature dimension of Fréchet accumulator `fd`; ValueError when `num_samples` is below it (unless
    `allow_few`)."""
    dims = int(fd.real_features_sum.numel())
    if num_samples < dims and not allow_few:
        raise ValueError(f"{num_samples} samples for a Fréchet distance over {dims} feature dimensions: the sample "
                         f"covariance is singular below {dims} samples; use at least {dims} (2,000+ to tell "
                         f"generators apart), or allow it explicitly (allow_few=True / --allow-few-samples)")
    return dims


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean ± 95% CI of a - b over the same images (a paired interval)."""
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same images: {tuple(a.shape)} vs {tuple(b.shape)}")
    return mean_ci(a - b)


__all__ = ["TokenizerScores", "check_fd_samples", "classifier_accuracy", "fit_linear_reference", "generator_scores",
           "image_batches", "linear_scores", "mean_ci", "paired_difference", "real_fd", "tokenizer_scores"]
