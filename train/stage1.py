"""Stage 1: train a HieraTok tokenizer (or a baseline / ablation variant) on reconstruction.

    accelerate launch train/stage1.py --data ../shared/data/cifar10/train --output-dir runs/hieratok-s1
    python train/stage1.py --variant singlescale --data PATH --output-dir runs/single-s1
    python train/stage1.py --variant hieratok --data PATH --output-dir runs/paper-s1     # the paper's recipe

Without --variant it trains the project's recipe (hieratok.config.RECIPE_VARIANT, `stopgrad-shared-context`: the
coarse scales' losses train only their own parts, and the downsampler sees a neighbourhood; docs/experiment.md).
The recipe reconstructs as well as single-scale at the finest scale, but a DiT trains on its latent no faster than on
single-scale's; the paper's recipe (`--variant hieratok`) costs ~1 dB there and gives the DiT a latent it learns
about 2x faster on (docs/experiment.md, generation): choose by what the tokenizer is for.

Loss = sum_s w_s (L1 + MSE)(x_hat_s, downsample_s(x)) + lambda LPIPS(finest) + beta KL (weights in the config).
"""
from __future__ import annotations

from hieratok import VARIANTS, HieraTok, tokenizer_config
from hieratok.config import LOSS_FIELDS, RECIPE_VARIANT
from hieratok.linear import PatchPCA
from hieratok.losses import ReconstructionLoss, training_lpips
from hieratok.training.cli import base_parser, init_from, load_pretrained, parse_overrides, setup_logging
from hieratok.training.data import fit_patch_pca, training_dataset
from hieratok.training.optim import adamw, schedule
from hieratok.training.run import Run
from hieratok.training.samples import sample_reconstructions


def parse_args(argv=None):
    ap = base_parser(__doc__, steps=20_000, batch_size=64, lr=4e-4)
    ap.add_argument("--variant", default=None, choices=VARIANTS,
                    help=f"tokenizer variant (default: the project's recipe, {RECIPE_VARIANT}; the paper's: hieratok)")
    ap.add_argument("--lpips-weights", default=None,
                    help="torchvision's vgg16-397923af.pth for the LPIPS backbone (default: torch hub cache)")
    ap.add_argument("--init-from", default=None, help="start from a from_pretrained directory's weights")
    ap.add_argument("--warm-start", default=None, metavar="SINGLE_SCALE_DIR",
                    help="start a multi-scale variant from a single-scale tokenizer of the same geometry (its encoder, "
                         "decoder and finest head; the coarse scales' own parts start fresh): a two-phase recipe, "
                         "e.g. --variant stopgrad-shared --warm-start assets/singlescale-imagenette128")
    ap.add_argument("--shortcut-lr-scale", type=float, default=0.1,
                    help="learning-rate factor of the linear shortcut (no weight decay on it)")
    ap.add_argument("--train", default="all", choices=("all", "coarse"),
                    help="coarse: only the coarse scales' own parts learn (downsampler, per-scale heads, shortcuts, "
                         "refiner), from the coarse losses alone; the encoder and the weights the finest image is "
                         "decoded with stay frozen, so the latent -- and a DiT trained on it -- is unchanged. A "
                         "finishing phase after --init-from: from stage 1's output, then stage 2 from it, lets the "
                         "decoder re-adapt to the new coarse tokens (docs/experiment.md, the recipe on CIFAR-10)")
    ap.add_argument("--linear-fit-images", type=int, default=2000,
                    help="training images the patch-PCA codec is fitted on (models with linear_shortcut)")
    args = ap.parse_args(argv)
    # --init-from takes the architecture from its checkpoint: no variant then (none is recorded, none refused)
    args.variant_given = args.variant is not None
    args.variant = args.variant or (None if args.init_from else RECIPE_VARIANT)
    return args


def linear_codec(run, dataset, cfg, num_images: int) -> PatchPCA:
    """The patch-PCA codec the linear shortcut starts from: fitted once on a fixed subset of the training images
    (deterministic, so every process fits the same one) and kept in the output folder."""
    path = run.out / "linear_codec.safetensors"
    if path.exists():
        return PatchPCA.load(path)
    codec, n = fit_patch_pca(dataset, cfg.patch_size, cfg.latent_channels, num_images)
    if run.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        codec.save(path)
    run.info(f"linear shortcut initialised to the patch-PCA codec of {n} training images ({path})")
    return codec


def warm_start(model: HieraTok, path: str, run) -> dict:
    """`--warm-start`: the single-scale tokenizer at `path` into `model` (`HieraTok.load_single_scale`)."""
    source = load_pretrained(HieraTok, path, "--warm-start")
    try:
        fresh = model.load_single_scale(source)
    except ValueError as e:
        raise SystemExit(f"error: --warm-start {path}: {e}") from None
    run.info(f"warm start from the single-scale tokenizer {path}; the coarse scales' own parts start fresh: "
             f"{len(fresh)} tensors")
    return {"from": str(path), "fresh": fresh}


def freeze_all_but_coarse(model: HieraTok, run) -> int:
    """`--train coarse`: every parameter but the coarse scales' own (`HieraTok.coarse_parameters`) stops learning;
    returns how many tensors were frozen."""
    try:
        coarse = model.coarse_parameters()
    except ValueError as e:
        raise SystemExit(f"error: --train coarse: {e}") from None
    model.requires_grad_(False)
    for p in coarse.values():
        p.requires_grad_(True)
    frozen = sum(1 for p in model.parameters() if not p.requires_grad)
    run.info(f"--train coarse: {len(coarse)} tensors learn ({sum(p.numel() for p in coarse.values()):,} parameters, "
             f"the coarse scales' own), {frozen} frozen")
    return frozen


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    run = Run(args, "stage1")
    if args.init_from and args.warm_start:
        raise SystemExit("error: --init-from and --warm-start cannot be combined (--init-from continues a model of "
                         "the same architecture; --warm-start starts a multi-scale one from a single-scale one)")
    if args.train == "coarse" and not (args.init_from or args.warm_start):
        raise SystemExit("error: --train coarse finishes a trained tokenizer: give --init-from DIR (or --warm-start "
                         "DIR); a fresh encoder and decoder would stay frozen at their initialisation")
    if args.init_from:
        model = init_from(HieraTok, args, LOSS_FIELDS, {"--variant": args.variant_given,
                                                        "--preset": args.preset != "cifar10"})
        cfg = model.config
    else:
        try:
            cfg = tokenizer_config(args.preset, args.variant, **parse_overrides(args.set))
        except (TypeError, ValueError) as e:
            raise SystemExit(f"error: invalid model config: {e}") from None
        model = HieraTok(cfg)
    dataset = training_dataset(args, cfg.image_size, info=run.info)

    if args.train == "coarse":
        lpips_module, lpips_note = None, "--train coarse: the finest image is not trained"
    else:
        lpips_module, lpips_note = training_lpips(cfg, args.lpips_weights, run.device, run.warning)

    if cfg.linear_shortcut and not args.init_from:
        model.init_linear(linear_codec(run, dataset, cfg, args.linear_fit_images))
    warm = warm_start(model, args.warm_start, run) if args.warm_start else None
    frozen = freeze_all_but_coarse(model, run) if args.train == "coarse" else 0
    model.train()
    try:
        loss_fn = ReconstructionLoss(cfg, lpips_module, coarse_only=args.train == "coarse")
    except ValueError as e:
        raise SystemExit(f"error: --train coarse: {e}") from None
    optimizer = adamw(list(model.parameters()), args, slow=model.shortcut_parameters(),
                      slow_lr_scale=args.shortcut_lr_scale)
    scheduler = schedule(optimizer, args)
    model, optimizer = run.prepare(model, optimizer)
    run.track(model, scheduler)
    start = run.resume()
    run.start({"model": cfg.to_dict(), "lpips": lpips_module is not None, "lpips_note": lpips_note,
               "warm_start": warm, "train": args.train, "frozen_tensors": frozen,
               "dataset": {"path": args.data, "images": len(dataset), "classes": dataset.classes,
                           "class_names": dataset.class_names}})

    for step, x, _, gen in run.batches(dataset, start):
        with run.autocast():
            # --train coarse decodes the untrained finest image only for the log
            out, post = model(x, generator=gen, shard=run.shard, coarse_only=args.train == "coarse",
                              finest=run.log_due(step))
            terms = loss_fn(x, out, post)
        run.step(terms.total, optimizer, scheduler, model, step)
        run.log(step, terms.logs, scheduler)
        sample_reconstructions(run, x, step)
        run.maybe_export(step)
        run.maybe_checkpoint(step)

    run.finish(model)


if __name__ == "__main__":
    main()
