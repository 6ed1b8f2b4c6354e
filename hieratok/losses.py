"""Training losses: multi-scale reconstruction (+ LPIPS, KL) and the stage-2 GAN (PatchGAN, hinge, adaptive weight)."""
from __future__ import annotations

import os
import logging
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import HieraTokConfig
from .tokenizer import DecodeOutput, DiagonalGaussian

# torchvision's ImageNet VGG-16 file: what torch hub caches and what `--lpips-weights` may point to
VGG16_FILE = "vgg16-397923af.pth"


def downsample_image(x: torch.Tensor, size: int) -> torch.Tensor:
    """The input as seen at a coarser scale: area (box) downsampling to size x size pixels."""
    return x if x.shape[-1] == size else F.adaptive_avg_pool2d(x, size)


def multiscale_targets(x: torch.Tensor, out: DecodeOutput) -> list[torch.Tensor]:
    return [downsample_image(x, im.shape[-1]) for im in out.images]


# ------------------------------------------------------------------------------------------------------------
#                                                 LPIPS
# ------------------------------------------------------------------------------------------------------------
def find_vgg16_weights(path: str | None = None) -> str | None:
    """The VGG-16 backbone file for LPIPS: `path` if given, else torch hub's cache, else None."""
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--lpips-weights {path}: no such file (expected torchvision's {VGG16_FILE})")
        return path
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_FILE)
    return cached if os.path.isfile(cached) else None


def load_lpips(weights_path: str | None = None) -> tuple[nn.Module | None, str]:
    """LPIPS-VGG (package `lpips`) with the ImageNet VGG-16 backbone read from a local file.

    The LPIPS linear heads ship inside the `lpips` package; the backbone does not, and cannot be downloaded
    offline. Returns (module, description) or (None, reason it is unavailable) — never a randomly initialised
    backbone pretending to be LPIPS.
    """
    backbone = find_vgg16_weights(weights_path)
    if backbone is None:
        return None, (f"LPIPS unavailable: VGG-16 backbone weights not found (pass --lpips-weights PATH to "
                      f"torchvision's {VGG16_FILE}, or place it in torch.hub.get_dir()/checkpoints)")
    import lpips
    import torchvision
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lpips passes torchvision's deprecated `pretrained=` argument
        metric = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    vgg = torchvision.models.vgg16()
    vgg.load_state_dict(torch.load(backbone, map_location="cpu", weights_only=True))
    for slice_ in (metric.net.slice1, metric.net.slice2, metric.net.slice3, metric.net.slice4, metric.net.slice5):
        for name, layer in slice_.named_children():
            layer.load_state_dict(vgg.features[int(name)].state_dict())
    metric.eval().requires_grad_(False)
    return metric, f"LPIPS-VGG with backbone {backbone}"


def training_lpips(cfg, weights_path: str | None, device, warn=None) -> tuple[nn.Module | None, str]:
    """The LPIPS module a training run uses (on `device`), or None when its weight is 0 or the backbone is missing
    (said through `warn`, e.g. a run's main-process warning: the run trains without the term and records why);
    with a note saying which."""
    module, note = load_lpips(weights_path) if cfg.loss.lpips_weight > 0 else (None, "LPIPS weight 0")
    if module is None:
        if cfg.loss.lpips_weight > 0:
            (warn or logging.getLogger(__name__).warning)(
                f"warning: {note}; training without the LPIPS term (recorded in run_config.json)")
        return None, note
    return module.to(device), note


# ------------------------------------------------------------------------------------------------------------
#                                           Reconstruction loss
# ------------------------------------------------------------------------------------------------------------
@dataclass
class LossTerms:
    total: torch.Tensor
    logs: dict[str, float]


class ReconstructionLoss(nn.Module):
    """sum_s w_s * (L1 + MSE)(x_hat_s, downsample_s(x)) + lambda * LPIPS(finest) + beta * KL, weights from the config.

    With `multiscale_supervision=False` only the finest scale's image is compared.
    """

    def __init__(self, cfg: HieraTokConfig, lpips_module: nn.Module | None = None, coarse_only: bool = False):
        """`coarse_only`: the finest image is compared and logged but weighs nothing (and LPIPS, on the finest
        image, is off): the loss of `train/stage1.py --train coarse`, where only the coarse scales' parts learn."""
        super().__init__()
        self.cfg = cfg
        weights = cfg.loss.scale_loss_weights or (1.0,) * len(cfg.scales)
        if not cfg.loss.multiscale_supervision:
            weights = (0.0,) * (len(cfg.scales) - 1) + (weights[-1],)
        if coarse_only:
            if len(cfg.scales) < 2 or not any(weights[:-1]):
                raise ValueError("coarse_only needs a multi-scale tokenizer whose coarse scales are supervised")
            weights = (*weights[:-1], 0.0)
            lpips_module = None
        self.scale_weights = weights
        self.lpips = lpips_module
        self.coarse_only = coarse_only

    def forward(self, x: torch.Tensor, out: DecodeOutput, post: DiagonalGaussian | None) -> LossTerms:
        """The loss and its terms (floats, for the log). With `coarse_only`, `out` may hold the coarse scales alone
        (`HieraTok.forward(coarse_only=True, finest=False)`): the same total, the finest terms not logged."""
        cfg, weights, logs = self.cfg, self.cfg.loss, {}
        allowed = (tuple(cfg.scales), tuple(cfg.scales[:-1])) if self.coarse_only else (tuple(cfg.scales),)
        if tuple(out.scales) not in allowed:
            raise ValueError(f"the loss was built for scales {cfg.scales} but the model decoded {out.scales}: build "
                             f"ReconstructionLoss from the model's own config")
        total = x.new_zeros(())
        for s, w, pred, target in zip(out.scales, self.scale_weights, out.images, multiscale_targets(x, out)):
            pred = pred.float()
            l1, mse = (pred - target).abs().mean(), (pred - target).pow(2).mean()
            logs[f"l1_{s}"], logs[f"mse_{s}"] = l1.item(), mse.item()
            if w:
                total = total + w * (weights.l1_weight * l1 + weights.mse_weight * mse)
        if self.lpips is not None and weights.lpips_weight > 0:
            p = self.lpips(out.reconstruction.float(), x).mean()
            logs["lpips"] = p.item()
            total = total + weights.lpips_weight * p
        if post is not None:
            kl = post.kl().mean()
            logs["kl"] = kl.item()
            total = total + weights.kl_weight * kl
        logs["loss"] = total.item()
        return LossTerms(total, logs)


# ------------------------------------------------------------------------------------------------------------
#                                                  GAN
# ------------------------------------------------------------------------------------------------------------
class PatchGANDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017, as in taming-transformers / LDM), with BatchNorm replaced by
    GroupNorm so that it behaves the same at any batch size and under DDP.

    n_layers strided convs; for 32 px inputs use 2 (a 6 x 6 logit map), for 256 px use 3.
    """

    def __init__(self, in_channels: int = 3, width: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for i in range(1, n_layers + 1):
            nxt = width * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(ch, nxt, 4, stride, 1, bias=False), nn.GroupNorm(32 if nxt >= 32 else 1, nxt),
                       nn.LeakyReLU(0.2, True)]
            ch = nxt
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x):
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def adaptive_gan_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                        max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's balance: ||grad rec|| / ||grad gan|| at the decoder's last layer (detached, clamped)."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()
