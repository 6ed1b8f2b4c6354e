"""Stage 2: GAN fine-tuning of a stage-1 tokenizer's decoder.

    accelerate launch train/stage2.py --init-from runs/hieratok-s1/final --data PATH --output-dir runs/hieratok-s2

The encoder and the downsampler are frozen, so the latents (and any DiT trained on them) stay valid. The decoder
decodes the posterior mean (what the DiT learns to generate) and is trained on the stage-1 reconstruction terms
plus a hinge GAN loss from a PatchGAN discriminator on the finest image, weighted adaptively (VQGAN:
||grad rec|| / ||grad GAN|| at the decoder's last layer) and switched on after `--gan-start` steps, so the
discriminator first learns against a fixed generator. With `--gan-weight 0` there is no discriminator: the decoder
is fine-tuned on the reconstruction terms alone (e.g. with `--set scale_loss_weights=...` to favour the finest
scale), the fidelity-first recipe, for PSNR rather than sharpness.
"""
from __future__ import annotations

import torch

from hieratok import HieraTok
from hieratok.losses import (PatchGANDiscriminator, ReconstructionLoss, adaptive_gan_weight, hinge_d_loss, hinge_g_loss,
                             training_lpips)
from hieratok.training.cli import base_parser, init_from, setup_logging
from hieratok.training.data import training_dataset
from hieratok.training.optim import adamw, fused_supported, schedule
from hieratok.training.run import Run
from hieratok.training.samples import sample_reconstructions


def parse_args(argv=None):
    ap = base_parser(__doc__, steps=2_000, batch_size=64, lr=1e-4)
    ap.add_argument("--init-from", required=True, help="a stage-1 from_pretrained directory (e.g. runs/x/final)")
    ap.add_argument("--lpips-weights", default=None)
    ap.add_argument("--disc-lr", type=float, default=1e-4)
    ap.add_argument("--disc-width", type=int, default=64)
    ap.add_argument("--disc-layers", type=int, default=None, help="PatchGAN depth (default: 2 below 64 px, else 3)")
    ap.add_argument("--gan-weight", type=float, default=0.5,
                    help="multiplies the adaptive GAN weight; 0: no discriminator, reconstruction terms only")
    ap.add_argument("--gan-start", type=int, default=100, help="steps of discriminator-only warm-up")
    return ap.parse_args(argv)


# what `--set` may change in stage 2: how the decoder is trained, never what the checkpoint is (the encoder is
# frozen, so neither the KL weight nor the encoder's gradient route can matter here)
STAGE2_FIELDS = ("scale_loss_weights", "multiscale_supervision", "l1_weight", "mse_weight", "lpips_weight")


def main(argv=None):
    args = parse_args(argv)
    if args.gan_weight < 0:
        raise SystemExit(f"error: --gan-weight {args.gan_weight}: must be >= 0 (0: no GAN)")
    setup_logging()
    model = init_from(HieraTok, args, STAGE2_FIELDS)  # the loss fields set here are recorded in its config
    cfg = model.config
    run = Run(args, "stage2")
    dataset = training_dataset(args, cfg.image_size, info=run.info)
    lpips_module, lpips_note = training_lpips(cfg, args.lpips_weights, run.device, run.warning)

    # freeze what defines the latent: the encoder, and the downsampler that derives the coarse scales from it
    model.encoder.requires_grad_(False)
    if model.downsampler is not None:
        model.downsampler.requires_grad_(False)
    model.train()
    use_gan = args.gan_weight > 0
    n_layers = args.disc_layers or (2 if cfg.image_size < 64 else 3)
    loss_fn = ReconstructionLoss(cfg, lpips_module)
    g_opt = adamw([p for p in model.parameters() if p.requires_grad], args, betas=(0.5, 0.9))
    g_sched = schedule(g_opt, args)
    if use_gan:
        disc = PatchGANDiscriminator(cfg.in_channels, args.disc_width, n_layers)
        d_opt = torch.optim.AdamW(disc.parameters(), lr=args.disc_lr, betas=(0.5, 0.9), weight_decay=0.0,
                                  fused=fused_supported(disc.parameters()))
        d_sched = schedule(d_opt, args)
        model, disc, g_opt, d_opt = run.prepare(model, disc, g_opt, d_opt)
        run.track(model, g_sched, d_sched)
    else:
        model, g_opt = run.prepare(model, g_opt)
        run.track(model, g_sched)
    start = run.resume()
    run.start({"model": cfg.to_dict(), "init_from": args.init_from, "lpips": lpips_module is not None,
               "lpips_note": lpips_note,
               "discriminator": {"width": args.disc_width, "layers": n_layers} if use_gan else None,
               "dataset": {"path": args.data, "images": len(dataset), "classes": dataset.classes}})

    for step, x, _, gen in run.batches(dataset, start):
        gan_on = use_gan and step >= args.gan_start
        # 1. generator (decoder): reconstruction + adaptive hinge GAN term
        with run.autocast():
            # the posterior mean, as the DiT is trained on posterior means: the decoder is tuned on exactly the
            # latents it will be asked to decode. Through the (DDP) wrapper; the frozen encoder builds no graph.
            out, _ = model(x, sample=False)
            terms = loss_fn(x, out, None)     # no KL: the encoder is frozen
            g_loss = hinge_g_loss(disc(out.reconstruction)) if use_gan else None
        loss, logs = terms.total, dict(terms.logs)
        if gan_on:
            # looked up after the forward: under FSDP2 this is the gathered weight the graph used, not the shard
            last_layer = run.unwrap(model).decoder.head.weight
            weight = adaptive_gan_weight(terms.total, g_loss, last_layer) * args.gan_weight
            loss = loss + weight * g_loss
            logs.update(gan_weight=float(weight), g_loss=g_loss.item())
        run.step(loss, g_opt, g_sched, model, step)
        if use_gan:  # 2. discriminator: real images vs the (detached) reconstructions
            with run.autocast():
                d_loss = hinge_d_loss(disc(x), disc(out.reconstruction.detach()))
            run.step(d_loss, d_opt, d_sched, disc, step, update_ema=False)
            logs.update(d_loss=d_loss.item())
        logs.update(loss=loss.item())
        run.log(step, logs, g_sched)
        sample_reconstructions(run, x, step)
        run.maybe_export(step)
        run.maybe_checkpoint(step)

    run.finish(model)


if __name__ == "__main__":
    main()
