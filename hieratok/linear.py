"""The linear reference codec: PCA on p x p RGB patches keeping C components, i.e. a latent of the same size as a
tokenizer's (S x S x C for S = image_size / p).

It is the baseline every tokenizer must beat (a learned codec that does not is not learning anything a matrix
cannot), and, with `HieraTokConfig.linear_shortcut`, the tokenizer's starting point: the encoder's and decoder's
linear shortcuts are initialised to this codec, so training starts at its PSNR instead of from noise.

Patch vectors are ordered (row, column, channel), the order of the decoder's pixel head.
Coefficients are whitened (unit variance over the fitting patches), so the latent suits the KL prior and the DiT.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file


def patchify(x_B3HW: torch.Tensor, p: int) -> torch.Tensor:
    """(B, c, H, W) -> (B, H/p * W/p, p*p*c), patches in raster order, each ordered (row, column, channel)."""
    B, c, H, W = x_B3HW.shape
    x = x_B3HW.reshape(B, c, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), p * p * c)


def unpatchify(x_BLD: torch.Tensor, p: int, c: int = 3) -> torch.Tensor:
    """Inverse of `patchify` for a square grid."""
    B, L, _ = x_BLD.shape
    side = int(round(L ** 0.5))
    x = x_BLD.reshape(B, side, side, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, c, side * p, side * p)


class PatchPCA:
    """Whitened PCA of p x p patches: encode (B, 3, H, W) -> (B, C, H/p, W/p), decode back."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor, patch_size: int):
        self.mean, self.components, self.scale = mean.float(), components.float(), scale.float()  # (D,), (C, D), (C,)
        self.patch_size = int(patch_size)
        self.channels = mean.numel() // self.patch_size ** 2

    @property
    def latent_channels(self) -> int:
        return self.components.shape[0]

    @classmethod
    def fit(cls, images: Iterable[torch.Tensor], patch_size: int, latent_channels: int) -> "PatchPCA":
        """Fit on batches of images (B, 3, H, W) in [-1, 1]; exact covariance in float64, deterministic."""
        count, total, outer = 0, None, None
        for x in images:
            v = patchify(x.double(), patch_size).reshape(-1, x.shape[1] * patch_size ** 2)
            total = v.sum(0) if total is None else total + v.sum(0)
            outer = v.T @ v if outer is None else outer + v.T @ v
            count += v.shape[0]
        if not count:
            raise ValueError("PatchPCA.fit got no images")
        if latent_channels > total.numel():
            raise ValueError(f"cannot keep {latent_channels} components of {total.numel()}-dimensional patches")
        mean = total / count
        cov = outer / count - torch.outer(mean, mean)
        eigval, eigvec = torch.linalg.eigh(cov)                      # ascending
        order = torch.argsort(eigval, descending=True)[:latent_channels]
        comps = eigvec[:, order].T                                   # (C, D)
        # a deterministic sign: the largest-magnitude entry of each component is positive
        signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
        comps = comps * signs
        scale = eigval[order].clamp_min(1e-12).sqrt()
        return cls(mean, comps, scale, patch_size)

    def encode(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        v = patchify(x_B3HW.float(), p) - self.mean.to(x_B3HW.device)
        z = (v @ self.components.T.to(x_B3HW.device)) / self.scale.to(x_B3HW.device)   # (B, L, C)
        side = x_B3HW.shape[-1] // p
        return z.transpose(1, 2).reshape(x_B3HW.shape[0], -1, side, side)

    def decode(self, z_BChw: torch.Tensor) -> torch.Tensor:
        dev = z_BChw.device
        z = z_BChw.float().flatten(2).transpose(1, 2) * self.scale.to(dev)
        v = z @ self.components.to(dev) + self.mean.to(dev)
        return unpatchify(v, self.patch_size, self.channels)

    def reconstruct(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x_B3HW))

    # ---- files: safetensors, no pickle ----------------------------------------------------------------------
    def save(self, path: str | Path):
        save_file({"mean": self.mean.contiguous(), "components": self.components.contiguous(),
                   "scale": self.scale.contiguous(), "patch_size": torch.tensor(self.patch_size)}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "PatchPCA":
        t = load_file(str(path))
        return cls(t["mean"], t["components"], t["scale"], int(t["patch_size"]))
