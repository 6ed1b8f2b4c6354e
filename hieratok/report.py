"""Reports: one number format, the evaluation report (`train/evaluate.py`'s JSON; also in the model cards) as
Markdown, and the learning curves of a results file's runs (`train/experiment.py`; the app's Experiment view)."""
from __future__ import annotations

import math


def defined(x) -> bool:
    """A measured number: not None (JSON's null) and not NaN (an interval of one seed, in memory)."""
    return x is not None and not math.isnan(x)


def fmt(m, digits: int = 2) -> str:
    """A number, or a {"mean", "ci95"} interval as "mean ± half-width" (no half-width when it is undefined);
    "—" for a value not measured."""
    if m is None:
        return "—"
    if isinstance(m, dict):
        ci = f" ± {m['ci95']:.{digits}f}" if defined(m.get("ci95")) else ""
        return f"{m['mean']:.{digits}f}{ci}"
    return f"{m:.{digits}f}"


def percent(m: dict) -> dict:
    """A fraction's mean and interval in percent."""
    return {**m, "mean": 100 * m["mean"], "ci95": 100 * m["ci95"] if defined(m.get("ci95")) else None}


def evaluation_markdown(report: dict) -> str:
    lines = [f"# Evaluation on {report['data']} ({report['images']} images)", ""]
    notes = report["notes"]
    fd_name = notes["fd_name"] or "FD"
    lines += [f"- Fréchet distance: {notes['fd']}", f"- LPIPS: {notes['lpips']}", ""]
    if report.get("classifier"):
        c = report["classifier"]
        lines += [f"Classifier test accuracy: {fmt(c['accuracy'], 4)} ({c['images']} images)", ""]
    toks = report.get("tokenizers", {})
    if toks:
        names = list(toks)
        lines += ["## Tokenizers (± 95% CI over images)", "", "| metric | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]
        all_scales = sorted({s for t in toks.values() for s in t["scales"]}, key=lambda k: int(k.split("x")[0]))
        for metric in ("psnr", "ssim"):
            for s in all_scales:
                row = [fmt(toks[n]["scales"][s][metric], 2 if metric == "psnr" else 4) if s in toks[n]["scales"]
                       else "—" for n in names]
                lines.append(f"| {metric.upper()} {s} | " + " | ".join(row) + " |")
        lines.append("| LPIPS (finest) | " + " | ".join(fmt(toks[n]["lpips"], 4) for n in names) + " |")
        lines.append("| PSNR, finest scale | " + " | ".join(
            fmt(toks[n]["scales"][max(toks[n]["scales"], key=lambda k: int(k.split("x")[0]))]["psnr"])
            for n in names) + " |")
        if any(toks[n].get("finest_psnr_minus_linear") for n in names):
            lines.append("| PSNR, finest − linear codec (paired, per image) | " + " | ".join(
                fmt(toks[n].get("finest_psnr_minus_linear")) if toks[n].get("finest_psnr_minus_linear") else "—"
                for n in names) + " |")
        base = next((toks[n]["finest_psnr_minus_baseline"]["reference"] for n in names
                     if toks[n].get("finest_psnr_minus_baseline")), None)
        if base:
            lines.append(f"| PSNR, finest − {base} (paired, per image) | " + " | ".join(
                fmt(toks[n]["finest_psnr_minus_baseline"]) if toks[n].get("finest_psnr_minus_baseline") else "—"
                for n in names) + " |")
        lines.append(f"| r{fd_name} | " + " | ".join(fmt(toks[n]["rfd"]) for n in names) + " |")
        for key in ("gini", "entropy"):
            for s in all_scales:
                vals = [toks[n]["scales"].get(s, {}).get("latent_density") for n in names]
                if any(vals):
                    lines.append(f"| latent {key} {s} | " + " | ".join(
                        f"{v[key]:.4f}" if v else "—" for v in vals) + " |")
        lines.append("| decoder tokens | " + " | ".join(str(toks[n]["decoder_tokens"]) for n in names) + " |")
        lines.append("")
    gens = report.get("generators", {})
    if gens:
        names = list(gens)
        lines += ["## Generators", "", "| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        lines.append(f"| g{fd_name} | " + " | ".join(fmt(gens[n]["gfd"]) for n in names) + " |")
        lines.append("| class accuracy | " + " | ".join(fmt(gens[n]["class_accuracy"], 4) for n in names) + " |")
        settings = {(g["samples"], g["guidance"], g["sampler_steps"]) for g in gens.values()}
        if len(settings) == 1:
            samples, guidance, steps = settings.pop()
            lines += ["", f"{samples} samples per model, guidance {guidance}, {steps} Heun steps.", ""]
        else:  # e.g. a guidance sweep: the settings per column
            for key, label in (("guidance", "guidance"), ("sampler_steps", "Heun steps"), ("samples", "samples")):
                lines.append(f"| {label} | " + " | ".join(f"{gens[n][key]:g}" for n in names) + " |")
            lines.append("")
    return "\n".join(lines)


FIGURE_HEIGHT = 560  # the legend sits below the panels: one row per few arms


def curves_figure(records: list[dict], reference: dict | None = None, generation: list[dict] | None = None):
    """Finest-scale PSNR against images seen per arm (mean ± 95% t-interval over seeds); the linear reference on
    the same images as a dashed line. With generation records, a second panel: each DiT's FD-cls against its steps."""
    import plotly.graph_objects as go

    from .stats import t_interval
    from plotly.subplots import make_subplots
    fig = make_subplots(rows=1, cols=2 if generation else 1, subplot_titles=(
        ["tokenizers: finest PSNR", "DiTs: FD-cls of samples"] if generation else None))
    panels = [(records, "images_seen", "psnr", "")]
    if generation:
        panels.append((generation, "step", "gfd_cls", "DiT on "))
    # one colour per arm in both panels (24 distinct ones: plotly's default ten repeat beyond ten arms)
    from plotly.colors import qualitative
    arms = sorted({r["arm"] for r in records} | {r["arm"] for r in generation or []})
    colour = {arm: qualitative.Dark24[i % len(qualitative.Dark24)] for i, arm in enumerate(arms)}
    for col, (runs, x_key, y_key, prefix) in enumerate(panels, start=1):
        for arm in sorted({r["arm"] for r in runs}):
            rs = [r for r in runs if r["arm"] == arm]
            xs = [p[x_key] for p in rs[0]["curve"]]
            ys = [[r["curve"][i][y_key] for r in rs] for i in range(len(xs))]
            mean = [sum(v) / len(v) for v in ys]
            ci = [t_interval(v)["ci95"] if len(v) > 1 else 0.0 for v in ys]
            fig.add_trace(go.Scatter(x=xs, y=mean, name=prefix + arm, mode="lines+markers",
                                     line=dict(color=colour[arm], dash="dash" if prefix else "solid"),
                                     error_y=dict(type="data", array=ci, visible=True)), row=1, col=col)
    if reference:  # after the traces: plotly leaves a line out of a subplot that has no data yet
        fig.add_hline(y=reference["psnr_curve"], line_dash="dash", line_color="#888", row=1, col=1,
                      annotation_text=f"{reference['name']} (linear reference)", annotation_position="bottom right")
    fig.update_xaxes(title_text="images seen", row=1, col=1)
    fig.update_yaxes(title_text="PSNR, finest scale (dB)", row=1, col=1)
    if generation:
        fig.update_xaxes(title_text="DiT steps", row=1, col=2)
        fig.update_yaxes(title_text="FD-cls (lower is better)", row=1, col=2)
    fig.update_layout(height=FIGURE_HEIGHT, title="Learning curves (mean ± 95% t-interval over seeds)",
                      legend=dict(orientation="h", yanchor="top", y=-0.18, x=0))
    return fig


def front_points(records: list[dict], generation_summary: dict | None) -> list[dict]:
    """The trade-off a results file measures, one point per arm that has DiTs: {"arm", "seeds": [(seed, finest PSNR of
    that seed's tokenizer on the validation images, the DiT's speed-up, its bound)], "psnr": mean ± 95% t-interval of
    those PSNRs, "ratio": the speed-up's geometric mean and interval over seeds (None for the baseline), "speedup": its
    mean (1 for the baseline), "against": the baseline arm, "baseline": whether this is it}. The speed-up is how much
    sooner the arm's DiT reached the baseline DiT's final FD-cls (`generation_summary["versus"][arm]["speedup"]`); the
    baseline is a point at 1 by definition, over the seeds the others were compared on. [] when no arm has a DiT
    compared with the baseline's."""
    from .stats import t_interval
    versus = {arm: v for arm, v in ((generation_summary or {}).get("versus") or {}).items()
              if v["speedup"]["per_seed"]}  # an arm without a seed the baseline also has: nothing to compare
    if not versus:
        return []
    finest = {(r["arm"], r["seed"]): r["final"]["psnr"] for r in records if r.get("final")}
    baseline = next(iter(versus.values()))["baseline"]
    base_seeds = sorted({p["seed"] for v in versus.values() for p in v["speedup"]["per_seed"]})
    candidates = [(baseline, [(s, 1.0, None) for s in base_seeds], None)]
    candidates += [(arm, [(p["seed"], p["ratio"], p["bound"]) for p in v["speedup"]["per_seed"]],
                    v["speedup"]["ratio"]) for arm, v in sorted(versus.items())]
    points = []
    for arm, seeds, ratio in candidates:
        seeds = [(s, finest[arm, s], y, b) for s, y, b in seeds if (arm, s) in finest]
        if seeds:
            xs = [x for _, x, _, _ in seeds]
            points.append({"arm": arm, "against": baseline, "baseline": arm == baseline, "seeds": seeds, "ratio": ratio,
                           "speedup": ratio["mean"] if ratio else 1.0,
                           "psnr": t_interval(xs) if len(xs) > 1 else {"mean": xs[0], "ci95": None, "n": 1}})
    return points


def front_figure(records: list[dict], generation_summary: dict | None):
    """`front_points` drawn: finest PSNR (x, mean ± 95% t-interval over the seeds with a DiT) against the DiT's
    speed-up over the baseline (y, log scale, geometric mean and 95% interval), every seed also on its own (open
    markers: an interval over two seeds is wide). None when there is nothing to draw."""
    import plotly.graph_objects as go

    points = front_points(records, generation_summary)
    if not points:
        return None
    baseline = points[0]["against"]
    fig = go.Figure()
    for p in points:
        arm, seeds, ratio, x, y = p["arm"], p["seeds"], p["ratio"], p["psnr"], p["speedup"]
        up, down = ((ratio["high"] - y, y - ratio["low"]) if ratio and defined(ratio.get("low"))
                    else (0.0, 0.0))
        fig.add_trace(go.Scatter(
            x=[x["mean"]], y=[y], mode="markers+text", text=[f"{arm} ({len(seeds)} seed{'s' * (len(seeds) > 1)})"],
            textposition="bottom center" if p["baseline"] else "top center", name=arm, marker=dict(size=10),
            error_x=dict(type="data", array=[x["ci95"] if defined(x["ci95"]) else 0.0], visible=True),
            error_y=dict(type="data", array=[up], arrayminus=[down], visible=True),
            hovertemplate=f"{arm}<br>finest PSNR %{{x:.2f}} dB<br>%{{y:.2f}}x sooner<extra></extra>"))
        fig.add_trace(go.Scatter(
            x=[s[1] for s in seeds], y=[s[2] for s in seeds], mode="markers", showlegend=False,
            name=f"{arm}, per seed", marker=dict(size=7, symbol="circle-open", color="#555"),
            text=[f"seed {s}" + (f" (ratio a {b} bound)" if b else "") for s, _, _, b in seeds],
            hovertemplate=f"{arm}, %{{text}}<br>%{{x:.2f}} dB, %{{y:.2f}}x<extra></extra>"))
    xs = [x for t in fig.data for x in t.x]
    fig.update_xaxes(title_text="tokenizer: finest PSNR on the validation images (dB)",
                     range=[min(xs) - 0.15, max(xs) + 0.25])  # room for the labels
    ticks = [0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8]  # a log axis labels 0.9 as "9" by default
    fig.update_yaxes(type="log", title_text=f"DiT: {baseline}'s final FD-cls reached ... x sooner",
                     tickvals=ticks, ticktext=[f"{t:g}x" for t in ticks])
    fig.update_layout(height=FIGURE_HEIGHT, showlegend=False,
                      title=f"The trade-off: each arm's finest scale against its DiT's speed (against {baseline})"
                            "<br><sup>mean and 95% interval over seeds; open markers: the single seeds</sup>")
    return fig
