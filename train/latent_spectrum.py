"""How much of each tokenizer's latent energy sits at high spatial frequencies, how many of its channels it really
uses and what its strongest channel modes carry, how linearly its classes separate, and -- given the controlled
experiment's results -- whether any of these orders the arms as their DiTs' speed does.

    python train/latent_spectrum.py --data ../shared/data/imagenette/val --images 1000 \\
        --tokenizer hieratok=runs/experiment/hieratok/seed-0/final \\
        --tokenizer singlescale=runs/experiment/singlescale/seed-0/final ... \\
        --experiment assets/eval/experiment.json --seed 0 --output assets/eval/latent-spectrum

Per tokenizer (`hieratok.metrics.latent_spectrum` of its finest latent, channels standardised over the images): the
share of the energy above 0.25 cycles per latent position with a 95% bootstrap interval over images, and the
radially averaged power (white noise: 1 at every frequency); the channel participation ratio
(`hieratok.metrics.channel_participation`: C for uncorrelated channels, 1 for one shared mode); where the images have
labels, a linear probe's 5-fold cross-validated class accuracy on the latent pooled to 4 x 4
(`hieratok.metrics.latent_probe`: how "semantic" the latent is at the linear level); the images themselves,
area-averaged to the latent grid, as the reference a latent could be as smooth as. With `--experiment`, each NAME is
an arm of that results file: its record at `--seed` (finest PSNR, latent Gini) and its DiT's speed-up over
single-scale's at that seed, and Spearman's rank correlation over the arms of the speed-up with the high-frequency
share, the channel participation, the probe's accuracy and, for comparison, the Gini and the finest PSNR (exact
permutation p-values, `hieratok.stats.rank_correlation`). Writes OUTPUT.json and OUTPUT.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from hieratok import HieraTok
from hieratok.metrics import channel_modes, channel_participation, latent_probe, latent_spectrum
from hieratok.stats import rank_correlation
from hieratok.training.cli import named_paths
from hieratok.training.data import DataError, build_dataset, eval_loader

if __package__ in (None, ""):  # started as a script (python train/latent_spectrum.py): the study module is train.*
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BOOTSTRAP = 200


def bootstrap_interval(z: torch.Tensor, resamples: int = BOOTSTRAP, seed: int = 0) -> list[float]:
    """The 2.5th and 97.5th percentiles of the high-frequency share over `resamples` resamplings of the latents
    (images drawn with replacement): how far the number would move with another image sample."""
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([latent_spectrum(z[torch.randint(len(z), (len(z),), generator=g)])["high_frequency_fraction"]
                           for _ in range(resamples)], dtype=torch.float64)
    return [float(values.quantile(0.025)), float(values.quantile(0.975))]


@torch.no_grad()
def spectra(tokenizers: dict[str, HieraTok], x: torch.Tensor, batch_size: int = 100,
            resamples: int = BOOTSTRAP, labels: torch.Tensor | None = None) -> dict:
    """{"tokenizers": {name: latent_spectrum + "interval", "channels", "probe" (with `labels`)}, "images": the
    images' own spectrum at the latent grid}."""
    out = {}
    for name, tok in tokenizers.items():
        z = torch.cat([tok.encode(b) for b in x.split(batch_size)])
        out[name] = {**latent_spectrum(z), "interval": bootstrap_interval(z, resamples),
                     "channels": channel_participation(z), "modes": channel_modes(z, x)}
        if labels is not None:
            try:
                out[name]["probe"] = latent_probe(z, labels)
            except ValueError as e:  # too few images of a class for the folds: said, not fatal
                print(f"[{name}] no linear probe: {e}", file=sys.stderr)
    side = next(iter(tokenizers.values())).config.latent_shape[-1]
    pooled = F.adaptive_avg_pool2d(x.double(), side)
    return {"tokenizers": out, "images": {**latent_spectrum(pooled), "interval": bootstrap_interval(pooled, resamples)}}


def against_experiment(result: dict, report: dict, seed: int) -> dict:
    """Each tokenizer name as an arm of an experiment results file (`train.study.load_results`): its record at
    `seed` and its DiT's speed-up over the baseline's at that seed; the rank correlations over the arms that have
    both. Names that are no arm with a DiT at that seed are listed in "missing"."""
    records = {r["arm"]: r for r in report.get("records", []) if r["seed"] == seed and r.get("final")}
    versus = (report.get("generation_summary") or {}).get("versus") or {}
    baseline = next(iter(versus.values()))["baseline"] if versus else None
    arms, missing = {}, []
    for name, s in result["tokenizers"].items():
        speed = (1.0 if name == baseline else
                 next((p["ratio"] for p in versus.get(name, {}).get("speedup", {}).get("per_seed", [])
                       if p["seed"] == seed), None))
        if name not in records or speed is None:
            missing.append(name)
            continue
        final = records[name]["final"]
        arms[name] = {"speedup": speed, "psnr": final["psnr"], "gini": final["latent_density"]["gini"],
                      "high_frequency_fraction": s["high_frequency_fraction"],
                      "participation": s["channels"]["participation"],
                      "probe": s["probe"]["accuracy"] if "probe" in s else None}
    names = list(arms)
    speed = [arms[a]["speedup"] for a in names]
    corr = {key: rank_correlation([arms[a][key] for a in names], speed)
            for key in ("high_frequency_fraction", "participation", "gini", "psnr")}
    if names and all(arms[a]["probe"] is not None for a in names):
        corr["probe"] = rank_correlation([arms[a]["probe"] for a in names], speed)
    return {"seed": seed, "baseline": baseline, "arms": arms, "missing": missing, "correlation_with_speedup": corr}


def markdown(result: dict) -> str:
    t, img = result["tokenizers"], result["images"]
    edges = img["ring_edges"]
    lines = [f"Latent spectra on {result['images_used']} images of {result['data']}: each channel standardised over "
             f"the images, the share of energy above {img['cutoff']} cycles per latent position (white noise: "
             f"{img['white_noise_fraction']:.3f}) with a 95% bootstrap interval over images, and the mean power per "
             f"ring of radial frequency (white noise: 1).", "",
             "| latent | high-frequency share | 95% interval | channel participation | linear probe | " + " | ".join(
                 f"{a:.2f}-{b:.2f}" for a, b in zip(edges[:-1], edges[1:])) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * (len(edges) - 1)]
    for name, s in [*t.items(), ("the images, area-averaged to the latent grid", img)]:
        ch, pr = s.get("channels"), s.get("probe")
        used = "—" if ch is None else f"{ch['participation']:.2f} of {ch['channels']}"
        probe = ("—" if pr is None else
                 f"{100 * pr['accuracy']:.1f}% (±{100 * float(torch.tensor(pr['folds']).std()):.1f})")
        lines.append(f"| {name} | {s['high_frequency_fraction']:.3f} | {s['interval'][0]:.3f}-{s['interval'][1]:.3f}"
                     f" | {used} | {probe} | " + " | ".join("—" if p is None else f"{p:.3f}"
                                                            for p in s["radial_power"]) + " |")
    lines += ["", "What each latent's three strongest channel modes carry: share of the variance, and the correlation "
                  "(over images and positions; sign arbitrary) of the latent's projection on the mode with the image's "
                  "luminance / red-green / blue-yellow, area-averaged to the latent grid:", "",
              "| latent | mode 1 | mode 2 | mode 3 |", "|---|---|---|---|"]
    for name, s in t.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * m['share']:.0f}%: r {m['luminance']:+.2f} / {m['red_green']:+.2f} / {m['blue_yellow']:+.2f}"
            for m in s["modes"]) + " |")
    probes = [s["probe"] for s in t.values() if "probe" in s]
    if probes:
        lines += ["", f"Linear probe: multinomial logistic regression on the latent average-pooled to "
                      f"{probes[0]['pool']} x {probes[0]['pool']} ({probes[0]['features']} features), "
                      f"{len(probes[0]['folds'])}-fold stratified cross-validation, mean held-out accuracy (± the "
                      f"folds' standard deviation); the majority class alone: {100 * probes[0]['majority']:.1f}%."]
    e = result.get("experiment")
    if e:
        lines += ["", f"Against the experiment's seed-{e['seed']} records (the DiT's speed-up: how much sooner it "
                      f"reached {e['baseline']}'s final FD-cls):", "",
                  "| arm | finest PSNR (dB) | latent Gini | high-frequency share | channel participation | "
                  "linear probe | DiT speed-up |", "|---|---:|---:|---:|---:|---:|---:|"]
        for arm, a in sorted(e["arms"].items(), key=lambda kv: kv[1]["speedup"]):
            probe = "—" if a.get("probe") is None else f"{100 * a['probe']:.1f}%"
            lines.append(f"| {arm} | {a['psnr']:.2f} | {a['gini']:.3f} | {a['high_frequency_fraction']:.3f} | "
                         f"{a['participation']:.2f} | {probe} | {a['speedup']:.2f}x |")
        lines.append("")
        for key, label in (("high_frequency_fraction", "the high-frequency share"),
                           ("participation", "the channel participation"), ("probe", "the linear probe's accuracy"),
                           ("gini", "the latent Gini"), ("psnr", "the finest PSNR")):
            if key not in e["correlation_with_speedup"]:
                continue
            c = e["correlation_with_speedup"][key]
            lines.append(f"- Spearman's ρ of the speed-up with {label}: " + (
                "undefined (fewer than 3 arms, or a constant side)" if c is None else
                f"**{c['rho']:.2f}** (two-sided permutation p = {c['p']:.3f}, "
                f"{'exact' if c['exact'] else '100,000 orderings'}, {c['n']} arms)"))
        if e["missing"]:
            lines.append(f"- Not in the results at seed {e['seed']} (no record or no DiT): {', '.join(e['missing'])}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="images (an ImageFolder root or cifar10:ROOT)")
    ap.add_argument("--tokenizer", action="append", default=[], metavar="NAME=PATH", required=True)
    ap.add_argument("--images", type=int, default=1000, help="a fixed random subset of this many images")
    ap.add_argument("--resamples", type=int, default=BOOTSTRAP, help="bootstrap resamples for the intervals")
    ap.add_argument("--experiment", default=None, help="a controlled-experiment results JSON: NAMEs are its arms")
    ap.add_argument("--seed", type=int, default=0, help="the experiment seed the tokenizers belong to")
    ap.add_argument("--output", default=None, help="write OUTPUT.json and OUTPUT.md")
    args = ap.parse_args(argv)
    paths = named_paths(args.tokenizer, "--tokenizer")
    report = None
    if args.experiment:
        from train.study import load_results
        report = load_results(args.experiment)
        if report is None:
            raise SystemExit(f"error: no experiment results at {args.experiment}")
    tokenizers = {name: HieraTok.from_pretrained(path).eval() for name, path in paths.items()}
    shapes = {name: (t.config.image_size, t.config.latent_shape) for name, t in tokenizers.items()}
    if len(set(shapes.values())) > 1:
        raise SystemExit(f"error: the tokenizers' image sizes or latent shapes differ ({shapes}): no common images")
    try:
        ds = build_dataset(args.data, next(iter(shapes.values()))[0], split="test", max_images=args.images, seed=0)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    batches = [(b, y) for b, y, _ in eval_loader(ds, 100) if b is not None]
    x = torch.cat([b for b, _ in batches])
    labels = None if any(y is None for _, y in batches) else torch.cat([torch.as_tensor(y) for _, y in batches])
    result = {"data": args.data, "images_used": len(x), "paths": paths,
              **spectra(tokenizers, x, resamples=args.resamples, labels=labels)}
    if report is not None:
        result["experiment"] = {"file": args.experiment, **against_experiment(result, report, args.seed)}
    text = markdown(result)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.output}.json").write_text(json.dumps(result, indent=2))
        Path(f"{args.output}.md").write_text(text)


if __name__ == "__main__":
    main()
