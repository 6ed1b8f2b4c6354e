"""The mechanism behind multi-scale supervision's cost: how the finest scale's loss and the coarse scales' losses
pull on the same weights.

    python train/grad_cosine.py --tokenizer assets/hieratok-imagenette128 --data ../shared/data/imagenette/val
    python train/grad_cosine.py --tokenizer runs/experiment/hieratok/seed-0/exports/step-* --data DIR --json out.json

For each tokenizer (e.g. the exports a run wrote at several points of training), on `--images` fixed images:
the gradient of the finest image's reconstruction loss and the gradient of the coarse images' (weighted as the
tokenizer's own config weighs them), each over the encoder, the downsampler and the decoder, their norms and their
cosine. A cosine near -1 means the coarse losses undo what the finest one asks of those weights; near 0, they do
not interfere; a coarse gradient of norm 0 on the encoder is what the stop-gradient arm guarantees.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hieratok import HieraTok
from hieratok.losses import ReconstructionLoss, multiscale_targets

PARTS = ("encoder", "downsampler", "decoder")


def gradient_terms(model: HieraTok, x: torch.Tensor) -> dict[str, list[torch.Tensor | None]]:
    """{'finest': grads, 'coarse': grads}, one entry per parameter (None where a term does not reach it)."""
    cfg = model.config
    weights = ReconstructionLoss(cfg).scale_weights
    out, _ = model(x, sample=False)
    targets = multiscale_targets(x, out)
    terms = [w * (cfg.loss.l1_weight * (p.float() - t).abs().mean()
                  + cfg.loss.mse_weight * (p.float() - t).pow(2).mean())
             for w, p, t in zip(weights, out.images, targets)]
    params = [p for p in model.parameters() if p.requires_grad]
    finest = torch.autograd.grad(terms[-1], params, retain_graph=True, allow_unused=True)
    coarse_loss = sum(terms[:-1]) if len(terms) > 1 else None
    coarse = (torch.autograd.grad(coarse_loss, params, allow_unused=True) if coarse_loss is not None
              and coarse_loss.requires_grad else [None] * len(params))
    return {"finest": list(finest), "coarse": list(coarse)}


def cosines(model: HieraTok, x: torch.Tensor) -> dict[str, dict[str, float | None]]:
    """Per part: the two gradients' norms and cosine (None when either is zero)."""
    grads = gradient_terms(model, x)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    out = {}
    for part in PARTS:
        idx = [i for i, n in enumerate(names) if n.split(".")[0] == part]
        if not idx:
            continue
        params = [model.get_parameter(names[i]) for i in idx]
        vecs = {term: torch.cat([grads[term][i].flatten() if grads[term][i] is not None
                                 else torch.zeros(p.numel()) for i, p in zip(idx, params)])
                for term in ("finest", "coarse")}
        nf, nc = vecs["finest"].norm().item(), vecs["coarse"].norm().item()
        cos = (vecs["finest"] @ vecs["coarse"]).item() / (nf * nc) if nf > 0 and nc > 0 else None
        out[part] = {"finest_norm": nf, "coarse_norm": nc, "cosine": cos}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", nargs="+", required=True, help="from_pretrained folders")
    ap.add_argument("--data", required=True, help="an ImageFolder (e.g. the val split)")
    ap.add_argument("--images", type=int, default=64, help="fixed images (evenly spaced over the folder)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from hieratok.training.cli import load_pretrained
    from hieratok.training.data import DataError, build_dataset
    results = {}
    for path in args.tokenizer:
        model = load_pretrained(HieraTok, path, "--tokenizer").train()
        try:
            ds = build_dataset(args.data, model.config.image_size)
        except DataError as e:
            raise SystemExit(f"error: {e}") from None
        step = max(1, len(ds) // args.images)
        x = torch.stack([ds[i][0] for i in range(0, step * args.images, step)][: args.images])
        results[path] = cosines(model, x)
        line = ", ".join(f"{part}: cos {r['cosine']:+.3f} (|finest| {r['finest_norm']:.3g}, |coarse| "
                         f"{r['coarse_norm']:.3g})" if r["cosine"] is not None else
                         f"{part}: no coarse gradient" for part, r in results[path].items())
        print(f"{path}: {line}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
