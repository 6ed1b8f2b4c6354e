"""Transformer building blocks shared by the tokenizer's encoder/decoder and the DiT."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


# ------------------------------------------------------------------------------------------------------------
#                                          Positional Embedding
# ------------------------------------------------------------------------------------------------------------
def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(N,) positions -> (N, dim) sin/cos features (MAE / DiT convention)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double()[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """(grid*grid, dim) fixed 2D sin/cos embedding of a grid x grid map, rows then columns."""
    if dim % 4:
        raise ValueError(f"2D sin/cos embedding needs dim divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, ys.flatten()), sincos_1d(dim // 2, xs.flatten())], dim=1)


# ------------------------------------------------------------------------------------------------------------
#                                             Core layers
# ------------------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention through SDPA, or an explicit path that also returns the attention weights."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BLC: torch.Tensor, mask_LL: torch.Tensor | None = None, return_attn: bool = False):
        B, L, C = x_BLC.shape
        q, k, v = self.qkv(x_BLC).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, L, d)
        if return_attn:
            logits_BHLL = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
            if mask_LL is not None:
                logits_BHLL = logits_BHLL.masked_fill(~mask_LL, float("-inf"))
            attn_BHLL = logits_BHLL.softmax(dim=-1)
            out = attn_BHLL @ v
        else:
            attn_BHLL = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_LL)
        out = out.transpose(1, 2).reshape(B, L, C)
        return self.proj(out), attn_BHLL


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x_BLC, mask_LL=None, return_attn: bool = False):
        h, attn = self.attn(self.norm1(x_BLC), mask_LL, return_attn)
        x_BLC = x_BLC + h
        x_BLC = x_BLC + self.mlp(self.norm2(x_BLC))
        return x_BLC, attn


class Transformer(nn.Module):
    """A stack of pre-norm blocks with a final LayerNorm; optionally returns each layer's attention weights."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, grad_checkpointing: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.grad_checkpointing = grad_checkpointing

    def forward(self, x_BLC, mask_LL=None, return_attn: bool = False):
        attns = []
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and not return_attn:
                x_BLC, attn = checkpoint(blk, x_BLC, mask_LL, use_reentrant=False)
            else:
                x_BLC, attn = blk(x_BLC, mask_LL, return_attn)
            attns.append(attn)
        return self.norm(x_BLC), (attns if return_attn else None)


def init_weights(module: nn.Module):
    """Xavier-uniform linear layers with zero bias (ViT / DiT convention); conv layers keep their own init."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) continuous timesteps -> (B, dim) sinusoidal features."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
