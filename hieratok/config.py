"""Configurations: the tokenizer and DiT dataclasses, their named presets and the ablation variants."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from .scales import MASK_KINDS, ScaleLayout

DOWNSAMPLERS = ("conv", "interp")


class ConfigMixin:
    """`replace`, `to_dict` (JSON-ready: tuples as lists) and `from_dict` (unknown keys named) for the config
    dataclasses (tokenizer, DiT, classifier)."""

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        def plain(v):
            return [plain(x) for x in v] if isinstance(v, tuple) else (
                {k: plain(x) for k, x in v.items()} if isinstance(v, dict) else v)
        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{cls.__name__} does not know the keys {unknown}")
        return cls(**d)


# ------------------------------------------------------------------------------------------------------------
#                                              Tokenizer
# ------------------------------------------------------------------------------------------------------------
@dataclass
class LossConfig(ConfigMixin):
    """How a tokenizer is trained on reconstruction -- not what it is. Kept in its config.json (under "loss") so a
    checkpoint says how it was made; `--set` may change these fields on a loaded model (`--init-from`), never the
    architecture."""

    multiscale_supervision: bool = True  # False: only the finest scale's image is supervised
    scale_loss_weights: tuple[float, ...] | None = None  # per scale, coarse -> fine; None = all 1
    # False: the coarse scales' losses send no gradient into the encoder -- the coarse images are decoded a second
    # time from a detached latent (same downsampler and decoder weights, so those still learn them), while the
    # finest image's loss reaches the encoder through every token (the "encoder compromise" arm)
    coarse_grad_to_encoder: bool = True
    # False: the coarse scales' losses train only the coarse scales' own parts -- the downsampler, the per-scale
    # heads (`per_scale_heads`) and linear shortcuts -- and no weight the finest image is decoded with: the shared
    # decoder transformer, its input projection and embeddings (the coarse images are decoded a second time with
    # those weights detached; the "shared decoder" arm). With `coarse_grad_to_encoder=False` too, everything the
    # finest image depends on except the downsampler learns from the finest loss alone.
    coarse_grad_to_decoder: bool = True
    # True (with `coarse_grad_to_encoder`): the coarse losses reach the encoder only through the part of their
    # gradient at the latent that does not oppose the finest loss's -- per image, where the two point against each
    # other, the coarse gradient loses its component along the finest one (PCGrad, Yu et al. 2020, at the latent)
    coarse_grad_projection: bool = False
    # with `coarse_grad_to_encoder`: the coarse losses' gradient at the latent is multiplied by this before it
    # reaches the encoder (forward values unchanged; 1: the method, 0 would be `coarse_grad_to_encoder=False`).
    # A knob between the recipe's latent, shaped by the finest loss alone, and the paper's, shaped by every scale
    coarse_encoder_grad_scale: float = 1.0
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    lpips_weight: float = 0.5            # on the finest scale, when the LPIPS backbone is available
    kl_weight: float = 1e-4              # on the per-element mean KL

    def __post_init__(self):
        if self.scale_loss_weights is not None:
            self.scale_loss_weights = tuple(float(w) for w in self.scale_loss_weights)
        self.coarse_encoder_grad_scale = float(self.coarse_encoder_grad_scale)


LOSS_FIELDS = tuple(f.name for f in fields(LossConfig))


@dataclass
class HieraTokConfig(ConfigMixin):
    """What a tokenizer is (its architecture), with how it is trained on reconstruction in `loss` (`LossConfig`).

    `replace` and `from_dict` take the loss fields by name too (`replace(kl_weight=1e-5)`), so presets, variants
    and `--set` name every field the same way; a config.json written before the split (loss fields at the top level)
    loads unchanged."""

    image_size: int = 32                 # input side in pixels
    patch_size: int = 2                  # p: one latent token per p x p patch; image_size / p = finest scale
    in_channels: int = 3
    latent_channels: int = 4             # C of the KL latent (B, C, 16, 16)
    enc_dim: int = 128
    enc_depth: int = 4
    enc_heads: int = 4
    dec_dim: int = 192
    dec_depth: int = 4
    dec_heads: int = 6
    mlp_ratio: float = 4.0
    scales: tuple[int, ...] = (1, 2, 4, 8, 16)   # coarse -> fine; (16,) is the single-scale baseline
    downsample: str = "conv"             # "conv": learnable; "interp": area interpolation (the paper's ablation)
    # residual 3 x 3 conv blocks before each learnable downsampling step: each coarse token computed from a
    # neighbourhood of the finer map rather than its own patch alone (0: the paper's local pooling)
    downsample_context: int = 0
    attention: str = "scale_causal"      # decoder mask: scale_causal | full | scale_independent
    grad_checkpointing: bool = False     # recompute blocks in backward (for the paper-scale preset on GPUs)
    # A linear encoder and decoder path beside the transformers, initialised to the patch-PCA codec of the same
    # latent size (hieratok.linear): training starts at the linear reference's quality and the transformers learn
    # the residual. The transformers' output layers start at zero. Off for the cifar10 and imagenet256 presets.
    linear_shortcut: bool = False
    # one output LayerNorm and head per scale instead of one shared by all scales (the "shared output" arm)
    per_scale_heads: bool = False
    # transformer blocks of the coarse scales' own, over the coarse tokens after the shared decoder (scale-causal
    # among themselves, so prefixes stay prefixes): capacity the finest image is not decoded with (0: none)
    coarse_refiner_depth: int = 0
    # the latent normalisation a DiT sees also filters each channel map by a gain per spatial frequency (the buffer
    # `latent_gain`, set by `train/dit.py --latent-spectrum-like`): the same information with another power spectrum,
    # undone exactly before decoding. Not part of the latent the encoder makes (False: per-channel statistics only)
    latent_spectral_gain: bool = False
    # ... and mixes its channels by an invertible matrix first (the buffer `latent_mix`, set by `train/dit.py
    # --latent-channels-like`): the same information with another tokenizer's channel correlations (False: none)
    latent_channel_mix: bool = False
    # ... and, last, mixes the channels at each spatial frequency by an invertible complex matrix (the buffer
    # `latent_xmix`, set by `train/dit.py --latent-covariance-like`): the same information with another tokenizer's
    # cross-spectra, i.e. all of its second-order statistics (False: none)
    latent_covariance_mix: bool = False
    name: str = "hieratok"               # a label for reports ("hieratok", "singlescale", ...)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self):
        self.scales = tuple(int(s) for s in self.scales)
        if isinstance(self.loss, dict):
            self.loss = LossConfig.from_dict(self.loss)
        layout = ScaleLayout(self.scales)  # validates ordering
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if layout.finest != self.grid_size:
            raise ValueError(
                f"the finest scale ({layout.finest}) must equal image_size / patch_size ({self.grid_size})")
        for coarse, fine in zip(self.scales, self.scales[1:]):
            if fine % coarse:
                raise ValueError(f"each scale must divide the next finer one; {coarse} does not divide {fine}")
        if self.downsample not in DOWNSAMPLERS:
            raise ValueError(f"downsample must be one of {DOWNSAMPLERS}, got {self.downsample!r}")
        if self.attention not in MASK_KINDS:
            raise ValueError(f"attention must be one of {MASK_KINDS}, got {self.attention!r}")
        for dim, heads, what in ((self.enc_dim, self.enc_heads, "enc"), (self.dec_dim, self.dec_heads, "dec")):
            if dim % heads:
                raise ValueError(f"{what}_dim {dim} is not divisible by {what}_heads {heads}")
        if self.downsample_context < 0 or (self.downsample_context and self.downsample != "conv"):
            raise ValueError("downsample_context needs downsample='conv' and must be >= 0")
        if self.coarse_refiner_depth < 0 or (self.coarse_refiner_depth and len(self.scales) == 1):
            raise ValueError("coarse_refiner_depth needs coarse scales and must be >= 0")
        if self.loss.coarse_grad_projection and not self.loss.coarse_grad_to_encoder:
            raise ValueError("coarse_grad_projection projects the coarse losses' gradient into the encoder; it needs "
                             "coarse_grad_to_encoder=True")
        scale = self.loss.coarse_encoder_grad_scale
        if not (math.isfinite(scale) and 0 < scale <= 1):
            raise ValueError(f"coarse_encoder_grad_scale must be in (0, 1], got {scale} (for 0 use "
                             "coarse_grad_to_encoder=False)")
        if scale != 1 and not self.loss.coarse_grad_to_encoder:
            raise ValueError("coarse_encoder_grad_scale scales the coarse losses' gradient into the encoder; it needs "
                             "coarse_grad_to_encoder=True")
        if self.loss.scale_loss_weights is not None and len(self.loss.scale_loss_weights) != len(self.scales):
            raise ValueError("scale_loss_weights needs one weight per scale")

    def replace(self, **changes) -> "HieraTokConfig":
        """A copy with fields changed; loss fields (`LOSS_FIELDS`) go to `loss`."""
        loss = {k: changes.pop(k) for k in list(changes) if k in LOSS_FIELDS}
        if loss:
            changes["loss"] = dataclasses.replace(changes.get("loss", self.loss), **loss)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HieraTokConfig":
        d = dict(d)
        flat = {k: d.pop(k) for k in list(d) if k in LOSS_FIELDS}  # written before the loss config was split off
        cfg = super().from_dict(d)
        return cfg.replace(**flat) if flat else cfg

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def layout(self) -> ScaleLayout:
        return ScaleLayout(self.scales)

    @property
    def is_multiscale(self) -> bool:
        return len(self.scales) > 1

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.grid_size, self.grid_size)

    @property
    def compression_ratio(self) -> float:
        """Input values per latent value (e.g. 32*32*3 / (16*16*4) = 3)."""
        c, h, w = self.latent_shape
        return self.in_channels * self.image_size ** 2 / (c * h * w)


TOKENIZER_PRESETS: dict[str, HieraTokConfig] = {
    # Sized to train on 2 CPU cores in bf16: 32 px CIFAR-10, patch 2 -> a 16 x 16 latent grid.
    "cifar10": HieraTokConfig(),
    # Paper scale (arXiv 2509.23736): 256 px, patch 16, encoder 6 x 768, decoder 24 x 1024. The paper does not
    # give C; 16 is a common choice for ViT tokenizers at f16.
    "imagenet256": HieraTokConfig(
        image_size=256, patch_size=16, latent_channels=16,
        enc_dim=768, enc_depth=6, enc_heads=12, dec_dim=1024, dec_depth=24, dec_heads=16,
        grad_checkpointing=True, loss=LossConfig(lpips_weight=1.0, kl_weight=1e-6)),
    # Photographs at 128 px (Imagenette, ten ImageNet classes): patch 8 -> the same 16 x 16 latent grid and 341
    # decoder tokens as cifar10, so a step costs about what a cifar10 step costs. C = 16 was chosen by a
    # calibration against the linear reference (assets/notes/imagenette128.md).
    "imagenette128": HieraTokConfig(image_size=128, patch_size=8, latent_channels=16, linear_shortcut=True),
}

def _flop_matched(base: HieraTokConfig) -> HieraTokConfig:
    from .cost import flop_matched_singlescale  # cost imports the model; keep config import-light
    return flop_matched_singlescale(base)


def _finest_half(c: HieraTokConfig) -> tuple[float, ...]:
    """Scale loss weights giving the finest scale half of the reconstruction loss, the coarser ones the rest."""
    return (0.5 / (len(c.scales) - 1),) * (len(c.scales) - 1) + (0.5,)


def _shared_context_enc(scale: float) -> Callable[[HieraTokConfig], HieraTokConfig]:
    """The recipe's decoder and downsampler, the coarse losses' gradient reaching the encoder scaled by `scale`."""
    return lambda c: c.replace(coarse_grad_to_decoder=False, per_scale_heads=True, downsample_context=2,
                               coarse_encoder_grad_scale=scale, name=f"hieratok-shared-context-enc{scale:g}")


# Variants of any preset: the baseline and the ablations from the paper and its reviews (name -> builder).
VARIANT_BUILDERS: dict[str, Callable[[HieraTokConfig], HieraTokConfig]] = {
    # the method: conv downsampling, scale-causal decoder, multi-scale supervision
    "hieratok": lambda c: c,
    # the baseline: only the finest latent, no downsampler (256 decoder tokens at a 16 x 16 grid)
    "singlescale": lambda c: c.replace(scales=(c.grid_size,), name="singlescale"),
    # single-scale with a decoder grown until its forward FLOPs match HieraTok's (<= 5%; searched once, cached)
    "singlescale-flopmatched": _flop_matched,
    # area interpolation instead of learnable downsampling
    "interp": lambda c: c.replace(downsample="interp", name="hieratok-interp"),
    # every decoder token sees every scale
    "full-attn": lambda c: c.replace(attention="full", name="hieratok-full-attn"),
    # each scale sees only itself
    "independent-attn": lambda c: c.replace(attention="scale_independent", name="hieratok-independent-attn"),
    # multi-scale tokens but only the finest image supervised (the reviewers' ablation)
    "no-mss": lambda c: c.replace(multiscale_supervision=False, name="hieratok-no-mss"),
    # --- explanations of the finest-scale cost of multi-scale supervision (one each) ---
    # the finest scale carries half of the reconstruction loss (the experiment's finest-weighted arm)
    "finest-weighted": lambda c: c.replace(scale_loss_weights=_finest_half(c), name="hieratok-finest-weighted"),
    # encoder compromise: the coarse losses train the downsampler and decoder, not the encoder
    "stopgrad-coarse": lambda c: c.replace(coarse_grad_to_encoder=False, name="hieratok-stopgrad-coarse"),
    # loss balance: every scale supervised, the pixel weights summing to 1 as for single-scale (equal shares)
    "mss-total1": lambda c: c.replace(scale_loss_weights=(1.0 / len(c.scales),) * len(c.scales),
                                      name="hieratok-mss-total1"),
    # shared output: a LayerNorm and a head per scale
    "scale-heads": lambda c: c.replace(per_scale_heads=True, name="hieratok-scale-heads"),
    # shared decoder: the coarse losses train only the coarse scales' own parts (downsampler, per-scale heads and
    # shortcuts), neither the encoder nor the decoder weights the finest image is decoded with
    "stopgrad-shared": lambda c: c.replace(coarse_grad_to_encoder=False, coarse_grad_to_decoder=False,
                                           per_scale_heads=True, name="hieratok-stopgrad-shared"),
    # the same, with the coarse scales given a transformer block of their own (shared-decoder arm + capacity)
    "stopgrad-shared-refiner": lambda c: c.replace(coarse_grad_to_encoder=False, coarse_grad_to_decoder=False,
                                                   per_scale_heads=True, coarse_refiner_depth=1,
                                                   name="hieratok-stopgrad-shared-refiner"),
    # the shared-decoder arm with the encoder compromise made without conflict: the coarse losses reach the encoder
    # only through the part of their latent gradient that does not oppose the finest loss's (per image)
    "projected-shared": lambda c: c.replace(coarse_grad_projection=True, coarse_grad_to_decoder=False,
                                            per_scale_heads=True, name="hieratok-projected-shared"),
    # the shared-decoder arm with coarse tokens computed from a neighbourhood of the finer map: a latent shaped by the
    # finest loss alone may need more than a local pool to give good coarse tokens (capacity where coarse is made)
    "stopgrad-shared-context": lambda c: c.replace(coarse_grad_to_encoder=False, coarse_grad_to_decoder=False,
                                                   per_scale_heads=True, downsample_context=2,
                                                   name="hieratok-stopgrad-shared-context"),
    # the recipe with the encoder compromise back, at full or reduced strength: the coarse losses train the coarse
    # scales' own parts and, scaled by 1 / 0.3 / 0.1, the encoder. Is there a latent between the recipe's (finest
    # PSNR of single-scale, DiT as slow as single-scale's) and the paper's (-0.75 to -1.1 dB, DiT 2x faster)?
    **{f"shared-context-enc{scale:g}": _shared_context_enc(scale) for scale in (1.0, 0.3, 0.1)},
    # the two partial remedies together: do the stop-gradient and the finest-weighted loss add up?
    "stopgrad-finest-weighted": lambda c: c.replace(coarse_grad_to_encoder=False, scale_loss_weights=_finest_half(c),
                                                    name="hieratok-stopgrad-finest-weighted"),
}
VARIANTS = tuple(VARIANT_BUILDERS)
# What `train/stage1.py` trains when no --variant is given: the project's recipe for a multi-scale tokenizer. The
# controlled experiment (docs/experiment.md, 3 seeds) found it as sharp at the finest scale as single-scale and its
# coarse prefixes at least as good as the paper recipe's (`hieratok`, which stays the name of the paper's method);
# its latent, shaped by the finest loss alone, does not speed up a DiT as the paper recipe's does (same document).
RECIPE_VARIANT = "stopgrad-shared-context"


def tokenizer_config(preset: str = "cifar10", variant: str = "hieratok", **overrides) -> HieraTokConfig:
    """A preset's config with field overrides applied, then turned into one of `VARIANTS` (`VARIANT_BUILDERS`)."""
    if preset not in TOKENIZER_PRESETS:
        raise ValueError(f"unknown tokenizer preset {preset!r}; choose one of {sorted(TOKENIZER_PRESETS)}")
    if variant not in VARIANT_BUILDERS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    return VARIANT_BUILDERS[variant](TOKENIZER_PRESETS[preset].replace(**overrides))


# ------------------------------------------------------------------------------------------------------------
#                                                DiT
# ------------------------------------------------------------------------------------------------------------
@dataclass
class DiTConfig(ConfigMixin):
    """A class-conditional DiT (adaLN-Zero) trained with rectified flow on the normalised finest latent."""

    latent_channels: int = 4
    latent_size: int = 16
    patch_size: int = 2                  # on the latent: 2 -> 64 tokens for a 16 x 16 latent
    dim: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10                # class index num_classes is the null class for guidance
    class_dropout: float = 0.1           # label dropout probability in training (classifier-free guidance)
    time_sampling: str = "logit_normal"  # "uniform" or "logit_normal" (SD3) for t in training
    qk_norm: bool = False                # RMSNorm on each head's queries and keys
    mlp: str = "gelu"                    # "gelu" or "swiglu" (about the same parameters and FLOPs)
    class_names: tuple[str, ...] = ()    # readable names of the classes (empty: unnamed)

    def __post_init__(self):
        self.class_names = tuple(str(n) for n in self.class_names)
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.latent_size % self.patch_size:
            raise ValueError(f"latent_size {self.latent_size} not divisible by patch_size {self.patch_size}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        if self.time_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"time_sampling must be 'uniform' or 'logit_normal', got {self.time_sampling!r}")

    @property
    def num_tokens(self) -> int:
        return (self.latent_size // self.patch_size) ** 2


DIT_PRESETS: dict[str, DiTConfig] = {
    "cifar10": DiTConfig(),
    # DiT-XL/2-like on a 16 x 16 x 16 latent (paper scale uses a DiT on the tokenizer's latent).
    "imagenet256": DiTConfig(latent_channels=16, latent_size=16, patch_size=1, dim=1152, depth=28, heads=16,
                             num_classes=1000),
    # the 16 x 16 x 16 latent of imagenette128; patch 2 -> 64 tokens, as for cifar10
    "imagenette128": DiTConfig(latent_channels=16),
}


def dit_config(preset: str = "cifar10", **overrides) -> DiTConfig:
    if preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r}; choose one of {sorted(DIT_PRESETS)}")
    return DIT_PRESETS[preset].replace(**overrides)
