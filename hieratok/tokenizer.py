"""HieraTok: a ViT tokenizer with a KL latent, learnable multi-scale downsampling and a scale-causal decoder.

    image (B, 3, H, W) --ViT encoder--> moments --KL--> z (B, C, 16, 16)
    z --downsampler--> [z_1, z_2, z_4, z_8, z_16]  (coarse -> fine, z_16 = z)
      --concat--> 341 tokens --ViT decoder (scale-causal mask)--> one RGB image per scale (s * p pixels a side)

Images are float tensors in [-1, 1]. The single-scale baseline is the same class with `scales=(16,)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import HieraTokConfig
from .hub import HubCheckpointMixin
from .layers import Transformer, call, init_weights, sincos_2d
from .linear import PatchPCA, patchify, unpatchify
from .rng import Shard, sharded
from .scales import ScaleLayout


# ------------------------------------------------------------------------------------------------------------
#                                    gradient routes of the coarse losses
# ------------------------------------------------------------------------------------------------------------
class ProjectedFork(torch.autograd.Function):
    """z -> (z for the finest image, z for the coarse images): the same values; in backward, per image, the coarse
    gradient loses its component along the finest gradient where their inner product is negative (PCGrad at the
    latent). The sum that reaches the encoder then never opposes the finest loss's own gradient at z."""

    @staticmethod
    def forward(ctx, z):
        return z.view_as(z), z.view_as(z)

    @staticmethod
    def backward(ctx, g_fine, g_coarse):
        if g_coarse is None:
            return g_fine
        if g_fine is None:
            return g_coarse
        return g_fine + project_conflict(g_coarse, g_fine)


class ScaleGrad(torch.autograd.Function):
    """z -> z; in backward the gradient is multiplied by `scale` (the coarse losses' share of the encoder's)."""

    @staticmethod
    def forward(ctx, z, scale: float):
        ctx.scale = scale
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def project_conflict(g: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per sample (dim 0): `g` minus its component along `ref` where <g, ref> < 0, else `g` unchanged."""
    dot = (g * ref).flatten(1).sum(1)
    coef = dot.clamp(max=0) / ref.square().flatten(1).sum(1).clamp_min(torch.finfo(ref.dtype).tiny)
    return g - coef.view(-1, *([1] * (g.ndim - 1))) * ref


# ------------------------------------------------------------------------------------------------------------
#                                              KL bottleneck
# ------------------------------------------------------------------------------------------------------------
class DiagonalGaussian:
    """The encoder's posterior N(mean, exp(logvar)) over the latent map."""

    def __init__(self, moments_B2Chw: torch.Tensor):
        self.mean, logvar = moments_B2Chw.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None, shard: Shard | None = None) -> torch.Tensor:
        """mean + std * noise; `shard=(rank, world)` draws this rank's slice of the global batch's noise."""
        noise = sharded(torch.randn, self.mean.shape, generator, shard, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """(B,) KL to N(0, I), averaged over latent elements (so its weight does not depend on the latent size)."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).mean(1)


# ------------------------------------------------------------------------------------------------------------
#                                         Multi-scale downsampling
# ------------------------------------------------------------------------------------------------------------
class ConvDownStep(nn.Module):
    """Learnable r-times downsampling of a latent map.

    A strided r x r convolution initialised to area averaging, followed by a residual 1 x 1 conv MLP whose output
    layer starts at zero: training starts from the interpolation ablation and learns away from it.
    """

    def __init__(self, channels: int, ratio: int, context_blocks: int = 0):
        super().__init__()
        hidden = max(64, 4 * channels)
        # residual 3 x 3 conv blocks on the finer map before pooling (output layers at zero): each coarse token
        # sees a neighbourhood of the finer map, not only its own r x r patch
        self.context = nn.ModuleList(ContextBlock(channels, hidden) for _ in range(context_blocks))
        self.conv = nn.Conv2d(channels, channels, kernel_size=ratio, stride=ratio)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, channels, 1))
        with torch.no_grad():
            self.conv.weight.zero_()
            for c in range(channels):
                self.conv.weight[c, c].fill_(1.0 / ratio ** 2)
            self.conv.bias.zero_()
            self.mlp[-1].weight.zero_()
            self.mlp[-1].bias.zero_()

    def forward(self, x_BChw):
        for blk in self.context:
            x_BChw = blk(x_BChw)
        y = self.conv(x_BChw)
        return y + self.mlp(y)


class ContextBlock(nn.Module):
    """x + conv3x3(GELU(conv3x3(x))), the second conv starting at zero (the block starts as the identity)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.GELU(),
                                 nn.Conv2d(hidden, channels, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x_BChw):
        return x_BChw + self.net(x_BChw)


class MultiScaleDownsampler(nn.Module):
    """z (B, C, S, S) -> [z_s for s in scales], coarse -> fine, with z itself as the finest map."""

    def __init__(self, channels: int, layout: ScaleLayout, mode: str = "conv", context_blocks: int = 0):
        super().__init__()
        self.layout, self.mode = layout, mode
        # steps[i] maps scale i+1 to scale i (fine -> coarse chain)
        ratios = [fine // coarse for coarse, fine in zip(layout.scales, layout.scales[1:])]
        self.steps = (nn.ModuleList(ConvDownStep(channels, r, context_blocks) for r in ratios) if mode == "conv"
                      else None)

    def forward(self, z_BChw: torch.Tensor) -> list[torch.Tensor]:
        if z_BChw.shape[-1] != self.layout.finest:
            raise ValueError(f"latent side {z_BChw.shape[-1]} does not match the finest scale {self.layout.finest}")
        if self.mode == "interp":
            return [F.adaptive_avg_pool2d(z_BChw, s) for s in self.layout.scales[:-1]] + [z_BChw]
        maps = [z_BChw]
        for step in reversed(self.steps):
            maps.append(step(maps[-1]))
        return maps[::-1]


# ------------------------------------------------------------------------------------------------------------
#                                          Encoder and decoder
# ------------------------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    """ViT over p x p patches -> posterior moments (B, 2C, S, S)."""

    def __init__(self, cfg: HieraTokConfig):
        super().__init__()
        self.grid = cfg.grid_size
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.enc_dim, cfg.patch_size, stride=cfg.patch_size)
        self.register_buffer("pos_embed", sincos_2d(cfg.enc_dim, self.grid)[None], persistent=False)
        self.transformer = Transformer(cfg.enc_dim, cfg.enc_depth, cfg.enc_heads, cfg.mlp_ratio,
                                       cfg.grad_checkpointing)
        self.to_moments = nn.Linear(cfg.enc_dim, 2 * cfg.latent_channels)
        self.patch_size, self.latent_channels = cfg.patch_size, cfg.latent_channels
        # linear path: patch pixels -> posterior mean (see HieraTokConfig.linear_shortcut)
        self.shortcut = (nn.Linear(cfg.patch_size ** 2 * cfg.in_channels, cfg.latent_channels)
                         if cfg.linear_shortcut else None)

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        x_BLC = self.patch_embed(x_B3HW).flatten(2).transpose(1, 2) + self.pos_embed
        x_BLC, _ = self.transformer(x_BLC)
        moments_BLD = self.to_moments(x_BLC)
        if self.shortcut is not None:
            linear_mean = self.shortcut(patchify(x_B3HW, self.patch_size))
            moments_BLD = moments_BLD + F.pad(linear_mean, (0, self.latent_channels))  # the mean half only
        return moments_BLD.transpose(1, 2).unflatten(2, (self.grid, self.grid))


class Decoder(nn.Module):
    """Per-scale latent maps -> concatenated tokens -> transformer (masked) -> one RGB image per scale."""

    def __init__(self, cfg: HieraTokConfig):
        super().__init__()
        self.layout, self.patch_size, self.out_channels = cfg.layout, cfg.patch_size, cfg.in_channels
        self.proj_in = nn.Linear(cfg.latent_channels, cfg.dec_dim)
        # per-scale 2D position embedding (learned, initialised to each scale's sin/cos grid) + a level embedding
        self.pos_embed = nn.Parameter(torch.cat([sincos_2d(cfg.dec_dim, s) for s in self.layout.scales])[None])
        self.level_embed = nn.Embedding(self.layout.num_scales, cfg.dec_dim)
        nn.init.normal_(self.level_embed.weight, std=0.02)
        self.transformer = Transformer(cfg.dec_dim, cfg.dec_depth, cfg.dec_heads, cfg.mlp_ratio,
                                       cfg.grad_checkpointing)
        out_dim = cfg.patch_size ** 2 * cfg.in_channels
        self.head = nn.Linear(cfg.dec_dim, out_dim)  # shared by all scales (or the finest scale's, see below)
        # per_scale_heads: every coarser scale gets its own output LayerNorm and head (the finest keeps `head`)
        self.scale_heads = (nn.ModuleList(nn.Sequential(nn.LayerNorm(cfg.dec_dim, eps=1e-6), nn.Linear(cfg.dec_dim,
                                                                                                  out_dim))
                                          for _ in self.layout.scales[:-1]) if cfg.per_scale_heads else None)
        # linear path: each token's latent -> its patch's pixels, added to the head (HieraTokConfig.linear_shortcut);
        # one map per scale, since a coarse token stands for a downsampled region, not for one patch
        self.shortcut = (nn.ModuleList(nn.Linear(cfg.latent_channels, cfg.patch_size ** 2 * cfg.in_channels)
                                       for _ in self.layout.scales) if cfg.linear_shortcut else None)
        # coarse_refiner_depth: blocks over the coarse tokens only, after the shared transformer
        self.refiner = (Transformer(cfg.dec_dim, cfg.coarse_refiner_depth, cfg.dec_heads, cfg.mlp_ratio,
                                    cfg.grad_checkpointing) if cfg.coarse_refiner_depth else None)
        self.coarse_tokens = self.layout.num_tokens - self.layout.finest ** 2
        self.attention = cfg.attention
        self.register_buffer("mask", self.layout.mask(cfg.attention), persistent=False)
        self.register_buffer("level_ids", self.layout.level_ids, persistent=False)

    def shared_parameters(self, detach: bool = False) -> dict[str, torch.Tensor]:
        """The parameters the finest image is decoded with, by name: everything but the coarse scales' own heads,
        linear shortcuts and refiner -- what a `frozen` decode reads as constants (`detach`: as detached tensors,
        e.g. for `torch.func.functional_call`, the reference the frozen decode is tested against)."""
        coarse = {f"scale_heads.{i}." for i in range(self.layout.num_scales - 1)} | {
            f"shortcut.{i}." for i in range(self.layout.num_scales - 1)} | {"refiner."}
        return {name: p.detach() if detach else p for name, p in self.named_parameters()
                if not any(name.startswith(prefix) for prefix in coarse)}

    def forward(self, maps_BChw: list[torch.Tensor], return_attn: bool = False, frozen: bool = False):
        """`frozen`: the shared parameters (`shared_parameters`) read as constants -- the images' gradient reaches
        the maps and the coarse scales' own heads, shortcuts and refiner, never the weights the finest image is
        decoded with (the route of `coarse_grad_to_decoder=False`; `hieratok.layers.call`)."""
        layout = self.layout.prefix(len(maps_BChw))
        L = layout.num_tokens
        z_BLC = layout.flatten(maps_BChw)
        x_BLC = call(self.proj_in, z_BLC, frozen)
        pos = self.pos_embed.detach() if frozen else self.pos_embed
        x_BLC = x_BLC + pos[:, :L] + call(self.level_embed, self.level_ids[:L], frozen)
        # full attention (or a single scale): no mask, so SDPA can take its unmasked fast path
        mask_LL = None if self.attention == "full" or layout.num_scales == 1 else self.mask[:L, :L]
        x_BLC, attns = self.transformer(x_BLC, mask_LL, return_attn, layout.attention_blocks(self.attention),
                                        frozen)
        if self.refiner is not None:
            n = min(L, self.coarse_tokens)
            coarse = self.layout.prefix(min(layout.num_scales, self.layout.num_scales - 1))
            refined, _ = self.refiner(x_BLC[:, :n], None if self.attention == "full" else self.mask[:n, :n], False,
                                      coarse.attention_blocks(self.attention))
            x_BLC = torch.cat([refined, x_BLC[:, n:]], dim=1)
        finest = self.layout.num_scales - 1  # the finest scale's head and shortcut are shared ones
        if self.scale_heads is None:
            chunks = layout.split(call(self.head, x_BLC, frozen))
        else:  # own heads for the coarse scales; the finest (present only in a full decode) keeps `head`
            tokens = layout.split(x_BLC)
            heads = [*self.scale_heads, self.head][: layout.num_scales]
            chunks = [call(head, t, frozen and i == finest) for i, (head, t) in enumerate(zip(heads, tokens))]
        if self.shortcut is not None:
            chunks = [c + call(lin, z, frozen and i == finest)
                      for i, (c, lin, z) in enumerate(zip(chunks, self.shortcut, layout.split(z_BLC)))]
        images = [unpatchify(chunk, self.patch_size, self.out_channels) for chunk in chunks]
        return images, attns


@dataclass
class DecodeOutput:
    """Per-scale decoder output, coarse -> fine; `images[-1]` is the reconstruction."""

    images: list[torch.Tensor]            # (B, 3, s*p, s*p) for each decoded scale s
    scales: tuple[int, ...]
    attentions: list[torch.Tensor] | None = None  # per layer (B, heads, L, L), when requested

    @property
    def reconstruction(self) -> torch.Tensor:
        return self.images[-1]


# what defines the latent z a tokenizer encodes to (and a DiT on it generates): the encoder's tensors and the config
# fields its forward reads. The downsampler derives the coarse maps from z when decoding; `stage1.py --train coarse`
# and stage 2 leave all of this as it is.
LATENT_DEFINING_TENSORS = ("encoder.",)
LATENT_DEFINING_FIELDS = ("image_size", "in_channels", "patch_size", "latent_channels", "enc_dim", "enc_depth",
                          "enc_heads", "mlp_ratio", "linear_shortcut")


# ------------------------------------------------------------------------------------------------------------
#                                               Core model
# ------------------------------------------------------------------------------------------------------------
class HieraTok(nn.Module, HubCheckpointMixin,
               library_name="hieratok", repo_url="https://arxiv.org/abs/2509.23736", tags=["image-tokenizer"]):
    """Multi-scale ViT image tokenizer (HieraTok, arXiv 2509.23736); `scales=(16,)` gives the single-scale baseline."""

    config_class = HieraTokConfig
    _no_split_modules = ["Block"]  # the FSDP unit (accelerate's TRANSFORMER_BASED_WRAP reads this)

    def __init__(self, config: HieraTokConfig):
        super().__init__()
        self.config = config
        self.layout = config.layout
        # 1. encoder -> KL posterior over z (B, C, S, S)
        self.encoder = Encoder(config)
        # 2. multi-scale downsampler (absent for the single-scale baseline)
        self.downsampler = (MultiScaleDownsampler(config.latent_channels, self.layout, config.downsample,
                                                  config.downsample_context) if config.is_multiscale else None)
        # 3. decoder over the coarse -> fine token sequence
        self.decoder = Decoder(config)
        # 4. per-channel latent statistics for the generator (count = 0 until computed on a dataset)
        self.register_buffer("latent_mean", torch.zeros(config.latent_channels))
        self.register_buffer("latent_std", torch.ones(config.latent_channels))
        self.register_buffer("latent_stats_count", torch.zeros((), dtype=torch.long))
        if config.latent_spectral_gain:  # 5. a gain per spatial frequency in the latent normalisation (or none)
            self.register_buffer("latent_gain", torch.ones(config.latent_channels, config.grid_size, config.grid_size))
        if config.latent_channel_mix:  # 6. a channel mixing before that filter (or none)
            self.register_buffer("latent_mix", torch.eye(config.latent_channels))
        if config.latent_covariance_mix:  # 7. a channel mixing per spatial frequency after them (or none)
            eye = torch.eye(config.latent_channels).expand(config.grid_size, config.grid_size, -1, -1)
            self.register_buffer("latent_xmix", torch.stack([eye, torch.zeros_like(eye)], dim=-1).contiguous())
        self.apply_init()

    def apply_init(self):
        init_weights(self.encoder)
        init_weights(self.decoder)
        nn.init.normal_(self.decoder.level_embed.weight, std=0.02)
        if self.config.linear_shortcut:
            # the transformers' contributions start at zero, and the posterior starts nearly deterministic
            # (std e^-4), so the model starts as its linear path (init_linear) and training learns the residual
            C = self.config.latent_channels
            with torch.no_grad():
                self.encoder.to_moments.weight.zero_()
                self.encoder.to_moments.bias.zero_()
                self.encoder.to_moments.bias[C:].fill_(-8.0)
                for head in self.output_heads():
                    head.weight.zero_()
                    head.bias.zero_()

    def output_heads(self) -> list[nn.Linear]:
        """The decoder's output layers: the shared head, and the per-scale ones where there are."""
        extra = [seq[-1] for seq in self.decoder.scale_heads] if self.decoder.scale_heads is not None else []
        return [self.decoder.head, *extra]

    def coarse_parameters(self) -> dict[str, nn.Parameter]:
        """The coarse scales' own parameters, by name: the downsampler and the decoder's parts no finest image is
        decoded with (per-scale heads, linear shortcuts, refiner; `Decoder.shared_parameters`). Training only these
        on the coarse losses (`train/stage1.py --train coarse`) leaves the encoder, and so the latent a DiT learns,
        untouched; the finest image changes only through the coarse tokens it attends to."""
        if self.downsampler is None:
            raise ValueError("a single-scale tokenizer has no coarse scales")
        shared = set(self.decoder.shared_parameters())
        return {**{f"downsampler.{n}": p for n, p in self.downsampler.named_parameters()},
                **{f"decoder.{n}": p for n, p in self.decoder.named_parameters() if n not in shared}}

    def shortcut_parameters(self) -> list[nn.Parameter]:
        """The linear shortcuts' parameters (empty without `linear_shortcut`)."""
        if self.encoder.shortcut is None:
            return []
        return list(self.encoder.shortcut.parameters()) + list(self.decoder.shortcut.parameters())

    @torch.no_grad()
    def init_linear(self, codec: PatchPCA):
        """Set the linear shortcuts to a patch-PCA codec of this model's patch size and latent channels."""
        if self.encoder.shortcut is None:
            raise ValueError("this tokenizer has no linear shortcut (HieraTokConfig.linear_shortcut=False)")
        cfg = self.config
        if (codec.patch_size, codec.latent_channels) != (cfg.patch_size, cfg.latent_channels):
            raise ValueError(f"codec has patch {codec.patch_size} and {codec.latent_channels} components; the model "
                             f"needs patch {cfg.patch_size} and {cfg.latent_channels}")
        comps, scale, mean = codec.components, codec.scale, codec.mean
        self.encoder.shortcut.weight.copy_(comps / scale[:, None])
        self.encoder.shortcut.bias.copy_(-(comps @ mean) / scale)
        for lin in self.decoder.shortcut:  # every scale starts from the codec's decoder
            lin.weight.copy_((comps * scale[:, None]).T)
            lin.bias.copy_(mean)

    @torch.no_grad()
    def load_single_scale(self, source: "HieraTok") -> list[str]:
        """Start this multi-scale tokenizer from a single-scale one of the same geometry (a two-phase recipe: the
        finest scale learned first, the coarse scales after). The encoder, the decoder transformer and input
        projection, the finest head and shortcut and the finest scale's position and level embeddings come from
        `source`; the coarse scales' own parts (downsampler, their embeddings, heads, shortcuts, refiner) keep their
        initialisation. Returns the names of the parameters left wholly as they were (the embeddings' coarse rows
        are too). Latent statistics are not copied (they describe the source's latent;
        `hieratok.compute_latent_stats` makes them for this one)."""
        src_cfg, cfg = source.config, self.config
        if src_cfg.is_multiscale or not cfg.is_multiscale:
            raise ValueError("load_single_scale starts a multi-scale tokenizer from a single-scale one; got "
                             f"scales {src_cfg.scales} -> {cfg.scales} (for the same architecture use --init-from)")
        geometry = ("image_size", "patch_size", "in_channels", "latent_channels", "enc_dim", "enc_depth", "enc_heads",
                    "dec_dim", "dec_depth", "dec_heads", "mlp_ratio", "linear_shortcut")
        differ = [f"{k} {getattr(src_cfg, k)} != {getattr(cfg, k)}" for k in geometry
                  if getattr(src_cfg, k) != getattr(cfg, k)]
        if differ:
            raise ValueError("the single-scale tokenizer has another geometry: " + "; ".join(differ))
        fine, n = cfg.layout.num_scales - 1, cfg.layout.finest ** 2
        renamed = {"decoder.level_embed.weight": None, "decoder.pos_embed": None}
        if cfg.linear_shortcut:
            renamed |= {f"decoder.shortcut.0.{k}": f"decoder.shortcut.{fine}.{k}" for k in ("weight", "bias")}
        own = self.state_dict()
        for name, value in source.state_dict().items():
            if name.startswith("latent_"):
                continue
            if name == "decoder.level_embed.weight":
                own[name][fine].copy_(value[0])
            elif name == "decoder.pos_embed":
                own[name][:, -n:].copy_(value)
            else:
                target = renamed.get(name) or name
                if target not in own or own[target].shape != value.shape:
                    raise ValueError(f"{name} {tuple(value.shape)} has no counterpart in this tokenizer")
                own[target].copy_(value)
        copied = {renamed.get(k) or k for k in source.state_dict() if not k.startswith("latent_")}
        return [k for k in own if k not in copied and not k.startswith("latent_")]

    # ---- encoding -----------------------------------------------------------------------------------------
    def _check_images(self, x: torch.Tensor):
        size = self.config.image_size
        if x.ndim != 4 or x.shape[1] != self.config.in_channels or x.shape[-2:] != (size, size):
            raise ValueError(f"expected images of shape (B, {self.config.in_channels}, {size}, {size}) in [-1, 1], "
                             f"got {tuple(x.shape)}")

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images (B, 3, H, W) in [-1, 1] -> the KL posterior over z."""
        self._check_images(x)
        return DiagonalGaussian(self.encoder(x))

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None):
        """Images (B, 3, H, W) in [-1, 1] -> z (B, C, 16, 16): the posterior mean, or a sample."""
        post = self.posterior(x)
        return post.sample(generator) if sample else post.mode()

    def latent_pyramid(self, z: torch.Tensor) -> list[torch.Tensor]:
        """z -> per-scale latent maps, coarse -> fine (the last is z)."""
        return self.downsampler(z) if self.downsampler is not None else [z]

    # ---- decoding -----------------------------------------------------------------------------------------
    def decode(self, z: torch.Tensor, num_scales: int | None = None, return_attention: bool = False) -> DecodeOutput:
        """z (B, C, 16, 16) -> images at every scale (or the `num_scales` coarsest ones).

        With scale-causal attention, decoding a coarse prefix gives exactly the images the full decode gives at
        those scales. `return_attention` takes the explicit attention path and returns each layer's weights.
        """
        maps = self.latent_pyramid(z)
        if num_scales is not None:
            maps = maps[: self.layout.prefix(num_scales).num_scales]  # prefix() validates num_scales
        return self.decode_maps(maps, return_attention)

    def decode_maps(self, maps: list[torch.Tensor], return_attention: bool = False) -> DecodeOutput:
        """Decode explicit per-scale maps (coarse -> fine, any prefix of the layout)."""
        images, attns = self.decoder(maps, return_attention)
        return DecodeOutput(images, self.layout.scales[: len(maps)], attns)

    def forward(self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None,
                shard: Shard | None = None, coarse_only: bool = False, finest: bool = True):
        """Training forward: (per-scale DecodeOutput, posterior). `shard`: see `hieratok.rng`.

        `coarse_only` (`train/stage1.py --train coarse`): the coarse images along their own route, with a graph, and
        the finest image -- logged, not trained -- decoded without one, or, with `finest=False`, not at all (the
        output then holds the coarse scales only; the full decode is about half of such a step)."""
        post = self.posterior(x)
        z = post.sample(generator, shard) if sample else post.mode()
        loss = self.config.loss
        if coarse_only:
            if not self.config.is_multiscale:
                raise ValueError("coarse_only needs a multi-scale tokenizer")
            coarse, _ = self.decoder(self.latent_pyramid(z)[:-1], frozen=not loss.coarse_grad_to_decoder)
            if not finest:
                return DecodeOutput(coarse, self.layout.scales[:-1]), post
            with torch.no_grad():
                out = self.decode(z)
            return DecodeOutput([*coarse, out.reconstruction], out.scales), post
        scaled = loss.coarse_encoder_grad_scale != 1
        reroute = self.config.is_multiscale and not (loss.coarse_grad_to_encoder and loss.coarse_grad_to_decoder
                                                     and not loss.coarse_grad_projection and not scaled)
        z_coarse = z if loss.coarse_grad_to_encoder else z.detach()
        if reroute and loss.coarse_grad_projection and torch.is_grad_enabled():
            z, z_coarse = ProjectedFork.apply(z)
        if reroute and scaled and torch.is_grad_enabled():
            z_coarse = ScaleGrad.apply(z_coarse, loss.coarse_encoder_grad_scale)
        out = self.decode(z)
        if reroute:
            # the coarse images again, along a route the coarse losses' gradient may take: from a detached latent
            # (no gradient into the encoder), a projected or a gradient-scaled one, and/or through detached shared
            # decoder weights.
            # With the scale-causal mask they equal the full decode's coarse images: only the gradient's route changes.
            maps = self.latent_pyramid(z_coarse)[:-1]
            coarse, _ = self.decoder(maps, frozen=not loss.coarse_grad_to_decoder)
            out = DecodeOutput([*coarse, out.reconstruction], out.scales)
        return out, post

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> their reconstruction (finest scale, posterior mean)."""
        return self.decode(self.encode(x)).reconstruction

    # ---- latent statistics for the generator ----------------------------------------------------------------
    def latent_differences(self, other: "HieraTok", statistics: bool = True) -> list[str]:
        """What makes `other` encode to another latent than this tokenizer (config fields, encoder tensors) or, with
        `statistics`, normalise it otherwise (the latent statistics, missing or different); empty when they share
        the latent exactly, so that a DiT trained on one's latents generates in the other's and either decodes it
        (e.g. a multi-scale tokenizer whose encoder is a single-scale one's, `stage1.py --warm-start ... --train
        coarse`)."""
        mine, theirs = self.config.to_dict(), other.config.to_dict()
        out = [f"config.{k}" for k in LATENT_DEFINING_FIELDS if mine.get(k) != theirs.get(k)]
        a, b = self.state_dict(), other.state_dict()
        keys = sorted(k for k in set(a) | set(b) if k.startswith(LATENT_DEFINING_TENSORS))
        out += [k for k in keys if k not in a or k not in b or a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
        if statistics:
            if not (self.has_latent_stats and other.has_latent_stats):
                out.append("latent statistics (missing)")
            elif not (torch.equal(self.latent_mean, other.latent_mean)
                      and torch.equal(self.latent_std, other.latent_std)
                      and all(torch.equal(getattr(self, k, torch.ones(())), getattr(other, k, torch.ones(())))
                              for k in ("latent_gain", "latent_mix", "latent_xmix"))):
                out.append("latent statistics")
        return out

    @property
    def has_latent_stats(self) -> bool:
        return int(self.latent_stats_count) > 0

    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor, count: int):
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std.clamp_min(1e-6))
        self.latent_stats_count.fill_(int(count))

    def _require_stats(self):
        if not self.has_latent_stats:
            raise RuntimeError("this tokenizer has no latent statistics yet; train/dit.py computes them "
                               "(hieratok.compute_latent_stats)")

    def normalize_latent(self, z: torch.Tensor) -> torch.Tensor:
        """What a DiT learns: per-channel standardised latents, their channels mixed by `latent_mix`, each map
        filtered by the spectral gain and the channels mixed per frequency by `latent_xmix` where the tokenizer has
        them."""
        self._require_stats()
        z = self._mix((z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None], invert=False)
        return self._xmix(self._filter(z, invert=False), invert=False)

    def denormalize_latent(self, z_norm: torch.Tensor) -> torch.Tensor:
        self._require_stats()
        z = self._mix(self._filter(self._xmix(z_norm, invert=True), invert=True), invert=True)
        return z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]

    def _mix(self, z: torch.Tensor, invert: bool) -> torch.Tensor:
        if not self.config.latent_channel_mix:
            return z
        m, x = self.latent_mix.float(), z.float().movedim(-3, -1)[..., None]  # (..., h, w, C, 1)
        out = torch.linalg.solve(m, x) if invert else m @ x
        return out[..., 0].movedim(-1, -3).to(z.dtype)

    def _filter(self, z: torch.Tensor, invert: bool) -> torch.Tensor:
        if not self.config.latent_spectral_gain:
            return z
        gain = self.latent_gain.float()
        out = torch.fft.ifft2(torch.fft.fft2(z.float()) * (1 / gain if invert else gain)).real
        return out.to(z.dtype)

    def _xmix(self, z: torch.Tensor, invert: bool) -> torch.Tensor:
        if not self.config.latent_covariance_mix:
            return z
        m = torch.view_as_complex(self.latent_xmix.float().contiguous())                      # (h, w, C, C)
        x = torch.fft.fft2(z.float()).movedim(-3, -1)[..., None]                              # (..., h, w, C, 1)
        out = torch.linalg.solve(m, x) if invert else m @ x
        return torch.fft.ifft2(out[..., 0].movedim(-1, -3)).real.to(z.dtype)

    def with_covariance_mix(self, mix: torch.Tensor) -> "HieraTok":
        """This tokenizer (a copy) whose latent normalisation, last, mixes the channels at each spatial frequency by
        `mix` (h, w, C, C) complex, invertible at every frequency and conjugate-symmetric, M(-f) = conj(M(f))
        (`hieratok.metrics.cross_spectral_mix`: another tokenizer's cross-spectra, all its second-order statistics);
        `denormalize_latent` solves it out again."""
        c, s = self.config.latent_channels, self.config.grid_size
        mix = torch.as_tensor(mix).to(torch.complex64).cpu()
        if mix.shape != (s, s, c, c) or not bool(torch.isfinite(torch.view_as_real(mix)).all()):
            raise ValueError(f"a covariance mix is a finite ({s}, {s}, {c}, {c}) complex tensor, got shape "
                             f"{tuple(mix.shape)}")
        if not bool((torch.linalg.cond(mix.to(torch.complex128)) <= 1e4).all()):  # (nan for an all-zero matrix)
            raise ValueError("the covariance mix is (nearly) singular at some frequency: mixing by it would lose "
                             "information")
        if not torch.allclose(mix.flip(0, 1).roll((1, 1), dims=(0, 1)).conj(), mix, atol=1e-5):
            raise ValueError("a covariance mix must be conjugate-symmetric, M(-f) = conj(M(f)), to keep real maps real")
        out = type(self)(self.config.replace(latent_covariance_mix=True))
        state = {k: v for k, v in self.state_dict().items() if k != "latent_xmix"}
        out.load_state_dict({**state, "latent_xmix": torch.view_as_real(mix).contiguous()})
        return out.to(self.latent_mean.device).train(self.training)

    def with_channel_mix(self, mix: torch.Tensor) -> "HieraTok":
        """This tokenizer (a copy) whose latent normalisation also mixes the standardised channels by `mix` (C, C), an
        invertible matrix (`hieratok.metrics.channel_mix`: another tokenizer's channel correlations);
        `denormalize_latent` solves it out again."""
        c = self.config.latent_channels
        mix = torch.as_tensor(mix, dtype=torch.float32).cpu()
        if mix.shape != (c, c) or not bool(torch.isfinite(mix).all()):
            raise ValueError(f"a channel mix is a finite ({c}, {c}) matrix, got shape {tuple(mix.shape)}")
        if not float(torch.linalg.cond(mix.double())) <= 1e4:  # (nan for an all-zero matrix)
            raise ValueError("the channel mix is (nearly) singular: mixing by it would lose information")
        out = type(self)(self.config.replace(latent_channel_mix=True))
        state = {k: v for k, v in self.state_dict().items() if k != "latent_mix"}
        out.load_state_dict({**state, "latent_mix": mix})
        return out.to(self.latent_mean.device).train(self.training)

    def with_spectral_gain(self, gain: torch.Tensor) -> "HieraTok":
        """This tokenizer (a copy) whose latent normalisation also filters each channel map by `gain` (C, h, w; or
        (h, w) for every channel), a positive gain per spatial frequency in `torch.fft.fftfreq` order
        (`hieratok.metrics.spectral_gain`). It is made symmetric under f -> -f (real maps stay real);
        `denormalize_latent` divides it out again."""
        c, s = self.config.latent_channels, self.config.grid_size
        gain = torch.as_tensor(gain, dtype=torch.float32).cpu()
        gain = gain.expand(c, s, s) if gain.shape == (s, s) else gain
        if gain.shape != (c, s, s) or not bool(torch.isfinite(gain).all()) or not bool((gain > 0).all()):
            raise ValueError(f"a spectral gain is a positive finite ({c}, {s}, {s}) or ({s}, {s}) tensor, got shape "
                             f"{tuple(gain.shape)}")
        mirrored = gain.flip(-2, -1).roll((1, 1), dims=(-2, -1))  # the gain at -f, in fftfreq order
        out = type(self)(self.config.replace(latent_spectral_gain=True))
        state = {k: v for k, v in self.state_dict().items() if k != "latent_gain"}
        out.load_state_dict({**state, "latent_gain": (gain + mirrored) / 2})
        return out.to(self.latent_mean.device).train(self.training)
