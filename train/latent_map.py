"""Precompute what the app's latent-space view shows: latents of test images at every scale, their 2D UMAP
embeddings, and the Gini / entropy of each latent density, for each tokenizer.

    python train/latent_map.py --data ../shared/data/cifar10/test --num-images 3000 \
        --tokenizer HieraTok=assets/hieratok-cifar10 --tokenizer Single-scale=assets/singlescale-cifar10 \
        --output assets/latent-map-cifar10

The file format is `hieratok.latent_map.LatentMap` (one safetensors file, no images, no pickled UMAP object).
"""
from __future__ import annotations

import argparse
import time

import torch

from hieratok import HieraTok
from hieratok.latent_map import LatentMap
from hieratok.metrics import latent_gini_entropy
from hieratok.training.cli import named_paths
from hieratok.training.data import DataError, build_dataset, eval_loader


def umap_2d(x: torch.Tensor, seed: int) -> torch.Tensor:
    import umap
    flat = x.flatten(1).double()
    flat = (flat - flat.mean(0)) / flat.std(0).clamp_min(1e-8)
    # a seeded UMAP runs on one thread (umap-learn overrides n_jobs and warns); say so and get no warning
    emb = umap.UMAP(n_components=2, n_neighbors=15, min_dist=0.1, random_state=seed, n_jobs=1).fit_transform(
        flat.numpy())
    return torch.from_numpy(emb).float()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--tokenizer", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--num-images", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", required=True, help="output folder (writes latents.safetensors)")
    args = ap.parse_args(argv)
    tokenizers = named_paths(args.tokenizer, "--tokenizer")
    first = HieraTok.from_pretrained(next(iter(tokenizers.values())))
    try:
        ds = build_dataset(args.data, first.config.image_size, split="test", max_images=args.num_images,
                           seed=args.seed)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    latents, coords, density, t0 = {}, {}, {}, time.time()
    labels = None
    for name, path in tokenizers.items():
        tok = HieraTok.from_pretrained(path)
        maps, ys = [[] for _ in tok.layout.scales], []
        with torch.no_grad():
            for x, y, _ in eval_loader(ds, 250):
                if x is None:
                    continue
                for i, m in enumerate(tok.latent_pyramid(tok.encode(x))):
                    maps[i].append(m)
                ys.append(y)
        labels = torch.cat(ys) if labels is None else labels
        latents[name], coords[name], density[name] = {}, {}, {}
        for s, chunks in zip(tok.layout.scales, maps):
            z = torch.cat(chunks)
            latents[name][s] = z
            coords[name][s] = umap_2d(z, args.seed)
            density[name][str(s)] = latent_gini_entropy(z)
            print(f"{name} {s}x{s}: {density[name][str(s)]}  ({time.time() - t0:.0f} s)")
    info = {"data": args.data, "tokenizers": tokenizers,
            "umap": {"n_neighbors": 15, "min_dist": 0.1, "seed": args.seed}}
    path = LatentMap(labels, ds.class_names, latents, coords, density, info).save(args.output)
    print(f"wrote {path} ({len(labels)} images) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
