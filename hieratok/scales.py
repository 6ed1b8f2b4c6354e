"""The scale layout: which scales exist, where their tokens sit, and who may attend to whom.

This module is the single owner of the multi-scale token layout. The decoder's input is the concatenation of
the latent maps coarse -> fine; with the default scales (1, 2, 4, 8, 16) that is 1 + 4 + 16 + 64 + 256 = 341
tokens. The model, the trainers, the app and the tests all ask a `ScaleLayout` instead of recomputing it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

MASK_KINDS = ("scale_causal", "full", "scale_independent")


@dataclass(frozen=True)
class ScaleLayout:
    """Side lengths of the square token maps, coarse -> fine (e.g. (1, 2, 4, 8, 16))."""

    scales: tuple[int, ...] = (1, 2, 4, 8, 16)

    def __post_init__(self):
        scales = tuple(int(s) for s in self.scales)
        if not scales:
            raise ValueError("a scale layout needs at least one scale")
        if any(s < 1 for s in scales) or any(b <= a for a, b in zip(scales, scales[1:])):
            raise ValueError(f"scales must be positive and strictly increasing (coarse -> fine), got {scales}")
        object.__setattr__(self, "scales", scales)

    # ---- sizes and positions -------------------------------------------------------------------------------
    @property
    def num_scales(self) -> int:
        return len(self.scales)

    @property
    def finest(self) -> int:
        return self.scales[-1]

    @property
    def token_counts(self) -> tuple[int, ...]:
        return tuple(s * s for s in self.scales)

    @property
    def num_tokens(self) -> int:
        return sum(self.token_counts)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start index of each scale in the concatenated sequence."""
        starts, total = [], 0
        for n in self.token_counts:
            starts.append(total)
            total += n
        return tuple(starts)

    def slice(self, level: int) -> slice:
        """Positions of scale `level` (an index into `scales`) in the sequence."""
        start = self.offsets[level]
        return slice(start, start + self.token_counts[level])

    def level_of(self, scale: int) -> int:
        """Index of a scale side length, with a clear error for a scale that is not in the layout."""
        try:
            return self.scales.index(int(scale))
        except ValueError:
            raise ValueError(f"scale {scale} is not one of {self.scales}") from None

    def position(self, scale: int, row: int, col: int) -> int:
        """Sequence position of the token at (row, col) of the `scale` x `scale` map (row-major within a scale)."""
        if not (0 <= row < scale and 0 <= col < scale):
            raise ValueError(f"({row}, {col}) is outside the {scale}x{scale} map")
        return self.offsets[self.level_of(scale)] + row * scale + col

    def prefix(self, num_scales: int) -> "ScaleLayout":
        """The layout of the `num_scales` coarsest scales."""
        if not 1 <= num_scales <= self.num_scales:
            raise ValueError(f"prefix length must be in 1..{self.num_scales}, got {num_scales}")
        return ScaleLayout(self.scales[:num_scales])

    @property
    def level_ids(self) -> torch.Tensor:
        """(L,) long tensor: the scale index of every position in the sequence."""
        return torch.tensor([level for level, n in enumerate(self.token_counts) for _ in range(n)])

    # ---- attention masks ----------------------------------------------------------------------------------
    def mask(self, kind: str = "scale_causal") -> torch.Tensor:
        """(L, L) bool mask for `scaled_dot_product_attention`: True where query (row) may attend to key (column).

        scale_causal:      a query of scale a sees every key of scale b <= a (bidirectional within its own scale).
        full:              every query sees every key.
        scale_independent: a query sees only keys of its own scale (block diagonal).
        """
        q_L1, k_1L = self.level_ids[:, None], self.level_ids[None, :]
        if kind == "scale_causal":
            return k_1L <= q_L1
        if kind == "full":
            return torch.ones(self.num_tokens, self.num_tokens, dtype=torch.bool)
        if kind == "scale_independent":
            return k_1L == q_L1
        raise ValueError(f"unknown attention mask {kind!r}; choose one of {MASK_KINDS}")

    def attention_blocks(self, kind: str = "scale_causal") -> tuple[tuple[int, int, int, int, bool], ...]:
        """`mask(kind)` as blocks (q0, q1, k0, k1, masked): queries [q0, q1) attend to keys [k0, k1), through the
        mask where `masked`, else to all of them. The finest scale's queries see a contiguous range of keys with no
        hole (every key under scale_causal, their own scale under scale_independent), so they need no mask; the
        coarser scales form one small masked block. The explicit attention path computes exactly these blocks."""
        L = self.num_tokens
        if kind not in MASK_KINDS:
            raise ValueError(f"unknown attention mask {kind!r}; choose one of {MASK_KINDS}")
        if kind == "full" or self.num_scales == 1:
            return ((0, L, 0, L, False),)
        fine = self.offsets[-1]  # where the finest scale's tokens start
        return ((0, fine, 0, fine, True), (fine, L, 0 if kind == "scale_causal" else fine, L, False))

    def mass_per_scale(self, weights_L: torch.Tensor) -> torch.Tensor:
        """(..., L) attention weights over keys -> (..., num_scales): the mass each scale receives."""
        return torch.stack([weights_L[..., self.slice(i)].sum(-1) for i in range(self.num_scales)], dim=-1)

    # ---- moving between the sequence and per-scale maps -----------------------------------------------------
    def split(self, x_BLC: torch.Tensor) -> list[torch.Tensor]:
        """Split a (B, L, C) sequence into one (B, s*s, C) chunk per scale."""
        if x_BLC.shape[1] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} tokens for scales {self.scales}, got {x_BLC.shape[1]}")
        return list(torch.split(x_BLC, self.token_counts, dim=1))

    def flatten(self, maps_BChw: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-scale (B, C, s, s) maps coarse -> fine into a (B, L, C) sequence."""
        if len(maps_BChw) != self.num_scales:
            raise ValueError(f"expected {self.num_scales} maps, got {len(maps_BChw)}")
        for s, m in zip(self.scales, maps_BChw):
            if m.shape[-2:] != (s, s):
                raise ValueError(f"map for scale {s} has spatial shape {tuple(m.shape[-2:])}")
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps_BChw], dim=1)
