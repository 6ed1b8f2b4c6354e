"""Train the class-conditional DiT on a frozen tokenizer's latents (rectified flow, CFG label dropout, EMA).

    accelerate launch train/dit.py --tokenizer runs/hieratok-s2/final --data ../shared/data/cifar10/train \
        --output-dir runs/dit-hieratok

1. Encode the dataset once with the frozen tokenizer (posterior means of each image and of its mirror image),
   cached in `<output-dir>/latents.safetensors` (or `--latent-cache`). Every process encodes its share (index
   rank, rank + N, ...) under the run's autocast; the main process puts the shares back in dataset order.
2. Per-channel latent mean/std over that set; saved into a copy of the tokenizer at `<output-dir>/tokenizer`
   (a from_pretrained directory), which is the tokenizer to pair with this DiT. `--latent-stats tokenizer` keeps
   the statistics the tokenizer already carries instead (to train a DiT longer on exactly the normalisation it
   learned with: refitting them, e.g. in another precision, moves every latent a little).
   `--latent-spectrum-like TOKENIZER` adds a gain per spatial frequency to that normalisation
   (`hieratok.metrics.spectral_gain`, measured on the first 2,000 training images of both tokenizers): the DiT
   learns latents with the other tokenizer's power spectrum and the same information, and the saved tokenizer copy
   undoes the gain before decoding -- whether a latent's spectrum is what makes a DiT train fast on it, with the
   tokenizer, its decoder and the information in the latent unchanged. `--latent-channels-like TOKENIZER` instead
   mixes the standardised channels by an invertible matrix (`hieratok.metrics.channel_mix`): the other tokenizer's
   channel correlations (how many channels the latent really uses), the same information -- aligned on the two
   tokenizers' latents of the same images, so that the other's strong modes land on the matching content of this
   latent (e.g. a strong luminance mode on this latent's luminance), not on whatever its channel numbers hold.
   `--latent-covariance-like TOKENIZER` mixes the channels at each spatial frequency by an invertible complex matrix
   (`hieratok.metrics.cross_spectral_mix`): the other tokenizer's cross-spectra -- every channel's power spectrum and
   every pair's cross-covariance at every lag, all of its latent's second-order statistics -- the same information.
3. Train the DiT on normalised latents; sample grids (one row per class) every `--sample-every` steps.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from torchvision.utils import save_image
from tqdm.auto import tqdm

from hieratok import DiT, HieraTok, dit_config
from hieratok.hub import PAIRED_TOKENIZER
from hieratok.latent import channel_stats
from hieratok.metrics import (channel_mix, channel_participation, cross_spectral_mix, latent_spectrum,
                              paired_correlation, spectral_gain)
from hieratok.training.checkpoint import atomic_file
from hieratok.training.cli import base_parser, init_from, load_pretrained, parse_overrides, setup_logging
from hieratok.training.data import eval_loader, training_dataset
from hieratok.training.optim import adamw, schedule
from hieratok.training.run import Run


class LatentDataset(Dataset):
    """Normalised latents; item (index, flip) -> (latent of the image or of its mirror, label)."""

    def __init__(self, z, z_flip, labels):
        self.z, self.z_flip, self.labels = z, z_flip, labels.tolist()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, item):
        index, flip = item
        return (self.z_flip if flip else self.z)[index], self.labels[index]


class Numbered(Dataset):
    """The items of `ds` at `indices`, each labelled with its dataset index instead of its class."""

    def __init__(self, ds, indices):
        self.ds, self.indices = ds, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        item = self.ds[self.indices[i]]
        return None if item is None else (item[0], self.indices[i])


@torch.no_grad()
def encode_dataset(tokenizer: HieraTok, dataset, batch_size: int, device, show: bool, rank: int = 0,
                   world: int = 1, autocast=contextlib.nullcontext, num_workers: int = 0):
    """Posterior means of this process's share of `dataset` and of its mirror images: (z, z_flip, dataset
    indices, number of unreadable images skipped). Images are read by `num_workers` loader processes (on a GPU the
    reading, not the encoder, sets the pace: one process read about 40 images/s on a 16-core H200 machine)."""
    zs, zfs, idx, skipped = [], [], [], 0
    share = Numbered(dataset, range(rank, len(dataset), world))
    for x, i, n_bad in tqdm(eval_loader(share, batch_size, num_workers), desc="encoding", disable=not show):
        skipped += n_bad
        if x is None:
            continue
        x = x.to(device)
        with autocast():
            zs.append(tokenizer.encode(x).float().cpu().contiguous())
            zfs.append(tokenizer.encode(x.flip(-1)).float().cpu().contiguous())
        idx.append(i)
    C, S = tokenizer.config.latent_channels, tokenizer.config.grid_size
    empty = torch.empty(0, C, S, S)
    return (torch.cat(zs) if zs else empty, torch.cat(zfs) if zfs else empty,
            torch.cat(idx) if idx else torch.empty(0, dtype=torch.long), skipped)


@torch.no_grad()
def normalized(tokenizer: HieraTok, z: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """The tokenizer's latent normalisation applied to cached latents (on CPU), a chunk at a time on its device."""
    device = tokenizer.latent_mean.device
    return torch.cat([tokenizer.normalize_latent(part.to(device)).cpu() for part in z.split(chunk)])


def load_or_encode(run: Run, tokenizer: HieraTok, dataset, cache: Path, batch_size: int):
    """Latents from the cache when it was made from the same tokenizer weights and dataset; else encode."""
    tag = {"tokenizer": str(Path(run.args.tokenizer).resolve()), "data": run.args.data, "images": str(len(dataset)),
           "weights_sum": f"{sum(float(p.double().sum()) for p in tokenizer.parameters()):.10e}"}
    if cache.exists():
        from safetensors import safe_open
        with safe_open(str(cache), "pt") as f:
            if f.metadata() == tag:
                run.info(f"latents from cache {cache}")
                t = load_file(str(cache))
                return t["z"], t["z_flip"], t["labels"]
        run.info(f"latent cache {cache} was made from other weights or data; re-encoding")
    rank, world = run.shard
    z, z_flip, index, skipped = encode_dataset(tokenizer, dataset, batch_size, run.device, run.is_main, rank, world,
                                               run.autocast, run.args.num_workers)
    cache.parent.mkdir(parents=True, exist_ok=True)
    part = cache.with_name(f"{cache.name}.part{rank}")
    save_file({"z": z, "z_flip": z_flip, "index": index}, str(part))
    skipped = int(run.accelerator.reduce(torch.tensor(skipped, device=run.device), "sum"))
    run.accelerator.wait_for_everyone()
    if run.is_main:
        if skipped:
            run.info(f"skipped {skipped} unreadable image(s) while encoding")
        parts = [load_file(str(cache.with_name(f"{cache.name}.part{r}"))) for r in range(world)]
        index = torch.cat([t["index"] for t in parts])
        order = index.argsort()
        merged = {k: torch.cat([t[k] for t in parts])[order].contiguous() for k in ("z", "z_flip")}
        merged["labels"] = torch.tensor(dataset.targets)[index[order]]
        with atomic_file(cache) as tmp:
            save_file(merged, str(tmp), metadata=tag)
        for r in range(world):
            cache.with_name(f"{cache.name}.part{r}").unlink()
    run.accelerator.wait_for_everyone()
    t = load_file(str(cache))
    return t["z"], t["z_flip"], t["labels"]


SPECTRUM_IMAGES = 2000  # training images behind --latent-spectrum-like's gain, --latent-channels-like's mix


@torch.no_grad()
def first_latents(tokenizer: HieraTok, dataset, images: int, batch_size: int, device) -> torch.Tensor:
    """Posterior means of the first `images` readable images of `dataset` (unflipped), on CPU."""
    zs = [tokenizer.encode(x.to(device)).float().cpu()
          for x, _, _ in eval_loader(Numbered(dataset, range(min(images, len(dataset)))), batch_size) if x is not None]
    if not zs:
        raise SystemExit("error: no readable training images to measure the latent spectrum on")
    return torch.cat(zs)


# what a shaped latent is measured by: {key: (what, measure)}
SHAPE_MEASURES = {"high_frequency": ("high-frequency share", lambda z: latent_spectrum(z)["high_frequency_fraction"]),
                  "participation": ("channel participation", lambda z: channel_participation(z)["participation"])}
SHAPINGS = {  # --latent-KIND-like: the run_config key it lands in, how it is made from the two tokenizers' latents
    # of the same images (the mixes aligned on them: `channel_mix(paired=True)`) and applied, what it moves
    "spectrum": ("latent_spectrum", spectral_gain, HieraTok.with_spectral_gain, ("high_frequency",)),
    "channels": ("latent_channels", lambda z, zt: channel_mix(z, zt, paired=True), HieraTok.with_channel_mix,
                 ("participation",)),
    "covariance": ("latent_covariance", lambda z, zt: cross_spectral_mix(z, zt, paired=True),
                   HieraTok.with_covariance_mix, ("high_frequency", "participation")),
}


def shaped_like(run: Run, tokenizer: HieraTok, kind: str, path: str, dataset, batch_size: int) -> tuple[HieraTok, dict]:
    """`tokenizer` (with its latent statistics) whose normalisation also gives its latents the power spectrum
    (`kind` "spectrum"), the channel correlations ("channels") or all the second-order statistics ("covariance") of
    the latents of the tokenizer at `path`, and what was measured (the high-frequency share and/or the channel
    participation before and after, the target's)."""
    flag = f"--latent-{kind}-like"
    target = load_pretrained(HieraTok, path, flag).to(run.device).eval()
    t, o = tokenizer.config, target.config
    if (o.grid_size, o.image_size, o.latent_channels) != (t.grid_size, t.image_size, t.latent_channels):
        raise SystemExit(f"error: {flag} {path} has a {o.grid_size}x{o.grid_size} latent of {o.latent_channels} "
                         f"channels from {o.image_size}-px images; this tokenizer a {t.grid_size}x{t.grid_size} "
                         f"latent of {t.latent_channels} channels from {t.image_size}-px images")
    z, zt = (first_latents(m, dataset, SPECTRUM_IMAGES, batch_size, run.device) for m in (tokenizer, target))
    _, make, apply, keys = SHAPINGS[kind]
    shaped = apply(tokenizer, make(z, zt))
    zs = shaped.normalize_latent(z.to(run.device)).cpu()
    info = {"like": path, "images": len(z), "aligned": kind != "spectrum"}
    for key in keys:
        what, measure = SHAPE_MEASURES[key]
        values = {"own": measure(z), "target": measure(zt), "shaped": measure(zs)}
        info.update({f"{key}_{k}": v for k, v in values.items()})
        run.info(f"latent {kind} like {path}: {what} {values['own']:.3f} -> {values['shaped']:.3f} (the target's "
                 f"{values['target']:.3f}; {len(z)} images)")
    if info["aligned"]:  # how close the mixed latent is to the target's latent of the same images (1: the same)
        info["target_correlation"] = paired_correlation(zs, zt)
        run.info(f"the shaped latent's correlation with the target's latent of the same images: "
                 f"{info['target_correlation']:.3f}")
    return shaped, info


def kept_normalisation(run: Run, tokenizer: HieraTok, shaped: bool) -> HieraTok:
    """A resumed shaped run goes on with the latent normalisation it started with (its `tokenizer/` copy) where this
    code would now compute another (e.g. a mix made differently since): the DiT's weights fit that one only."""
    saved = run.out / PAIRED_TOKENIZER
    resuming = run.args.resume != "none" and (run.args.resume != "latest" or bool(run.checkpoints()))
    if not (shaped and resuming and (saved / "config.json").is_file()):
        return tokenizer
    kept = HieraTok.from_pretrained(saved).to(run.device).eval()
    if differ := kept.latent_differences(tokenizer):
        run.info(f"resuming: keeping the latent normalisation this run started with ({saved}), not the one computed "
                 f"now ({', '.join(differ)} differ)")
        return kept
    return tokenizer


# what `--set` may change on a DiT given with --init-from: how it is trained, not its architecture
DIT_TRAINING_FIELDS = ("class_dropout", "time_sampling")


def parse_args(argv=None):
    ap = base_parser(__doc__, steps=20_000, batch_size=128, lr=3e-4)
    ap.add_argument("--tokenizer", required=True, help="a tokenizer from_pretrained directory (frozen)")
    ap.add_argument("--latent-cache", default=None, help="default: <output-dir>/latents.safetensors")
    ap.add_argument("--init-from", default=None,
                    help="start from a DiT from_pretrained directory (e.g. to train a finished run longer): its "
                         "architecture and weights; --set may then change only class_dropout and time_sampling")
    ap.add_argument("--latent-stats", default="fit", choices=["fit", "tokenizer"],
                    help="fit: per-channel mean/std of the encoded training set (default); tokenizer: keep the "
                         "statistics --tokenizer carries (e.g. with --init-from, to go on with the normalisation "
                         "that DiT was trained with)")
    shaping = ap.add_mutually_exclusive_group()
    shaping.add_argument("--latent-spectrum-like", default=None, metavar="TOKENIZER",
                         help="a tokenizer from_pretrained directory: the DiT learns this tokenizer's latents filtered "
                              "to that tokenizer's spatial power spectrum (a gain per frequency in the latent "
                              "normalisation, stored in the saved tokenizer copy and undone before decoding)")
    shaping.add_argument("--latent-channels-like", default=None, metavar="TOKENIZER",
                         help="the same with that tokenizer's channel correlations: the standardised channels mixed "
                              "by an invertible matrix (stored in the tokenizer copy, solved out before decoding)")
    shaping.add_argument("--latent-covariance-like", default=None, metavar="TOKENIZER",
                         help="the same with all that tokenizer's second-order statistics (every channel's spectrum, "
                              "every pair's cross-spectrum): the channels mixed at each spatial frequency by an "
                              "invertible complex matrix (stored in the tokenizer copy, solved out before decoding)")
    ap.add_argument("--encode-batch-size", type=int, default=256)
    ap.add_argument("--sample-steps", type=int, default=30)
    ap.add_argument("--sample-guidance", type=float, default=2.0)
    ap.set_defaults(ema_decay=0.9995, weight_decay=0.0)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    run = Run(args, "dit")
    tokenizer = load_pretrained(HieraTok, args.tokenizer, "--tokenizer").to(run.device).eval().requires_grad_(False)
    if args.latent_stats == "tokenizer" and not tokenizer.has_latent_stats:
        raise SystemExit(f"error: --latent-stats tokenizer, but {args.tokenizer} carries no latent statistics "
                         "(use --latent-stats fit, or the tokenizer copy a DiT run saved)")
    dataset = training_dataset(args, tokenizer.config.image_size, info=run.info)
    # the model first: a wrong --init-from or --set fails before minutes of encoding
    cfg = dit_config(args.preset, latent_channels=tokenizer.config.latent_channels,
                     latent_size=tokenizer.config.grid_size, num_classes=len(dataset.classes),
                     class_names=tuple(dataset.class_names), **parse_overrides(args.set))
    if args.init_from:
        model = init_from(DiT, args, DIT_TRAINING_FIELDS, {"--preset": args.preset != "cifar10"})
        for key in ("latent_channels", "latent_size", "num_classes", "class_names"):
            if getattr(model.config, key) != getattr(cfg, key):
                raise SystemExit(f"error: --init-from {args.init_from} has {key}={getattr(model.config, key)}, "
                                 f"but this tokenizer and dataset need {getattr(cfg, key)}")
        cfg = model.config
    else:
        model = DiT(cfg)
    cache = Path(args.latent_cache) if args.latent_cache else run.out / "latents.safetensors"
    z, z_flip, labels = load_or_encode(run, tokenizer, dataset, cache, args.encode_batch_size)

    # per-channel statistics over both orientations (or the tokenizer's own), stored with a copy of the tokenizer
    if args.latent_stats == "fit":
        mean, std, count = channel_stats([z, z_flip])
        tokenizer.set_latent_stats(mean.to(run.device), std.to(run.device), count=count)
    else:
        run.info(f"keeping the latent statistics of {args.tokenizer} ({int(tokenizer.latent_stats_count)} latents)")
    shaping = {}
    for kind, (key, _, _, _) in SHAPINGS.items():
        path = getattr(args, f"latent_{kind}_like")
        if path:
            tokenizer, shaping[key] = shaped_like(run, tokenizer, kind, path, dataset, args.encode_batch_size)
    tokenizer = kept_normalisation(run, tokenizer, bool(shaping))
    if run.is_main:
        tokenizer.save_pretrained(run.out / "tokenizer")
    latents = LatentDataset(normalized(tokenizer, z), normalized(tokenizer, z_flip), labels)

    model.train()
    optimizer = adamw(list(model.parameters()), args)
    scheduler = schedule(optimizer, args)
    model, optimizer = run.prepare(model, optimizer)
    run.track(model, scheduler)
    start = run.resume()
    run.start({"model": cfg.to_dict(), "tokenizer": args.tokenizer, "init_from": args.init_from,
               "latent_mean": tokenizer.latent_mean.tolist(), "latent_std": tokenizer.latent_std.tolist(),
               **{key: shaping.get(key) for key, _, _, _ in SHAPINGS.values()},
               "dataset": {"path": args.data, "images": len(latents), "classes": dataset.classes,
                           "class_names": dataset.class_names}})

    for step, x1, y, gen in run.batches(latents, start):
        with run.autocast():
            # forward through the DDP wrapper; random draws independent of the process split
            loss = run.unwrap(model).loss(x1, y, generator=gen, net=model, shard=run.shard)
        run.step(loss, optimizer, scheduler, model, step)
        run.log(step, {"loss": loss.item()}, scheduler)
        ema = run.averaged() if run.sample_due(step) else None  # all processes take part under FSDP
        if ema is not None and run.is_main:
            per_class = 8
            classes = torch.arange(cfg.num_classes, device=run.device).repeat_interleave(per_class)
            g = torch.Generator(device=run.device).manual_seed(args.seed)
            # the grid samples in the run's precision (bf16 halves its time on a CPU that computes bf16 natively)
            bf16 = run.run_config["mixed_precision"]["used"] == "bf16"
            z_norm = ema.sample(classes, steps=args.sample_steps, guidance=args.sample_guidance, generator=g,
                                precision="bf16" if bf16 else "fp32")
            images = tokenizer.decode(tokenizer.denormalize_latent(z_norm)).reconstruction
            (run.out / "samples").mkdir(parents=True, exist_ok=True)
            save_image(images.float().clamp(-1, 1) * 0.5 + 0.5, run.out / "samples" / f"step-{step + 1:08d}.png",
                       nrow=per_class)
        exported = run.maybe_export(step)
        if exported and shaping and run.is_main:  # a shaped latent decodes only through its own copy
            tokenizer.save_pretrained(exported / PAIRED_TOKENIZER)
        run.maybe_checkpoint(step)

    run.finish(model)
    if shaping and run.is_main:  # ... which every DiT folder of a shaped run carries
        tokenizer.save_pretrained(run.out / "final" / PAIRED_TOKENIZER)


if __name__ == "__main__":
    main()
