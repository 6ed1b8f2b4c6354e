"""The controlled experiment: does multi-scale tokenization help at matched cost?

Every arm (the method, its baselines and ablations) over several seeds, the same images seen, optimizer, schedule
and batch for all; each run evaluated at fixed points of its budget on a fixed validation subset and at the end on
all validation images; per arm a mean with a 95% t-interval over seeds, and paired differences against `hieratok`.

    python train/experiment.py --data ../shared/data/imagenette/train --val ../shared/data/imagenette/val \
        --output-dir runs/experiment --tier cpu --arms hieratok singlescale singlescale-flopmatched no-mss --seeds 0 1 2
    # on GPUs: --tier gpu --launch "accelerate launch --num_processes 8"
    # the generation half: a DiT on the latents of hieratok and singlescale, two seeds each
    python train/experiment.py ... --dit-seeds 0 1

Resumable: a run with a recorded final evaluation is skipped, an unfinished one resumes from its newest checkpoint
(stage 1 resumes by default), and the results file is rewritten after every run. Results: `--results PREFIX` writes
PREFIX.json (one record per run: arm, variant, seed, budget, curve, final metrics, step time) and PREFIX.md (the
table), and PREFIX-curves.html (plotly; PREFIX-curves.png too where kaleido is installed).

With `--dit-seeds`, the generation half: for each seed a DiT on the latent of the `hieratok` and of the
`singlescale` tokenizer of that seed (trained first if missing), the same DiT budget for both, sampled at the same
fixed points: FD-cls against the validation images and the classifier's accuracy on the samples. From the curves,
per seed, the steps each DiT needs to reach the worse of the two final FD-cls values, and their ratio (the paper's
claim: 1.38x faster with the multi-scale latent). Records land in the same JSON under "generation".
`--dit-arms hieratok` in one process and `--dit-arms singlescale` in another train the two DiTs side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from hieratok import DiT, HieraTok
from hieratok.classifier import Classifier, FeatureExtractor
from hieratok.experiment import curves_figure, markdown, summarize, summarize_generation
from hieratok.latent import score_samples
from hieratok.losses import downsample_image
from hieratok.metrics import frechet_distance_metric, latent_gini_entropy, psnr, ssim, to_unit
from hieratok.training.checkpoint import write_json
from hieratok.training.cli import parse_overrides
from hieratok.training.data import DataError, build_dataset, eval_loader, fit_patch_pca
from hieratok.training.distributed import run_hardware

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# arm -> (tokenizer variant, config overrides)
ARMS = {
    "hieratok": ("hieratok", {}),
    "singlescale": ("singlescale", {}),
    "singlescale-flopmatched": ("singlescale-flopmatched", {}),
    "no-mss": ("no-mss", {}),
    "interp": ("interp", {}),
    "full-attn": ("full-attn", {}),
    "independent-attn": ("independent-attn", {}),
    # multi-scale supervision with the finest scale carrying half the reconstruction loss
    "finest-weighted": ("finest-weighted", {}),
    # why multi-scale supervision costs the finest scale: one explanation per arm (hieratok.config.VARIANT_BUILDERS)
    "stopgrad-coarse": ("stopgrad-coarse", {}),
    "mss-total1": ("mss-total1", {}),
    "scale-heads": ("scale-heads", {}),
    "stopgrad-finest-weighted": ("stopgrad-finest-weighted", {}),
}
KEY_ARMS = ["hieratok", "singlescale", "singlescale-flopmatched", "no-mss"]

# model size and budget per hardware tier (the imagenette128 geometry: 128 px, patch 8, 16 x 16 x 16 latent)
TIERS = {
    "cpu": {"preset": "imagenette128", "steps": 1500, "batch_size": 32, "lr": 4e-4, "curve_images": 256,
            "set": {"enc_dim": 96, "enc_depth": 2, "enc_heads": 4, "dec_dim": 96, "dec_depth": 3, "dec_heads": 4}},
    "gpu": {"preset": "imagenette128", "steps": 20000, "batch_size": 128, "lr": 4e-4, "curve_images": 1000,
            "set": {}},
}
CURVE_POINTS = (0.25, 0.5, 1.0)

# the generation half: one DiT per tokenizer, per tier. The CPU tier is the shipped 128-px DiT's size and first
# budget (6 x 256, 2,400 steps of 128 latents, about 75 minutes a run on one AMX core; resumable across sittings)
# at guidance 6, where the shipped DiT reached 36% at that budget: a 4 x 128 DiT after 1,500 steps of 64 latents
# was still at chance on these tokenizers, at guidance 2 and at 6 alike (10.0-12.4% class accuracy on 250 samples).
GEN_ARMS = ["hieratok", "singlescale"]
DIT_TIERS = {
    "cpu": {"steps": 2400, "batch_size": 128, "lr": 3e-4, "samples": 250, "sample_steps": 10, "guidance": 6.0,
            "set": {}},
    "gpu": {"steps": 20000, "batch_size": 256, "lr": 3e-4, "samples": 2000, "sample_steps": 30, "guidance": 6.0,
            "set": {}},
}


# ------------------------------------------------------------------------------------------------------------
#                                               Evaluation
# ------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(path: Path, images: torch.Tensor, batch: int = 64, classifier: Classifier | None = None) -> dict:
    """Per-scale PSNR, finest SSIM and the finest latent's Gini / entropy of a tokenizer on fixed images; with a
    classifier also rFD-cls, the Fréchet distance between its features of the images and of the reconstructions."""
    tok = HieraTok.from_pretrained(path).eval().to(DEVICE)
    per_scale = {s: [] for s in tok.layout.scales}
    ssims, latents = [], []
    fd = (frechet_distance_metric(FeatureExtractor(classifier.to(DEVICE))).to(DEVICE)
          if classifier is not None else None)
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(DEVICE)
        z = tok.encode(x)
        latents.append(z.float().cpu())
        out = tok.decode(z)
        for s, im in zip(out.scales, out.images):
            per_scale[s].append(psnr(im, downsample_image(x, im.shape[-1])).cpu())
        ssims.append(ssim(out.reconstruction, x).cpu())
        if fd is not None:
            fd.update(to_unit(x), real=True)
            fd.update(to_unit(out.reconstruction), real=False)
    finest = tok.layout.finest
    psnrs = {f"{s}x{s}": float(torch.cat(v).mean()) for s, v in per_scale.items()}
    return {"psnr": psnrs[f"{finest}x{finest}"], "psnr_scales": psnrs, "ssim": float(torch.cat(ssims).mean()),
            "latent_density": latent_gini_entropy(torch.cat(latents)), "images": len(images),
            "rfd_cls": float(fd.compute()) if fd is not None else None}


def load_images(spec: str, size: int, limit: int | None, num_workers: int = 0) -> torch.Tensor:
    """The first `limit` images of a fixed, evenly spaced order over the set (all of them when None)."""
    try:
        ds = build_dataset(spec, size, split="test")
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    if limit is not None and limit < len(ds):
        keep = torch.linspace(0, len(ds) - 1, limit).round().long().tolist()
        ds = torch.utils.data.Subset(ds, keep)
    return torch.cat([x for x, _, _ in eval_loader(ds, 100, num_workers) if x is not None])


# ------------------------------------------------------------------------------------------------------------
#                                                 Runs
# ------------------------------------------------------------------------------------------------------------
def budget(args) -> dict:
    tier = TIERS[args.tier]
    return {"preset": args.preset or tier["preset"], "steps": args.steps or tier["steps"],
            "batch_size": args.batch_size or tier["batch_size"], "lr": args.lr or tier["lr"],
            "set": {**tier["set"], **parse_overrides(args.set)},
            "curve_images": args.curve_images or tier["curve_images"]}


def export_steps(steps: int) -> list[int]:
    return sorted({max(1, round(steps * f)) for f in CURVE_POINTS if f < 1})


def run_dir(args, arm: str, seed: int) -> Path:
    return Path(args.output_dir) / arm / f"seed-{seed}"


def trained(out: Path) -> bool:
    return (out / "final" / "model.safetensors").exists()


def check_budget(out: Path, **expected) -> None:
    """A run folder started under another budget (steps, batch, lr, seed) is neither resumed nor recorded as this
    one: its schedule and exports belong to that budget."""
    config = out / "run_config.json"
    if not config.exists():
        return
    args = json.loads(config.read_text())["args"]
    differ = {k: args.get(k) for k, v in expected.items() if args.get(k) != v}
    if differ:
        raise SystemExit(f"error: {out} was started with {differ}, not this budget's "
                         f"{ {k: expected[k] for k in differ} }: pass another --output-dir (or the same budget)")


def train_one(args, b: dict, arm: str, seed: int, out: Path) -> None:
    check_budget(out, steps=b["steps"], batch_size=b["batch_size"], lr=b["lr"], seed=seed)
    variant, overrides = ARMS[arm]
    sets = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in {**b["set"], **overrides}.items()]
    cmd = [*shlex.split(args.launch), str(ROOT / "train" / "stage1.py"), "--preset", b["preset"],
           "--variant", variant, "--data", args.data, "--output-dir", str(out), "--seed", str(seed),
           "--steps", str(b["steps"]), "--batch-size", str(b["batch_size"]), "--lr", str(b["lr"]),
           "--ckpt-every", str(max(1, b["steps"] // 10)), "--sample-every", "0", "--log-every", "25",
           "--export-at", *map(str, export_steps(b["steps"])), *(["--set", *sets] if sets else []),
           *args.stage1_args]
    launch(args, cmd, f"the {arm} run (seed {seed})")


def launch(args, cmd: list[str], what: str) -> None:
    print(f"[{what}] {' '.join(cmd)}", flush=True)
    env = dict(os.environ)
    if args.parallel > 1 and "OMP_NUM_THREADS" not in env:  # runs side by side share the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.parallel))
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"error: {what} failed with exit status {proc.returncode}; rerun the same command to "
                         f"resume it")


def run_record(args, b: dict, arm: str, seed: int, curve_x: torch.Tensor, val_x: torch.Tensor,
               classifier: Classifier | None) -> dict:
    out = run_dir(args, arm, seed)
    check_budget(out, steps=b["steps"], batch_size=b["batch_size"], lr=b["lr"], seed=seed)
    if not trained(out):
        train_one(args, b, arm, seed, out)
    curve = []
    for step in export_steps(b["steps"]):
        m = evaluate(out / "exports" / f"step-{step:08d}", curve_x)
        curve.append({"step": step, "images_seen": step * b["batch_size"], **m})
    m = evaluate(out / "final", curve_x)
    curve.append({"step": b["steps"], "images_seen": b["steps"] * b["batch_size"], **m})
    summary = json.loads((out / "summary.json").read_text())
    cfg = HieraTok.from_pretrained(out / "final").config
    return {"arm": arm, "variant": ARMS[arm][0], "seed": seed, "budget": b, "config": cfg.to_dict(),
            "decoder_tokens": cfg.layout.num_tokens, "curve": curve,
            "final": evaluate(out / "final", val_x, classifier=classifier),
            "step_time_s": summary["wall_s"] / max(1, summary["step"]), "concurrent_runs": args.parallel,
            "hardware": trained_on(out), "path": str(out)}


def trained_on(out: Path) -> str:
    """'CPU' or 'GPU <name>', from the run's run_config.json: runs of one budget on the same data are the same
    experiment on a CPU or a GPU; their step times are not comparable."""
    return run_hardware(json.loads((out / "run_config.json").read_text()))


# ------------------------------------------------------------------------------------------------------------
#                                      Generation: a DiT per tokenizer
# ------------------------------------------------------------------------------------------------------------
def dit_budget(args) -> dict:
    tier = DIT_TIERS[args.tier]
    return {"steps": args.dit_steps or tier["steps"], "batch_size": args.dit_batch_size or tier["batch_size"],
            "lr": tier["lr"], "samples": args.dit_samples or tier["samples"],
            "sample_steps": tier["sample_steps"], "guidance": tier["guidance"],
            "set": {**tier["set"], **parse_overrides(args.dit_set)}}


def dit_dir(args, arm: str, seed: int) -> Path:
    return Path(args.output_dir) / f"dit-{arm}" / f"seed-{seed}"


def train_dit(args, b: dict, db: dict, arm: str, seed: int) -> None:
    """The DiT of one seed on the latent of the same seed's `arm` tokenizer (trained first if it is missing)."""
    tokenizer = run_dir(args, arm, seed)
    if not trained(tokenizer):
        train_one(args, b, arm, seed, tokenizer)
    check_budget(dit_dir(args, arm, seed), steps=db["steps"], batch_size=db["batch_size"], lr=db["lr"], seed=seed)
    sets = [f"{k}={json.dumps(v)}" for k, v in db["set"].items()]
    cmd = [*shlex.split(args.launch), str(ROOT / "train" / "dit.py"), "--preset", b["preset"],
           "--tokenizer", str(tokenizer / "final"), "--data", args.data, "--output-dir", str(dit_dir(args, arm, seed)),
           "--seed", str(seed), "--steps", str(db["steps"]), "--batch-size", str(db["batch_size"]),
           "--lr", str(db["lr"]), "--ckpt-every", str(max(1, db["steps"] // 10)), "--sample-every", "0",
           "--log-every", "25", "--export-at", *map(str, export_steps(db["steps"])),
           *(["--set", *sets] if sets else []), *shlex.split(args.dit_args)]
    launch(args, cmd, f"the DiT on {arm} (seed {seed})")


@torch.no_grad()
def evaluate_generator(path: Path, tokenizer: Path, db: dict, real_fd, classifier: Classifier) -> dict:
    """FD-cls of `db['samples']` class-balanced samples against the validation images (their features in
    `real_fd`) and the classifier's accuracy on them; the same labels and noise seeds for every DiT."""
    fd = real_fd.clone()
    correct = score_samples(DiT.from_pretrained(path).eval().to(DEVICE),
                            HieraTok.from_pretrained(tokenizer).eval().to(DEVICE), db["samples"],
                            steps=db["sample_steps"], guidance=db["guidance"], fd=fd, classifier=classifier.to(DEVICE))
    return {"gfd_cls": float(fd.compute()), "class_accuracy": float(correct.mean()), "samples": len(correct)}


def generation_record(args, b: dict, db: dict, arm: str, seed: int, real_fd, classifier: Classifier) -> dict:
    out = dit_dir(args, arm, seed)
    check_budget(out, steps=db["steps"], batch_size=db["batch_size"], lr=db["lr"], seed=seed)
    if not trained(out):
        train_dit(args, b, db, arm, seed)
    curve = []
    for step in [*export_steps(db["steps"]), db["steps"]]:
        path = out / "final" if step == db["steps"] else out / "exports" / f"step-{step:08d}"
        curve.append({"step": step, "images_seen": step * db["batch_size"],
                      **evaluate_generator(path, out / "tokenizer", db, real_fd, classifier)})
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "final" / "config.json").read_text())
    return {"arm": arm, "seed": seed, "budget": b, "dit_budget": db,
            "tokenizer": str(run_dir(args, arm, seed) / "final"), "config": config, "curve": curve, "final": curve[-1],
            "step_time_s": summary["wall_s"] / max(1, summary["step"]), "concurrent_runs": args.parallel,
            "hardware": trained_on(out), "path": str(out)}


def real_features(classifier: Classifier, images: torch.Tensor, batch: int = 100):
    """An FD-cls accumulator holding the classifier features of `images` as the real set (cloned per DiT)."""
    fd = frechet_distance_metric(FeatureExtractor(classifier.to(DEVICE))).to(DEVICE)
    with torch.no_grad():
        for i in range(0, len(images), batch):
            fd.update(to_unit(images[i:i + batch].to(DEVICE)), real=True)
    return fd


@torch.no_grad()
def linear_reference(args, b: dict, curve_x: torch.Tensor, val_x: torch.Tensor, fit_images: int = 2000) -> dict:
    """The patch-PCA codec of the arms' latent size (the linear shortcut every arm starts from): its finest PSNR on
    the curve images and on the validation images, the line an arm has to rise above."""
    from hieratok import tokenizer_config
    from hieratok.linear import PatchPCA
    cfg = tokenizer_config(b["preset"], **b["set"])
    saved = sorted(Path(args.output_dir).glob("*/seed-*/linear_codec.safetensors"))
    if saved:  # every run fits the same codec (the same evenly spaced training images, whatever the seed)
        codec, source = PatchPCA.load(saved[0]), str(saved[0])
    else:
        codec, n = fit_patch_pca(build_dataset(args.data, cfg.image_size, split="test"), cfg.patch_size,
                                 cfg.latent_channels, fit_images, num_workers=args.num_workers)
        source = f"fitted on {n} training images"

    def mean_psnr(images):
        return float(torch.cat([psnr(codec.reconstruct(images[i:i + 64]), images[i:i + 64])
                                for i in range(0, len(images), 64)]).mean())
    return {"name": f"linear-pca-C{codec.latent_channels}", "patch_size": cfg.patch_size,
            "latent_channels": codec.latent_channels, "codec": source,
            "psnr_curve": mean_psnr(curve_x), "psnr_final": mean_psnr(val_x)}


def write_report(prefix: Path, report: dict) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_json(prefix.with_suffix(".json"), report)
    prefix.with_suffix(".md").write_text(markdown(report))
    fig = curves_figure(report["records"], report.get("linear_reference"), report.get("generation"))
    fig.write_html(str(prefix.with_name(prefix.name + "-curves.html")), include_plotlyjs="cdn")
    try:
        width = 1300 if report.get("generation") else 900  # two panels with the generation half
        fig.write_image(str(prefix.with_name(prefix.name + "-curves.png")), width=width, height=420)
    except Exception as e:  # kaleido (and a browser) are optional: the HTML and the JSON carry the same data
        print(f"note: no PNG of the curves ({type(e).__name__}: {e})")


def load_classifier(spec: str | None, preset: str) -> Classifier | None:
    if spec == "none":
        return None
    path = Path(spec) if spec else ROOT / "assets" / f"classifier-{preset}"
    if not (path / "model.safetensors").exists():
        if spec:
            raise SystemExit(f"error: --classifier {spec}: no model.safetensors there")
        print(f"note: no classifier at {path}: rFD-cls is not measured")
        return None
    return Classifier.from_pretrained(path).eval()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="training images (ImageFolder)")
    ap.add_argument("--val", required=True, help="validation images (ImageFolder)")
    ap.add_argument("--output-dir", required=True, help="runs go to OUTPUT/<arm>/seed-<seed>")
    ap.add_argument("--results", default="assets/eval/experiment", help="output prefix for .json / .md / curves")
    ap.add_argument("--tier", default="cpu", choices=sorted(TIERS), help="model size and budget")
    ap.add_argument("--arms", nargs="+", default=KEY_ARMS, choices=sorted(ARMS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--preset", default=None, help="override the tier's preset")
    ap.add_argument("--steps", type=int, default=None, help="override the tier's steps per run")
    ap.add_argument("--batch-size", type=int, default=None, help="override the tier's batch")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model config overrides for every arm")
    ap.add_argument("--curve-images", type=int, default=None, help="validation images behind each curve point")
    ap.add_argument("--val-images", type=int, default=None, help="final evaluation images (default: all)")
    ap.add_argument("--classifier", default=None,
                    help="a classifier from_pretrained directory for rFD-cls at the final evaluation (default: "
                         "assets/classifier-<preset> when it exists; 'none' to skip)")
    ap.add_argument("--launch", default=sys.executable, help='how to start a run, e.g. "accelerate launch"')
    ap.add_argument("--parallel", type=int, default=1,
                    help="train this many runs at once (each with cores / N threads unless OMP_NUM_THREADS is "
                         "set; on one GPU several small runs share it); step times are then measured side by side")
    ap.add_argument("--num-workers", type=int, default=0,
                    help="loader processes for this driver's own image reading (validation images, the linear "
                         "reference's fit); the runs take theirs through --stage1-args / --dit-args")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the report from the recorded runs (and the linear reference); train nothing")
    ap.add_argument("--dit-seeds", nargs="*", type=int, default=[],
                    help="the generation half: for each seed a DiT on the latents of the hieratok and singlescale "
                         "tokenizers of that seed (default: none)")
    ap.add_argument("--dit-arms", nargs="+", default=GEN_ARMS, choices=GEN_ARMS,
                    help="which tokenizers' DiTs this invocation trains (default: both; one arm in each of two "
                         "processes sharing the results file trains the pair side by side)")
    ap.add_argument("--dit-steps", type=int, default=None, help="override the tier's DiT steps")
    ap.add_argument("--dit-batch-size", type=int, default=None, help="override the tier's DiT batch")
    ap.add_argument("--dit-samples", type=int, default=None, help="override the tier's samples per curve point")
    ap.add_argument("--dit-set", nargs="*", default=[], metavar="KEY=VALUE", help="DiT config overrides")
    ap.add_argument("--dit-args", default="", help='passed to every DiT run, e.g. --dit-args="--mixed-precision no"')
    ap.add_argument("--stage1-args", nargs=argparse.REMAINDER, default=[],
                    help="anything after this is passed to every stage-1 run")
    args = ap.parse_args(argv)
    for name, seeds in (("--seeds", args.seeds), ("--dit-seeds", args.dit_seeds)):
        if seeds and (min(seeds) < 0 or len(set(seeds)) != len(seeds)):
            ap.error(f"{name} must be distinct non-negative integers")
    if args.parallel < 1:
        ap.error("--parallel must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    b = budget(args)
    from hieratok import tokenizer_config
    size = tokenizer_config(b["preset"]).image_size
    prefix = Path(args.results)
    records, generation, db = [], [], dit_budget(args)

    def merge_recorded():
        """Add the runs recorded in the results file since we last looked -- by an earlier invocation, or by another
        one writing the same file now (e.g. other arms in a second process) -- so that no writer drops another's
        runs. Results of another budget are not mixed in."""
        path = prefix.with_suffix(".json")
        old = json.loads(path.read_text()) if path.exists() else {}
        for mine, theirs, same in ((records, old.get("records", []), lambda r: r["budget"] == b),
                                   (generation, old.get("generation", []),
                                    lambda r: r["budget"] == b and r["dit_budget"] == db)):
            have = {(r["arm"], r["seed"]) for r in mine}
            mine += [r for r in theirs if same(r) and (r["arm"], r["seed"]) not in have]
    merge_recorded()
    curve_x = load_images(args.val, size, b["curve_images"], args.num_workers)
    val_x = load_images(args.val, size, args.val_images, args.num_workers)
    classifier = load_classifier(args.classifier, b["preset"])
    if args.dit_seeds and classifier is None and not args.report_only:
        raise SystemExit("error: --dit-seeds needs a classifier (--classifier): FD-cls and class accuracy of the "
                         "samples are what the generation half measures")
    reference = linear_reference(args, b, curve_x, val_x)

    def report():
        merge_recorded()
        out = {"tier": args.tier, "budget": b, "val_images": len(val_x), "command": " ".join(sys.argv),
               "linear_reference": reference, "records": records, "summary": summarize(records)}
        if generation:
            out.update(dit_budget=db, generation=generation, generation_summary=summarize_generation(generation))
        return out
    if args.report_only:
        if not records:
            raise SystemExit(f"error: no recorded runs of this budget in {prefix.with_suffix('.json')}")
        write_report(prefix, report())
        print(markdown(report()))
        return
    t0 = time.time()
    todo = [(arm, seed) for seed in args.seeds for arm in args.arms
            if not any(r["arm"] == arm and r["seed"] == seed for r in records)]
    if args.parallel > 1:  # train the missing runs N at a time first; evaluation below is one at a time
        untrained = [(arm, seed) for arm, seed in todo if not trained(run_dir(args, arm, seed))]
        with ThreadPoolExecutor(args.parallel) as pool:
            for f in [pool.submit(train_one, args, b, arm, seed, run_dir(args, arm, seed)) for arm, seed in untrained]:
                f.result()
    for seed in args.seeds:          # seeds outermost: a partial grid has every arm at the same number of seeds
        for arm in args.arms:
            merge_recorded()
            if any(r["arm"] == arm and r["seed"] == seed for r in records):
                print(f"[{arm} seed {seed}] done, skipped")
                continue
            records.append(run_record(args, b, arm, seed, curve_x, val_x, classifier))
            write_report(prefix, report())
            print(f"[{arm} seed {seed}] recorded ({time.time() - t0:.0f} s so far)", flush=True)
    gen_todo = [(arm, seed) for seed in args.dit_seeds for arm in GEN_ARMS if arm in args.dit_arms
                if not any(r["arm"] == arm and r["seed"] == seed for r in generation)]
    if gen_todo:
        if args.parallel > 1:  # (a DiT whose tokenizer is missing trains that first)
            with ThreadPoolExecutor(args.parallel) as pool:
                for f in [pool.submit(train_dit, args, b, db, arm, seed) for arm, seed in gen_todo
                          if not trained(dit_dir(args, arm, seed))]:
                    f.result()
        real_fd = real_features(classifier, val_x)
        for arm, seed in gen_todo:
            merge_recorded()
            if any(r["arm"] == arm and r["seed"] == seed for r in generation):
                continue
            generation.append(generation_record(args, b, db, arm, seed, real_fd, classifier))
            write_report(prefix, report())
            print(f"[DiT on {arm} seed {seed}] recorded ({time.time() - t0:.0f} s so far)", flush=True)
    if records:
        print(markdown(report()))


if __name__ == "__main__":
    main()
