"""The controlled experiment as data and its report: the arms, tiers and budgets `train/experiment.py` runs; the
per-arm statistics over seeds, paired against `hieratok`; the generation half's comparison of a DiT on each arm's
latent (by default `hieratok`'s) with one on the `singlescale` latent; the Markdown table, written beside the
results file (the app shows that file and draws the curves with `hieratok.report.curves_figure`).

A results file holds {"tier", "budget", "val_images", "command", "records": [one per run: arm, variant, seed,
budget, curve (PSNR etc. at fixed points of the budget), final metrics, step time and what it was measured on],
"summary": `summarize(records)`}
and, for the generation half, "dit_budget", "generation" (one record per DiT: arm of its tokenizer, seed, curve of
FD-cls and class accuracy) and "generation_summary": `summarize_generation(generation)`.
"""
from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

from hieratok.config import VARIANT_BUILDERS
from hieratok.report import defined, fmt, front_points, percent
from hieratok.stats import rank_correlation, ratio_interval, steps_to_reach, t_interval
from hieratok.training.cli import parse_overrides

# every arm is the tokenizer variant of its name (hieratok.config.VARIANT_BUILDERS), so `train/stage1.py --variant ARM`
# trains it outside the study too. The last ones test one explanation each of why multi-scale supervision costs the
# finest scale, or a remedy (docs/experiment.md).
ARMS = ["hieratok", "singlescale", "singlescale-flopmatched", "no-mss", "interp", "full-attn", "independent-attn",
        "finest-weighted", "stopgrad-coarse", "mss-total1", "scale-heads", "stopgrad-finest-weighted",
        "stopgrad-shared", "stopgrad-shared-refiner", "projected-shared",
        "stopgrad-shared-context", "shared-context-enc1", "shared-context-enc0.3", "shared-context-enc0.1"]
assert set(ARMS) <= set(VARIANT_BUILDERS), sorted(set(ARMS) - set(VARIANT_BUILDERS))
KEY_ARMS = ["hieratok", "singlescale", "singlescale-flopmatched", "no-mss"]

# model size and budget per hardware tier (the imagenette128 geometry: 128 px, patch 8, 16 x 16 x 16 latent)
TIERS = {
    "cpu": {"preset": "imagenette128", "steps": 1500, "batch_size": 32, "lr": 4e-4, "curve_images": 256,
            "set": {"enc_dim": 96, "enc_depth": 2, "enc_heads": 4, "dec_dim": 96, "dec_depth": 3, "dec_heads": 4}},
    "gpu": {"preset": "imagenette128", "steps": 20000, "batch_size": 128, "lr": 4e-4, "curve_images": 1000,
            "set": {}},
}
CURVE_POINTS = (0.25, 0.5, 1.0)

# the generation half: one DiT per tokenizer, per tier. The CPU tier is the shipped 128-px DiT's size and first
# budget (6 x 256, 2,400 steps of 128 latents) at guidance 6: a smaller DiT stayed at chance on these tokenizers
# (docs/experiment.md has the numbers).
GEN_ARMS = ["hieratok", "singlescale"]  # the default pair; `--dit-arms` takes any arm, each compared with:
GEN_BASELINE = "singlescale"


SHAPING_KINDS = ("spectrum", "channels", "covariance")  # train/dit.py --latent-KIND-like


def dit_label(arm: str, spectrum_like: str | None = None, channels_like: str | None = None,
              covariance_like: str | None = None) -> str:
    """A DiT's name in a results file: its tokenizer's arm, and -- for a DiT trained on that latent given another
    tokenizer's power spectrum, channel correlations or all its second-order statistics (`train/dit.py
    --latent-spectrum-like PATH`, `--latent-channels-like PATH`, `--latent-covariance-like PATH`) -- whose, named by
    the arm of an experiment folder PATH (`.../ARM/seed-N/final`) or else by PATH itself. Such an intervention is
    never pooled with, or mistaken for, its arm's plain DiTs, and has no tokenizer record of its own (so no point on
    the front)."""
    for kind, like in zip(SHAPING_KINDS, (spectrum_like, channels_like, covariance_like)):
        if like:
            p = Path(like)
            target = p.parent.parent.name if p.name == "final" and p.parent.name.startswith("seed-") else str(p)
            return f"{arm} ({kind} of {target})"
    return arm
DIT_TIERS = {
    "cpu": {"steps": 2400, "batch_size": 128, "lr": 3e-4, "samples": 250, "sample_steps": 10, "guidance": 6.0,
            "set": {}},
    "gpu": {"steps": 20000, "batch_size": 256, "lr": 3e-4, "samples": 2000, "sample_steps": 30, "guidance": 6.0,
            "set": {}},
}


def budget(args) -> dict:
    tier = TIERS[args.tier]
    return {"preset": args.preset or tier["preset"], "steps": args.steps or tier["steps"],
            "batch_size": args.batch_size or tier["batch_size"], "lr": args.lr or tier["lr"],
            "set": {**tier["set"], **parse_overrides(args.set)},
            "curve_images": args.curve_images or tier["curve_images"]}


def export_steps(steps: int) -> list[int]:
    return sorted({max(1, round(steps * f)) for f in CURVE_POINTS if f < 1})


def dit_budget(args) -> dict:
    tier = DIT_TIERS[args.tier]
    return {"steps": args.dit_steps or tier["steps"], "batch_size": args.dit_batch_size or tier["batch_size"],
            "lr": tier["lr"], "samples": args.dit_samples or tier["samples"],
            "sample_steps": tier["sample_steps"], "guidance": tier["guidance"],
            "set": {**tier["set"], **parse_overrides(args.dit_set)}}



# ------------------------------------------------------------------------------------------------------------
#                                                 The report
# ------------------------------------------------------------------------------------------------------------


def summarize(records: list[dict]) -> dict:
    """Per arm: mean and 95% t-interval over seeds of each final metric (PSNR per scale too); the finest PSNR paired
    by seed against hieratok and against singlescale, and each coarse prefix's PSNR paired against hieratok's."""
    arms = {}
    for r in records:
        arms.setdefault(r["arm"], []).append(r)
    out = {}
    base = {r["seed"]: r for r in arms.get("hieratok", [])}
    single = {r["seed"]: r for r in arms.get("singlescale", [])}
    for arm, rs in arms.items():
        row = {"seeds": sorted(r["seed"] for r in rs),
               "psnr": t_interval([r["final"]["psnr"] for r in rs]),
               "ssim": t_interval([r["final"]["ssim"] for r in rs]),
               "gini": t_interval([r["final"]["latent_density"]["gini"] for r in rs]),
               "entropy": t_interval([r["final"]["latent_density"]["entropy"] for r in rs]),
               "rfd_cls": (t_interval([r["final"]["rfd_cls"] for r in rs])
                           if all(r["final"].get("rfd_cls") is not None for r in rs) else None),
               "step_time_s": step_times(rs)}
        scales = [k for k in rs[0]["final"].get("psnr_scales", {}) if all(k in r["final"]["psnr_scales"] for r in rs)]
        if len(scales) > 1:
            row["psnr_scales"] = {k: t_interval([r["final"]["psnr_scales"][k] for r in rs]) for k in scales}
        for ref, refs in (("hieratok", base), ("singlescale", single)):
            paired = [r["final"]["psnr"] - refs[r["seed"]]["final"]["psnr"] for r in rs if r["seed"] in refs]
            if arm != ref and paired:
                row[f"psnr_minus_{ref}"] = t_interval(paired)
        coarse = [k for k in scales[:-1] if base and all(k in b["final"].get("psnr_scales", {}) for b in base.values())]
        if arm != "hieratok" and coarse and all(r["seed"] in base for r in rs):
            row["coarse_minus_hieratok"] = {k: t_interval([r["final"]["psnr_scales"][k]
                                                           - base[r["seed"]]["final"]["psnr_scales"][k] for r in rs])
                                            for k in coarse}
        out[arm] = row
    return out


# issue #24's bar for a multi-scale arm without the finest-scale cost (paired, over seeds, all validation images)
COST_TARGET = {"finest_vs_singlescale_db": -0.2, "coarse_vs_hieratok_db": -0.5}


def meets_cost_target(row: dict) -> bool | None:
    """Whether an arm's mean paired differences clear `COST_TARGET` (None: not a multi-scale arm with both
    references at every seed)."""
    if "psnr_minus_singlescale" not in row or "coarse_minus_hieratok" not in row:
        return None
    return (row["psnr_minus_singlescale"]["mean"] >= COST_TARGET["finest_vs_singlescale_db"]
            and all(d["mean"] >= COST_TARGET["coarse_vs_hieratok_db"] for d in row["coarse_minus_hieratok"].values()))


def _point(record: dict, step: int) -> dict:
    return next(p for p in record["curve"] if p["step"] == step)


def step_times(records: list[dict]) -> dict:
    """Seconds per training step over an arm's runs. A step time is a property of the machine, its thread count and
    what ran beside it, not a draw over seeds: a mean and t-interval only where every run recorded the same
    conditions (`run_conditions`); else the median and range, marked `mixed` (the runs of one arm came from several
    machines or thread counts, or did not record them)."""
    values = [r["step_time_s"] for r in records]
    conditions = {run_conditions(r) for r in records}
    if len(values) > 1 and (None in conditions or len(conditions) > 1):
        return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
                "mixed": True}
    return t_interval(values)


def run_conditions(record: dict) -> tuple | None:
    """(machine, threads, runs side by side) of a record, or None where it did not record them (records before
    the machine and thread count were kept)."""
    if record.get("machine") is None or record.get("threads") is None:
        return None
    return record["machine"], record["threads"], record.get("concurrent_runs")


def fmt_step(m: dict) -> str:
    """A `step_times` summary: "mean ± half-width", or "median (min-max)*" over mixed conditions."""
    if m.get("mixed"):
        return f"{m['median']:.3f} ({m['min']:.2f}-{m['max']:.2f})*"
    return fmt(m, 3)


STEP_NOTE = ("Step time (s): mean ± 95% interval where all of an arm's runs recorded the same machine, thread count "
             "and runs side by side; * marks the median (range) of runs measured under different or unrecorded "
             "conditions (the seeds ran on several machines), which is no cost comparison between arms "
             "(`train/benchmark.py --models tokenizer:ARM ...` times arms in turn on one machine).")


def summarize_generation(records: list[dict]) -> dict:
    """Per tokenizer arm: final FD-cls and class accuracy over seeds; each arm's DiT against the baseline's
    (`GEN_BASELINE`, single-scale) in `versus[arm]` (`compare_generation`). `paired` and `speedup` are hieratok's:
    the paper's claim. Every other arm's DiTs also against the paper method's (hieratok) in `versus_method[arm]`:
    whether a variant keeps that latent's advantage, not only whether it beats the baseline."""
    arms = {}
    for r in records:
        arms.setdefault(r["arm"], []).append(r)
    out = {"arms": {arm: {"seeds": sorted(r["seed"] for r in rs),
                          "gfd_cls": t_interval([r["final"]["gfd_cls"] for r in rs]),
                          "class_accuracy": t_interval([r["final"]["class_accuracy"] for r in rs]),
                          "step_time_s": step_times(rs)} for arm, rs in arms.items()}}
    base = arms.get(GEN_BASELINE, [])
    out["versus"] = {arm: compare_generation(arm, rs, base) for arm, rs in arms.items() if arm != GEN_BASELINE}
    out.update(out["versus"].get("hieratok") or compare_generation("hieratok", [], base))
    method = arms.get("hieratok", [])
    out["versus_method"] = {arm: compare_generation(arm, rs, method, "hieratok") for arm, rs in arms.items()
                            if arm not in ("hieratok", GEN_BASELINE) and method}
    return out


def compare_generation(arm: str, records: list[dict], baseline: list[dict], baseline_arm: str = GEN_BASELINE) -> dict:
    """`arm`'s DiTs against the baseline's (those of `baseline_arm`), over the seeds both have: per seed the steps
    each DiT needs to reach the worse of the two final FD-cls values and their ratio baseline / arm (above 1: `arm`'s
    latent trains the DiT faster), over seeds the ratios' geometric mean and interval (`ratio_interval`); and the
    paired difference arm - baseline at each measured step."""
    h, s = ({r["seed"]: r for r in rs} for rs in (records, baseline))
    both = sorted(set(h) & set(s))
    per_seed = []
    for seed in both:
        target = max(h[seed]["final"]["gfd_cls"], s[seed]["final"]["gfd_cls"])  # both reach it
        sh, ss = (steps_to_reach(r[seed]["curve"], target, "gfd_cls") for r in (h, s))
        # reached at the first measured point: the true step is at most that, so the ratio is only a bound
        # (None: an estimate; "lower" / "upper": the arm's / the baseline's step is bounded; "both": undetermined)
        early = {k: r[seed]["curve"][0]["gfd_cls"] <= target for k, r in (("arm", h), ("baseline", s))}
        bound = ("both" if early["arm"] and early["baseline"] else "lower" if early["arm"]
                 else "upper" if early["baseline"] else None)
        per_seed.append({"seed": seed, "target_gfd_cls": target, f"steps_{arm}": sh, f"steps_{baseline_arm}": ss,
                         "ratio": ss / sh, "bound": bound})
    # the same comparison without a target: the paired difference arm - baseline at each measured step
    paired = [{"step": pt["step"], **{key: t_interval([_point(h[seed], pt["step"])[key]
                                                       - _point(s[seed], pt["step"])[key] for seed in both])
                                      for key in ("gfd_cls", "class_accuracy")}}
              for pt in (h[both[0]]["curve"] if both else [])]
    return {"baseline": baseline_arm, "paired": paired,
            "speedup": {"per_seed": per_seed, "ratio": ratio_interval([p["ratio"] for p in per_seed]) if per_seed
                        else None, "censored": any(p["bound"] for p in per_seed)}}


def markdown(report: dict) -> str:
    s = report["summary"]
    lines = [f"# Controlled experiment ({report['tier']} tier)", "",
             f"Budget per run: {report['budget']['steps']} steps x {report['budget']['batch_size']} images, "
             f"preset {report['budget']['preset']} with {report['budget']['set'] or 'its own sizes'}; final metrics "
             f"on {report['val_images']} validation images; mean ± 95% t-interval over seeds.{devices_line(report)}"
             f"{classifier_line(report)}",
             "",
             "| arm | seeds | PSNR finest (dB) | Δ PSNR vs hieratok (paired) | SSIM | latent Gini | latent entropy "
             "| rFD-cls | step (s) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for arm, row in s.items():
        lines.append(f"| {arm} | {len(row['seeds'])} | {fmt(row['psnr'])} | {fmt(row.get('psnr_minus_hieratok'))} | "
                     f"{fmt(row['ssim'], 4)} | {fmt(row['gini'], 4)} | {fmt(row['entropy'], 4)} | "
                     f"{fmt(row.get('rfd_cls'))} | {fmt_step(row['step_time_s'])} |")
    ref = report.get("linear_reference")
    if ref:
        lines.append(f"| {ref['name']} (linear reference) | — | {ref['psnr_final']:.2f} | — | — | — | — | — | — |")
        lines += ["", f"The linear reference is the patch PCA with the arms' latent size ({ref['latent_channels']} "
                      f"channels on {ref['patch_size']} x {ref['patch_size']} patches) that every arm's linear "
                      f"shortcut starts from: a tokenizer has to rise above it."]
    if any(row["step_time_s"].get("mixed") for row in s.values()):
        lines += ["", STEP_NOTE]
    lines += scale_table(s)
    if report.get("generation"):
        lines += [""] + generation_markdown(report) + front_markdown(report)
    return "\n".join(lines) + "\n"


def front_correlation(points: list[dict]) -> dict | None:
    """Spearman's rank correlation over arms between the tokenizer's finest PSNR and its DiT's speed-up (the means of
    `hieratok.report.front_points`), with its two-sided permutation p-value (`hieratok.stats.rank_correlation`:
    exact up to 8 arms). None with fewer than 3 arms or when either side is constant."""
    c = rank_correlation([p["psnr"]["mean"] for p in points], [p["speedup"] for p in points])
    return None if c is None else {"rho": c["rho"], "p": c["p"], "arms": c["n"], "exact": c["exact"]}


def front_markdown(report: dict) -> list[str]:
    """The trade-off between the finest scale and the DiT's speed, over the arms with DiTs, in words."""
    points = front_points(report["records"], report["generation_summary"])
    c = front_correlation(points)
    if c is None:
        return []
    base = points[0]["against"]
    rows = ", ".join(f"{p['arm']} {p['psnr']['mean']:.2f} dB / {p['speedup']:.2f}x"
                     for p in sorted(points, key=lambda p: -p["psnr"]["mean"]))
    how = (f"exact over the {c['arms']}! orderings" if c["exact"] else "100,000 random orderings")
    return ["", "## The trade-off: finest scale against the DiT's speed", "",
            f"Over the {c['arms']} arms with DiTs, Spearman's rank correlation between the tokenizer's finest PSNR "
            f"(mean over the seeds with a DiT) and how much sooner its DiT reaches {base}'s final FD-cls (geometric "
            f"mean over seeds; {base} at 1x) is **ρ = {c['rho']:.2f}** (two-sided permutation p = {c['p']:.3f}, "
            f"{how}). By finest PSNR: {rows}. Every arm is measured against the same {base} DiTs and the arms were "
            f"chosen, not sampled, so this describes the grid rather than tests a law; the trade-off figure "
            f"(`*-front.html` beside this file, and the app's Experiment tab) shows each seed."]


def scale_table(s: dict) -> list[str]:
    """Every multi-scale arm's PSNR per scale, and the cost comparison: its finest PSNR against singlescale and its
    coarse prefixes against hieratok's, paired by seed, with issue #24's target."""
    rows = {arm: row for arm, row in s.items() if "psnr_scales" in row}
    if not rows:
        return []
    scales = list(next(iter(rows.values()))["psnr_scales"])
    lines = ["", "PSNR of every scale's image (dB; a coarse scale's image is decoded from that prefix of the tokens "
                 "alone):", "", "| arm | " + " | ".join(scales) + " |", "|---|" + "---:|" * len(scales)]
    lines += [f"| {arm} | " + " | ".join(fmt(row["psnr_scales"].get(k)) for k in scales) + " |"
              for arm, row in rows.items()]
    cost = {arm: row for arm, row in rows.items() if meets_cost_target(row) is not None}
    if cost:
        coarse = scales[:-1]
        lines += ["", f"The finest scale's cost (paired by seed): finest PSNR minus singlescale's, and each coarse "
                      f"prefix minus hieratok's. Target: finest >= {COST_TARGET['finest_vs_singlescale_db']} dB and "
                      f"every coarse prefix >= {COST_TARGET['coarse_vs_hieratok_db']} dB.", "",
                  "| arm | Δ finest vs singlescale | " + " | ".join(f"Δ {k} vs hieratok" for k in coarse)
                  + " | target |", "|---|---:|" + "---:|" * len(coarse) + "---|"]
        lines += [f"| {arm} | {fmt(row['psnr_minus_singlescale'])} | "
                  + " | ".join(fmt(row["coarse_minus_hieratok"].get(k)) for k in coarse)
                  + f" | {'met' if meets_cost_target(row) else 'not met'} |" for arm, row in cost.items()]
        notes = [f"`{arm}`: {why}" for arm, why in COARSE_CAVEATS.items() if arm in cost]
        if notes:
            lines += ["", "Coarse images that are no usable prefixes: " + "; ".join(notes) + "."]
    return lines


# arms whose coarse images are no usable prefixes, whatever their PSNR says
COARSE_CAVEATS = {"no-mss": "its coarse images are never supervised",
                  "full-attn": "its coarse tokens attend to the finer ones, so a coarse prefix alone does not decode "
                               "to these images"}


def devices_line(report: dict) -> str:
    """' Trained on: <device>, <precision> (n runs), ...' where the records say (step times compare within a device
    only; `--mixed-precision auto` trains in bf16 or fp32 by hardware)."""
    def precision(r):
        used = r.get("precision")
        return {"no": "fp32", None: "precision not recorded"}.get(used, used)
    devices = Counter(f"{r.get('hardware') or 'not recorded'}, {precision(r)}"
                      for r in report["records"] + report.get("generation", []))
    return (" Trained on: " + "; ".join(f"{d} ({n} run{'s' if n != 1 else ''})" for d, n in devices.most_common())
            + "." if devices else "")


def classifier_line(report: dict) -> str:
    """' rFD-cls, FD-cls and class accuracy measured with <classifier>.' where the records name it: FD in another
    classifier's features is another number."""
    named = {r["classifier"]["sha256"]: r["classifier"] for r in report["records"] + report.get("generation", [])
             if r.get("classifier")}
    return "".join(f" rFD-cls, FD-cls and class accuracy measured with the classifier {c['path']} ({c['image_size']} "
                   f"px, weights sha256 {sha})." for sha, c in named.items())


def generation_markdown(report: dict) -> list[str]:
    db, g = report["dit_budget"], report["generation_summary"]
    lines = ["## Generation: a DiT on each tokenizer's latent", "",
             f"Budget per DiT: {db['steps']} steps x {db['batch_size']} latents, config {db['set'] or 'the preset'}; "
             f"at each point {db['samples']} class-balanced samples (Heun, {db['sample_steps']} steps, guidance "
             f"{db['guidance']}): FD-cls against the {report['val_images']} validation images' classifier features "
             f"(biased upward at few samples, the same number for every DiT) and the classifier's accuracy on them.",
             "", "| latent of | seeds | gFD-cls (final) | class accuracy (final) | DiT step (s) |",
             "|---|---|---:|---:|---:|"]
    for arm, row in g["arms"].items():
        lines.append(f"| {arm} | {len(row['seeds'])} | {fmt(row['gfd_cls'], 1)} | "
                     f"{fmt(percent(row['class_accuracy']), 1)}% | {fmt_step(row['step_time_s'])} |")
    if any(row["step_time_s"].get("mixed") for row in g["arms"].values()):
        lines += ["", STEP_NOTE.replace("Step time (s)", "DiT step time (s)")]
    chance = 1 / report["generation"][0]["config"]["num_classes"]
    if all(row["class_accuracy"]["mean"] < 1.5 * chance for row in g["arms"].values()):
        lines += ["", f"**Every DiT is still near chance ({100 * chance:.0f}%) at this budget**: the samples are not "
                      f"yet class-conditional images, so neither the FD-cls values nor the ratio below can rank the "
                      f"latents; a larger DiT budget (`--dit-steps`, or `--tier gpu`) is what decides."]
    for arm, versus in list(g.get("versus", {}).items()) + list(g.get("versus_method", {}).items()):
        lines += versus_markdown(arm, versus)
    return lines


def versus_markdown(arm: str, g: dict) -> list[str]:
    """One arm's DiTs against another arm's (`compare_generation`) in words."""
    lines, base = [], g.get("baseline", GEN_BASELINE)
    if g["paired"]:
        n = g["paired"][0]["gfd_cls"]["n"]
        diffs = " / ".join(fmt(p["gfd_cls"], 1) for p in g["paired"])
        accs = " / ".join(fmt(percent(p["class_accuracy"]), 1) for p in g["paired"])
        at = " / ".join(f"{p['step']:,}" for p in g["paired"])
        lines += ["", f"Paired by seed ({n} {'seed' if n == 1 else 'seeds'}), {arm} minus {base} at "
                      f"{at} DiT steps: FD-cls {diffs} (below 0: the {arm} latent's samples are closer to "
                      f"the data); class accuracy {accs} points."]
    sp = g["speedup"]
    if sp["ratio"]:
        def steps(p, who):
            first = p["bound"] == "both" or p["bound"] == ("lower" if who == arm else "upper")
            return f"{'<= ' if first else ''}{p['steps_' + who]:.0f}"
        ratio_sign = {None: "", "lower": ">= ", "upper": "<= ", "both": "undetermined, "}
        seeds = "; ".join(f"seed {p['seed']}: target {p['target_gfd_cls']:.1f}, {arm} {steps(p, arm)} / "
                          f"{base} {steps(p, base)} steps, ratio {ratio_sign[p['bound']]}"
                          f"{p['ratio']:.2f}" for p in sp["per_seed"])
        r = sp["ratio"]
        over = (f"geometric mean over {r['n']} seeds, 95% interval {r['low']:.2f}–{r['high']:.2f}"
                if defined(r["low"]) else "one seed, no interval")
        claim = ("The paper claims 1.38x; above" if arm == "hieratok" else "Above")
        lines += ["", f"Steps to reach a common FD-cls (per seed the worse of the two final values, interpolated "
                      f"between measured points): {base} / {arm} = **{r['mean']:.2f}x** ({over}; {seeds}). "
                      f"{claim} 1 means the {arm} latent trains the DiT faster than the {base} one."]
        if sp.get("censored"):
            lines += ["", "A DiT that already beats the target at its first measured point only bounds its step "
                          "count (<=), so that seed's ratio is a bound, not an estimate, and the interval above mixes "
                          "bounds; only earlier measured points can resolve it."]
    return lines


def load_results(path: str | Path) -> dict | None:
    """A results JSON (None when there is none yet); the summary is recomputed from the records."""
    path = Path(path)
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    report["summary"] = summarize(report.get("records", []))
    if report.get("generation"):
        report["generation_summary"] = summarize_generation(report["generation"])
    return report
