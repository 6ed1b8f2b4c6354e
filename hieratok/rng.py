"""Random draws that do not depend on how a batch is split over processes.

With `shard=(rank, world)`, a draw for a local batch of B samples is the rank-th slice of the same draw for the
global batch of B * world samples from the same generator state. So N data-parallel processes, each seeding the
step's generator identically, use exactly the noise one process would use for the whole batch.
"""
from __future__ import annotations

import torch

Shard = tuple[int, int]


def sharded(draw, local_shape, generator: torch.Generator | None, shard: Shard | None, nominal: int | None = None,
            **kwargs) -> torch.Tensor:
    """`draw` (torch.rand / torch.randn) of `local_shape`, as this rank's slice of the global-batch draw.

    `nominal` is the per-rank batch size the global batch was split into (default: local_shape[0]); a rank whose
    batch came out smaller (unreadable samples skipped) takes the start of its nominal slice.
    """
    rank, world = shard or (0, 1)
    local = local_shape[0]
    nominal = nominal or local
    full = draw((nominal * world, *local_shape[1:]), generator=generator, **kwargs)
    return full[rank * nominal: rank * nominal + local]
