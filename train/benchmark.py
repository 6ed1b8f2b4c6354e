"""Training step speed: the tokenizer variants, the DiT and the classifier, the reference path against the fast
path, in achieved FLOP/s and as a fraction of the same machine's GEMM.

    python train/benchmark.py --preset imagenette128                  # the shipped photo configs, both paths
    python train/benchmark.py --preset imagenette128 --models dit "dit:dim=384,heads=6" --paths fast
    python train/benchmark.py --preset cifar10 --precision fp32 --threads 2

A step is forward + loss + backward + AdamW on random data (data loading excluded): stage 1's multi-scale loss for a
tokenizer, the rectified-flow loss for a DiT, cross-entropy for the classifier (the preset's shipped settings).
Paths:

- `reference`: SDPA attention, eager, glibc's default allocator, AdamW's default per-tensor loop, NCHW convolution
  activations (the training path before hieratok.perf);
- `fast`: what the trainers do by default (`--attention auto`, the allocator tuned, the fused AdamW, the
  classifier's convolutions on channels-last activations on a CPU, and
  `--compile auto`: the blocks compiled for bf16 on a CPU, as a long run compiles them; `--compile on|off` forces
  it, e.g. to ask whether compiling would pay in fp32).

Precision: `--precision auto` (the default) times what the trainers' `--mixed-precision auto` trains in on this
hardware -- bf16 where it is native (a GPU, a CPU with AMX or AVX512-BF16), fp32 elsewhere (an AVX2-only CPU
emulates bf16, 7-500x slower).

An AVX2-only CPU can be approximated on a newer one by limiting the instruction sets torch uses:
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2` (ATen's kernels, inductor's
generated code, oneDNN's and MKL's GEMMs); the header says so when they are set.

Each (model, path) runs in its own resident process (the allocator setting is process-wide) and warms up,
compiling where its path does; then the processes take turns, one step each, `--repeats` rounds, so that a machine
whose speed drifts (this one's GEMM varied 2-3x from minute to minute) drifts under every row alike. Medians are
reported. FLOPs are counted once per model by `torch.utils.flop_counter` on the reference path (forward +
backward; masked attention counted in full, as SDPA computes it), so both paths are credited with the same work.
`% GEMM`: each step's achieved FLOP/s over a 2048 x 2048 matmul's at the same precision timed right after it in
the same process (median over steps).
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

# the recipe (the shipped photo tokenizer), the paper's method, single-scale, the DiT, the classifier behind FD-cls
MODELS = ("tokenizer:stopgrad-shared-context", "tokenizer:hieratok", "tokenizer:singlescale", "dit", "classifier")
KINDS = ("tokenizer", "dit", "classifier")
# the shipped classifiers' settings per preset (assets/classifier-*/config.json; width 32 for both)
CLASSIFIER_PRESETS = {"cifar10": {}, "imagenette128": {"stem_stride": 2}}
PATHS = ("reference", "fast")


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """'tokenizer:VARIANT[:k=v,...]', 'dit[:k=v,...]' or 'classifier[:k=v,...]' -> (kind, variant, overrides)."""
    parts = spec.split(":")
    kind = parts[0]
    if kind not in KINDS:
        raise SystemExit(f"error: model spec {spec!r}: expected tokenizer:VARIANT[:k=v,...], dit[:k=v,...] or "
                         f"classifier[:k=v,...]")
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
    elif kind == "classifier":
        from hieratok.classifier import Classifier, ClassifierConfig
        cfg = ClassifierConfig(image_size=tokenizer_config(preset).image_size,
                               **{**CLASSIFIER_PRESETS.get(preset, {}), **overrides})
        model = Classifier(cfg).to(device).train()
        x = torch.rand(batch, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1
        y = torch.randint(0, cfg.num_classes, (batch,), device=device)

        def loss():
            return torch.nn.functional.cross_entropy(model(x), y)
    else:
        cfg = dit_config(preset, **overrides)
        model = DiT(cfg).to(device).train()
        x = torch.randn(batch, cfg.latent_channels, cfg.latent_size, cfg.latent_size, device=device)
        y = torch.randint(0, cfg.num_classes, (batch,), device=device)
        gen = torch.Generator(device=device).manual_seed(0)

        def loss():
            return model.loss(x, y, gen)
    return model, loss, cfg.to_dict()


def gemm_seconds(a: torch.Tensor) -> float:
    t0 = time.perf_counter()
    a @ a
    if a.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def serve(spec: str, path: str, args) -> None:
    """A worker for one (model, path): count the FLOPs, warm up (compiling on the fast path), then on each
    'step' line read from stdin run one training step and one 2048^2 GEMM, and print both times as JSON."""
    from torch.utils.flop_counter import FlopCounterMode

    from hieratok.layers import set_attention_impl
    from hieratok.perf import compile_blocks, compile_plan, tune_allocator
    from hieratok.training.optim import fused_supported
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if path == "fast" and device.type == "cpu":
        tune_allocator()
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    torch.manual_seed(0)
    kind = parse_spec(spec)[0]
    model, loss, cfg = build(spec, args.preset, batch_sizes(args)[kind], device)
    if kind == "classifier":  # the reference path: NCHW activations (before channels-last)
        model.channels_last = path == "fast"
    # the fast path steps the optimizer as the trainers do (fused where supported: hieratok.training.optim)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=path == "fast" and fused_supported(model.parameters()))

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
    if path == "fast":
        set_attention_impl(model, args.attention)
        compile_on, _ = compile_plan(args.compile, on_cpu=device.type == "cpu", precision=args.precision,
                                     steps=10 ** 6, warn=lambda m: print(m, file=sys.stderr))
        if compile_on:
            compile_blocks(model)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    gemm = torch.randn(2048, 2048, device=device, dtype=dtype or torch.float32)
    gemm_seconds(gemm)
    print(json.dumps({"ready": True, "config": cfg, "flops": counter.get_total_flops(),
                      "warmup_s": time.perf_counter() - t0}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t0 = time.perf_counter()
        step()
        step_s = time.perf_counter() - t0
        print(json.dumps({"step_s": step_s, "gemm_s": gemm_seconds(gemm)}), flush=True)


class Worker:
    def __init__(self, spec: str, path: str, argv: list[str]):
        self.spec, self.path = spec, path
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--serve", spec, path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise SystemExit(f"error: the {self.spec} worker on the {self.path} path exited "
                             f"({self.proc.returncode}); see its error above")
        return json.loads(line)

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def measure(specs: list[str], paths: list[str], argv: list[str], repeats: int) -> list[dict]:
    """Every (model, path) in its own resident process, their steps interleaved round by round."""
    workers = []
    try:
        for spec in specs:
            for path in paths:
                workers.append(Worker(spec, path, argv))
                print(f"  {spec} {path}: ready (warm-up {workers[-1].info['warmup_s']:.0f} s)", file=sys.stderr)
        samples = [[w.step() for w in workers] for _ in range(repeats)]
    finally:
        for w in workers:
            w.close()
    results, gemm = [], 2 * 2048 ** 3
    for i, w in enumerate(workers):
        flops, mine = w.info["flops"], [round_[i] for round_ in samples]
        steps = [s["step_s"] for s in mine]
        results.append({"spec": w.spec, "path": w.path, "config": w.info["config"], "flops": flops,
                        "step_s": statistics.median(steps), "times": steps, "warmup_s": w.info["warmup_s"],
                        "gemm_flops": statistics.median(gemm / s["gemm_s"] for s in mine),
                        "gemm_fraction": statistics.median((flops / s["step_s"]) / (gemm / s["gemm_s"])
                                                           for s in mine)})
    return results


def table(results: list[dict], batch: dict[str, int]) -> str:
    lines = ["| model | path | step (s) | images/s | GFLOP/step | achieved GFLOP/s | % of GEMM | vs reference |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    ref = {r["spec"]: r["step_s"] for r in results if r["path"] == "reference"}
    for r in results:
        achieved = r["flops"] / r["step_s"]
        speedup = f"{ref[r['spec']] / r['step_s']:.2f}x" if r["spec"] in ref else "--"
        n = batch[parse_spec(r["spec"])[0]]
        lines.append(f"| {r['spec']} | {r['path']} | {r['step_s']:.3f} | {n / r['step_s']:.1f} | "
                     f"{r['flops'] / 1e9:.1f} | {achieved / 1e9:.0f} | {100 * r['gemm_fraction']:.1f}% | "
                     f"{speedup} |")
    return "\n".join(lines)


def batch_sizes(args) -> dict[str, int]:
    return {"tokenizer": args.batch_size, "dit": args.dit_batch_size, "classifier": args.classifier_batch_size}


def isa_note() -> str:
    """The instruction-set limits in force, if any (an AVX2-only CPU approximated on a newer one)."""
    names = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
    limits = [f"{k}={os.environ[k]}" for k in names if os.environ.get(k)]
    return f"instruction sets limited by {' '.join(limits)}; " if limits else ""


def resolve_precision(choice: str) -> tuple[str, str]:
    """`--precision auto` -> what the trainers' `--mixed-precision auto` picks here (bf16 where it is native, else
    fp32), by the same function; with a note for the header saying the choice was automatic."""
    if choice != "auto":
        return choice, ""
    from hieratok.training.distributed import resolve_mixed_precision
    return ("bf16" if resolve_mixed_precision("auto")[0] == "bf16" else "fp32"), " (auto)"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="imagenette128")
    ap.add_argument("--models", nargs="+", default=list(MODELS),
                    help="tokenizer:VARIANT[:key=value,...] or dit[:key=value,...] (config overrides)")
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    ap.add_argument("--batch-size", type=int, default=32, help="tokenizer batch")
    ap.add_argument("--dit-batch-size", type=int, default=128)
    ap.add_argument("--classifier-batch-size", type=int, default=64)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="auto: bf16 where the hardware computes it natively (a GPU, a CPU with AMX or "
                         "AVX512-BF16), else fp32 -- as the trainers' --mixed-precision auto decides")
    ap.add_argument("--attention", default="auto", choices=["auto", "sdpa", "math"],
                    help="the fast path's attention (`hieratok.layers.resolve_attention`; auto: as the trainers)")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                    help="the fast path's compiled blocks; auto: as a long training run decides (bf16 on a CPU)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--serve", nargs=2, metavar=("MODEL", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.precision, precision_note = resolve_precision(args.precision)
    if args.serve:
        serve(*args.serve, args)
        return
    for spec in args.models:
        parse_spec(spec)  # refuse a bad spec before anything runs
    from hieratok.training.distributed import hardware_name, native_bf16
    results = measure(args.models, args.paths, argv, args.repeats)
    print(f"{hardware_name()} ({native_bf16()[1]}); torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"{isa_note()}{args.precision}{precision_note}; fast path --compile {args.compile} --attention "
          f"{args.attention}; preset {args.preset}; "
          f"tokenizer batch {args.batch_size}, DiT batch {args.dit_batch_size}, classifier batch "
          f"{args.classifier_batch_size}; median of {args.repeats} interleaved steps; GEMM 2048^2 "
          f"{statistics.median(r['gemm_flops'] for r in results) / 1e9:.0f} GFLOP/s")
    print(table(results, batch_sizes(args)))
    by = {(r["spec"], r["path"]): r for r in results}
    for path in args.paths:
        h, s = by.get(("tokenizer:hieratok", path)), by.get(("tokenizer:singlescale", path))
        if h and s:
            print(f"{path}: HieraTok / single-scale step-time ratio {h['step_s'] / s['step_s']:.3f}, FLOP ratio "
                  f"{h['flops'] / s['flops']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hardware": hardware_name(), "isa_limits": isa_note(), "args": vars(args),
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
