"""Evaluate tokenizers, DiTs and the classifier; write JSON plus a Markdown table.

    python train/evaluate.py --data ../shared/data/cifar10/test --classifier assets/classifier-cifar10 \
        --tokenizer hieratok=assets/hieratok-cifar10 --tokenizer singlescale=assets/singlescale-cifar10 \
        --dit hieratok=assets/dit-hieratok-cifar10 --dit singlescale=assets/dit-singlescale-cifar10 \
        --output assets/eval/cifar10          (writes assets/eval/cifar10.json and .md)

Tokenizer: PSNR and SSIM at every scale (against the input area-downsampled to that scale), LPIPS on the finest
scale when its VGG backbone is available, rFD (Fréchet distance between reconstructions and inputs), and the Gini
coefficient / normalised entropy of the latent density (estimator: `hieratok.metrics.latent_density`) for the
finest latent and each coarser scale.
Generator: gFD (samples vs the evaluation images) and the classifier's accuracy on class-conditional samples.
Fréchet distances are real Inception FID only when `--inception-weights` is given (torch-fidelity's
pt_inception-2015-12-05 file); otherwise they are computed in the classifier's penultimate features and are
reported as FD-cls, never as FID.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hieratok import DiT, HieraTok
from hieratok.classifier import Classifier, FeatureExtractor
from hieratok.evaluation import (check_fd_samples, classifier_accuracy, fit_linear_reference, generator_scores,
                                 linear_scores, paired_difference, real_fd, tokenizer_scores)
from hieratok.hub import paired_tokenizer
from hieratok.losses import load_lpips
from hieratok.metrics import frechet_distance_metric
from hieratok.report import evaluation_markdown as markdown
from hieratok.stats import mean_ci
from hieratok.training.checkpoint import write_json
from hieratok.training.cli import named_paths
from hieratok.training.data import DataError, build_dataset, eval_loader


class Evaluator:
    def __init__(self, args):
        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.finest_psnr: dict = {}  # per-image finest-scale PSNR by tokenizer path / linear geometry (paired CIs)
        try:
            self.dataset = build_dataset(args.data, args.image_size, split="test", max_images=args.max_images,
                                         seed=args.seed)
        except DataError as e:
            raise SystemExit(f"error: {e}") from None
        self.classifier = Classifier.from_pretrained(args.classifier).to(self.device) if args.classifier else None
        self.lpips, self.lpips_note = load_lpips(args.lpips_weights)
        if self.lpips is not None:
            self.lpips = self.lpips.to(self.device)
        if args.inception_weights:
            self.fd_name, self.fd_note = "FID", f"Inception-v3 FID (weights {args.inception_weights})"
        elif self.classifier is not None:
            self.fd_name = "FD-cls"
            self.fd_note = (f"Fréchet distance in the penultimate features ({self.classifier.config.feature_dim}-d) "
                            f"of the classifier {args.classifier}; not FID (no Inception weights available)")
        else:
            self.fd_name, self.fd_note = None, "no Fréchet distance: neither --inception-weights nor --classifier"
        self._real_fd = None

    def batches(self):
        return eval_loader(self.dataset, self.args.batch_size)

    def fd_metric(self):
        if self.fd_name is None:
            return None
        feat = FeatureExtractor(self.classifier) if self.classifier is not None else None
        return frechet_distance_metric(feat, self.args.inception_weights).to(self.device)

    # ---- classifier -----------------------------------------------------------------------------------------
    def classifier_accuracy(self) -> dict:
        return classifier_accuracy(self.classifier, self.batches(), progress=lambda b: tqdm(b, desc="classifier"))

    # ---- tokenizer ------------------------------------------------------------------------------------------
    def tokenizer(self, path: str) -> dict:
        tok = HieraTok.from_pretrained(path).to(self.device)
        scores = tokenizer_scores(tok, self.batches(), lpips=self.lpips, fd=self.fd_metric(),
                                  progress=lambda b: tqdm(b, desc=f"tokenizer {Path(path).name}"))
        self.finest_psnr[path] = scores.psnr[scores.finest]
        return {"path": path, "config": tok.config.to_dict(), "decoder_tokens": tok.layout.num_tokens,
                "params": sum(p.numel() for p in tok.parameters()), **scores.summary()}

    # ---- the linear reference -------------------------------------------------------------------------------
    def linear_reference(self, patch_size: int, channels: int) -> dict:
        """Patch PCA with the latent size of a tokenizer (p x p patches, C components), fitted on training images
        (`--fit-data`), evaluated like a tokenizer at its one (finest) scale."""
        a = self.args
        codec, n = fit_linear_reference(a.fit_data, a.image_size, patch_size, channels, a.fit_images, a.batch_size)
        scores = linear_scores(codec, self.batches(), fd=self.fd_metric(),
                               progress=lambda b: tqdm(b, desc=f"linear reference p={patch_size} C={channels}"))
        self.finest_psnr[("linear", patch_size, channels)] = scores.psnr[scores.finest]
        side = scores.finest
        return {"kind": "linear", "fit": {"data": a.fit_data, "images": n}, "patch_size": patch_size,
                "latent_channels": channels, "decoder_tokens": side * side, "params": codec.components.numel(),
                **scores.summary()}

    # ---- generator ------------------------------------------------------------------------------------------
    def real_fd_features(self):
        """An FD accumulator holding the evaluation images as the real set (computed once, cloned per DiT)."""
        if self._real_fd is None:
            self._real_fd = real_fd(self.fd_metric(), self.batches(), progress=lambda b: tqdm(b, desc="real features"))
        return self._real_fd.clone()

    def dit(self, dit_path: str, tokenizer_path: str) -> dict:
        a = self.args
        dit = DiT.from_pretrained(dit_path).to(self.device)
        tok = HieraTok.from_pretrained(tokenizer_path).to(self.device)
        t0 = time.time()
        g = generator_scores(dit, tok, a.num_samples, steps=a.sample_steps, guidance=a.guidance,
                             batch_size=a.batch_size, seed=a.seed, allow_few=a.allow_few_samples,
                             fd=self.real_fd_features() if self.fd_name else None, classifier=self.classifier,
                             progress=lambda b: tqdm(b, desc=f"dit {Path(dit_path).name}"))
        return {"dit": dit_path, "tokenizer": tokenizer_path, "samples": a.num_samples, "guidance": a.guidance,
                "sampler_steps": a.sample_steps, "sampler": "heun", "gfd": g["gfd"],
                "class_accuracy": mean_ci(g["correct"]) if g["correct"] is not None else None,
                "seconds": round(time.time() - t0, 1)}


def merged(old: dict, new: dict, drop: tuple[str, ...] = ()) -> dict:
    """`new` added to an earlier report of the same images: entries evaluated again replace the old ones, entries
    named in `drop` leave (an unknown name is an error: a typo would silently keep a stale entry)."""
    if (old["data"], old["images"]) != (new["data"], new["images"]):
        raise SystemExit(f"error: --update: {old['data']} ({old['images']} images) was evaluated before, not "
                         f"{new['data']} ({new['images']} images)")
    out = {**old, "notes": new["notes"],
           "command": "; ".join(c for c in (old["command"], new["command"]) if c)}
    for key in ("tokenizers", "generators"):
        out[key] = {**old.get(key, {}), **new.get(key, {})}
    unknown = [n for n in drop if not any(n in out[key] for key in ("tokenizers", "generators"))]
    if unknown:
        raise SystemExit(f"error: --drop: {', '.join(unknown)} not in the report (it has "
                         f"{', '.join([*out['tokenizers'], *out['generators']])})")
    for key in ("tokenizers", "generators"):
        out[key] = {n: v for n, v in out[key].items() if n not in drop}
    if new.get("classifier"):
        out["classifier"] = new["classifier"]
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="evaluation images: an ImageFolder root or cifar10:ROOT (test)")
    ap.add_argument("--tokenizer", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--dit", action="append", default=[], metavar="NAME=PATH",
                    help="a DiT directory; paired with the tokenizer it ships (DIR/tokenizer), else the "
                         "--dit-tokenizer NAME, else the --tokenizer of the same NAME")
    ap.add_argument("--paired-against", default="singlescale", metavar="NAME",
                    help="the --tokenizer every other one's finest PSNR is compared with, image by image")
    ap.add_argument("--dit-tokenizer", action="append", default=[], metavar="NAME=PATH",
                    help="tokenizer (with latent statistics) for the DiT NAME, if not the --tokenizer NAME")
    ap.add_argument("--classifier", default=None, help="classifier directory (FD-cls, sample class accuracy)")
    ap.add_argument("--lpips-weights", default=None, help="torchvision's vgg16-397923af.pth")
    ap.add_argument("--inception-weights", default=None, help="torch-fidelity's pt_inception-2015-12-05 weights")
    ap.add_argument("--image-size", type=int, default=None,
                    help="evaluation image size (default: the first tokenizer's, else the classifier's)")
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--num-samples", type=int, default=10_000)
    ap.add_argument("--sample-steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allow-few-samples", action="store_true",
                    help="compute a Fréchet distance from fewer samples than feature dimensions (refused otherwise: "
                         "the covariance is singular)")
    ap.add_argument("--fit-data", default=None,
                    help="training images for the linear reference (patch PCA with each tokenizer's latent size); "
                         "default: the 'train' folder beside --data")
    ap.add_argument("--fit-images", type=int, default=2000, help="training images the linear reference is fitted on")
    ap.add_argument("--output", required=True, help="output prefix: writes PREFIX.json and PREFIX.md")
    ap.add_argument("--update", action="store_true",
                    help="add to PREFIX.json instead of replacing it: its tokenizers, generators and classifier stay "
                         "unless evaluated again here (same data and image count required); both commands are kept")
    ap.add_argument("--drop", nargs="+", default=[], metavar="NAME",
                    help="with --update: remove these tokenizers or generators from the report (e.g. a guidance sweep "
                         "of a DiT no longer shipped)")
    return ap.parse_args(argv)


def dit_tokenizers(dits: dict[str, str], tokenizers: dict[str, str], given: dict[str, str]) -> dict[str, str]:
    """The tokenizer each DiT's samples are decoded with: its --dit-tokenizer, else the one its folder ships (the
    tokenizer it was trained on, `hieratok.hub.paired_tokenizer`), else the --tokenizer of the same name."""
    own = {name: str(p) for name, path in dits.items() if name not in given and (p := paired_tokenizer(path))}
    for name, path in own.items():
        print(f"DiT {name}: decoded with the tokenizer it ships, {path}")
    return {**tokenizers, **own, **given}


def main(argv=None):
    args = parse_args(argv)
    tokenizers, dits = named_paths(args.tokenizer, "--tokenizer"), named_paths(args.dit, "--dit")
    dit_toks = dit_tokenizers(dits, tokenizers, named_paths(args.dit_tokenizer, "--dit-tokenizer"))
    for name in dits:
        if name not in dit_toks:
            raise SystemExit(f"error: no tokenizer for DiT {name!r}: pass --tokenizer {name}=PATH or "
                             f"--dit-tokenizer {name}=PATH")
    if dits and args.classifier is None and args.inception_weights is None:
        print("warning: no --classifier and no --inception-weights: generator metrics limited")
    if args.image_size is None:
        from hieratok.classifier import ClassifierConfig
        from hieratok.config import HieraTokConfig
        first = next(iter({**tokenizers, **dit_toks}.values()), None)
        if first is not None:
            args.image_size = HieraTokConfig.from_dict(json.loads((Path(first) / "config.json").read_text())).image_size
        elif args.classifier:
            args.image_size = ClassifierConfig.from_dict(
                json.loads((Path(args.classifier) / "config.json").read_text())).image_size
        else:
            args.image_size = 32
    ev = Evaluator(args)
    if dits and ev.fd_name:  # before any work: a DiT's Fréchet distance needs samples >= feature dimensions
        try:
            check_fd_samples(args.num_samples, ev.fd_metric(), args.allow_few_samples)
        except ValueError as e:
            raise SystemExit(f"error: --num-samples: {e}") from None
    if ev.lpips is None:
        print(f"warning: {ev.lpips_note}")
    report = {"data": args.data, "images": len(ev.dataset), "command": " ".join(sys.argv),
              "notes": {"fd": ev.fd_note, "fd_name": ev.fd_name, "lpips": ev.lpips_note,
                        "latent_density": "Gini / normalised entropy at 2,000 latents (evenly spaced over the set) "
                                          "of a 24x24 histogram over the first two principal components "
                                          "(whitened, [-3, 3]^2) of the standardised flattened latents; see "
                                          "hieratok.metrics.latent_density"}}
    if ev.classifier is not None:
        report["classifier"] = ev.classifier_accuracy()
    report["tokenizers"] = {n: ev.tokenizer(p) for n, p in tokenizers.items()}
    if tokenizers:
        if args.fit_data is None:
            sibling = Path(args.data).parent / "train"
            if ":" in args.data or not sibling.is_dir():
                raise SystemExit("error: the linear reference needs training images: pass --fit-data PATH")
            args.fit_data = str(sibling)
        geometries = sorted({(t["config"]["patch_size"], t["config"]["latent_channels"])
                             for t in report["tokenizers"].values()})
        for p, c in geometries:
            report["tokenizers"][f"linear-pca-C{c}"] = ev.linear_reference(p, c)
        # each tokenizer against the linear codec of its latent size, image by image (a paired interval)
        for name, t in tokenizers.items():
            result = report["tokenizers"][name]
            key = ("linear", result["config"]["patch_size"], result["config"]["latent_channels"])
            diff = paired_difference(ev.finest_psnr[t], ev.finest_psnr[key])
            result["finest_psnr_minus_linear"] = {**diff, "reference": f"linear-pca-C{key[2]}"}
        # and against the baseline tokenizer (--paired-against), image by image
        base = tokenizers.get(args.paired_against)
        for name, t in tokenizers.items():
            if base is not None and name != args.paired_against:
                diff = paired_difference(ev.finest_psnr[t], ev.finest_psnr[base])
                report["tokenizers"][name]["finest_psnr_minus_baseline"] = {**diff, "reference": args.paired_against}
    report["generators"] = {n: ev.dit(p, dit_toks[n]) for n, p in dits.items()}
    out = Path(args.output)
    if args.update and out.with_suffix(".json").exists():
        report = merged(json.loads(out.with_suffix(".json").read_text()), report, tuple(args.drop))
    elif args.drop:
        raise SystemExit("error: --drop removes entries from an earlier report: it needs --update and PREFIX.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), report)
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
