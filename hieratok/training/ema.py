"""An exponential moving average of a model's parameters, whole or sharded like the model."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .distributed import full, local


class EMA:
    """Exponential moving average of a model's parameters, kept in the layout the model trains in: whole tensors
    on one process or under DDP, each process's shard under FSDP2, so it costs per process what the parameters do.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the n updates so far, so that short runs are not
    dominated by their initial weights (0.999 ** 1000 = 0.37 without the ramp); the first update copies the weights.
    Without FSDP the average lives in `module`, a copy of the model (what sampling and export use).
    """

    def __init__(self, model: nn.Module, decay: float, sharded: bool):
        self.decay, self.sharded, self.n_averaged = decay, sharded, 0
        self.names = [n for n, _ in model.named_parameters()]
        if sharded:   # DTensors with the parameters' placements: checkpointed per process
            self.module = None
            self.shadow = [p.detach().clone() for p in model.parameters()]
        else:
            self.module = copy.deepcopy(model).requires_grad_(False)
            self.shadow = list(self.module.parameters())

    @torch.no_grad()
    def update(self, model: nn.Module):
        params = [local(p.detach()) for p in model.parameters()]
        shadow = [local(t) for t in self.shadow]
        if self.n_averaged == 0:
            torch._foreach_copy_(shadow, params)
        else:
            n = float(self.n_averaged)
            torch._foreach_lerp_(shadow, params, 1.0 - min(self.decay, (1.0 + n) / (10.0 + n)))
        self.n_averaged += 1

    # ---- checkpoints (hieratok.training.checkpoint) ----------------------------------------------------------
    def state_dict(self) -> dict:
        return {"n_averaged": self.n_averaged, "shadow": dict(zip(self.names, self.shadow))}

    @torch.no_grad()
    def load_state_dict(self, state: dict):
        missing = sorted(set(self.names) - set(state["shadow"]))
        if missing:
            raise KeyError(f"the checkpoint's EMA lacks {missing[:5]}")
        for name, t in zip(self.names, self.shadow):
            t.copy_(state["shadow"][name])
        self.n_averaged = int(state["n_averaged"])

    def full_parameters(self, keep: bool) -> dict[str, torch.Tensor]:
        """The averaged parameters, whole, on CPU; under FSDP every process must call it, and only those with
        `keep` hold the result (the others get {})."""
        out = {}
        for name, t in zip(self.names, self.shadow):
            whole = full(t.detach())
            if keep:
                out[name] = whole.cpu()
        return out
