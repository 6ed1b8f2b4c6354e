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
# A block of the attention pattern: queries [q0, q1) attend to keys [k0, k1), through the mask (True) or to every
# key of the range (False). A scale layout splits its mask into such blocks (`ScaleLayout.attention_blocks`) so that
# the explicit path computes only the scores a query may use and masks only where a block needs it.
AttentionBlock = tuple[int, int, int, int, bool]
ATTENTION_IMPLS = ("auto", "sdpa", "math")


def call(m: nn.Module, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
    """`m(x)`; with `frozen`, the same computation with `m`'s parameters read as constants (detached): the output's
    gradient reaches `x` but none of `m`'s weights. The stop-gradient of a decode with frozen shared weights
    (`HieraTok` variants with `coarse_grad_to_decoder=False`) is made of these calls, inside the modules' own
    forwards, rather than by swapping parameters for detached ones from outside (`torch.func.functional_call`):
    FSDP2's pre-forward hooks install each wrapped block's unsharded parameters, which undid such a swap."""
    if not frozen:
        return m(x)
    if isinstance(m, nn.Linear):
        return F.linear(x, m.weight.detach(), None if m.bias is None else m.bias.detach())
    if isinstance(m, nn.LayerNorm):
        return F.layer_norm(x, m.normalized_shape, None if m.weight is None else m.weight.detach(),
                            None if m.bias is None else m.bias.detach(), m.eps)
    if isinstance(m, nn.RMSNorm):
        return F.rms_norm(x, m.normalized_shape, None if m.weight is None else m.weight.detach(), m.eps)
    if isinstance(m, nn.Embedding):
        return F.embedding(x, m.weight.detach(), m.padding_idx)
    if isinstance(m, nn.Sequential):
        for layer in m:
            x = call(layer, x, frozen)
        return x
    if isinstance(m, (nn.GELU, nn.Identity)):
        return m(x)
    raise TypeError(f"call(frozen=True) does not know {type(m).__name__}")


class _ExplicitAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d) + bias) v with a hand-written backward that keeps only the probabilities.

    It exists because SDPA's CPU flash kernel is slow in bf16 backward at this project's head sizes (measured per
    layer in docs/training.md, "Training speed on a CPU"). Scores and softmax are computed in fp32, the matmuls in
    the inputs' dtype; the backward is the standard one (dS = P * (dP - rowsum(dO * O)))."""

    @staticmethod
    def forward(ctx, q, k, v, bias):
        scale = q.shape[-1] ** -0.5
        acc = torch.promote_types(q.dtype, torch.float32)  # softmax in fp32 (or the inputs' wider dtype)
        logits = torch.matmul(q, k.transpose(-2, -1)).to(acc) * scale
        if bias is not None:
            logits = logits + bias
        probs = logits.softmax(dim=-1).to(q.dtype)
        out = torch.matmul(probs, v)
        ctx.save_for_backward(q, k, v, probs, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, probs, out = ctx.saved_tensors
        grad_out = grad_out.to(q.dtype)
        grad_v = torch.matmul(probs.transpose(-2, -1), grad_out)
        acc = torch.promote_types(q.dtype, torch.float32)
        grad_probs = torch.matmul(grad_out, v.transpose(-2, -1)).to(acc)
        row_dot = (grad_out.to(acc) * out.to(acc)).sum(-1, keepdim=True)
        grad_logits = (probs.to(acc) * (grad_probs - row_dot) * ctx.scale).to(q.dtype)
        grad_q = torch.matmul(grad_logits, k)
        grad_k = torch.matmul(grad_logits.transpose(-2, -1), q)
        return grad_q, grad_k, grad_v, None


def explicit_attention(q, k, v, mask_LL: torch.Tensor | None = None,
                       blocks: tuple[AttentionBlock, ...] | None = None) -> torch.Tensor:
    """Attention over (B, H, L, d) through `_ExplicitAttention`, block by block when `blocks` is given."""
    if blocks is None:
        bias = None if mask_LL is None else _mask_bias(mask_LL)
        return _ExplicitAttention.apply(q, k, v, bias)
    outs = []
    for q0, q1, k0, k1, masked in blocks:
        bias = _mask_bias(mask_LL[q0:q1, k0:k1]) if masked else None
        outs.append(_ExplicitAttention.apply(q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1], bias))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def _mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask (True: may attend) -> an additive fp32 bias (0 or -inf)."""
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, float("-inf"))


def resolve_attention(impl: str, x: torch.Tensor, head_dim: int = 64) -> str:
    """`auto` -> the measured faster path for this call: the explicit path for training in bf16 on a CPU (flash's
    bf16 backward is the slow spot there) at head sizes that are multiples of 16 (at 24, torch 2.14.1's compiled
    explicit path computed NaN), SDPA everywhere else (inference; fp32, where flash wins; GPUs)."""
    if impl != "auto":
        return impl
    if head_dim % 16:
        return "sdpa"
    training = torch.is_grad_enabled() and x.requires_grad
    lowp = x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                          and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    return "math" if x.device.type == "cpu" and training and lowp else "sdpa"


class Attention(nn.Module):
    """Multi-head self-attention through SDPA or the explicit path (`impl`, see `resolve_attention`); the explicit
    path can also return the attention weights."""

    def __init__(self, dim: int, heads: int, impl: str = "auto", qk_norm: bool = False):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.impl = impl
        # qk_norm: RMSNorm on each head's queries and keys (ViT-22B; SD3 and LightningDiT use it in DiTs) -- bounded
        # logits whatever the residual stream's scale
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else None

    def forward(self, x_BLC: torch.Tensor, mask_LL: torch.Tensor | None = None, return_attn: bool = False,
                blocks: tuple[AttentionBlock, ...] | None = None, frozen: bool = False):
        """`frozen`: the weights as constants (`call`)."""
        B, L, C = x_BLC.shape
        q, k, v = call(self.qkv, x_BLC, frozen).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:  # q, k, v: (B, H, L, d)
            q, k = call(self.q_norm, q, frozen).to(v.dtype), call(self.k_norm, k, frozen).to(v.dtype)
        attn_BHLL = None
        if return_attn:
            logits_BHLL = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
            if mask_LL is not None:
                logits_BHLL = logits_BHLL.masked_fill(~mask_LL, float("-inf"))
            attn_BHLL = logits_BHLL.softmax(dim=-1)
            out = attn_BHLL @ v
        elif resolve_attention(self.impl, x_BLC, self.head_dim) == "math":
            out = explicit_attention(q, k, v, mask_LL, blocks)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_LL)
        out = out.transpose(1, 2).reshape(B, L, C)
        return call(self.proj, out, frozen), attn_BHLL


def set_attention_impl(model: nn.Module, impl: str) -> None:
    """Set every attention layer of `model` to `impl` (one of ATTENTION_IMPLS)."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention implementation must be one of {ATTENTION_IMPLS}, got {impl!r}")
    for m in model.modules():
        if isinstance(m, Attention):
            m.impl = impl


_GELU_A = 2 * math.sqrt(2 / math.pi)  # 0.5 (1 + tanh(z)) = sigmoid(2z)
_GELU_B = _GELU_A * 0.044715


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation, `F.gelu(x, approximate="tanh")`. Under torch.compile it is written as the
    same function through a sigmoid, x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)): inductor's vectorised tanh
    was the slowest element-wise kernel of a compiled DiT block on an AVX512 CPU (forward + backward of a
    (8192, 1024) bf16 activation: 17.8 ms through tanh, 8.7 through the sigmoid; the two agree to 1e-15 in fp64
    and to one bf16 rounding step in bf16). Eagerly, ATen's fused GELU kernel is the faster one."""
    if torch.compiler.is_compiling():
        return x * torch.sigmoid(x * (_GELU_A + _GELU_B * x * x))
    return F.gelu(x, approximate="tanh")


class Mlp(nn.Module):
    """fc2(gelu_tanh(fc1(x)))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x, frozen: bool = False):
        return call(self.fc2, gelu_tanh(call(self.fc1, x, frozen)), frozen)


class SwiGLU(nn.Module):
    """fc2(silu(x W_a) * (x W_b)) (Shazeer 2020; LLaMA, LightningDiT). `hidden` is the GELU MLP's width; the gated
    one is 2/3 of it (rounded up to a multiple of 8), so both have about the same parameters and FLOPs."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        hidden = -(-int(2 * hidden / 3) // 8) * 8
        self.fc1, self.fc2 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x, frozen: bool = False):
        a, b = call(self.fc1, x, frozen).chunk(2, dim=-1)
        return call(self.fc2, F.silu(a) * b, frozen)


MLPS = {"gelu": Mlp, "swiglu": SwiGLU}


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x_BLC, mask_LL=None, return_attn: bool = False, blocks=None, frozen: bool = False):
        """`frozen`: the block's weights as constants (`call`)."""
        h, attn = self.attn(call(self.norm1, x_BLC, frozen), mask_LL, return_attn, blocks, frozen)
        x_BLC = x_BLC + h
        x_BLC = x_BLC + self.mlp(call(self.norm2, x_BLC, frozen), frozen)
        return x_BLC, attn


class Transformer(nn.Module):
    """A stack of pre-norm blocks with a final LayerNorm; optionally returns each layer's attention weights."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, grad_checkpointing: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.grad_checkpointing = grad_checkpointing

    def forward(self, x_BLC, mask_LL=None, return_attn: bool = False, blocks=None, frozen: bool = False):
        """`blocks`: the mask's block structure (see `AttentionBlock`), used by the explicit attention path;
        `frozen`: every weight as a constant (`call`)."""
        # contiguous before the blocks: a transposed patch embedding reaching a compiled block under bf16 autocast
        # came out as NaN (torch 2.14.1 inductor, width 96; see hieratok.perf.compile_blocks)
        x_BLC = x_BLC.contiguous()
        attns = []
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and not return_attn:
                x_BLC, attn = checkpoint(blk, x_BLC, mask_LL, False, blocks, frozen, use_reentrant=False)
            else:
                x_BLC, attn = blk(x_BLC, mask_LL, return_attn, blocks, frozen)
            attns.append(attn)
        return call(self.norm, x_BLC, frozen), (attns if return_attn else None)


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
