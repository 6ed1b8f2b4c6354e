"""Stage-1 training step time: HieraTok vs the single-scale baselines, next to their FLOP ratio.

    python train/benchmark.py                     # cifar10 preset, batch 64, bf16 autocast, this machine's threads
    python train/benchmark.py --threads 1 --repeats 7

A step is forward + multi-scale loss + backward + AdamW, on random images (data loading excluded). The variants
are timed interleaved (A, B, C, A, B, C, ...) so that background load hits them alike; medians are reported.
A time ratio far above the FLOP ratio is overhead worth finding.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from hieratok import HieraTok, tokenizer_config
from hieratok.cost import cost_of
from hieratok.losses import ReconstructionLoss


def make_step(cfg, batch: int, dtype, device):
    model = HieraTok(cfg).to(device).train()
    loss_fn = ReconstructionLoss(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out, post = model(x)
            loss = loss_fn(x, out, post).total
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cifar10")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=["hieratok", "singlescale", "singlescale-flopmatched"])
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    cfgs = {v: tokenizer_config(args.preset, v) for v in args.variants}
    steps = {v: make_step(c, args.batch_size, dtype, device) for v, c in cfgs.items()}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times = {v: [] for v in steps}
    for _ in range(args.repeats):
        for v, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[v].append(time.perf_counter() - t0)
    base = args.variants[0]
    flops = {v: cost_of(c).gflops for v, c in cfgs.items()}
    med = {v: statistics.median(t) for v, t in times.items()}
    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch_size}, {args.precision}, "
          f"median of {args.repeats}")
    print(f"| variant | step (s) | images/s | time vs {base} | GFLOPs/img | FLOPs vs {base} |")
    print("|---|---:|---:|---:|---:|---:|")
    for v in args.variants:
        print(f"| {v} | {med[v]:.3f} | {args.batch_size / med[v]:.1f} | {med[v] / med[base]:.3f} | "
              f"{flops[v]:.3f} | {flops[v] / flops[base]:.3f} |")
    for v in args.variants[1:]:
        print(f"{base} / {v}: time ratio {med[base] / med[v]:.3f}, FLOP ratio {flops[base] / flops[v]:.3f}")


if __name__ == "__main__":
    main()
