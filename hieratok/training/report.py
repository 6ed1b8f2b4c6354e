"""The evaluation report (`train/evaluate.py`'s JSON) as Markdown, shared by the evaluation and the model cards."""
from __future__ import annotations


def fmt(m, digits=2):
    if m is None:
        return "n/a"
    if isinstance(m, dict):
        return f"{m['mean']:.{digits}f} ± {m['ci95']:.{digits}f}"
    return f"{m:.{digits}f}"


def markdown(report: dict) -> str:
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
