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
optimizer, scheduler and step (`hieratok.training.checkpoint`), written to a temporary folder and renamed.

Under FSDP2 (`accelerate launch --config_file train/configs/fsdp.yaml`) parameters, gradients, optimizer state and
the EMA are sharded over the processes; checkpoints hold each process's shards (safetensors) and the exported model
is gathered whole. accelerate applies FSDP only on accelerators; on CPUs it would quietly run DDP instead, so Run
switches FSDP2 on over gloo there itself (`enable_fsdp_on_cpu`): the FSDP path is the same code on CPUs and GPUs,
and the tests exercise it without a GPU.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import DistributedType, gather_object, set_seed
from torch import nn
from tqdm.auto import tqdm

from ..layers import set_attention_impl
from ..perf import (compile_blocks, compile_plan, machine_cpus, native_bf16, oversubscription_warning,
                    running_elsewhere, training_threads, transformer_blocks, tune_allocator)
from .checkpoint import (EXPORT_STATE_FILE, STATE_FILE, TrainState, load_state, publish_dir, read_state,
                         record_run_config, save_state, staging_dir, write_dir, write_json)
from .cli import validate_args
from .data import StreamBatches, make_loader
from .distributed import (enable_fsdp_on_cpu, full, gather_whole, hardware_name, local, prepare_fsdp,
                          resolve_mixed_precision)
from .ema import EMA
from .tracking import CSVTracker, flat

logger = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    pass


_continued = [0]  # SIGCONTs this process has received since LoopClock.install (one handler per process)


class LoopClock:
    """The training loop's time (summary.json's wall_s), without the time the process was stopped: a run paused
    with SIGSTOP or Ctrl-Z (e.g. to free the cores for an evaluation) and continued counts the step it was stopped
    in as long as the step before it. `install` registers, once per process and from the main thread only, the
    SIGCONT handler that notices (a handler already there is still called)."""

    _installed = False

    def __init__(self):
        self._seen, self._last, self._end = _continued[0], None, time.time()

    def install(self) -> "LoopClock":
        cls = type(self)
        if not cls._installed and hasattr(signal, "SIGCONT") and threading.current_thread() is threading.main_thread():
            before = signal.getsignal(signal.SIGCONT)

            def on_continue(signum, frame):
                _continued[0] += 1
                if callable(before):
                    before(signum, frame)
            signal.signal(signal.SIGCONT, on_continue)
            cls._installed = True
        return self

    def restart(self, now: float | None = None):
        self._end, self._seen = time.time() if now is None else now, _continued[0]

    def tick(self, now: float) -> float:
        """The seconds one step took, ending at `now`."""
        took = now - self._end
        if _continued[0] != self._seen:
            self._seen, took = _continued[0], self._last if self._last is not None else 0.0
        self._end, self._last = now, took
        return took


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
                                 "hardware": hardware_name(),
                                 "mixed_precision": {"used": precision, "why": precision_note}}
        self._speed_setup(precision)
        self._warn_emulated_bf16(precision)
        set_seed(args.seed)
        self._last_log_time, self._last_log_images = time.time(), 0
        self._bar = None
        self.stopped_at: int | None = None  # the step a --time-limit stopped this invocation after
        self._clock = LoopClock().install()

    # ---- set-up -----------------------------------------------------------------------------------------------
    def _speed_setup(self, precision: str):
        """On a CPU: the torch threads (`hieratok.perf.training_threads`; a warning where other threads already
        run on the cores), the allocator; the attention path and whether blocks are compiled
        (`hieratok.perf.compile_plan`). Recorded in run_config.json["speed"]."""
        on_cpu = self.accelerator.device.type == "cpu"
        threads_why = "unchanged (not a CPU)"
        if on_cpu:
            local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            threads, threads_why = training_threads(local_processes)
            if threads is not None:
                torch.set_num_threads(threads)
            if local_processes == 1:  # several processes start together: each would count the others
                warning = oversubscription_warning(torch.get_num_threads(), machine_cpus(), running_elsewhere())
                if warning:
                    self.warning(warning)
        self._compile, why = compile_plan(getattr(self.args, "compile", "off"), on_cpu=on_cpu, precision=precision,
                                          steps=self.args.steps, fsdp=self.fsdp, warn=self.warning)
        self.run_config["speed"] = {"allocator": tune_allocator() if on_cpu else "unchanged (not a CPU)",
                                    "attention": getattr(self.args, "attention", "auto"), "compile": self._compile,
                                    "compile_why": why, "threads": torch.get_num_threads(),
                                    "threads_why": threads_why}

    def _warn_emulated_bf16(self, precision: str):
        """bf16 asked for where it is not native: on an AVX2-only CPU a bf16 GEMM is emulated, 7x slower than fp32
        on one AMD EPYC and ~500x on another (docs/training.md, "Precision"); say so before the first step."""
        if precision != "bf16":
            return
        native, what = native_bf16(self.accelerator.device)
        if not native:
            self.warning(f"warning: --mixed-precision bf16, but bf16 is not native here ({what}): its matmuls are "
                         f"emulated and can run 7-500x slower than fp32; --mixed-precision auto would train in fp32")

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self):
        return self.accelerator.device

    def info(self, msg: str):
        """Log a message once (on the main process)."""
        if self.is_main:
            logger.info(msg)

    def warning(self, msg: str):
        if self.is_main:
            logger.warning(msg)

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
        out = prepare_fsdp(self.accelerator, objs, self._wrap_names)
        self._remember(out)
        return tuple(out) if len(out) > 1 else out[0]

    def _remember(self, prepared):
        """The prepared models and optimizers, in the order checkpoints store them; each model gets the run's
        attention path."""
        for obj in prepared:
            if isinstance(obj, nn.Module):
                self._ckpt_models.append(obj)
                set_attention_impl(self.unwrap(obj), getattr(self.args, "attention", "auto"))
            elif isinstance(obj, (torch.optim.Optimizer, AcceleratedOptimizer)):
                self._ckpt_optimizers.append(obj)

    def unwrap(self, model):
        return self.accelerator.unwrap_model(model)

    def track(self, model, *stateful, ema: bool = True):
        """Create the EMA of `model` and register what a checkpoint must hold besides the prepared models and
        optimizers (which checkpoints hold already, sharded under FSDP): schedulers, the EMA, the step counters."""
        if any(isinstance(obj, (torch.optim.Optimizer, AcceleratedOptimizer)) for obj in stateful):
            raise TypeError("pass schedulers, not optimizers: prepared optimizers are checkpointed already "
                            "(registering one again would restore rank 0's shard on every process under FSDP)")
        self._models.append(model)
        if ema:
            # parameters only: buffers here are constants (masks, position tables, latent statistics)
            self.ema = EMA(self.unwrap(model), self.args.ema_decay, sharded=self.fsdp)
        if self._compile and transformer_blocks(self.unwrap(model)):  # after the EMA's copy: it stays eager
            self.info(f"compiling {compile_blocks(self.unwrap(model))} transformer blocks (the first step takes "
                      f"longer)")
        self._schedulers.extend(stateful)  # their state dicts go to the checkpoint's state.json

    def whole(self, model: nn.Module, averaged: bool = False) -> nn.Module | None:
        """`model` (or its EMA) as one whole, ordinary module. Under FSDP this gathers the shards: every process
        must call it, and the main process alone gets the module (the others None); otherwise it is the model
        itself (or the EMA's copy) on every process."""
        if averaged and self.ema is None:
            raise RuntimeError("this run keeps no EMA")
        if not self.fsdp:
            return self.ema.module if averaged else self.unwrap(model)
        return gather_whole(self.accelerator, model, self.ema if averaged else None)

    def averaged(self) -> nn.Module | None:
        """The EMA model, whole (see `whole`: under FSDP a collective whose result only the main process gets)."""
        return self.whole(self._models[0], averaged=True)

    def start(self, config: dict):
        """Write the run's config and start the trackers."""
        self.run_config.update(config)
        if self.is_main:
            record_run_config(self.out / "run_config.json", self.run_config, self.state.step)
        self.accelerator.init_trackers(self.name, config=flat(self.run_config))

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
        self.info(f"resumed from {path} at step {self.state.step}")
        return self.state.step

    def save_checkpoint(self):
        final = self._ckpt_dir() / f"step-{self.state.step:08d}"
        tmp = staging_dir(final) if self.is_main else final.with_name(final.name + ".tmp")
        self.accelerator.wait_for_everyone()
        record = {"format": "hieratok-checkpoint-1", "train_state": self.state.state_dict(),
                  "schedulers": [sched.state_dict() for sched in self._schedulers]}
        models = [self.unwrap(m) for m in self._ckpt_models]
        if self.fsdp:  # every process writes its own shards
            layouts = gather_object([save_state(tmp, models, self._ckpt_optimizers, self.ema, self._part)])
            record["parts"] = {layout["part"]: layout for layout in layouts}
        elif self.is_main:  # whole tensors, equal on every process
            record.update(save_state(tmp, models, self._ckpt_optimizers, self.ema))
        self.accelerator.wait_for_everyone()
        if self.is_main:  # atomic: a checkpoint folder exists only once complete
            write_json(tmp / STATE_FILE, record)
            publish_dir(tmp, final)
            for old in self.checkpoints()[: -self.args.keep_ckpts]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def maybe_export(self, step: int) -> Path | None:
        """Export the EMA (or model) as `exports/step-N`, a from_pretrained directory, at the `--export-at` steps
        (every process takes part: under FSDP the shards are gathered), with the run's counters at that step in
        `train_state.json` (step, images seen, wall time so far: what a model card says about a shipped export).
        Returns the folder where it exported, else None."""
        if step + 1 not in self.args.export_at:
            return None
        model = self.whole(self._models[0], averaged=self.ema is not None)
        folder = self.out / "exports" / f"step-{step + 1:08d}"
        if self.is_main:
            def write(tmp: Path):
                model.save_pretrained(tmp)
                counters = {**self.state.state_dict(), "wall_s": round(self.state.wall_s, 1)}
                write_json(tmp / EXPORT_STATE_FILE, {**counters, "planned_steps": self.args.steps})
            write_dir(folder, write)
        self.accelerator.wait_for_everyone()
        return folder

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
        self._clock.restart()
        started = time.time()
        for step, (x, y, skipped) in zip(range(start_step, self.args.steps), loader):
            # one collective: the skipped count and whether any process lost its whole share, so that every
            # process takes the same decision (one leaving alone would leave the others blocked in a collective)
            counts = acc.reduce(torch.tensor([skipped, int(x is None)], device=self.device), "sum")
            skipped_all, empty_shares = int(counts[0]), int(counts[1])
            if skipped_all:
                self.state.skipped += skipped_all
                self.info(f"step {step}: skipped {skipped_all} unreadable image(s) ({self.state.skipped} so far)")
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
            self.state.wall_s += self._clock.tick(now)
            self._bar.update(1)
            if self.time_is_up(now - started) and step + 1 < self.args.steps:
                self.stopped_at = step + 1
                self.info(f"--time-limit {self.args.time_limit:g} s reached after step {step + 1} of "
                          f"{self.args.steps}; checkpointing and exporting (resume continues the schedule)")
                self.save_checkpoint()
                break
        self._bar.close()

    def time_is_up(self, elapsed: float) -> bool:
        """Whether `--time-limit` is spent, decided by the main process for all (each one's clock differs)."""
        limit = getattr(self.args, "time_limit", None)
        if not limit:
            return False
        up = torch.tensor(float(elapsed >= limit), device=self.device)
        if self.accelerator.num_processes > 1:
            up = self.accelerator.reduce(up, "max")
        return bool(up)

    def check_finite(self, loss: torch.Tensor, step: int):
        """Stop every process when the loss of any of them is not finite (decided together: a process stopping
        alone would leave the others waiting in the next collective)."""
        bad = float(not torch.isfinite(loss.detach()).all())
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
        return float(full(grad_norm))

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, number of processes), for the sharded random draws of `hieratok.rng`."""
        return self.accelerator.process_index, self.accelerator.num_processes

    def autocast(self):
        return self.accelerator.autocast()

    def log_due(self, step: int) -> bool:
        """Whether `log` writes a row after `step` (every --log-every steps and the last)."""
        return not (step + 1) % self.args.log_every or step + 1 == self.args.steps

    def log(self, step: int, logs: dict, scheduler=None):
        if not self.log_due(step):
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
            digest.update(local(p.detach()).cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        rank_hashes = gather_object([digest.hexdigest()])
        result = self.whole(model, averaged=self.ema is not None)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            path = self.out / "final"
            write_dir(path, result.save_pretrained)
            bad = getattr(getattr(self, "_dataset", None), "unreadable", {})
            summary = {**self.state.state_dict(), "wall_s": round(self.state.wall_s, 1),
                       "unreadable_files": {self._dataset.samples[i][0]: why for i, why in sorted(bad.items())},
                       "stopped_by_time_limit_at": self.stopped_at,
                       "num_processes": self.accelerator.num_processes,
                       "distributed": str(self.accelerator.distributed_type), "rank_weight_sha256": rank_hashes}
            write_json(self.out / "summary.json", summary)
            self.info(f"done: {summary}; exported {path}")
        # every process leaves together: a process tearing down its process group while another still exports
        # made gloo abort at exit ("terminate called without an active exception")
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
