"""The controlled experiment's results (`train/experiment.py` writes them, the app shows them): per-arm statistics
over seeds, the Markdown table and the learning curves.

A results file holds {"tier", "budget", "val_images", "command", "records": [one per run: arm, variant, seed,
budget, curve (PSNR etc. at fixed points of the budget), final metrics, step time], "summary": `summarize(records)`}
and, for the generation half, "dit_budget", "generation" (one record per DiT: arm of its tokenizer, seed, curve of
FD-cls and class accuracy) and "generation_summary": `summarize_generation(generation)`.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path


def t_interval(values: list[float], level: float = 0.95) -> dict:
    """Mean and the half-width of a Student-t confidence interval over independent runs (seeds)."""
    from scipy import stats
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci95": float("nan"), "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "ci95": float(half), "n": n}


def ratio_interval(ratios: list[float], level: float = 0.95) -> dict:
    """Geometric mean and 95% interval of positive ratios over independent runs: the t-interval of their logarithms,
    exponentiated (a ratio's interval is multiplicative; an arithmetic one could even reach below zero)."""
    logs = t_interval([math.log(r) for r in ratios], level)
    out = {"mean": math.exp(logs["mean"]), "n": logs["n"], "low": float("nan"), "high": float("nan")}
    if not math.isnan(logs["ci95"]):
        out.update(low=math.exp(logs["mean"] - logs["ci95"]), high=math.exp(logs["mean"] + logs["ci95"]))
    return out


def summarize(records: list[dict]) -> dict:
    """Per arm: mean and 95% t-interval over seeds of each final metric; paired differences against hieratok."""
    arms = {}
    for r in records:
        arms.setdefault(r["arm"], []).append(r)
    out = {}
    base = {r["seed"]: r for r in arms.get("hieratok", [])}
    for arm, rs in arms.items():
        row = {"seeds": sorted(r["seed"] for r in rs),
               "psnr": t_interval([r["final"]["psnr"] for r in rs]),
               "ssim": t_interval([r["final"]["ssim"] for r in rs]),
               "gini": t_interval([r["final"]["latent_density"]["gini"] for r in rs]),
               "entropy": t_interval([r["final"]["latent_density"]["entropy"] for r in rs]),
               "rfd_cls": (t_interval([r["final"]["rfd_cls"] for r in rs])
                           if all(r["final"].get("rfd_cls") is not None for r in rs) else None),
               "step_time_s": t_interval([r["step_time_s"] for r in rs])}
        paired = [r["final"]["psnr"] - base[r["seed"]]["final"]["psnr"] for r in rs if r["seed"] in base]
        if arm != "hieratok" and paired:
            row["psnr_minus_hieratok"] = t_interval(paired)
        out[arm] = row
    return out


def steps_to_reach(curve: list[dict], target: float, key: str = "gfd_cls") -> float | None:
    """The first step at which a lower-is-better metric reaches `target`, linearly interpolated between the measured
    points (the first point's step when it is reached there already; None when it is never reached)."""
    prev = None
    for p in curve:
        if p[key] <= target:
            if prev is None or prev[1] == p[key]:
                return float(p["step"])
            s0, v0 = prev
            return s0 + (v0 - target) / (v0 - p[key]) * (p["step"] - s0)
        prev = (p["step"], p[key])
    return None


def _point(record: dict, step: int) -> dict:
    return next(p for p in record["curve"] if p["step"] == step)


def summarize_generation(records: list[dict]) -> dict:
    """Per tokenizer arm: final FD-cls and class accuracy over seeds; per seed with both arms, the steps each DiT
    needs to reach the worse of the two final FD-cls values and their ratio singlescale / hieratok (above 1: the
    multi-scale latent trains the DiT faster); over seeds, the ratios' geometric mean and interval
    (`ratio_interval`)."""
    arms = {}
    for r in records:
        arms.setdefault(r["arm"], []).append(r)
    out = {"arms": {arm: {"seeds": sorted(r["seed"] for r in rs),
                          "gfd_cls": t_interval([r["final"]["gfd_cls"] for r in rs]),
                          "class_accuracy": t_interval([r["final"]["class_accuracy"] for r in rs]),
                          "step_time_s": t_interval([r["step_time_s"] for r in rs])} for arm, rs in arms.items()}}
    h = {r["seed"]: r for r in arms.get("hieratok", [])}
    s = {r["seed"]: r for r in arms.get("singlescale", [])}
    both = sorted(set(h) & set(s))
    per_seed = []
    for seed in both:
        target = max(h[seed]["final"]["gfd_cls"], s[seed]["final"]["gfd_cls"])  # both reach it
        sh, ss = steps_to_reach(h[seed]["curve"], target), steps_to_reach(s[seed]["curve"], target)
        # reached at the first measured point: the true step is at most that, so the ratio is only a bound
        # (None: an estimate; "lower" / "upper": hieratok's / singlescale's step is bounded; "both": undetermined)
        early = {arm: r[seed]["curve"][0]["gfd_cls"] <= target for arm, r in (("hieratok", h), ("singlescale", s))}
        bound = ("both" if early["hieratok"] and early["singlescale"] else "lower" if early["hieratok"]
                 else "upper" if early["singlescale"] else None)
        per_seed.append({"seed": seed, "target_gfd_cls": target, "steps_hieratok": sh, "steps_singlescale": ss,
                         "ratio": ss / sh, "bound": bound})
    # the same comparison without a target: the paired difference hieratok - singlescale at each measured step
    out["paired"] = [{"step": pt["step"], **{key: t_interval([_point(h[seed], pt["step"])[key]
                                                              - _point(s[seed], pt["step"])[key] for seed in both])
                                             for key in ("gfd_cls", "class_accuracy")}}
                     for pt in (h[both[0]]["curve"] if both else [])]
    out["speedup"] = {"per_seed": per_seed,
                      "ratio": ratio_interval([p["ratio"] for p in per_seed]) if per_seed else None,
                      "censored": any(p["bound"] for p in per_seed)}
    return out


def fmt(m: dict, d: int = 2) -> str:
    if m is None:
        return "—"
    ci = "" if math.isnan(m["ci95"]) else f" ± {m['ci95']:.{d}f}"
    return f"{m['mean']:.{d}f}{ci}"


def markdown(report: dict) -> str:
    s = report["summary"]
    lines = [f"# Controlled experiment ({report['tier']} tier)", "",
             f"Budget per run: {report['budget']['steps']} steps x {report['budget']['batch_size']} images, "
             f"preset {report['budget']['preset']} with {report['budget']['set'] or 'its own sizes'}; final metrics "
             f"on {report['val_images']} validation images; mean ± 95% t-interval over seeds.{devices_line(report)}",
             "",
             "| arm | seeds | PSNR finest (dB) | Δ PSNR vs hieratok (paired) | SSIM | latent Gini | latent entropy "
             "| rFD-cls | step (s) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for arm, row in s.items():
        lines.append(f"| {arm} | {len(row['seeds'])} | {fmt(row['psnr'])} | {fmt(row.get('psnr_minus_hieratok'))} | "
                     f"{fmt(row['ssim'], 4)} | {fmt(row['gini'], 4)} | {fmt(row['entropy'], 4)} | "
                     f"{fmt(row.get('rfd_cls'))} | {fmt(row['step_time_s'], 3)} |")
    ref = report.get("linear_reference")
    if ref:
        lines.append(f"| {ref['name']} (linear reference) | — | {ref['psnr_final']:.2f} | — | — | — | — | — | — |")
        lines += ["", f"The linear reference is the patch PCA with the arms' latent size ({ref['latent_channels']} "
                      f"channels on {ref['patch_size']} x {ref['patch_size']} patches) that every arm's linear "
                      f"shortcut starts from: a tokenizer has to rise above it."]
    if report.get("generation"):
        lines += [""] + generation_markdown(report)
    return "\n".join(lines) + "\n"


def percent(m: dict) -> dict:
    """A fraction's mean and interval in percent."""
    return {**m, "mean": 100 * m["mean"], "ci95": 100 * m["ci95"]}


def devices_line(report: dict) -> str:
    """' Trained on: <device> (n runs), ...' where the records say (step times compare within a device only)."""
    devices = Counter(r.get("hardware") or "not recorded" for r in report["records"])
    return " Trained on: " + ", ".join(f"{d} ({n} runs)" for d, n in devices.most_common()) + "." if devices else ""


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
                     f"{fmt(percent(row['class_accuracy']), 1)}% | {fmt(row['step_time_s'], 3)} |")
    chance = 1 / report["generation"][0]["config"]["num_classes"]
    if all(row["class_accuracy"]["mean"] < 1.5 * chance for row in g["arms"].values()):
        lines += ["", f"**Every DiT is still near chance ({100 * chance:.0f}%) at this budget**: the samples are not "
                      f"yet class-conditional images, so neither the FD-cls values nor the ratio below can rank the "
                      f"latents; a larger DiT budget (`--dit-steps`, or `--tier gpu`) is what decides."]
    if g.get("paired"):
        n = g["paired"][0]["gfd_cls"]["n"]
        diffs = " / ".join(fmt(p["gfd_cls"], 1) for p in g["paired"])
        accs = " / ".join(fmt(percent(p["class_accuracy"]), 1) for p in g["paired"])
        at = " / ".join(f"{p['step']:,}" for p in g["paired"])
        lines += ["", f"Paired by seed ({n} {'seed' if n == 1 else 'seeds'}), hieratok minus singlescale at "
                      f"{at} DiT steps: FD-cls {diffs} (below 0: the multi-scale latent's samples are closer to "
                      f"the data); class accuracy {accs} points."]
    sp = g["speedup"]
    if sp["ratio"]:
        def steps(p, arm):
            first = p["bound"] == "both" or p["bound"] == ("lower" if arm == "hieratok" else "upper")
            return f"{'<= ' if first else ''}{p['steps_' + arm]:.0f}"
        ratio_sign = {None: "", "lower": ">= ", "upper": "<= ", "both": "undetermined, "}
        seeds = "; ".join(f"seed {p['seed']}: target {p['target_gfd_cls']:.1f}, hieratok {steps(p, 'hieratok')} / "
                          f"singlescale {steps(p, 'singlescale')} steps, ratio {ratio_sign[p['bound']]}"
                          f"{p['ratio']:.2f}" for p in sp["per_seed"])
        r = sp["ratio"]
        over = (f"geometric mean over {r['n']} seeds, 95% interval {r['low']:.2f}–{r['high']:.2f}"
                if not math.isnan(r["low"]) else "one seed, no interval")
        lines += ["", f"Steps to reach a common FD-cls (per seed the worse of the two final values, interpolated "
                      f"between measured points): singlescale / hieratok = **{r['mean']:.2f}x** ({over}; {seeds}). "
                      f"The paper claims 1.38x; above 1 means the multi-scale latent trains the DiT faster."]
        if sp.get("censored"):
            lines += ["", "A DiT that already beats the target at its first measured point only bounds its step "
                          "count (<=), so that seed's ratio is a bound, not an estimate, and the interval above mixes "
                          "bounds; only earlier measured points can resolve it."]
    return lines


def curves_figure(records: list[dict], reference: dict | None = None, generation: list[dict] | None = None):
    """Finest-scale PSNR against images seen per arm (mean ± 95% t-interval over seeds); the linear reference on
    the same images as a dashed line. With generation records, a second panel: each DiT's FD-cls against its steps."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    fig = make_subplots(rows=1, cols=2 if generation else 1, subplot_titles=(
        ["tokenizers: finest PSNR", "DiTs: FD-cls of samples"] if generation else None))
    panels = [(records, "images_seen", "psnr", "")]
    if generation:
        panels.append((generation, "step", "gfd_cls", "DiT on "))
    for col, (runs, x_key, y_key, prefix) in enumerate(panels, start=1):
        for arm in sorted({r["arm"] for r in runs}):
            rs = [r for r in runs if r["arm"] == arm]
            xs = [p[x_key] for p in rs[0]["curve"]]
            ys = [[r["curve"][i][y_key] for r in rs] for i in range(len(xs))]
            mean = [sum(v) / len(v) for v in ys]
            ci = [t_interval(v)["ci95"] if len(v) > 1 else 0.0 for v in ys]
            fig.add_trace(go.Scatter(x=xs, y=mean, name=prefix + arm, mode="lines+markers",
                                     error_y=dict(type="data", array=ci, visible=True)), row=1, col=col)
    if reference:  # after the traces: plotly leaves a line out of a subplot that has no data yet
        fig.add_hline(y=reference["psnr_curve"], line_dash="dash", line_color="#888", row=1, col=1,
                      annotation_text=f"{reference['name']} (linear reference)", annotation_position="bottom right")
    fig.update_xaxes(title_text="images seen", row=1, col=1)
    fig.update_yaxes(title_text="PSNR, finest scale (dB)", row=1, col=1)
    if generation:
        fig.update_xaxes(title_text="DiT steps", row=1, col=2)
        fig.update_yaxes(title_text="FD-cls (lower is better)", row=1, col=2)
    fig.update_layout(height=420, title="Learning curves (mean ± 95% t-interval over seeds)")
    return fig


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
