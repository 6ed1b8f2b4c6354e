"""Are two tokenizers' latents interchangeable? Every tokenizer's encoder against every tokenizer's decoder (finest
PSNR, mean ± 95% interval over images; the diagonal is each tokenizer's own reconstruction) and, per pair of
encoders, how alike their latents are (cosine similarity per image, and the relative L2 distance).

    python train/cross_decode.py --data ../shared/data/imagenette/val --images 1000 \\
        --tokenizer hieratok=assets/hieratok-imagenette128 --tokenizer singlescale=assets/singlescale-imagenette128

Why it matters: a DiT learns a tokenizer's latent, so two DiTs compare two latents only as far as those latents
differ. A tokenizer warm-started from another one's encoder may keep nearly its latent; then a decoder swap costs
almost nothing, and the DiTs on the two latents are close to two trainings on one latent.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from hieratok import HieraTok
from hieratok.metrics import psnr
from hieratok.stats import mean_ci
from hieratok.training.cli import named_paths
from hieratok.training.data import DataError, build_dataset, eval_loader


@torch.no_grad()
def cross_decode(tokenizers: dict[str, HieraTok], x: torch.Tensor, batch_size: int = 100) -> dict:
    """{"psnr": {encoder: {decoder: mean_ci}}, "latents": {"a|b": {"cosine": mean_ci, "relative_l2": float}}}."""
    shapes = {name: tok.config.latent_shape for name, tok in tokenizers.items()}
    if len(set(shapes.values())) > 1 or len({t.config.image_size for t in tokenizers.values()}) > 1:
        raise ValueError(f"the tokenizers' latents or image sizes differ ({shapes}): nothing to exchange")
    z = {name: torch.cat([tok.encode(b) for b in x.split(batch_size)]) for name, tok in tokenizers.items()}
    table = {}
    for enc in tokenizers:
        table[enc] = {}
        for dec, tok in tokenizers.items():
            values = torch.cat([psnr(tok.decode(zb).reconstruction, xb)
                                for zb, xb in zip(z[enc].split(batch_size), x.split(batch_size))])
            table[enc][dec] = mean_ci(values)
    names, latents = list(tokenizers), {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            cos = F.cosine_similarity(z[a].flatten(1), z[b].flatten(1), dim=1)
            latents[f"{a}|{b}"] = {"cosine": mean_ci(cos),
                                   "relative_l2": float((z[a] - z[b]).norm() / z[b].norm())}
    return {"psnr": table, "latents": latents}


def markdown(result: dict, images: int, data: str) -> str:
    names = list(result["psnr"])
    lines = [f"Finest PSNR (dB) on {images} images of {data}, mean ± 95% interval; rows encode, columns decode:", "",
             "| encoder \\ decoder | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for enc in names:
        lines.append(f"| {enc} | " + " | ".join(f"{result['psnr'][enc][d]['mean']:.2f} ± "
                                                  f"{result['psnr'][enc][d]['ci95']:.2f}" for d in names) + " |")
    if result["latents"]:
        lines += ["", "| latents | cosine similarity per image | relative L2 distance |", "|---|---:|---:|"]
        for pair, v in result["latents"].items():
            a, b = pair.split("|")
            lines.append(f"| {a} vs {b} | {v['cosine']['mean']:.4f} ± {v['cosine']['ci95']:.4f} | "
                         f"{v['relative_l2']:.4f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="images (an ImageFolder root or cifar10:ROOT)")
    ap.add_argument("--tokenizer", action="append", default=[], metavar="NAME=PATH", required=True)
    ap.add_argument("--images", type=int, default=1000, help="a fixed random subset of this many images")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    paths = named_paths(args.tokenizer, "--tokenizer")
    if len(paths) < 2:
        raise SystemExit("error: pass at least two --tokenizer NAME=PATH")
    tokenizers = {name: HieraTok.from_pretrained(path).eval() for name, path in paths.items()}
    size = next(iter(tokenizers.values())).config.image_size
    try:
        ds = build_dataset(args.data, size, split="test", max_images=args.images, seed=0)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    x = torch.cat([b for b, _, _ in eval_loader(ds, 100) if b is not None])
    try:
        result = cross_decode(tokenizers, x)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(markdown(result, len(x), args.data))
    if args.json:
        Path(args.json).write_text(json.dumps({"data": args.data, "images": len(x), "tokenizers": paths, **result},
                                              indent=2))


if __name__ == "__main__":
    main()
