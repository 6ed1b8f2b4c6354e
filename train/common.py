"""What every trainer shares: arguments, the accelerate set-up, schedule, EMA, checkpoints, logging, NaN guard.

A trainer reads top to bottom:

    run = Run(args, "stage1")                       # accelerator, output dir, trackers, run config
    model, opt = run.prepare(model, opt)            # DDP or FSDP2 etc. through accelerate
    run.track(model, scheduler)                     # EMA + what else a checkpoint must restore
    start = run.resume()                            # latest checkpoint by default
    for step, x, y, gen in run.batches(dataset, start):
        ... loss ...
        run.step(loss, opt, scheduler, model)       # NaN guard, backward, clip, optimizer, EMA
        run.log(step, logs); run.maybe_checkpoint(step)
        if run.sample_due(step): ema = run.averaged()   # the whole EMA model (gathered under FSDP)
    run.finish(model)                               # exports the EMA (or model) as a from_pretrained directory

Resume is bit-identical on CPU: every random draw in a step comes from a generator seeded by (seed, step), the
data order is a pure function of (seed, step) (see `data.StreamBatches`), and a checkpoint holds model, EMA,
optimizer, scheduler, step and RNG states. Checkpoints are written to a temporary folder and renamed.

Under FSDP2 (`accelerate launch --config_file train/configs/fsdp.yaml`) parameters, gradients, optimizer state and
the EMA are sharded over the processes; checkpoints hold each process's shards (safetensors) and the exported model
is gathered whole. accelerate applies FSDP only on accelerators; on CPUs it would quietly run DDP instead, so Run
switches FSDP2 on over gloo there itself (`enable_fsdp_on_cpu`): the FSDP path is the same code on CPUs and GPUs,
and the tests exercise it without a GPU.
"""
from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.state import AcceleratorState, PartialState
from accelerate.tracking import GeneralTracker
from accelerate.utils import DistributedType, gather_object, set_seed
from torch import nn
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from torch.distributed.tensor import DTensor
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python train/x.py` from a clone, no install

from hieratok.losses import load_lpips  # noqa: E402
from train.checkpoint import STATE_FILE, load_state, read_state, save_state, write_json  # noqa: E402
from train.data import DataError, StreamBatches, build_dataset, make_loader  # noqa: E402


class NonFiniteLoss(RuntimeError):
    pass


def native_bf16() -> tuple[bool, str]:
    """Whether this machine computes bf16 natively, and what was found."""
    if torch.cuda.is_available():
        ok = torch.cuda.is_bf16_supported()
        return ok, f"CUDA {torch.cuda.get_device_name()} ({'with' if ok else 'without'} bf16)"
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        return False, "CPU flags unreadable (no /proc/cpuinfo)"
    found = sorted(flags & {"amx_bf16", "avx512_bf16"})
    return bool(found), f"CPU with {', '.join(found)}" if found else "CPU without AMX or AVX512-BF16"


def resolve_mixed_precision(choice: str) -> tuple[str, str]:
    """`--mixed-precision auto` -> bf16 on hardware with native bf16, else fp32 ("no"); returns (choice, why)."""
    if choice != "auto":
        return choice, "set on the command line"
    ok, what = native_bf16()
    return ("bf16" if ok else "no"), f"auto: {what}"


# ------------------------------------------------------------------------------------------------------------
#                                                Arguments
# ------------------------------------------------------------------------------------------------------------
def base_parser(description: str, *, steps: int, batch_size: int, lr: float) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--preset", default="cifar10", help="model preset (cifar10 | imagenet256)")
    ap.add_argument("--data", required=True,
                    help="an ImageFolder root (root/<class>/<images>) or cifar10:ROOT for torchvision's CIFAR-10")
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--resume", default="latest",
                    help="'latest' (newest checkpoint in --output-dir, if any), 'none', or a checkpoint folder")
    ap.add_argument("--steps", type=int, default=steps, help="optimizer steps in total")
    ap.add_argument("--batch-size", type=int, default=batch_size, help="global batch (split over processes)")
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 5%% of --steps)")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--mixed-precision", default="auto", choices=["auto", "bf16", "fp16", "no"],
                    help="autocast dtype; auto: bf16 where the hardware runs it natively (CUDA with bf16, CPUs with "
                         "AMX or AVX512-BF16), fp32 elsewhere (bf16 is ~7x slower than fp32 on AVX2-only CPUs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-images", type=int, default=None, help="train on a fixed random subset (tiny runs)")
    ap.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--sample-every", type=int, default=500, help="save an image grid every N steps (0: never)")
    ap.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N steps")
    ap.add_argument("--keep-ckpts", type=int, default=2, help="checkpoints kept on disk")
    ap.add_argument("--export-at", type=int, nargs="*", default=[], metavar="STEP",
                    help="also export the EMA model as <output-dir>/exports/step-N at these steps (learning curves)")
    ap.add_argument("--log-with", default="csv", choices=["csv", "tensorboard", "wandb", "none"])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override config fields, e.g. --set latent_channels=8 kl_weight=1e-5")
    return ap


def validate_args(args) -> None:
    """Refuse nonsense before anything starts: a message and exit status 2, no traceback."""
    problems = []
    for name, minimum in (("steps", 1), ("batch_size", 1), ("keep_ckpts", 1), ("log_every", 1),
                          ("ckpt_every", 0), ("sample_every", 0), ("num_workers", 0)):
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            problems.append(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")
    if getattr(args, "lr", 1.0) <= 0:
        problems.append(f"--lr must be positive, got {args.lr}")
    if getattr(args, "warmup", None) is not None and args.warmup < 0:
        problems.append(f"--warmup must be at least 0, got {args.warmup}")
    if getattr(args, "max_images", None) is not None and args.max_images < 1:
        problems.append(f"--max-images must be at least 1, got {args.max_images}")
    if not 0 <= getattr(args, "ema_decay", 0.5) < 1:
        problems.append(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))


def load_pretrained(cls, path: str, flag: str):
    """`cls.from_pretrained(path)` for a command-line flag, its failure one readable line (no traceback)."""
    from hieratok.hub import CheckpointError
    try:
        return cls.from_pretrained(path)
    except (CheckpointError, OSError, ValueError) as e:
        raise SystemExit(f"error: {flag} {path}: {e}") from None


def parse_overrides(pairs: list[str]) -> dict:
    """`KEY=VALUE` strings -> a dict, values parsed as JSON where possible (numbers, lists, true/false)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# ------------------------------------------------------------------------------------------------------------
#                                                 Helpers
# ------------------------------------------------------------------------------------------------------------
def warmup_cosine(optimizer, warmup: int, total: int, final_ratio: float = 0.1) -> LambdaLR:
    """Linear warm-up to the base LR, then cosine decay to `final_ratio` of it."""
    def factor(step):
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return LambdaLR(optimizer, factor)


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
    return torch.optim.AdamW(groups, lr=args.lr, betas=betas)


class CSVTracker(GeneralTracker):
    """accelerate tracker writing one row per log call to `<dir>/metrics.csv` (appends across resumes)."""

    name = "csv"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: str):
        super().__init__()
        self.path = Path(logging_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns: list[str] | None = None
        if self.path.exists():
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), None)
            self.columns = header or None

    @property
    def tracker(self):
        return self.path

    def store_init_configuration(self, values: dict):
        write_json(self.path.parent / "hparams.json", values)

    def log(self, values: dict, step: int | None = None, **kwargs):
        row = {"step": step, **values}
        new_columns = [c for c in row if c not in (self.columns or [])]
        if new_columns:  # a key appeared (e.g. the GAN terms after warm-up): rewrite with the wider header
            rows = []
            if self.columns is not None:
                with open(self.path, newline="") as f:
                    rows = list(csv.DictReader(f))
            self.columns = (self.columns or []) + new_columns
            self._rewrite(rows)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in self.columns])


    def truncate_after(self, step: int):
        """Drop rows logged after `step` (a resumed run logs those steps again)."""
        if self.columns is None or not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["step"] and int(float(r["step"])) <= step]
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict]):
        """Replace the file atomically (a crash keeps the old file or the new one)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)


def _local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor: the shard of an FSDP2 DTensor, the tensor itself otherwise."""
    return t.to_local() if isinstance(t, DTensor) else t


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a sharded DTensor: every process must call it)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def _model_class(model: nn.Module) -> type:
    """The class a model was built from (FSDP2 swaps in a subclass `FSDP<Name>`)."""
    from torch.distributed.fsdp import FSDPModule
    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


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
        params = [_local(p.detach()) for p in model.parameters()]
        shadow = [_local(t) for t in self.shadow]
        if self.n_averaged == 0:
            torch._foreach_copy_(shadow, params)
        else:
            n = float(self.n_averaged)
            torch._foreach_lerp_(shadow, params, 1.0 - min(self.decay, (1.0 + n) / (10.0 + n)))
        self.n_averaged += 1

    # ---- checkpoints (train/checkpoint.py) --------------------------------------------------------------------------
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
            full = _full(t.detach())
            if keep:
                out[name] = full.cpu()
        return out


def _fp32_batchnorm_units(model: nn.Module, optimizers):
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


class TrainState:
    """The scalars a checkpoint must restore besides modules: step and counters."""

    def __init__(self):
        self.step, self.images_seen, self.skipped, self.wall_s = 0, 0, 0, 0.0

    def state_dict(self):
        return {"step": self.step, "images_seen": self.images_seen, "skipped": self.skipped, "wall_s": self.wall_s}

    def load_state_dict(self, d):
        self.step, self.images_seen, self.skipped = int(d["step"]), int(d["images_seen"]), int(d["skipped"])
        self.wall_s = float(d.get("wall_s", 0.0))


# ------------------------------------------------------------------------------------------------------------
#                                                   Run
# ------------------------------------------------------------------------------------------------------------
class Run:
    def __init__(self, args, name: str):
        validate_args(args)
        self.args, self.name = args, name
        self.out = Path(args.output_dir)
        self._csv = CSVTracker(name, str(self.out)) if args.log_with == "csv" else None
        trackers = [self._csv] if self._csv else (None if args.log_with == "none" else args.log_with)
        # several processes but no GPU (torchrun / `accelerate launch --multi_gpu` on CPUs): DDP over gloo
        multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        use_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"  # set by `accelerate launch`
        if use_fsdp and os.environ.get("FSDP_VERSION", "1") != "2":
            raise SystemExit("error: set fsdp_version: 2 in the accelerate config (FSDP1 is not supported: the "
                             "EMA and checkpoints here are built on FSDP2's DTensor parameters)")
        precision, precision_note = resolve_mixed_precision(args.mixed_precision)
        self.accelerator = Accelerator(mixed_precision=precision,  # the flag wins over an accelerate config
                                       log_with=trackers, project_dir=str(self.out), cpu=multi_cpu)
        if multi_cpu and use_fsdp:
            enable_fsdp_on_cpu(self.accelerator)
        self._wrap_names = (self.accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap if self.fsdp else None)
        self.state = TrainState()
        self.ema: EMA | None = None
        self._models: list[nn.Module] = []
        self._ckpt_models: list[nn.Module] = []
        self._ckpt_optimizers: list = []
        self._schedulers: list = []
        self.run_config: dict = {"script": name, "args": vars(args),
                                 "num_processes": self.accelerator.num_processes,
                                 "distributed": str(self.accelerator.distributed_type),
                                 "device": str(self.accelerator.device),
                                 "mixed_precision": {"used": precision, "why": precision_note}}
        set_seed(args.seed)
        self._last_log_time, self._last_log_images = time.time(), 0
        self._bar = None

    # ---- set-up -----------------------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self):
        return self.accelerator.device

    def print(self, *msg):
        self.accelerator.print(*msg)

    def dataset(self, image_size: int, split: str = "train"):
        try:
            return build_dataset(self.args.data, image_size, split=split, max_images=self.args.max_images,
                                 seed=self.args.seed)
        except DataError as e:
            raise SystemExit(f"error: {e}") from None

    def lpips(self, cfg, weights_path: str | None):
        """(LPIPS module on this device or None, a note saying which and why); warns once when it is off."""
        module, note = load_lpips(weights_path) if cfg.lpips_weight > 0 else (None, "LPIPS weight 0")
        if module is None:
            self.print(f"warning: {note}; training without the LPIPS term (recorded in run_config.json)")
            return None, note
        return module.to(self.device), note

    @property
    def _part(self) -> str:
        """The file suffix of this process's shards in a sharded checkpoint ("" when tensors are whole)."""
        acc = self.accelerator
        return f"-rank{acc.process_index}-of{acc.num_processes}" if self.fsdp else ""

    @property
    def fsdp(self) -> bool:
        return self.accelerator.distributed_type == DistributedType.FSDP

    def prepare(self, *objs):
        """accelerate's prepare. Under FSDP2, which takes one model per call, each model is prepared with its
        optimizer (`prepare(g, d, g_opt, d_opt)` works as with DDP), and BatchNorm layers become FSDP units of their
        own kept in fp32 (bf16 weights beside fp32 running statistics fail in batch_norm)."""
        if not self.fsdp:
            prepared = self.accelerator.prepare(*objs)
            self._remember(prepared if isinstance(prepared, (tuple, list)) else (prepared,))
            return prepared
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
        plugin = self.accelerator.state.fsdp_plugin
        policy = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)
        for indices in groups.values():
            if policy is transformer_auto_wrap_policy:
                # accelerate fixes the block classes from the first model it sees; each model names its own
                # (`_no_split_modules`), or the config's names that this model has
                model = objs[indices[0]]
                present = {type(m).__name__ for m in model.modules()}
                plugin.auto_wrap_policy = transformer_auto_wrap_policy
                plugin.transformer_cls_names_to_wrap = (
                    None if self._wrap_names is None else [n for n in self._wrap_names if n in present])
            if self.accelerator.mixed_precision != "no":
                _fp32_batchnorm_units(objs[indices[0]], [objs[k] for k in indices[1:]])
            prepared = self.accelerator.prepare(*(objs[k] for k in indices))
            for k, obj in zip(indices, prepared if isinstance(prepared, (tuple, list)) else (prepared,)):
                out[k] = obj
        self._remember(out)
        return tuple(out) if len(out) > 1 else out[0]

    def _remember(self, prepared):
        """The prepared models and optimizers, in the order checkpoints store them."""
        for obj in prepared:
            if isinstance(obj, nn.Module):
                self._ckpt_models.append(obj)
            elif isinstance(obj, (torch.optim.Optimizer, AcceleratedOptimizer)):
                self._ckpt_optimizers.append(obj)

    def unwrap(self, model):
        return self.accelerator.unwrap_model(model)

    def track(self, model, *stateful, ema: bool = True):
        """Create the EMA of `model` and register what a checkpoint must hold besides the prepared models and
        optimizers (accelerate saves those itself, sharded under FSDP): schedulers, the EMA, the step counters."""
        if any(isinstance(obj, (torch.optim.Optimizer, AcceleratedOptimizer)) for obj in stateful):
            raise TypeError("pass schedulers, not optimizers: prepared optimizers are checkpointed by accelerate "
                            "(registering one again would restore rank 0's shard on every process under FSDP)")
        self._models.append(model)
        if ema:
            # parameters only: buffers here are constants (masks, position tables, latent statistics)
            self.ema = EMA(self.unwrap(model), self.args.ema_decay, sharded=self.fsdp)
        self._schedulers.extend(stateful)  # their state dicts go to the checkpoint's state.json

    def whole(self, model: nn.Module, averaged: bool = False) -> nn.Module | None:
        """`model` (or its EMA) as one whole, ordinary module. Under FSDP this gathers the shards: every process
        must call it, and the main process alone gets the module (the others None); otherwise it is the model
        itself (or the EMA's copy) on every process."""
        if averaged and self.ema is None:
            raise RuntimeError("this run keeps no EMA")
        if not self.fsdp:
            return self.ema.module if averaged else self.unwrap(model)
        unwrapped = self.unwrap(model)
        if averaged:  # gather the EMA only; buffers are not sharded, so the model's own serve
            state = self.ema.full_parameters(keep=self.is_main)
            if self.is_main:
                state.update((k, v) for k, v in unwrapped.state_dict().items() if k not in self.ema.names)
        else:
            state = self.accelerator.get_state_dict(model)  # whole on the main process
        if not self.is_main:
            return None
        whole = _model_class(unwrapped)(unwrapped.config)
        whole.load_state_dict(state, strict=True)
        return whole.to(self.device).train(unwrapped.training)

    def averaged(self) -> nn.Module | None:
        """The EMA model, whole (see `whole`: under FSDP a collective whose result only the main process gets)."""
        return self.whole(self._models[0], averaged=True)

    def start(self, config: dict):
        """Write the run's config and start the trackers."""
        self.run_config.update(config)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            path = self.out / "run_config.json"
            record = {**json.loads(json.dumps(self.run_config, default=str)), "started_at_step": self.state.step,
                      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            if path.exists() and self.state.step > 0:  # a resume: the first config stays, one record per resume
                history = json.loads(path.read_text())
                history.setdefault("resumes", []).append(record)
            else:
                history = record
            write_json(path, history)
        self.accelerator.init_trackers(self.name, config=_flat(self.run_config))

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def _ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def checkpoints(self) -> list[Path]:
        d = self._ckpt_dir()
        return sorted(p for p in d.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")) if d.exists() else []

    def resume(self) -> int:
        """Load the requested checkpoint; returns the step to start from."""
        what = self.args.resume
        if what == "none":
            return 0
        path = Path(what) if what != "latest" else (self.checkpoints()[-1] if self.checkpoints() else None)
        if path is None:
            return 0
        if not path.is_dir():
            raise SystemExit(f"error: --resume {what}: no such checkpoint folder")
        try:
            record = read_state(path, self._part)
            load_state(path, record, [self.unwrap(m) for m in self._ckpt_models], self._ckpt_optimizers, self.ema)
        except (ValueError, KeyError, OSError) as e:
            raise SystemExit(f"error: cannot resume from {path}: {e}") from None
        self.state.load_state_dict(record["train_state"])
        for sched, sd in zip(self._schedulers, record["schedulers"]):
            sched.load_state_dict(sd)
        if self._csv is not None and self.is_main:
            self._csv.truncate_after(self.state.step)
        self.print(f"resumed from {path} at step {self.state.step}")
        return self.state.step

    def save_checkpoint(self):
        final = self._ckpt_dir() / f"step-{self.state.step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        if self.is_main and tmp.exists():
            shutil.rmtree(tmp)
        self.accelerator.wait_for_everyone()
        record = {"format": "hieratok-checkpoint-1", "train_state": self.state.state_dict(),
                  "schedulers": [sched.state_dict() for sched in self._schedulers]}
        models = [self.unwrap(m) for m in self._ckpt_models]
        if self.fsdp:  # every process writes its own shards
            if self.is_main:
                tmp.mkdir(parents=True, exist_ok=True)
            self.accelerator.wait_for_everyone()
            layouts = gather_object([save_state(tmp, models, self._ckpt_optimizers, self.ema, self._part)])
            record["parts"] = {layout["part"]: layout for layout in layouts}
        elif self.is_main:  # whole tensors, equal on every process
            tmp.mkdir(parents=True, exist_ok=True)
            record.update(save_state(tmp, models, self._ckpt_optimizers, self.ema))
        self.accelerator.wait_for_everyone()
        if self.is_main:  # atomic: a checkpoint folder exists only once complete
            write_json(tmp / STATE_FILE, record)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.checkpoints()[: -self.args.keep_ckpts]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def maybe_export(self, step: int):
        """Export the EMA (or model) as `exports/step-N`, a from_pretrained directory, at the `--export-at` steps
        (every process takes part: under FSDP the shards are gathered)."""
        if step + 1 not in self.args.export_at:
            return
        model = self.whole(self._models[0], averaged=self.ema is not None)
        if self.is_main:
            path = self.out / "exports" / f"step-{step + 1:08d}"
            tmp = path.with_name(path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        self.accelerator.wait_for_everyone()

    def maybe_checkpoint(self, step: int):
        if self.args.ckpt_every and (step + 1) % self.args.ckpt_every == 0 and step + 1 < self.args.steps:
            self.save_checkpoint()

    # ---- the loop -------------------------------------------------------------------------------------------
    def batches(self, dataset, start_step: int, flip: bool = True):
        """Yield (step, images, labels, generator) for steps start_step .. steps-1 on this process's device."""
        acc = self.accelerator
        stream = StreamBatches(len(dataset), self.args.batch_size, start_step, self.args.steps, self.args.seed,
                               acc.process_index, acc.num_processes, flip)
        loader = make_loader(dataset, stream, self.args.num_workers)
        self._dataset = dataset
        self._bar = tqdm(total=self.args.steps, initial=start_step, disable=not self.is_main, dynamic_ncols=True,
                         desc=self.name)
        self._last_log_time, self._last_log_images = time.time(), self.state.images_seen
        self._step_end = time.time()
        for step, (x, y, skipped) in zip(range(start_step, self.args.steps), loader):
            # one collective: the skipped count and whether any process lost its whole share, so that every
            # process takes the same decision (one leaving alone would leave the others blocked in a collective)
            counts = acc.reduce(torch.tensor([skipped, int(x is None)], device=self.device), "sum")
            skipped_all, empty_shares = int(counts[0]), int(counts[1])
            if skipped_all:
                self.state.skipped += skipped_all
                self.print(f"step {step}: skipped {skipped_all} unreadable image(s) ({self.state.skipped} so far)")
            if empty_shares:
                raise SystemExit(f"error: every image of a batch share at step {step} was unreadable "
                                 f"({empty_shares} process(es)); check the dataset")
            # the same on every process: draws are sliced per rank (hieratok.rng), so N processes use the noise
            # one process would use at the same global batch
            gen = torch.Generator(device=self.device).manual_seed(self.args.seed * 1_000_003 + step)
            # counters first: a checkpoint written in the loop body records the step as done
            self.state.step = step + 1
            self.state.images_seen += self.args.batch_size - skipped_all
            yield step, x.to(self.device, non_blocking=True), y.to(self.device), gen
            now = time.time()
            self.state.wall_s += now - self._step_end
            self._step_end = now
            self._bar.update(1)
        self._bar.close()

    def check_finite(self, loss: torch.Tensor, step: int):
        """Stop every process when the loss of any of them is not finite (decided together: a process stopping
        alone would leave the others waiting in the next collective)."""
        bad = float(not torch.isfinite(loss.detach()).all())
        fault = os.environ.get("HIERATOK_FAULT_NAN")  # fault injection for tests: "RANK:STEP"
        if fault and fault == f"{self.accelerator.process_index}:{step}":
            bad = 1.0
        if self.accelerator.num_processes > 1:
            bad = float(self.accelerator.reduce(torch.tensor(bad, device=self.device), "sum"))
        if bad:
            last = self.checkpoints()
            raise NonFiniteLoss(f"loss became non-finite at step {step} on {int(bad)} process(es) (this one: "
                                f"{loss.item()}); stopping without saving. Last good checkpoint: "
                                f"{last[-1] if last else 'none'} (resume from it with a lower --lr or --grad-clip)")

    def step(self, loss: torch.Tensor, optimizer, scheduler, model, step: int, update_ema: bool = True):
        """NaN guard, backward, gradient clipping, optimizer and scheduler step, EMA update. Returns grad norm."""
        self.check_finite(loss, step)
        optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        grad_norm = self.accelerator.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], self.args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if update_ema and self.ema is not None:
            self.ema.update(self.unwrap(model))
        return float(_full(grad_norm))

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, number of processes), for the sharded random draws of `hieratok.rng`."""
        return self.accelerator.process_index, self.accelerator.num_processes

    def autocast(self):
        return self.accelerator.autocast()

    def log(self, step: int, logs: dict, scheduler=None):
        if (step + 1) % self.args.log_every and step + 1 != self.args.steps:
            return
        if self.accelerator.num_processes > 1:  # log the mean over processes, not rank 0's share
            keys = sorted(logs)
            vals = self.accelerator.reduce(torch.tensor([float(logs[k]) for k in keys], device=self.device), "mean")
            logs = dict(zip(keys, vals.tolist()))
        now = time.time()
        ips = (self.state.images_seen - self._last_log_images) / max(1e-9, now - self._last_log_time)
        self._last_log_time, self._last_log_images = now, self.state.images_seen
        logs = {**logs, "images_per_s": ips, "images_seen": self.state.images_seen}
        if scheduler is not None:
            logs["lr"] = scheduler.get_last_lr()[0]
        self.accelerator.log(logs, step=step + 1)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}", img_s=f"{ips:.1f}")

    def sample_due(self, step: int) -> bool:
        """Whether to save a sample grid after `step` (the same answer on every process: under FSDP all of them
        take part in gathering the EMA model, then the main process draws)."""
        every = self.args.sample_every
        return bool(every) and ((step + 1) % every == 0 or step + 1 == self.args.steps)

    def finish(self, model):
        """Export the EMA (or, without one, the model) as a from_pretrained directory `<output-dir>/final` and
        write summary.json, including a SHA-256 of every process's weights (under DDP all equal when the processes
        stayed in sync; under FSDP each process hashes its own shards)."""
        digest = hashlib.sha256()
        for p in self.unwrap(model).parameters():
            digest.update(_local(p.detach()).cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        rank_hashes = gather_object([digest.hexdigest()])
        result = self.whole(model, averaged=self.ema is not None)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            path = self.out / "final"
            tmp = self.out / "final.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            result.save_pretrained(tmp)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
            bad = getattr(getattr(self, "_dataset", None), "unreadable", {})
            summary = {**self.state.state_dict(), "wall_s": round(self.state.wall_s, 1),
                       "unreadable_files": {self._dataset.samples[i][0]: why for i, why in sorted(bad.items())},
                       "num_processes": self.accelerator.num_processes,
                       "distributed": str(self.accelerator.distributed_type), "rank_weight_sha256": rank_hashes}
            write_json(self.out / "summary.json", summary)
            self.print(f"done: {summary}; exported {path}")
        # every process leaves together: a process tearing down its process group while another still exports
        # made gloo abort at exit ("terminate called without an active exception")
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()


def _flat(d: dict, prefix: str = "") -> dict:
    """Flatten nested config dicts for trackers that want scalars."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
        else:
            out[key] = str(v)
    return out
