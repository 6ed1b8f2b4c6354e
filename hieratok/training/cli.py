"""The command line every training script shares: arguments, their validation, `--set` overrides, loading."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..config import TOKENIZER_PRESETS


def base_parser(description: str, *, steps: int, batch_size: int, lr: float) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--preset", default="cifar10", choices=sorted(TOKENIZER_PRESETS), help="model preset")
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
                         "AMX or AVX512-BF16), fp32 elsewhere (on AVX2-only CPUs bf16 is emulated, 7-500x slower "
                         "than fp32)")
    ap.add_argument("--attention", default="auto", choices=["auto", "sdpa", "math"],
                    help="attention path: sdpa (PyTorch's kernels), math (explicit softmax, hand-written backward); "
                         "auto: math for bf16 training on CPUs at head sizes that are multiples of 16, where it is "
                         "measured faster, sdpa elsewhere")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                    help="torch.compile each transformer block; auto: on for bf16 runs of at least 500 steps on CPUs "
                         "(compiling takes ~40 s there; with the explicit attention, steps measured 1.5-1.7x "
                         "faster), off on GPUs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-images", type=int, default=None, help="train on a fixed random subset (tiny runs)")
    ap.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes")
    ap.add_argument("--cache-images", action="store_true",
                    help="decode the dataset once into memory (uint8) instead of reading every file each epoch: for "
                         "a fast GPU fed by few CPU cores (Imagenette at 128 px: 465 MB)")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--sample-every", type=int, default=500, help="save an image grid every N steps (0: never)")
    ap.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N steps")
    ap.add_argument("--keep-ckpts", type=int, default=2, help="checkpoints kept on disk")
    ap.add_argument("--export-at", type=int, nargs="*", default=[], metavar="STEP",
                    help="also export the EMA model as <output-dir>/exports/step-N at these steps (learning curves)")
    ap.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                    help="stop this invocation after SECONDS of training (a job's wall-clock limit): checkpoint and "
                         "export as at the end, summary.json says where it stopped; a later run resumes the same "
                         "schedule")
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


def init_from(cls, args, training_fields: tuple[str, ...], architecture_flags: dict[str, bool] | None = None):
    """Every trainer's `--init-from DIR`: the model -- architecture and weights -- comes from DIR. `--set` may change
    only its training settings (`training_fields`: the tokenizer's loss fields, the DiT's label dropout and time
    sampling), which the exported config then records; flags that would choose another architecture
    (`architecture_flags`: flag -> whether it was given) or `--set` on an architecture field are refused rather than
    half-applied."""
    given = [flag for flag, on in (architecture_flags or {}).items() if on]
    overrides = parse_overrides(args.set)
    other = sorted(set(overrides) - set(training_fields))
    if other:
        given.append(f"--set {', '.join(other)}")
    if given:
        raise SystemExit(f"error: {' and '.join(given)} cannot be combined with --init-from: the architecture comes "
                         f"from {args.init_from}/config.json (--set may change only "
                         f"{', '.join(training_fields) or 'nothing'})")
    model = load_pretrained(cls, args.init_from, "--init-from")
    try:
        model.config = model.config.replace(**overrides)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: --set {' '.join(args.set)}: {e}") from None
    return model


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


def named_paths(items: list[str], what: str) -> dict[str, str]:
    """`name=path` (or a bare path, named by its folder) -> {name: path}."""
    out = {}
    for item in items:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        out[name or Path(path).name] = path
    if len(out) != len(items):
        raise SystemExit(f"error: two {what} entries share a name: {items}")
    return out


def setup_logging(level: int = logging.INFO) -> None:
    """Send the library's log records to stderr as plain lines (scripts call this; the library only logs)."""
    logging.basicConfig(level=level, format="%(message)s")
    logging.getLogger("hieratok").setLevel(level)
