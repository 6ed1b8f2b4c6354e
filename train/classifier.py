"""Train the image classifier whose features define FD-cls and which judges class-conditional samples.

    accelerate launch train/classifier.py --data ../shared/data/cifar10/train --output-dir runs/classifier

    accelerate launch train/classifier.py --data ../shared/data/imagenette/train --image-size 128 \
        --set stem_stride=2 --output-dir runs/classifier-imagenette128   # sees all 128 px at a 64-px cost

Augmentation: random crops (reflect padding of an eighth of the image side: 4 pixels at 32 px, 16 at 128) and
horizontal flips, both drawn from the per-step generator so that resume stays bit-identical. The exported model is
the live one (its BatchNorm statistics belong to its own weights), not an EMA.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hieratok.classifier import Classifier, ClassifierConfig
from hieratok.rng import sharded
from hieratok.training.cli import base_parser, parse_overrides, setup_logging
from hieratok.training.data import training_dataset
from hieratok.training.optim import adamw, schedule
from hieratok.training.run import Run


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator, shard=None) -> torch.Tensor:
    """Per-sample random crop of a reflect-padded batch back to its size (offsets drawn as in hieratok.rng)."""
    B, _, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = (sharded(torch.rand, (B,), generator, shard, device=x.device).mul(2 * pad + 1).long() for _ in "yx")
    rows = (dy[:, None] + torch.arange(H, device=x.device))[:, None, :, None].expand(B, x.shape[1], H, W + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, None, :].expand(B, x.shape[1], H, W)
    return out.gather(3, cols)


def parse_args(argv=None):
    ap = base_parser(__doc__, steps=6_000, batch_size=128, lr=2e-3)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--crop-pad", type=int, default=None,
                    help="reflect padding of the random crops in pixels (default: image size / 8)")
    ap.set_defaults(weight_decay=5e-4, sample_every=0)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    run = Run(args, "classifier")
    dataset = training_dataset(args, args.image_size, info=run.info)
    cfg = ClassifierConfig(num_classes=len(dataset.classes), image_size=args.image_size,
                           class_names=tuple(dataset.class_names)).replace(**parse_overrides(args.set))
    model = Classifier(cfg).train()
    optimizer = adamw(list(model.parameters()), args, betas=(0.9, 0.99))
    scheduler = schedule(optimizer, args, final_ratio=0.0)
    model, optimizer = run.prepare(model, optimizer)
    run.track(model, scheduler, ema=False)
    start = run.resume()
    pad = args.crop_pad if args.crop_pad is not None else max(1, args.image_size // 8)
    run.start({"model": cfg.to_dict(), "dataset": {"path": args.data, "images": len(dataset)}, "crop_pad": pad})

    for step, x, y, gen in run.batches(dataset, start):
        x = random_crop(x, pad, gen, run.shard)
        with run.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        run.step(loss, optimizer, scheduler, model, step)
        run.log(step, {"loss": loss.item(), "train_acc": (logits.argmax(1) == y).float().mean().item()}, scheduler)
        run.maybe_export(step)
        run.maybe_checkpoint(step)

    run.finish(model)


if __name__ == "__main__":
    main()
