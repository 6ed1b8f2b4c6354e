"""Image grids saved while training: a tokenizer's reconstructions at every scale."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image


def save_scale_grid(path: Path, x: torch.Tensor, out, n: int = 8):
    """Rows: input, then each scale's reconstruction upsampled (nearest) to the input size."""
    size = x.shape[-1]
    rows = [x[:n]] + [torch.nn.functional.interpolate(im[:n].float(), size=size, mode="nearest")
                      for im in out.images]
    save_image(torch.cat(rows).clamp(-1, 1) * 0.5 + 0.5, path, nrow=n)


def sample_reconstructions(run, x: torch.Tensor, step: int):
    """Save the EMA tokenizer's per-scale reconstructions of the batch's first images, when it is time to."""
    if not run.sample_due(step):
        return
    tokenizer = run.averaged()  # every process takes part (FSDP gathers); the main process draws
    if run.is_main:
        with torch.no_grad(), run.autocast():
            out = tokenizer.decode(tokenizer.encode(x[:8]))
        (run.out / "samples").mkdir(parents=True, exist_ok=True)
        save_scale_grid(run.out / "samples" / f"step-{step + 1:08d}.png", x, out)
