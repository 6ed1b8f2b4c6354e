"""The generation protocol: class-conditional DiTs compared with enough samples, seeds and guidance scales to tell
them apart, and a figure a person can judge.

    python train/generation.py --data ../shared/data/imagenette/val --classifier assets/classifier-imagenette128 \
        --dit hieratok=assets/dit-hieratok-imagenette128 --dit singlescale=assets/dit-singlescale-imagenette128 \
        --tokenizer singlescale=assets/singlescale-imagenette128 \
        --guidance 1.5 2 3 4 6 --sample-steps 10 25 --seeds 0 1 2 --num-samples 2000 \
        --output assets/eval/generation-imagenette128 --figure assets/eval/generation-imagenette128.png

For every DiT, guidance scale, guidance interval, sampler step count and seed: `--num-samples` class-balanced
samples (labels and noise drawn per seed, the same for every DiT at a seed: `hieratok.sample_plan`), their Fréchet
distance to all `--data` images in the classifier's features (gFD-cls; refused below the feature dimension) and the
classifier's accuracy on them. Reported: per point the mean and 95% t-interval over seeds; DiT against DiT, the
difference paired by seed; and each DiT's default guidance by the rule the README states -- the guidance (and
interval) with the lowest mean gFD-cls at the app's step count (`--default-steps`). Every point is written as it
finishes and skipped when the output already holds it, so an interrupted sweep resumes. `--figure`: ten classes x
`--figure-per-class` samples of every DiT side by side at its default guidance, the same noise for each DiT.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hieratok import DiT, HieraTok, generate, to_pil
from hieratok.classifier import Classifier, FeatureExtractor
from hieratok.dit import check_guidance_interval
from hieratok.evaluation import check_fd_samples, classifier_accuracy, generator_scores, real_fd
from hieratok.hub import paired_tokenizer
from hieratok.metrics import frechet_distance_metric
from hieratok.perf import PRECISIONS, compile_available, compile_blocks
from hieratok.report import fmt, percent
from hieratok.stats import mean_ci, t_interval
from hieratok.training.checkpoint import atomic_file, json_text
from hieratok.training.cli import named_paths
from hieratok.training.data import DataError, build_dataset, eval_loader

POINT_KEYS = ("dit", "guidance", "interval", "steps", "seed")


def parse_interval(text: str) -> list[float] | None:
    """'all' (every evaluation guided) -> None; 'LO,HI' -> [lo, hi] (`hieratok.dit.check_guidance_interval`)."""
    if text in ("all", "full"):
        return None
    try:
        lo, hi = check_guidance_interval([float(v) for v in text.split(",")])
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e} (or 'all')") from None
    return [lo, hi]


def interval_text(interval) -> str:
    return "all steps" if interval is None else f"t in [{interval[0]:g}, {interval[1]:g}]"


def point_key(p: dict) -> tuple:
    """A point's identity (points written before guidance intervals existed guided every step)."""
    return tuple(tuple(p.get(k)) if k == "interval" and p.get(k) is not None else p.get(k) for k in POINT_KEYS)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the real images (an ImageFolder root): all of them are the "
                                                  "reference set")
    ap.add_argument("--classifier", required=True, help="classifier folder (features for gFD-cls, class accuracy)")
    ap.add_argument("--dit", action="append", default=[], metavar="NAME=PATH", required=True)
    ap.add_argument("--tokenizer", action="append", default=[], metavar="NAME=PATH",
                    help="the tokenizer (with latent statistics) whose latents the DiT NAME generates (default: "
                         "the one the DiT's folder ships, DIR/tokenizer)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.5, 2.0, 3.0, 4.0, 6.0])
    ap.add_argument("--guidance-interval", type=parse_interval, nargs="+", default=[None], metavar="LO,HI|all",
                    help="guide only the velocity evaluations at flow times LO <= t <= HI (0 noise, 1 data; "
                         "Kynkäänniemi et al. 2024), each one a sweep dimension like --guidance; 'all': every one")
    ap.add_argument("--sample-steps", type=int, nargs="+", default=[10, 25], help="Heun steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--allow-few-samples", action="store_true",
                    help="allow fewer samples than feature dimensions (a singular covariance: tests only)")
    ap.add_argument("--default-steps", type=int, default=10,
                    help="the app's step count: each DiT's default guidance is the one with the lowest gFD-cls here")
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS,
                    help="the DiTs' sampling precision (DiT.sample): fp32 (every reported table), bf16 or auto (bf16 "
                         "where the hardware computes it natively, as the app samples)")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                    help="compile the DiT's blocks for sampling (hieratok.perf.compile_blocks); auto: on a CPU where "
                         "torch.compile works (100 samples, 10 Heun steps: 1.35x in bf16, 1.09x in fp32 on a 2-core "
                         "EPYC; values as eager's within the precision's rounding)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--max-images", type=int, default=None, help="fewer real images (tests)")
    ap.add_argument("--output", required=True, help="output prefix: PREFIX.json and PREFIX.md")
    ap.add_argument("--figure", default=None, help="a PNG of ten classes x N samples per DiT, side by side")
    ap.add_argument("--figure-per-class", type=int, default=8)
    ap.add_argument("--figure-seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.dits, args.tokenizers = named_paths(args.dit, "--dit"), named_paths(args.tokenizer, "--tokenizer")
    for name, path in args.dits.items():  # a DiT that ships the tokenizer it was trained on: that one by default
        own = paired_tokenizer(path)
        if own is not None and name not in args.tokenizers:
            args.tokenizers[name] = str(own)
    missing = sorted(set(args.dits) - set(args.tokenizers))
    if missing:
        ap.error(f"no --tokenizer for DiT {', '.join(missing)}")
    if args.default_steps not in args.sample_steps:
        ap.error(f"--default-steps {args.default_steps} is not among --sample-steps {args.sample_steps}")
    return args


def load_pair(dit_path: str, tok_path: str, device, compile_dit: bool = False) -> tuple[DiT, HieraTok]:
    dit = DiT.from_pretrained(dit_path).eval().to(device)
    if compile_dit:
        compile_blocks(dit)
    tok = HieraTok.from_pretrained(tok_path).eval().to(device)
    if not tok.has_latent_stats:
        raise SystemExit(f"error: {tok_path} has no latent statistics; pass the tokenizer train/dit.py wrote")
    return dit, tok


def summarize(points: list[dict], default_steps: int) -> dict:
    """Per DiT and (steps, guidance, interval): gFD-cls and class accuracy over seeds; the first DiT minus each
    other paired by seed; each DiT's default guidance and interval (lowest mean gFD-cls at `default_steps`)."""
    by = {}
    for p in points:
        interval = p.get("interval")
        by.setdefault((p["dit"], p["steps"], p["guidance"], tuple(interval) if interval else ()), []).append(p)
    table = {}
    for (dit, steps, g, interval), ps in sorted(by.items()):
        table.setdefault(dit, []).append({
            "steps": steps, "guidance": g, "interval": list(interval) or None, "seeds": sorted(p["seed"] for p in ps),
            "gfd": t_interval([p["gfd"] for p in ps]),
            "class_accuracy": t_interval([p["class_accuracy"]["mean"] for p in ps])})
    default, default_interval = {}, {}
    for dit, rows in table.items():
        at = [r for r in rows if r["steps"] == default_steps]
        if at:
            best = min(at, key=lambda r: r["gfd"]["mean"])
            default[dit], default_interval[dit] = best["guidance"], best["interval"]
    paired = []
    dits = list(table)
    for other in dits[1:]:
        for (d, steps, g, interval), ps in sorted(by.items()):
            if d != dits[0]:
                continue
            theirs = {p["seed"]: p for p in by.get((other, steps, g, interval), [])}
            common = [p for p in ps if p["seed"] in theirs]
            if common:
                paired.append({"a": dits[0], "b": other, "steps": steps, "guidance": g,
                               "interval": list(interval) or None, "seeds": len(common),
                               "gfd_a_minus_b": t_interval([p["gfd"] - theirs[p["seed"]]["gfd"] for p in common]),
                               "accuracy_a_minus_b": t_interval([p["class_accuracy"]["mean"]
                                                                 - theirs[p["seed"]]["class_accuracy"]["mean"]
                                                                 for p in common])})
    return {"table": table, "paired": paired, "default_guidance": default, "default_interval": default_interval,
            "default_rule": f"the guidance (and guidance interval) with the lowest mean gFD-cls at {default_steps} "
                            f"Heun steps"}


def markdown(report: dict) -> str:
    s = report["summary"]
    lines = [f"# Generation ({report['samples']} samples per point)", "",
             f"gFD-cls: Fréchet distance between samples and all {report['images']} images of {report['data']} in "
             f"the {report['feature_dim']}-d features of {report['classifier']} (its accuracy on those images "
             f"{fmt(percent(report['classifier_accuracy']), 1)}%); class accuracy: that classifier's on the samples. "
             f"Mean ± 95% t-interval over seeds (labels and noise drawn per seed, the same for every DiT at a seed). "
             f"Default guidance: {s['default_rule']}. Sampling precision: {report.get('precision', 'fp32')}.", "",
             "| DiT | Heun steps | guidance | guided | seeds | gFD-cls | class accuracy (%) |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for dit, rows in s["table"].items():
        for r in rows:
            mark = " (default)" if (s["default_guidance"].get(dit), s.get("default_interval", {}).get(dit)) == (
                r["guidance"], r.get("interval")) and r["steps"] == report["default_steps"] else ""
            lines.append(f"| {dit} | {r['steps']} | {r['guidance']:g}{mark} | {interval_text(r.get('interval'))} | "
                         f"{len(r['seeds'])} | {fmt(r['gfd'])} | {fmt(percent(r['class_accuracy']), 1)} |")
    if s["paired"]:
        lines += ["", "Paired by seed (same labels and noise):", "",
                  "| a − b | Heun steps | guidance | guided | seeds | Δ gFD-cls | Δ class accuracy (points) |",
                  "|---|---:|---:|---|---:|---:|---:|"]
        lines += [f"| {p['a']} − {p['b']} | {p['steps']} | {p['guidance']:g} | {interval_text(p.get('interval'))} | "
                  f"{p['seeds']} | "
                  f"{fmt(p['gfd_a_minus_b'])} | {fmt(percent(p['accuracy_a_minus_b']), 1)} |" for p in s["paired"]]
    if report.get("figure"):
        lines += ["", f"![samples]({Path(report['figure']).name}) -- {report['figure_note']}"]
    return "\n".join(lines) + "\n"


@torch.no_grad()
def figure(args, device, default: dict[str, float], path: Path, intervals: dict | None = None) -> str:
    """Ten classes (rows) x N samples of every DiT, side by side, at its default guidance; the same noise for each."""
    from PIL import Image, ImageDraw
    panels, names = [], None
    for name, dit_path in args.dits.items():
        dit, tok = load_pair(dit_path, args.tokenizers[name], device, args.compile_dit)
        names = dit.config.class_names or [str(i) for i in range(dit.config.num_classes)]
        labels = torch.arange(dit.config.num_classes).repeat_interleave(args.figure_per_class)
        _, out = generate(dit, tok, labels, steps=args.default_steps, guidance=default[name], seed=args.figure_seed,
                          guidance_interval=(intervals or {}).get(name), precision=args.precision)
        images = [to_pil(x) for x in out.reconstruction.float().clamp(-1, 1).cpu()]
        side = images[0].width
        panel = Image.new("RGB", (side * args.figure_per_class, side * len(names) + 24), "white")
        guided = (intervals or {}).get(name)
        ImageDraw.Draw(panel).text((4, 6), f"{name} (guidance {default[name]:g}"
                                   f"{'' if guided is None else ', ' + interval_text(guided)})", fill="black")
        for i, im in enumerate(images):
            panel.paste(im, ((i % args.figure_per_class) * side, 24 + (i // args.figure_per_class) * side))
        panels.append(panel)
    label_w, gap = 130, 12
    h = panels[0].height
    sheet = Image.new("RGB", (label_w + sum(p.width + gap for p in panels), h), "white")
    draw = ImageDraw.Draw(sheet)
    row = (h - 24) // len(names)
    for i, n in enumerate(names):
        draw.text((4, 24 + i * row + row // 2 - 6), n, fill="black")
    x = label_w
    for p in panels:
        sheet.paste(p, (x, 0))
        x += p.width + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return (f"rows: classes; {args.figure_per_class} samples per class and DiT, {args.default_steps} Heun steps, "
            f"each DiT at its default guidance (and interval), noise seed {args.figure_seed} (the same for every DiT)")


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.compile_dit = args.compile == "on" or (args.compile == "auto" and device.type == "cpu")
    if args.compile_dit:
        ok, note = compile_available()
        if not ok:
            print(f"warning: not compiling the DiTs: {note}", file=sys.stderr)
        args.compile_dit = ok
    from hieratok.config import HieraTokConfig
    size = HieraTokConfig.from_dict(json.loads((Path(next(iter(args.tokenizers.values()))) / "config.json")
                                               .read_text())).image_size
    try:
        dataset = build_dataset(args.data, size, split="test", max_images=args.max_images)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    classifier = Classifier.from_pretrained(args.classifier).eval().to(device)
    fd0 = frechet_distance_metric(FeatureExtractor(classifier)).to(device)
    try:
        dims = check_fd_samples(args.num_samples, fd0, args.allow_few_samples)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    out = Path(args.output)
    old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    same = (old.get("data"), old.get("samples"), old.get("classifier"), old.get("precision", "fp32")) == (
        args.data, args.num_samples, args.classifier, args.precision)
    points = [p for p in old.get("points", []) if same and args.dits.get(p["dit"]) == p["dit_path"]]
    done = {point_key(p) for p in points}
    todo = [(n, g, gi, st, sd) for sd, st, gi, g, n in itertools.product(
        args.seeds, args.sample_steps, args.guidance_interval, args.guidance, args.dits)
        if (n, g, tuple(gi) if gi else None, st, sd) not in done]
    report = {"data": args.data, "images": len(dataset), "samples": args.num_samples, "classifier": args.classifier,
              "classifier_accuracy": None, "feature_dim": dims, "default_steps": args.default_steps,
              "precision": args.precision,
              "command": " ".join(sys.argv), "points": points}
    real = real_fd(fd0, eval_loader(dataset, args.batch_size), batch_size=args.batch_size,
                   progress=lambda b: tqdm(b, desc="real features")) if todo else None
    if not (same and old.get("classifier_accuracy")):  # how far its judgement of samples can be trusted
        old["classifier_accuracy"] = classifier_accuracy(classifier, eval_loader(dataset, args.batch_size))["accuracy"]
    report["classifier_accuracy"] = old["classifier_accuracy"]
    pairs = {}
    for name, g, interval, steps, seed in tqdm(todo, desc="points"):
        if name not in pairs:
            pairs = {name: load_pair(args.dits[name], args.tokenizers[name], device, args.compile_dit)}  # one in memory
        dit, tok = pairs[name]
        t0 = time.time()
        r = generator_scores(dit, tok, args.num_samples, steps=steps, guidance=g, batch_size=args.batch_size,
                             seed=seed, fd=real.clone(), classifier=classifier, allow_few=args.allow_few_samples,
                             guidance_interval=interval, precision=args.precision)
        points.append({"dit": name, "dit_path": args.dits[name], "tokenizer": args.tokenizers[name], "guidance": g,
                       "interval": interval, "steps": steps, "seed": seed, "gfd": r["gfd"],
                       "class_accuracy": mean_ci(r["correct"]), "seconds": round(time.time() - t0, 1)})
        write(out, report, args)
    report = write(out, report, args)
    if args.figure:
        missing = sorted(set(args.dits) - set(report["summary"]["default_guidance"]))
        if missing:
            raise SystemExit(f"error: no default guidance for {', '.join(missing)} (no point at {args.default_steps} "
                             f"steps)")
        report["figure_note"] = figure(args, device, report["summary"]["default_guidance"], Path(args.figure),
                                       report["summary"]["default_interval"])
        report["figure"] = str(args.figure)
        report = write(out, report, args)
    print(markdown(report))


def write(out: Path, report: dict, args) -> dict:
    report = {**report, "summary": summarize(report["points"], args.default_steps)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out.with_suffix(".json")) as f:
        f.write_text(json_text(report))
    with atomic_file(out.with_suffix(".md")) as f:
        f.write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
