"""Training and inference speed on CPUs: the allocator, compiled transformer blocks, the attention path.

Measured with `train/benchmark.py` (README, "Training speed"): on a 2-core Xeon with AMX in bf16, the photo
tokenizer's stage-1 step spends about half its time in SDPA's flash-attention backward and a fifth in element-wise
work between GEMMs, and every tensor above 32 MiB is mmap'ed and page-faulted afresh on each step. The three
remedies here change no arithmetic a model is defined by (the explicit attention path computes the same softmax in
fp32; compiled blocks fuse element-wise ops; the allocator only keeps memory).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

import torch
from torch import nn

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_allocator_note: str | None = None


def tune_allocator(threshold_bytes: int = 1 << 30) -> str:
    """Keep large CPU tensors in glibc's heap instead of fresh mmap'ed pages.

    glibc serves an allocation above its mmap threshold (adaptive, at most 32 MiB) with new pages that the kernel
    zero-fills on first touch, and returns them at free: a training step that allocates the same 40-90 MB
    attention and activation tensors every step pays those page faults every step (a (192, 341, 341) bf16 score
    matrix: 23 ms to compute into fresh pages, 10 ms into reused ones). Raising the mmap and trim thresholds keeps
    freed memory for reuse. Process-wide and idempotent; a no-op (said in the returned note) off glibc."""
    global _allocator_note
    if _allocator_note is not None:
        return _allocator_note
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _allocator_note = "allocator left as is (not glibc)"
        return _allocator_note
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes) == 1 and libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                   threshold_bytes) == 1
    except (OSError, AttributeError) as e:
        _allocator_note = f"allocator left as is ({e})"
        return _allocator_note
    _allocator_note = (f"glibc malloc keeps blocks up to {threshold_bytes >> 20} MiB in its heap" if ok
                       else "allocator left as is (mallopt refused)")
    return _allocator_note


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks (tokenizer encoder/decoder blocks, DiT blocks): the units compiled."""
    from .dit import DiTBlock
    from .layers import Block
    return [m for m in model.modules() if isinstance(m, (Block, DiTBlock))]


def compile_blocks(model: nn.Module, mode: str | None = None) -> int:
    """Compile every transformer block in place (`nn.Module.compile`: parameter names, state dicts and
    checkpoints stay as they are). Inductor fuses the LayerNorms, GELU, residual adds, autocast's weight casts and
    the explicit attention's softmax into a few C++ loops per block; GEMMs stay oneDNN's. Returns the number of
    blocks compiled. The first step of each shape compiles (~40 s for the photo tokenizer on 2 cores; inductor's
    on-disk cache makes a later run's compilation a few seconds).

    The default mode, not max-autotune: on the photo tokenizer max-autotune took 3x longer to compile and its
    timing-based GEMM choices gave 0.75-1.0 s steps from one compilation to the next (default: 1.04 s), so a
    run's kernels would depend on the load during its compilation."""
    blocks = transformer_blocks(model)
    for blk in blocks:
        blk.compile(dynamic=False, mode=mode)
    return len(blocks)


def compile_available() -> tuple[bool, str]:
    """Whether torch.compile can build CPU kernels here (it needs a C++ compiler), and why not."""
    try:
        from torch._inductor import cpp_builder
        cpp_builder.get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 -- any failure to find a compiler means "no"
        return False, f"no C++ compiler for torch.compile ({type(e).__name__}: {e})"
    return True, "torch.compile (inductor) available"
