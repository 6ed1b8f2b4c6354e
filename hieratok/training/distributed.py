"""Devices, precision and sharding: native-bf16 detection, DTensor helpers, FSDP2 on CPUs and GPUs."""
from __future__ import annotations

import platform
from pathlib import Path

import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
from torch import nn
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from torch.distributed.tensor import DTensor

from ..perf import native_bf16


def hardware_name() -> str:
    """The device the run computes on, for the record: the GPU's name, else the CPU's model name."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()


def run_hardware(cfg: dict) -> str:
    """A run's device from its run_config.json: 'CPU', or 'GPU <name>' for a run on CUDA (the name from the
    run's record, or its precision note)."""
    if not str(cfg.get("device", "cpu")).startswith("cuda"):
        return "CPU"
    why = cfg.get("mixed_precision", {}).get("why", "")
    name = cfg.get("hardware") or (why.split("CUDA ", 1)[1].split(" (")[0] if "CUDA " in why else "")
    return f"GPU {name}" if name else "GPU"


def cpu_name() -> str:
    """This machine's CPU model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_mixed_precision(choice: str) -> tuple[str, str]:
    """`--mixed-precision auto` -> bf16 on hardware with native bf16, else fp32 ("no"); returns (choice, why)."""
    if choice != "auto":
        return choice, "set on the command line"
    ok, what = native_bf16()
    return ("bf16" if ok else "no"), f"auto: {what}"


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor: the shard of an FSDP2 DTensor, the tensor itself otherwise."""
    return t.to_local() if isinstance(t, DTensor) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a sharded DTensor: every process must call it)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def model_class(model: nn.Module) -> type:
    """The class a model was built from (FSDP2 swaps in a subclass `FSDP<Name>`)."""
    from torch.distributed.fsdp import FSDPModule
    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def gather_whole(accelerator: Accelerator, model: nn.Module, ema=None) -> nn.Module | None:
    """An FSDP-sharded `model` (or, with `ema`, its EMA) gathered into one whole, ordinary module on the main
    process (the others get None; every process must call it)."""
    unwrapped = accelerator.unwrap_model(model)
    if ema is not None:  # gather the EMA only; buffers are not sharded, so the model's own serve
        state = ema.full_parameters(keep=accelerator.is_main_process)
        if accelerator.is_main_process:
            state.update((k, v) for k, v in unwrapped.state_dict().items() if k not in ema.names)
    else:
        state = accelerator.get_state_dict(model)  # whole on the main process
    if not accelerator.is_main_process:
        return None
    whole = model_class(unwrapped)(unwrapped.config)
    whole.load_state_dict(state, strict=True)
    return whole.to(accelerator.device).train(unwrapped.training)


def fp32_batchnorm_units(model: nn.Module, optimizers):
    """Make each BatchNorm of `model` an FSDP2 unit computing in fp32, and point the optimizers at the new
    (sharded) parameters, which accelerate then maps like the rest."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            before = dict(module.named_parameters())
            fully_shard(module, mp_policy=MixedPrecisionPolicy(param_dtype=torch.float32, cast_forward_inputs=True))
            swap = {id(p): dict(module.named_parameters())[n] for n, p in before.items()}
            for opt in optimizers:
                for group in opt.param_groups:
                    group["params"] = [swap.get(id(p), p) for p in group["params"]]


def enable_fsdp_on_cpu(accelerator: Accelerator):
    """Honour an FSDP `accelerate launch` config on CPUs (accelerate would silently fall back to DDP there):
    FSDP2's fully_shard runs over gloo, so the sharded path is the same code on CPUs and GPUs."""
    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables `accelerate launch` sets
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    # AcceleratorState() re-reads PartialState's shared dict on every construction: set both
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin


def prepare_fsdp(accelerator: Accelerator, objs, wrap_names: list[str] | None) -> list:
    """accelerate's prepare under FSDP2, which takes one model per call: each model is prepared with its
    optimizers, wrapping the block classes it has of the configured ones, and its BatchNorm layers become FSDP
    units of their own kept in fp32 (bf16 weights beside fp32 running statistics fail in batch_norm)."""
    models = [i for i, o in enumerate(objs) if isinstance(o, nn.Module)]
    owner = {id(p): i for i in models for p in objs[i].parameters()}
    groups = {i: [i] for i in models}
    for k, obj in enumerate(objs):
        if isinstance(obj, torch.optim.Optimizer):
            first = next(p for g in obj.param_groups for p in g["params"])
            groups[owner[id(first)]].append(k)
        elif not isinstance(obj, nn.Module):
            raise TypeError("under FSDP, prepare models and their optimizers only")
    out = list(objs)
    plugin = accelerator.state.fsdp_plugin
    policy = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)
    for indices in groups.values():
        if policy is transformer_auto_wrap_policy:
            # accelerate fixes the block classes from the first model it sees; each model names its own
            # (`_no_split_modules`), or the config's names that this model has
            model = objs[indices[0]]
            present = {type(m).__name__ for m in model.modules()}
            plugin.auto_wrap_policy = transformer_auto_wrap_policy
            plugin.transformer_cls_names_to_wrap = (
                None if wrap_names is None else [n for n in wrap_names if n in present])
        if accelerator.mixed_precision != "no":
            fp32_batchnorm_units(objs[indices[0]], [objs[k] for k in indices[1:]])
        prepared = accelerator.prepare(*(objs[k] for k in indices))
        for k, obj in zip(indices, prepared if isinstance(prepared, (tuple, list)) else (prepared,)):
            out[k] = obj
    return out
