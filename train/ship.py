"""Copy trained checkpoints into assets/ (float16 storage; the app upcasts) and record what a test re-checks:
the reconstruction PSNR of a fixed generated image per tokenizer, a DiT sample's statistics, the classifier's
prediction.

    python train/ship.py --family cifar10 --runs runs --assets assets
    python train/ship.py --family imagenette128 --runs runs --assets assets

A family's entries whose run folder does not exist yet are skipped (and said); assets/expected.json keeps every
shipped family's fingerprints.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from hieratok import DiT, HieraTok, generate
from hieratok.classifier import Classifier
from hieratok.explorer.models import dit_tokenizer_path
from hieratok.metrics import psnr

# family -> assets folder -> (class, folder under --runs[, folder of the latent statistics]); a tokenizer ships from
# its DiT run's copy, which holds the latent statistics the generator needs, or -- after a phase that keeps the
# encoder frozen (a stage-2 decoder fine-tune, a `stage1.py --train coarse` finish), so every finest latent is as it
# was -- from that run, with the statistics of the DiT run's copy (checked: the encoder must be identical)
FAMILIES = {
    "cifar10": {
        # the recipe as phases on the single-scale tokenizer (its coarse scales' own parts learned with everything
        # else frozen, stage 1 --warm-start --train coarse; then stage 2): its encoder, so its latent, and the
        # latent statistics are the single-scale tokenizer's (checked)
        "hieratok-cifar10": (HieraTok, "hieratok-warm-s2/final", "dit-singlescale/tokenizer"),
        "singlescale-cifar10": (HieraTok, "dit-singlescale/tokenizer"),
        # the paper recipe's tokenizer (the evaluation's hieratok-paper; the app does not serve it), and the same
        # weights as the tokenizer the HieraTok DiT generates with: the one it was trained on, in its own folder
        "hieratok-paper-cifar10": (HieraTok, "dit-hieratok/tokenizer"),
        "dit-hieratok-cifar10/tokenizer": (HieraTok, "dit-hieratok/tokenizer"),
        "dit-hieratok-cifar10": (DiT, "dit-hieratok-long/final"),
        "dit-singlescale-cifar10": (DiT, "dit-singlescale-long/final"),
        "classifier-cifar10": (Classifier, "classifier/final"),
    },
    "imagenette128": {
        # the recipe (stopgrad-shared-context, run hieratok-imagenette128-context, warm-started from the single-scale
        # tokenizer on the CPU), its coarse scales' own parts then trained further (stage 1 --train coarse, from the
        # float16 copy the DiT run trained on, whose encoder and latent statistics it keeps), and the single-scale
        # tokenizer (stage 2: singlescale-imagenette128-s2rec) from the copy its DiT run trained on
        "hieratok-imagenette128": (HieraTok, "hieratok-imagenette128-context-coarse/final"),
        "singlescale-imagenette128": (HieraTok, "dit-singlescale-22k/tokenizer"),
        # the paper recipe's tokenizer (the evaluation's hieratok-paper; the app does not serve it)
        "hieratok-paper-imagenette128": (HieraTok, "hieratok-imagenette128-s2rec/final"),
        # the DiTs: exports of the 22,000-step runs (model_card.RUNS names the step)
        "dit-hieratok-imagenette128": (DiT, "dit-hieratok-22k/exports/step-00005500"),
        "dit-singlescale-imagenette128": (DiT, "dit-singlescale-22k/exports/step-00005500"),
        "classifier-imagenette128": (Classifier, "classifier-imagenette128/final"),
    },
}
SHIPPED = {name: entry for family in FAMILIES.values() for name, entry in family.items()}


def fixed_image(size: int = 32) -> torch.Tensor:
    """A deterministic, natural-ish test picture in [-1, 1]: smooth colour gradients, a disc and a bar."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    r = 0.5 + 0.4 * torch.sin(2 * math.pi * x)
    g = 0.3 + 0.5 * y
    b = 0.6 - 0.3 * x * y
    disc = ((x - 0.35) ** 2 + (y - 0.6) ** 2) < 0.04
    img = torch.stack([torch.where(disc, 0.9, r), torch.where(disc, 0.8, g), torch.where(disc, 0.1, b)])
    img[:, int(0.15 * size):int(0.25 * size), int(0.5 * size):int(0.9 * size)] = 0.05
    return img * 2 - 1


def load_entry(runs: Path, entry: tuple):
    cls, src, *stats = entry
    model = cls.from_pretrained(runs / src)
    if stats:
        donor = HieraTok.from_pretrained(runs / stats[0])
        differ = model.latent_differences(donor, statistics=False)  # the latent the statistics describe
        if differ or not donor.has_latent_stats:
            raise SystemExit(f"error: {runs / stats[0]} cannot lend its latent statistics to {runs / src}: "
                             + (f"their latents differ ({len(differ)} differences, e.g. {differ[0]})" if differ
                                else "it has none"))
        model.set_latent_stats(donor.latent_mean, donor.latent_std, count=int(donor.latent_stats_count))
    return model


def tokenizer_of(dit_name: str, assets: Path | str = "assets") -> Path:
    """The tokenizer a shipped DiT generates with: its own `<dit>/tokenizer` where it ships one, else
    <variant>-<family> for dit-<variant>-<family> (hieratok.explorer.models.dit_tokenizer_path)."""
    return dit_tokenizer_path(Path(assets), dit_name)


@torch.no_grad()
def fingerprint(assets: Path, name: str) -> dict:
    """What test_assets re-checks for one shipped checkpoint."""
    cls = SHIPPED[name][0]
    if cls is HieraTok:
        tok = HieraTok.from_pretrained(assets / name)
        x = fixed_image(tok.config.image_size)[None]
        return {"psnr_fixed_image": float(psnr(tok.reconstruct(x), x)[0])}
    if cls is DiT:
        z, _ = generate(DiT.from_pretrained(assets / name), HieraTok.from_pretrained(tokenizer_of(name, assets)),
                        [3, 7], steps=4, guidance=2.0, seed=0)
        return {"latent_mean": float(z.mean()), "latent_std": float(z.std())}
    clf = Classifier.from_pretrained(assets / name)
    return {"logits_fixed_image": clf(fixed_image(clf.config.image_size)[None])[0].tolist()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--family", default="cifar10", choices=sorted(FAMILIES))
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--assets", default="assets")
    ap.add_argument("--only", nargs="*", default=None, metavar="NAME", help="ship only these assets folders")
    args = ap.parse_args(argv)
    runs, assets = Path(args.runs), Path(args.assets)
    path = assets / "expected.json"
    expected = json.loads(path.read_text()) if path.exists() else {}
    for name, entry in FAMILIES[args.family].items():
        src = entry[1]
        if args.only is not None and name not in args.only:
            continue
        if not all((runs / folder).exists() for folder in entry[1:]):
            print(f"not shipped: {' or '.join(str(runs / f) for f in entry[1:] if not (runs / f).exists())} "
                  f"does not exist")
            continue
        load_entry(runs, entry).save_pretrained(assets / name, dtype=torch.float16)
        expected[name] = fingerprint(assets, name)
        print(f"shipped {runs / src} -> {assets / name}")
    path.write_text(json.dumps(expected, indent=2))
    print(f"recorded {path}")


if __name__ == "__main__":
    main()
