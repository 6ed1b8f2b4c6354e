"""Training step speed: the tokenizer variants and the DiT, the reference path against the fast path, in achieved
FLOP/s and as a fraction of the same machine's GEMM.

    python train/benchmark.py --preset imagenette128                  # the shipped photo configs, both paths
    python train/benchmark.py --preset imagenette128 --models dit "dit:dim=384,heads=6" --paths fast
    python train/benchmark.py --preset cifar10 --precision fp32 --threads 2

A step is forward + loss + backward + AdamW on random data (data loading excluded): stage 1's multi-scale loss for a
tokenizer, the rectified-flow loss for a DiT. Paths:

- `reference`: SDPA attention, eager, glibc's default allocator (the training path before hieratok.perf);
- `fast`: what the trainers do by default (`--attention auto`, `--compile` on, the allocator tuned).

Each (model, path) runs in its own process (the allocator setting is process-wide), after warm-up steps that
include compilation; the median of `--repeats` steps is reported. FLOPs are counted once per model by
`torch.utils.flop_counter` on the reference path (forward + backward; masked attention counted in full, as SDPA
computes it), so both paths are credited with the same work. `% GEMM` divides achieved FLOP/s by a 2048 x 2048
matmul's at the same precision in the same process.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

MODELS = ("tokenizer:hieratok", "tokenizer:singlescale", "dit")
PATHS = ("reference", "fast")


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """'tokenizer:VARIANT[:k=v,...]' or 'dit[:k=v,...]' -> (kind, variant, overrides)."""
    parts = spec.split(":")
    kind = parts[0]
    if kind not in ("tokenizer", "dit"):
        raise SystemExit(f"error: model spec {spec!r}: expected tokenizer:VARIANT[:k=v,...] or dit[:k=v,...]")
    variant = parts[1] if kind == "tokenizer" and len(parts) > 1 else ("hieratok" if kind == "tokenizer" else "")
    rest = parts[2:] if kind == "tokenizer" else parts[1:]
    overrides = {}
    for item in ",".join(rest).split(","):
        if item:
            key, _, value = item.partition("=")
            overrides[key] = json.loads(value)
    return kind, variant, overrides


def build(spec: str, preset: str, batch: int, device):
    """(model, loss closure, config dict) for one model spec."""
    from hieratok import DiT, HieraTok, dit_config, tokenizer_config
    from hieratok.losses import ReconstructionLoss
    kind, variant, overrides = parse_spec(spec)
    if kind == "tokenizer":
        cfg = tokenizer_config(preset, variant, **overrides)
        model = HieraTok(cfg).to(device).train()
        loss_fn = ReconstructionLoss(cfg)
        x = torch.rand(batch, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1

        def loss():
            out, post = model(x)
            return loss_fn(x, out, post).total
    else:
        cfg = dit_config(preset, **overrides)
        model = DiT(cfg).to(device).train()
        x = torch.randn(batch, cfg.latent_channels, cfg.latent_size, cfg.latent_size, device=device)
        y = torch.randint(0, cfg.num_classes, (batch,), device=device)
        gen = torch.Generator(device=device).manual_seed(0)

        def loss():
            return model.loss(x, y, gen)
    return model, loss, cfg.to_dict()


def gemm_flops(dtype, device, size: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ a
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * size ** 3 / statistics.median(times)


def measure(spec: str, path: str, args) -> dict:
    """One (model, path) in this process: its FLOPs per step, step times and the GEMM reference."""
    from torch.utils.flop_counter import FlopCounterMode

    from hieratok.layers import set_attention_impl
    from hieratok.perf import compile_blocks, tune_allocator
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if path == "fast" and device.type == "cpu":
        tune_allocator()
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    torch.manual_seed(0)
    model, loss, cfg = build(spec, args.preset, args.batch_size if spec.startswith("tokenizer")
                             else args.dit_batch_size, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            value = loss()
        if not torch.isfinite(value):  # a fast step that computes nonsense is no result
            raise SystemExit(f"error: {spec} on the {path} path: the loss is {value.item()}")
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    set_attention_impl(model, "sdpa")
    with FlopCounterMode(display=False) as counter:  # the model's work, counted once on the reference path
        step()
    flops = counter.get_total_flops()
    if path == "fast":
        set_attention_impl(model, "auto")
        if device.type == "cpu":
            compile_blocks(model)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"spec": spec, "path": path, "config": cfg, "flops": flops, "step_s": statistics.median(times),
            "times": times, "warmup_s": warmup_s, "gemm_flops": gemm_flops(dtype or torch.float32, device)}


def run_child(spec: str, path: str, argv: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--one", spec, path]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"error: {spec} on the {path} path failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[dict], batch: dict[str, int]) -> str:
    lines = ["| model | path | step (s) | images/s | GFLOP/step | achieved GFLOP/s | % of GEMM | vs reference |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    ref = {r["spec"]: r["step_s"] for r in results if r["path"] == "reference"}
    for r in results:
        achieved = r["flops"] / r["step_s"]
        speedup = f"{ref[r['spec']] / r['step_s']:.2f}x" if r["spec"] in ref else "--"
        n = batch["tokenizer" if r["spec"].startswith("tokenizer") else "dit"]
        lines.append(f"| {r['spec']} | {r['path']} | {r['step_s']:.3f} | {n / r['step_s']:.1f} | "
                     f"{r['flops'] / 1e9:.1f} | {achieved / 1e9:.0f} | {100 * achieved / r['gemm_flops']:.1f}% | "
                     f"{speedup} |")
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="imagenette128")
    ap.add_argument("--models", nargs="+", default=list(MODELS),
                    help="tokenizer:VARIANT[:key=value,...] or dit[:key=value,...] (config overrides)")
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    ap.add_argument("--batch-size", type=int, default=32, help="tokenizer batch")
    ap.add_argument("--dit-batch-size", type=int, default=128)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(*args.one, args)))
        return
    for spec in args.models:
        parse_spec(spec)  # refuse a bad spec before anything runs
    from hieratok.training.distributed import hardware_name, native_bf16
    child_argv = [a for a in argv if a != "--one"]
    results = []
    for spec in args.models:
        for path in args.paths:
            results.append(run_child(spec, path, child_argv))
            r = results[-1]
            print(f"  {spec} {path}: {r['step_s']:.3f} s/step (warm-up {r['warmup_s']:.0f} s)", file=sys.stderr)
    print(f"{hardware_name()} ({native_bf16()[1]}); torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"{args.precision}; preset {args.preset}; tokenizer batch {args.batch_size}, DiT batch "
          f"{args.dit_batch_size}; median of {args.repeats} steps; GEMM 2048^2 "
          f"{statistics.median(r['gemm_flops'] for r in results) / 1e9:.0f} GFLOP/s")
    print(table(results, {"tokenizer": args.batch_size, "dit": args.dit_batch_size}))
    by = {(r["spec"], r["path"]): r for r in results}
    for path in args.paths:
        h, s = by.get(("tokenizer:hieratok", path)), by.get(("tokenizer:singlescale", path))
        if h and s:
            print(f"{path}: HieraTok / single-scale step-time ratio {h['step_s'] / s['step_s']:.3f}, FLOP ratio "
                  f"{h['flops'] / s['flops']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hardware": hardware_name(), "args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
