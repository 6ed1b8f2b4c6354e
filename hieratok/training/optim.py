"""Optimizer and learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer, warmup: int, total: int, final_ratio: float = 0.1) -> LambdaLR:
    """Linear warm-up to the base LR, then cosine decay to `final_ratio` of it."""
    def factor(step):
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return LambdaLR(optimizer, factor)


def warmup_steps(args) -> int:
    """`--warmup`, or 5% of `--steps` when it is not given (every trainer's default)."""
    return args.warmup if args.warmup is not None else args.steps // 20


def schedule(optimizer, args, final_ratio: float = 0.1) -> LambdaLR:
    """A trainer's learning-rate schedule: `warmup_cosine` over `--steps` with `warmup_steps(args)`."""
    return warmup_cosine(optimizer, warmup_steps(args), args.steps, final_ratio)


def adamw(params, args, betas=(0.9, 0.95), slow=(), slow_lr_scale: float = 1.0):
    """AdamW with weight decay on matrices only; `slow` parameters (e.g. a linear shortcut initialised to a fitted
    codec) get `slow_lr_scale` times the learning rate and no weight decay, which would shrink the fitted map."""
    slow_ids = {id(p) for p in slow}
    rest = [p for p in params if p.requires_grad and id(p) not in slow_ids]
    decay = [p for p in rest if p.ndim >= 2]
    no_decay = [p for p in rest if p.ndim < 2]  # biases, norms, embeddings' gains
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if slow_ids:
        groups.append({"params": [p for p in slow if p.requires_grad], "weight_decay": 0.0,
                       "lr": args.lr * slow_lr_scale})
    return torch.optim.AdamW(groups, lr=args.lr, betas=betas, fused=fused_supported(rest + list(slow)))


def fused_supported(params) -> bool:
    """Whether torch's fused AdamW kernel can take these parameters: plain floating-point tensors on a CPU or a
    GPU. On a CPU the default is a Python loop over the tensors (several small ops each): the fused kernel took
    the photo DiT's optimizer step from 20.5 to 5.8 ms on 2 cores (docs/training.md). The trainers build their
    optimizer before accelerate shards the model, and the fused kernel then steps FSDP2's sharded parameters too
    (tests/test_train.py, the FSDP tests); parameters that arrive already sharded or of other kinds keep the
    default."""
    params = [p for p in params if p.requires_grad]
    return bool(params) and all(type(p) is torch.nn.Parameter and p.is_floating_point()
                                and p.device.type in ("cpu", "cuda") for p in params)
