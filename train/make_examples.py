"""Example images for the app that need no dataset: one DiT sample per class, as 32 x 32 PNGs.

    python train/make_examples.py --output assets/examples
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hieratok import DiT, HieraTok, generate, to_pil
from hieratok.classifier import Classifier
from hieratok.explorer.models import dit_tokenizer_path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokenizer", default=None,
                    help="the tokenizer that decodes the samples (default: the one --dit was trained on, as the app "
                         "picks it: DIT/tokenizer where it ships one, else <variant>-<set> beside dit-<variant>-<set>)")
    ap.add_argument("--dit", default="assets/dit-hieratok-cifar10")
    ap.add_argument("--classifier", default="assets/classifier-cifar10")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default="assets/examples")
    args = ap.parse_args(argv)
    dit_dir = Path(args.dit)
    tokenizer = args.tokenizer or dit_tokenizer_path(dit_dir.parent, dit_dir.name)
    tok, dit = HieraTok.from_pretrained(tokenizer), DiT.from_pretrained(args.dit)
    names = Classifier.from_pretrained(args.classifier).config.class_names
    labels = torch.arange(dit.config.num_classes)
    _, out = generate(dit, tok, labels, steps=args.steps, guidance=args.guidance, seed=args.seed)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(out.reconstruction):
        to_pil(image).save(out_dir / f"dit-sample-{names[i]}.png")
    print(f"wrote {len(labels)} examples to {out_dir}")


if __name__ == "__main__":
    main()
