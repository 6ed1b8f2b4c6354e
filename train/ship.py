"""Copy trained checkpoints into assets/ (float16 storage; the app upcasts) and record what a test re-checks:
the reconstruction PSNR of a fixed generated image per tokenizer, a DiT sample's statistics, the classifier's
prediction.

    python train/ship.py --runs runs --assets assets
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hieratok import DiT, HieraTok, generate  # noqa: E402
from hieratok.classifier import Classifier  # noqa: E402
from hieratok.metrics import psnr  # noqa: E402

# assets folder -> (class, folder under --runs)
SHIPPED = {
    "hieratok-cifar10": (HieraTok, "dit-hieratok/tokenizer"),
    "singlescale-cifar10": (HieraTok, "dit-singlescale/tokenizer"),
    "dit-hieratok-cifar10": (DiT, "dit-hieratok-long/final"),
    "dit-singlescale-cifar10": (DiT, "dit-singlescale-long/final"),
    "classifier-cifar10": (Classifier, "classifier/final"),
}


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


@torch.no_grad()
def fingerprints(assets: Path) -> dict:
    x = fixed_image()[None]
    out = {}
    for name in ("hieratok-cifar10", "singlescale-cifar10"):
        tok = HieraTok.from_pretrained(assets / name)
        out[name] = {"psnr_fixed_image": float(psnr(tok.reconstruct(x), x)[0])}
    for name, tok_name in (("dit-hieratok-cifar10", "hieratok-cifar10"),
                           ("dit-singlescale-cifar10", "singlescale-cifar10")):
        z, _ = generate(DiT.from_pretrained(assets / name), HieraTok.from_pretrained(assets / tok_name), [3, 7],
                        steps=4, guidance=2.0, seed=0)
        out[name] = {"latent_mean": float(z.mean()), "latent_std": float(z.std())}
    clf = Classifier.from_pretrained(assets / "classifier-cifar10")
    out["classifier-cifar10"] = {"logits_fixed_image": clf(x)[0].tolist()}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--assets", default="assets")
    args = ap.parse_args(argv)
    runs, assets = Path(args.runs), Path(args.assets)
    for name, (cls, src) in SHIPPED.items():
        cls.from_pretrained(runs / src).save_pretrained(assets / name, dtype=torch.float16)
        print(f"shipped {runs / src} -> {assets / name}")
    (assets / "expected.json").write_text(json.dumps(fingerprints(assets), indent=2))
    print(f"recorded {assets / 'expected.json'}")


if __name__ == "__main__":
    main()
