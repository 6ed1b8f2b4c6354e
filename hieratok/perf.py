"""Training and inference speed on CPUs: the allocator, compiled transformer blocks, the attention path.

Why each exists (profiles and numbers: docs/training.md, "Training speed on a CPU", from `train/benchmark.py`): on a
CPU with native bf16 a training step spends most of its time in SDPA's flash-attention backward and in element-wise
work between GEMMs, and glibc mmaps every tensor above 32 MiB afresh, page-faulting it on each step. The remedies
here change no arithmetic a model is defined by (the explicit attention path computes the same softmax in fp32;
compiled blocks fuse element-wise ops; the allocator only keeps memory).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import threading
import time

import torch
from torch import nn

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc mallopt parameters
_allocator_note: str | None = None


def _glibc():
    """The C library when it is glibc (its malloc tunables exist), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _mallopt(*settings: tuple[int, int]) -> str | None:
    """Apply glibc mallopt settings; None when done, else why not."""
    libc = _glibc()
    if libc is None:
        return "not glibc"
    try:
        ok = all(libc.mallopt(param, value) == 1 for param, value in settings)
    except AttributeError as e:
        return str(e)
    return None if ok else "mallopt refused"


def tune_allocator_for_serving(arenas: int = 2, mmap_bytes: int | None = None, trim_bytes: int | None = None) -> str:
    """Bound a long-running server's memory: at most `arenas` malloc arenas; fixed mmap / trim thresholds only
    where asked for (`mmap_bytes`, `trim_bytes`; None keeps glibc's adaptive ones).

    glibc gives each thread that contends for malloc an arena of its own (up to 8 per core), so the app's worker
    threads each kept their own fragmented heap of freed tensors and its resident memory crept up under load
    (measured with `app/benchmark.py --soak`: docs/app.md); the server's free pages go back to the kernel through
    `release_free_memory_every`. Fixed low thresholds (4 MiB mmap, 8 MiB trim: this function's former defaults) made
    every large activation fresh, page-faulted memory: Generate (16 samples) ~20% slower in-process on an AVX2-only
    EPYC (docs/app.md, "Allocator"). Call before the server starts its threads; process-wide."""
    settings, fixed = [(_M_ARENA_MAX, arenas)], []
    if mmap_bytes is not None:
        settings.append((_M_MMAP_THRESHOLD, mmap_bytes))
        fixed.append(f"blocks over {mmap_bytes >> 20} MiB mmap'ed")
    if trim_bytes is not None:
        settings.append((_M_TRIM_THRESHOLD, trim_bytes))
        fixed.append(f"heap top trimmed above {trim_bytes >> 20} MiB")
    why = _mallopt(*settings)
    if why is not None:
        return f"allocator left as is ({why})"
    return f"glibc malloc: {arenas} arenas, " + (", ".join(fixed) or "glibc's adaptive mmap and trim thresholds")


def release_free_memory() -> bool:
    """Hand the allocator's free pages back to the kernel (glibc `malloc_trim(0)`: the top of every arena and whole
    free pages inside them). Returns whether glibc released anything; False off glibc."""
    libc = _glibc()
    try:
        return bool(libc.malloc_trim(0)) if libc is not None else False
    except AttributeError:
        return False


def release_free_memory_every(seconds: float) -> threading.Thread | None:
    """A daemon thread calling `release_free_memory` every `seconds` (None: not glibc, or `seconds` <= 0).

    A server's RSS otherwise keeps the peak of what its requests once held: freed image and activation buffers stay
    in the allocator's heaps as holes between live blocks that `free` cannot return (`app/benchmark.py --soak`
    measured the growth; docs/app.md). A trim of a few hundred MB of heap takes about a millisecond."""
    if seconds <= 0 or _glibc() is None:
        return None

    def loop():
        while True:
            time.sleep(seconds)
            release_free_memory()

    thread = threading.Thread(target=loop, name="release-free-memory", daemon=True)
    thread.start()
    return thread


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
    why = _mallopt((_M_MMAP_THRESHOLD, threshold_bytes), (_M_TRIM_THRESHOLD, threshold_bytes))
    _allocator_note = (f"glibc malloc keeps blocks up to {threshold_bytes >> 20} MiB in its heap" if why is None
                       else f"allocator left as is ({why})")
    return _allocator_note


def native_bf16(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Whether `device` (default: the GPU if there is one, else the CPU) computes bf16 natively, and what was found:
    a GPU that supports it, or a CPU with AMX or AVX512-BF16. Elsewhere (e.g. an AVX2-only CPU) bf16 is emulated:
    7x slower than fp32 on one AVX2-only AMD EPYC, ~500x on another (torch 2.14.1; docs/training.md, "Precision")."""
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"CUDA {torch.cuda.get_device_name()} ({'with' if ok else 'without'} bf16)"
    if kind != "cpu":
        return False, f"{kind}: bf16 not assumed"
    return _cpu_bf16()


@functools.lru_cache(maxsize=1)
def _cpu_bf16() -> tuple[bool, str]:
    """`native_bf16` for the CPU, read once: /proc/cpuinfo's bf16 flags (asked at every `DiT.sample` with `auto`)."""
    try:
        flags = set()
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        return False, "CPU flags unreadable (no /proc/cpuinfo)"
    found = sorted(flags & {"amx_bf16", "avx512_bf16"})
    if not found:
        return False, "CPU without AMX or AVX512-BF16"
    limit = _isa_limit()
    if limit:  # the hardware has it, but torch was told not to use it
        return False, f"CPU with {', '.join(found)}, unused: {limit}"
    return True, f"CPU with {', '.join(found)}"


# oneDNN's instruction-set names below AVX512_CORE_BF16: under one of them its bf16 GEMM has no native kernel
_ONEDNN_NO_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def _isa_limit() -> str:
    """The environment's limit on oneDNN's instruction sets (ONEDNN_MAX_CPU_ISA), where it rules out its native
    bf16 GEMM; '' if none. Measured on the AVX512-BF16 EPYC (2048^2 GEMM, 2 cores): bf16 391-413 GFLOP/s, held to
    AVX512_CORE 76, held to AVX2 under 1 (fp32 128-177 throughout). ATEN_CPU_CAPABILITY (ATen's element-wise
    kernels) left the bf16 GEMM as fast."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).upper()
    return f"ONEDNN_MAX_CPU_ISA={isa}" if isa in _ONEDNN_NO_BF16 else ""


PRECISIONS = ("fp32", "bf16", "auto")


def inference_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of an inference computation: `fp32` -> None (no autocast), `bf16` -> torch.bfloat16,
    `auto` -> bf16 where `device` computes it natively (`native_bf16`), else None."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device)[0] else None
    return torch.bfloat16 if precision == "bf16" else None


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks (tokenizer encoder/decoder blocks, DiT blocks): the units compiled."""
    from .dit import DiTBlock
    from .layers import Block
    return [m for m in model.modules() if isinstance(m, (Block, DiTBlock))]


def compile_blocks(model: nn.Module, mode: str | None = None, check: bool = True) -> int:
    """Compile every transformer block in place (`nn.Module.compile`: parameter names, state dicts and
    checkpoints stay as they are). Inductor fuses the LayerNorms, GELU, residual adds, autocast's weight casts and
    the explicit attention's softmax into a few C++ loops per block; GEMMs stay oneDNN's. Returns the number of
    blocks compiled. The first step of each shape compiles (~40 s for the photo tokenizer on 2 cores; inductor's
    on-disk cache makes a later run's compilation a few seconds).

    `check`: the first call of each block also runs it eagerly and compares; a compiled block whose output is not
    finite where the eager one is, or differs by more than 5% of its scale, goes back to eager with a warning.
    torch 2.14.1's inductor produced NaN here for blocks of head size 24 in bf16 (a transposed input; the
    explicit attention), where eager is exact -- a compiler bug must cost speed, never a run.

    The default mode, not max-autotune: on the photo tokenizer max-autotune took 3x longer to compile and its
    timing-based GEMM choices gave 0.75-1.0 s steps from one compilation to the next (default: 1.04 s), so a
    run's kernels would depend on the load during its compilation."""
    blocks = transformer_blocks(model)
    for blk in blocks:
        blk.forward = _CompiledForward(blk, mode, check)  # an instance attribute: hooks and state dict unchanged
    return len(blocks)


class _CompiledForward:
    """A block's forward, compiled; on its first call (with `check`) compared with the eager forward."""

    def __init__(self, block: nn.Module, mode: str | None, check: bool):
        self.eager = block.forward  # the bound method of the block's class
        self.compiled = torch.compile(self.eager, dynamic=False, mode=mode)
        self.name, self.check = type(block).__name__, check

    def __call__(self, *args, **kwargs):
        if not self.check:
            return self.compiled(*args, **kwargs)
        self.check = False
        out = self.compiled(*args, **kwargs)
        with torch.no_grad():
            ref = _first(self.eager(*args, **kwargs)).float()
        got = _first(out).detach().float()
        bad = bool(torch.isfinite(ref).all()) and not bool(torch.isfinite(got).all())
        err = float("inf") if bad else (got - ref).abs().max().item() / (ref.abs().max().item() + 1e-6)
        if bad or err > 0.05:
            logger.warning("warning: the compiled %s computed %s (relative error %.3g against eager); running "
                           "this block eagerly", self.name, "non-finite values" if bad else "other values", err)
            self.compiled = self.eager
            return self.eager(*args, **kwargs)
        return out


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def compile_available() -> tuple[bool, str]:
    """Whether torch.compile can build CPU kernels here (it needs a C++ compiler), and why not."""
    try:
        from torch._inductor import cpp_builder
        cpp_builder.get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 -- any failure to find a compiler means "no"
        return False, f"no C++ compiler for torch.compile ({type(e).__name__}: {e})"
    return True, "torch.compile (inductor) available"


# ------------------------------------------------------------------------------------------------------------
#                                       How many cores this process has
# ------------------------------------------------------------------------------------------------------------
def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (e.g. 2.0), or None when unlimited or unknown.

    cgroup v2: `cpu.max` holds "QUOTA PERIOD" or "max PERIOD"; v1: `cpu/cpu.cfs_quota_us` (-1: unlimited) over
    `cpu/cpu.cfs_period_us`. A container limited to 2 vCPUs on a 64-core host sees 64 in os.cpu_count()."""
    from pathlib import Path
    base = Path(root)
    try:
        quota, period = (base / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for v1 in (base / "cpu", base / "cpu,cpuacct", base):
        try:
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            period = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota <= 0 or period <= 0 else quota / period
    return None


def available_cpus(root: str = "/sys/fs/cgroup") -> tuple[int, str]:
    """(cores this process may use, how that was decided): the affinity mask, capped by the cgroup quota."""
    import math
    import os
    try:
        affinity = len(os.sched_getaffinity(0))
        why = f"affinity mask {affinity}"
    except AttributeError:  # not Linux
        affinity = os.cpu_count() or 1
        why = f"os.cpu_count() {affinity}"
    quota = cgroup_cpu_limit(root)
    if quota is not None and math.ceil(quota) < affinity:
        return max(1, math.ceil(quota)), f"{why}, cgroup CPU quota {quota:g} cores"
    return affinity, why + (f", cgroup CPU quota {quota:g} cores" if quota is not None else ", no cgroup quota")


def machine_cpus(root: str = "/sys/fs/cgroup") -> int:
    """Cores the whole machine (or container) offers every process on it: os.cpu_count() capped by the cgroup
    quota. /proc/stat's running threads are counted machine-wide, so an oversubscription check compares them with
    this, not with one process's affinity: two runs pinned to a core each (`taskset`) share nothing."""
    import math
    import os
    cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit(root)
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def thread_count(requested: int | None = None, env: str = "HIERATOK_THREADS") -> tuple[int, str]:
    """Torch threads for a server: `requested` (a flag), else $HIERATOK_THREADS, else `available_cpus()`."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be at least 1, got {requested}")
        return requested, "set by --threads"
    if os.environ.get(env):
        try:
            value = int(os.environ[env])
        except ValueError:
            raise ValueError(f"${env} must be a whole number of threads, got {os.environ[env]!r}") from None
        if value < 1:
            raise ValueError(f"${env} must be at least 1, got {value}")
        return value, f"set by ${env}"
    return available_cpus()


def training_threads(local_processes: int = 1, root: str = "/sys/fs/cgroup") -> tuple[int | None, str]:
    """Torch threads for one training process on a CPU, and why: $OMP_NUM_THREADS where it is set (torchrun and
    `accelerate launch` set it for several processes; a user running runs side by side sets it), else the cores
    this process may use (`available_cpus`: torch's own default counts a host's cores past a container's cgroup
    quota) shared among the `local_processes` on this machine. None: leave torch's setting (an unreadable
    $OMP_NUM_THREADS, which torch itself ignores)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        if env.isdigit() and int(env) > 0:
            return int(env), "set by $OMP_NUM_THREADS"
        return None, f"torch's default ($OMP_NUM_THREADS={env!r} is not a number of threads)"
    n, why = available_cpus(root)
    share = max(1, n // max(1, local_processes))
    return share, why + (f", shared by {local_processes} processes" if local_processes > 1 else "")


def running_elsewhere(samples: int = 3, interval: float = 0.02, stat: str = "/proc/stat") -> float | None:
    """How many threads other than the caller are running on the machine now: the median over `samples` readings
    of /proc/stat's procs_running (runnable threads, the reader's own included) less one; None where unreadable."""
    counts = []
    for i in range(samples):
        try:
            with open(stat) as f:
                line = next((ln for ln in f if ln.startswith("procs_running")), None)
        except OSError:
            return None
        if line is None:
            return None
        counts.append(int(line.split()[1]) - 1)
        if i + 1 < samples:
            time.sleep(interval)
    return float(sorted(counts)[len(counts) // 2])


def oversubscription_warning(threads: int, cores: int, others: float | None) -> str | None:
    """A warning when `others` threads running on the machine plus this run's `threads` exceed the machine's `cores`
    (`machine_cpus`: the count of running threads is machine-wide, so a run pinned to fewer cores than the
    machine has cannot tell whether the others share its cores, and is warned only when the machine as a whole is
    oversubscribed). OpenMP
    threads wait for each other at every parallel region, so a shared core slows the whole step: on 2 cores a
    2-thread DiT step went from 3.4 to ~10 s beside a 2-thread test run, which itself ran 25x slower than the same
    run with 1 thread beside it (docs/training.md, "Runs side by side")."""
    if others is None or others < 1 or others + threads <= cores:
        return None
    return (f"warning: {others:g} other thread(s) are running on this machine's {cores} core(s), and this run "
            f"starts {threads} thread(s): oversubscribed cores slow every process on them several-fold; give runs "
            f"side by side cores / N threads each (OMP_NUM_THREADS=N)")


def compile_plan(choice: str, *, on_cpu: bool, precision: str, steps: int, fsdp: bool = False,
                 warn=print) -> tuple[bool, str]:
    """Whether a run compiles its transformer blocks (`--compile auto|on|off`) and why. `auto` compiles bf16 runs
    of at least 500 steps on a CPU, where it pays for its compilation; never under FSDP (blocks are sharded units)
    or where no compiler works (`compile_available`, said through `warn`)."""
    if choice == "auto":
        if on_cpu and precision == "bf16" and steps >= 500:
            choice, why = "on", "auto: bf16 on a CPU, >= 500 steps"
        else:
            choice = "off"
            why = "auto: " + ("not a CPU" if not on_cpu else "not bf16" if precision != "bf16"
                              else "fewer than 500 steps")
    else:
        why = "set on the command line"
    if choice == "on":
        ok, note = compile_available()
        if not ok:
            warn(f"warning: --compile on, but {note}; running uncompiled")
            return False, note
        if fsdp:
            return False, "not under FSDP (blocks are sharded units)"
    return choice == "on", why
