"""The controlled experiment's results (`train/experiment.py` writes them, the app shows them): per-arm statistics
over seeds, the Markdown table and the learning curves.

A results file holds {"tier", "budget", "val_images", "command", "records": [one per run: arm, variant, seed,
budget, curve (PSNR etc. at fixed points of the budget), final metrics, step time], "summary": `summarize(records)`}.
"""
from __future__ import annotations

import json
import math
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
             f"on {report['val_images']} validation images; mean ± 95% t-interval over seeds.", "",
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
    return "\n".join(lines) + "\n"


def curves_figure(records: list[dict], reference: dict | None = None):
    """Finest-scale PSNR against images seen per arm (mean ± 95% t-interval over seeds); the linear reference on
    the same images as a dashed line."""
    import plotly.graph_objects as go
    fig = go.Figure()
    if reference:
        fig.add_hline(y=reference["psnr_curve"], line_dash="dash", line_color="#888",
                      annotation_text=f"{reference['name']} (linear reference)", annotation_position="bottom right")
    arms = sorted({r["arm"] for r in records})
    for arm in arms:
        rs = [r for r in records if r["arm"] == arm]
        xs = [p["images_seen"] for p in rs[0]["curve"]]
        ys = [[r["curve"][i]["psnr"] for r in rs] for i in range(len(xs))]
        mean = [sum(v) / len(v) for v in ys]
        ci = [t_interval(v)["ci95"] if len(v) > 1 else 0.0 for v in ys]
        fig.add_trace(go.Scatter(x=xs, y=mean, name=arm, mode="lines+markers",
                                 error_y=dict(type="data", array=ci, visible=True)))
    fig.update_layout(xaxis_title="images seen", yaxis_title="PSNR, finest scale (dB)", height=420,
                      title="Learning curves (mean ± 95% t-interval over seeds, fixed validation subset)")
    return fig


def load_results(path: str | Path) -> dict | None:
    """A results JSON (None when there is none yet); the summary is recomputed from the records."""
    path = Path(path)
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    report["summary"] = summarize(report.get("records", []))
    return report
