"""Precompute what the app's latent-space view shows: latents of test images at every scale, their 2D UMAP
embeddings, and the Gini / entropy of each latent density, for each tokenizer.

    python train/latent_map.py --data ../shared/data/cifar10/test --num-images 3000 \
        --tokenizer HieraTok=assets/hieratok-cifar10 --tokenizer Single-scale=assets/singlescale-cifar10 \
        --output assets/latent-map-cifar10

Stored as one safetensors file (latents in float16) with a JSON `info` entry in its metadata: no images, no
pickled UMAP object. The app places a new image by its nearest stored latents (hieratok.place_by_neighbours).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from hieratok import HieraTok  # noqa: E402
from hieratok.metrics import latent_gini_entropy  # noqa: E402
from train.data import DataError, build_dataset, eval_loader  # noqa: E402
from train.evaluate import named_paths  # noqa: E402


def umap_2d(x: torch.Tensor, seed: int) -> torch.Tensor:
    import umap
    flat = x.flatten(1).double()
    flat = (flat - flat.mean(0)) / flat.std(0).clamp_min(1e-8)
    emb = umap.UMAP(n_components=2, n_neighbors=15, min_dist=0.1, random_state=seed).fit_transform(flat.numpy())
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
    tensors, density, t0 = {}, {}, time.time()
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
        density[name] = {}
        for s, chunks in zip(tok.layout.scales, maps):
            z = torch.cat(chunks)
            tensors[f"{name}/latent/{s}"] = z.half().contiguous()
            tensors[f"{name}/umap/{s}"] = umap_2d(z, args.seed).contiguous()
            density[name][str(s)] = latent_gini_entropy(z)
            print(f"{name} {s}x{s}: {density[name][str(s)]}  ({time.time() - t0:.0f} s)")
    tensors["labels"] = labels.to(torch.int16)
    info = {"class_names": ds.class_names, "num_images": len(labels), "data": args.data, "tokenizers": tokenizers,
            "density": density, "umap": {"n_neighbors": 15, "min_dist": 0.1, "seed": args.seed}}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "latents.safetensors"), metadata={"info": json.dumps(info)})
    print(f"wrote {out / 'latents.safetensors'} ({len(labels)} images) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
