"""Quick check of stage-1 runs: per-scale PSNR of each run's exported tokenizer on a fixed subset of validation
images, beside the patch-PCA codec the run's linear shortcut started from (its `linear_codec.safetensors`).

    python train/quick_eval.py --data ../shared/data/imagenette/val --images 500 runs/calib/c16-lin runs/calib/c8-lin

For calibration (which latent size, which initialisation); `train/evaluate.py` is the full evaluation.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hieratok import HieraTok
from hieratok.linear import PatchPCA
from hieratok.losses import downsample_image
from hieratok.metrics import psnr
from hieratok.training.data import DataError, build_dataset, eval_loader


def model_dir(path: Path) -> Path:
    return path if (path / "model.safetensors").exists() else path / "final"


@torch.no_grad()
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="validation images (ImageFolder)")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("runs", nargs="+", help="run folders with final/ (and linear_codec.safetensors), or "
                                            "from_pretrained folders such as RUN/exports/step-N")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    first = HieraTok.from_pretrained(model_dir(Path(args.runs[0])))
    try:
        ds = build_dataset(args.data, first.config.image_size, max_images=args.images, seed=0)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    x = torch.cat([b for b, _, _ in eval_loader(ds, 100) if b is not None]).to(args.device)
    print(f"{len(x)} images of {args.data}")
    for run in map(Path, args.runs):
        tok = HieraTok.from_pretrained(model_dir(run)).eval().to(args.device)
        per_scale = {s: [] for s in tok.layout.scales}
        for i in range(0, len(x), 100):
            out = tok.decode(tok.encode(x[i:i + 100]))
            for s, im in zip(out.scales, out.images):
                per_scale[s].append(psnr(im, downsample_image(x[i:i + 100], im.shape[-1])))
        scores = ", ".join(f"{s}x{s} {torch.cat(v).mean():.2f}" for s, v in per_scale.items())
        codec = run / "linear_codec.safetensors"
        ref = (f"; linear codec {psnr(PatchPCA.load(codec).reconstruct(x.cpu()).clamp(-1, 1), x.cpu()).mean():.2f} dB"
               if codec.exists() else "")
        print(f"{run}: PSNR {scores} dB{ref}")


if __name__ == "__main__":
    main()
