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
`--dit-arms hieratok` in one process and `--dit-arms singlescale` in another train the two DiTs side by side;
`--dit-arms stopgrad-shared-context` (any arm) adds that tokenizer's DiT, compared with single-scale's the same way.
The spectral intervention, `--dit-args "--latent-spectrum-like OUT/hieratok/seed-0/final"` with `--dit-arms
singlescale` and its own `--output-dir` (the tokenizer linked in), trains DiTs on single-scale's latent given the
paper recipe's power spectrum; they are recorded as "singlescale (spectrum of hieratok)", compared with both arms'
DiTs like any arm's, and never pooled with plain ones (a plain DiT's folder is refused for them, and back).
`--latent-channels-like` (another tokenizer's channel correlations) and `--latent-covariance-like` (all its
second-order statistics) are recorded the same way: "ARM (channels of TARGET)", "ARM (covariance of TARGET)".
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # started as a script (python train/experiment.py): its study module is train.*
    sys.path.insert(0, str(ROOT))

from hieratok import DiT, HieraTok  # noqa: E402
from hieratok.classifier import Classifier, FeatureExtractor  # noqa: E402
from hieratok.evaluation import (fit_linear_reference, generator_scores, linear_scores, real_fd,  # noqa: E402
                                 tokenizer_scores)
from hieratok.metrics import frechet_distance_metric  # noqa: E402
from hieratok.report import FIGURE_HEIGHT, curves_figure, front_figure  # noqa: E402
from hieratok.training.checkpoint import write_json  # noqa: E402
from hieratok.training.data import DataError, build_dataset, eval_loader  # noqa: E402
from hieratok.training.distributed import run_hardware  # noqa: E402
from train.study import (ARMS, GEN_ARMS, GEN_BASELINE, KEY_ARMS, SHAPING_KINDS, TIERS, budget,  # noqa: E402
                         dit_budget, dit_label, export_steps, markdown, summarize, summarize_generation)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# ------------------------------------------------------------------------------------------------------------
#                                               Evaluation
# ------------------------------------------------------------------------------------------------------------
def fd_metric(classifier: Classifier | None):
    """A fresh FD-cls accumulator in the classifier's features (None without a classifier)."""
    if classifier is None:
        return None
    return frechet_distance_metric(FeatureExtractor(classifier.to(DEVICE))).to(DEVICE)


def evaluate(path: Path, images: torch.Tensor, classifier: Classifier | None = None) -> dict:
    """A tokenizer's finest PSNR, per-scale PSNR, finest SSIM and finest latent Gini / entropy on fixed images
    (`hieratok.evaluation`); with a classifier also rFD-cls between the images and their reconstructions."""
    tok = HieraTok.from_pretrained(path).eval().to(DEVICE)
    return tokenizer_scores(tok, images, fd=fd_metric(classifier)).means()


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


def run_command(args, script: str, run: dict, out: Path, seed: int, *extra: str) -> list[str]:
    """The command line of one run of the grid (a tokenizer by `train/stage1.py`, a DiT by `train/dit.py`): the
    budget `run` (steps, batch, lr, config overrides), checkpoints at tenths of it, exports at the curve points.
    A folder started under another budget is refused."""
    check_budget(out, steps=run["steps"], batch_size=run["batch_size"], lr=run["lr"], seed=seed)
    sets = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in run["set"].items()]
    return [*shlex.split(args.launch), str(ROOT / "train" / script), "--data", args.data, "--output-dir", str(out),
            "--seed", str(seed), "--steps", str(run["steps"]), "--batch-size", str(run["batch_size"]),
            "--lr", str(run["lr"]), "--ckpt-every", str(max(1, run["steps"] // 10)), "--sample-every", "0",
            "--log-every", "25", "--export-at", *map(str, export_steps(run["steps"])),
            *(["--set", *sets] if sets else []), *extra]


def train_one(args, b: dict, arm: str, seed: int, out: Path) -> None:
    cmd = run_command(args, "stage1.py", b, out, seed, "--preset", b["preset"], "--variant", arm, *args.stage1_args)
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
    return {"arm": arm, "variant": arm, "seed": seed, "budget": b, "config": cfg.to_dict(),
            "decoder_tokens": cfg.layout.num_tokens, "curve": curve,
            "final": evaluate(out / "final", val_x, classifier=classifier),
            "step_time_s": summary["wall_s"] / max(1, summary["step"]), "concurrent_runs": args.parallel,
            **trained_conditions(out), "path": str(out)}


def trained_conditions(out: Path) -> dict:
    """What a run was trained on and in, from its run_config.json: `hardware` ('CPU' or 'GPU <name>': runs of one
    budget on the same data are the same experiment on either, their step times are not comparable), the `machine`
    (CPU model or GPU name) and the `threads` its processes used (`train/study.py` pools step times over seeds only
    where these agree), and the mixed `precision` used ('bf16' or 'no': `--mixed-precision auto` picks by hardware,
    so two seeds of one arm can differ)."""
    cfg = json.loads((out / "run_config.json").read_text())
    return {"hardware": run_hardware(cfg), "machine": cfg.get("hardware"),
            "threads": cfg.get("speed", {}).get("threads"),
            "precision": cfg.get("mixed_precision", {}).get("used")}


# ------------------------------------------------------------------------------------------------------------
#                                      Generation: a DiT per tokenizer
# ------------------------------------------------------------------------------------------------------------
def dit_dir(args, arm: str, seed: int) -> Path:
    return Path(args.output_dir) / f"dit-{arm}" / f"seed-{seed}"


def dit_shaping(args) -> dict:
    """The tokenizers whose power spectrum, channel correlations or second-order statistics `--dit-args` gives the
    DiTs' latents (`train/dit.py --latent-spectrum-like`, `--latent-channels-like`, `--latent-covariance-like`):
    {"latent_KIND_like": PATH or None} for each KIND of `SHAPING_KINDS`, all None for plain DiTs."""
    ap = argparse.ArgumentParser(add_help=False)
    for kind in SHAPING_KINDS:
        ap.add_argument(f"--latent-{kind}-like", default=None)
    return vars(ap.parse_known_args(shlex.split(args.dit_args))[0])


def shaped_label(args, arm: str) -> str:
    s = dit_shaping(args)
    return dit_label(arm, *(s[f"latent_{kind}_like"] for kind in SHAPING_KINDS))


def train_dit(args, b: dict, db: dict, arm: str, seed: int) -> None:
    """The DiT of one seed on the latent of the same seed's `arm` tokenizer (trained first if it is missing)."""
    # a plain DiT's folder is not resumed as a shaped one, nor the other way round
    check_budget(dit_dir(args, arm, seed), **dit_shaping(args))
    tokenizer = run_dir(args, arm, seed)
    if not trained(tokenizer):
        train_one(args, b, arm, seed, tokenizer)
    cmd = run_command(args, "dit.py", db, dit_dir(args, arm, seed), seed, "--preset", b["preset"],
                      "--tokenizer", str(tokenizer / "final"), *shlex.split(args.dit_args))
    launch(args, cmd, f"the DiT on {arm} (seed {seed})")


def evaluate_generator(path: Path, tokenizer: Path, db: dict, real, classifier: Classifier) -> dict:
    """FD-cls of `db['samples']` class-balanced samples against the validation images (their features in `real`)
    and the classifier's accuracy on them; the same labels and noise seeds for every DiT."""
    g = generator_scores(DiT.from_pretrained(path).eval().to(DEVICE),
                         HieraTok.from_pretrained(tokenizer).eval().to(DEVICE), db["samples"],
                         steps=db["sample_steps"], guidance=db["guidance"], fd=real.clone(),
                         classifier=classifier.to(DEVICE), allow_few=True)  # the CPU tier's 250 < 256: DIT_TIERS
    return {"gfd_cls": g["gfd"], "class_accuracy": float(g["correct"].mean()), "samples": len(g["correct"])}


def generation_record(args, b: dict, db: dict, arm: str, seed: int, real, classifier: Classifier) -> dict:
    out = dit_dir(args, arm, seed)
    check_budget(out, steps=db["steps"], batch_size=db["batch_size"], lr=db["lr"], seed=seed, **dit_shaping(args))
    if not trained(out):
        train_dit(args, b, db, arm, seed)
    curve = []
    for step in [*export_steps(db["steps"]), db["steps"]]:
        path = out / "final" if step == db["steps"] else out / "exports" / f"step-{step:08d}"
        curve.append({"step": step, "images_seen": step * db["batch_size"],
                      **evaluate_generator(path, out / "tokenizer", db, real, classifier)})
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "final" / "config.json").read_text())
    # a DiT whose latent was given another tokenizer's second-order statistics is its own row: `dit_label`
    run_config = json.loads((out / "run_config.json").read_text())
    return {"arm": shaped_label(args, arm), "tokenizer_arm": arm,
            **{f"latent_{kind}": run_config.get(f"latent_{kind}") for kind in SHAPING_KINDS},
            "seed": seed, "budget": b, "dit_budget": db,
            "tokenizer": str(run_dir(args, arm, seed) / "final"), "config": config, "curve": curve, "final": curve[-1],
            "step_time_s": summary["wall_s"] / max(1, summary["step"]), "concurrent_runs": args.parallel,
            **trained_conditions(out), "path": str(out)}


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
        codec, n = fit_linear_reference(args.data, cfg.image_size, cfg.patch_size, cfg.latent_channels, fit_images,
                                        num_workers=args.num_workers)
        source = f"fitted on {n} training images"
    return {"name": f"linear-pca-C{codec.latent_channels}", "patch_size": cfg.patch_size,
            "latent_channels": codec.latent_channels, "codec": source,
            "psnr_curve": linear_scores(codec, curve_x).means()["psnr"],
            "psnr_final": linear_scores(codec, val_x).means()["psnr"]}


def write_report(prefix: Path, report: dict) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_json(prefix.with_suffix(".json"), report)
    prefix.with_suffix(".md").write_text(markdown(report))
    figures = {"curves": (curves_figure(report["records"], report.get("linear_reference"), report.get("generation")),
                          1300 if report.get("generation") else 900),  # two panels with the generation half
               "front": (front_figure(report["records"], report.get("generation_summary")), 1000)}
    for name, (fig, width) in figures.items():
        if fig is None:  # no DiTs beside the baseline's yet: no trade-off to draw
            continue
        fig.write_html(str(prefix.with_name(f"{prefix.name}-{name}.html")), include_plotlyjs="cdn")
        try:
            fig.write_image(str(prefix.with_name(f"{prefix.name}-{name}.png")), width=width, height=FIGURE_HEIGHT)
        except Exception as e:  # kaleido (and a browser) are optional: the HTML and the JSON carry the same data
            print(f"note: no PNG of the {name} figure ({type(e).__name__}: {e})")


def load_classifier(spec: str | None, preset: str) -> tuple[Classifier | None, dict | None]:
    """The classifier behind FD-cls and class accuracy, and its identity (`classifier_identity`); (None, None)
    with --classifier none or when the default one is missing."""
    if spec == "none":
        return None, None
    path = Path(spec) if spec else ROOT / "assets" / f"classifier-{preset}"
    if not (path / "model.safetensors").exists():
        if spec:
            raise SystemExit(f"error: --classifier {spec}: no model.safetensors there")
        print(f"note: no classifier at {path}: rFD-cls is not measured")
        return None, None
    classifier = Classifier.from_pretrained(path).eval()
    return classifier, classifier_identity(path, classifier)


def classifier_identity(path: Path, classifier: Classifier) -> dict:
    """What a record's FD-cls and class accuracy were measured with: FD in one classifier's features is not
    comparable with FD in another's, so every record names its classifier by the hash of its weights."""
    digest = hashlib.sha256()
    with open(Path(path) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    path = Path(path).resolve()
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return {"path": str(shown), "sha256": digest.hexdigest()[:16], "image_size": classifier.config.image_size}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="training images (ImageFolder)")
    ap.add_argument("--val", required=True, help="validation images (ImageFolder)")
    ap.add_argument("--output-dir", required=True, help="runs go to OUTPUT/<arm>/seed-<seed>")
    ap.add_argument("--results", default="assets/eval/experiment", help="output prefix for .json / .md / curves")
    ap.add_argument("--tier", default="cpu", choices=sorted(TIERS), help="model size and budget")
    ap.add_argument("--arms", nargs="+", default=KEY_ARMS, choices=ARMS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--preset", default=None, help="override the tier's preset")
    ap.add_argument("--steps", type=int, default=None, help="override the tier's steps per run")
    ap.add_argument("--batch-size", type=int, default=None, help="override the tier's batch")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model config overrides for every arm")
    ap.add_argument("--curve-images", type=int, default=None, help="validation images behind each curve point")
    ap.add_argument("--val-images", type=int, default=None, help="final evaluation images (default: all)")
    ap.add_argument("--classifier", default=None,
                    help="a classifier from_pretrained directory for rFD-cls at the final evaluation and the "
                         "generation half's FD-cls and class accuracy (default: assets/classifier-<preset> when it "
                         "exists; 'none' to skip); every record names it, and a results file is not mixed across "
                         "classifiers")
    ap.add_argument("--launch", default=sys.executable, help='how to start a run, e.g. "accelerate launch"')
    ap.add_argument("--parallel", type=int, default=1,
                    help="train this many runs at once (each with cores / N threads unless OMP_NUM_THREADS is "
                         "set; on one GPU several small runs share it); step times are then measured side by side")
    ap.add_argument("--num-workers", type=int, default=0,
                    help="loader processes for this driver's own image reading (validation images, the linear "
                         "reference's fit); the runs take theirs through --stage1-args / --dit-args")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the report from the recorded runs (and the linear reference); train nothing")
    ap.add_argument("--merge", nargs="+", default=[], metavar="RESULTS.json",
                    help="add the runs another results file recorded at this budget (e.g. arms trained by another "
                         "process or machine into their own file) to --results; runs already there are kept")
    ap.add_argument("--dit-seeds", nargs="*", type=int, default=[],
                    help="the generation half: for each seed a DiT on the latent of each --dit-arms tokenizer of "
                         "that seed (default: none)")
    ap.add_argument("--dit-arms", nargs="+", default=GEN_ARMS, choices=ARMS, metavar="ARM",
                    help=f"which tokenizers' DiTs this invocation trains (default: {' and '.join(GEN_ARMS)}; any arm, "
                         f"each compared with the {GEN_BASELINE} DiT of the same seed; one arm in each of two "
                         f"processes sharing the results file trains them side by side)")
    ap.add_argument("--dit-steps", type=int, default=None, help="override the tier's DiT steps")
    ap.add_argument("--dit-batch-size", type=int, default=None, help="override the tier's DiT batch")
    ap.add_argument("--dit-samples", type=int, default=None, help="override the tier's samples per curve point")
    ap.add_argument("--dit-set", nargs="*", default=[], metavar="KEY=VALUE", help="DiT config overrides")
    ap.add_argument("--dit-args", default="",
                    help='passed to every DiT run, e.g. --dit-args="--mixed-precision no"; with '
                         '"--latent-KIND-like TOKENIZER" (KIND spectrum, channels or covariance: the interventions) '
                         'the DiTs are recorded as "ARM (KIND of TARGET)", their own rows, and want their own '
                         '--output-dir')
    ap.add_argument("--stage1-args", nargs=argparse.REMAINDER, default=[],
                    help="anything after this is passed to every stage-1 run")
    args = ap.parse_args(argv)
    for name, seeds in (("--seeds", args.seeds), ("--dit-seeds", args.dit_seeds)):
        if seeds and (min(seeds) < 0 or len(set(seeds)) != len(seeds)):
            ap.error(f"{name} must be distinct non-negative integers")
    if args.parallel < 1:
        ap.error("--parallel must be at least 1")
    return args


class Results:
    """The results file: this budget's run records (`records`) and DiT records (`generation`), shared by every
    invocation and by processes writing it at once (other arms in a second process): `merge` adds what the file
    gained since we last looked, so that no writer drops another's runs. Results of another budget are not mixed in,
    nor FD-cls measured with another classifier (`classifier`: this invocation's, None when it measures none): a
    record names its classifier (`classifier_identity`), and a file whose records name two is refused."""

    def __init__(self, prefix: Path, b: dict, db: dict, classifier: dict | None = None):
        self.prefix, self.b, self.db, self.classifier = prefix, b, db, classifier
        self.records: list[dict] = []
        self.generation: list[dict] = []
        self.context: dict = {}
        self.merge()

    def merge(self, path: Path | None = None) -> None:
        """Add the runs of this budget that `path` (default: our own file) has and we do not."""
        path = path or self.prefix.with_suffix(".json")
        old = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        for mine, theirs, same in ((self.records, old.get("records", []), lambda r: r["budget"] == self.b),
                                   (self.generation, old.get("generation", []),
                                    lambda r: r["budget"] == self.b and r["dit_budget"] == self.db)):
            have = {(r["arm"], r["seed"]) for r in mine}
            mine += [r for r in theirs if same(r) and (r["arm"], r["seed"]) not in have]
        self.check_classifier(path)

    def check_classifier(self, source: Path) -> None:
        """Refuse records whose FD-cls came from two classifiers, or from another one than this invocation's."""
        named = {r["classifier"]["sha256"]: r["classifier"] for r in self.records + self.generation
                 if r.get("classifier")}
        if self.classifier:
            named.setdefault(self.classifier["sha256"], self.classifier)
        if len(named) > 1:
            which = "; ".join(f"{c['path']} (sha256 {sha}, {c['image_size']} px)" for sha, c in named.items())
            raise SystemExit(f"error: FD-cls of different classifiers would be mixed ({source} and this invocation): "
                             f"{which}. Pass the classifier the recorded runs used (--classifier DIR) or write "
                             f"to another --results file.")

    def has(self, kind: str, arm: str, seed: int) -> bool:
        self.merge()
        return any(r["arm"] == arm and r["seed"] == seed for r in getattr(self, kind))

    def report(self) -> dict:
        self.merge()
        out = {**self.context, "records": self.records, "summary": summarize(self.records)}
        if self.generation:
            out.update(dit_budget=self.db, generation=self.generation,
                       generation_summary=summarize_generation(self.generation))
        return out

    def add(self, kind: str, record: dict) -> None:
        getattr(self, kind).append({**record, "classifier": self.classifier})
        write_report(self.prefix, self.report())


def train_missing(args, runs: list[tuple[str, int]], train, folder) -> None:
    """With --parallel N, train the missing runs N at a time (their evaluation then follows one at a time)."""
    if args.parallel > 1:
        with ThreadPoolExecutor(args.parallel) as pool:
            for f in [pool.submit(train, arm, seed) for arm, seed in runs if not trained(folder(args, arm, seed))]:
                f.result()


def main(argv=None):
    args = parse_args(argv)
    b, db = budget(args), dit_budget(args)
    from hieratok import tokenizer_config
    size = tokenizer_config(b["preset"]).image_size
    classifier, classifier_id = load_classifier(args.classifier, b["preset"])
    if args.dit_seeds and classifier is None and not args.report_only:
        raise SystemExit("error: --dit-seeds needs a classifier (--classifier): FD-cls and class accuracy of the "
                         "samples are what the generation half measures")
    # --report-only measures no FD: it checks only that the records agree with each other
    store = Results(Path(args.results), b, db, None if args.report_only else classifier_id)
    for other in args.merge:
        if not Path(other).is_file():
            raise SystemExit(f"error: --merge {other}: no such file")
        store.merge(Path(other))
    curve_x = load_images(args.val, size, b["curve_images"], args.num_workers)
    val_x = load_images(args.val, size, args.val_images, args.num_workers)
    store.context = {"tier": args.tier, "budget": b, "val_images": len(val_x), "command": " ".join(sys.argv),
                     "linear_reference": linear_reference(args, b, curve_x, val_x)}
    if args.report_only:
        if not store.records:
            raise SystemExit(f"error: no recorded runs of this budget in {store.prefix.with_suffix('.json')}")
        write_report(store.prefix, store.report())
        print(markdown(store.report()))
        return
    t0 = time.time()
    grid = [(arm, seed) for seed in args.seeds for arm in args.arms]  # seeds outermost: a partial grid has every
    train_missing(args, [(a, s) for a, s in grid if not store.has("records", a, s)],  # arm at the same seeds
                  lambda arm, seed: train_one(args, b, arm, seed, run_dir(args, arm, seed)), run_dir)
    for arm, seed in grid:
        if store.has("records", arm, seed):
            print(f"[{arm} seed {seed}] done, skipped")
            continue
        store.add("records", run_record(args, b, arm, seed, curve_x, val_x, classifier))
        print(f"[{arm} seed {seed}] recorded ({time.time() - t0:.0f} s so far)", flush=True)

    def label(arm: str) -> str:  # the DiT's row: the arm, or the intervention on it (`dit_label`)
        return shaped_label(args, arm)

    gen = [(arm, seed) for seed in args.dit_seeds for arm in dict.fromkeys(args.dit_arms)
           if not store.has("generation", label(arm), seed)]
    if gen:  # (a DiT whose tokenizer is missing trains that first)
        train_missing(args, gen, lambda arm, seed: train_dit(args, b, db, arm, seed), dit_dir)
        real = real_fd(fd_metric(classifier), val_x)
        for arm, seed in gen:
            if not store.has("generation", label(arm), seed):
                store.add("generation", generation_record(args, b, db, arm, seed, real, classifier))
                print(f"[DiT on {arm} seed {seed}] recorded ({time.time() - t0:.0f} s so far)", flush=True)
    if store.records:
        print(markdown(store.report()))


if __name__ == "__main__":
    main()
