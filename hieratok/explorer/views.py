"""What each view computes, as plain functions over the public `hieratok` API (no Gradio here); each returns a
named tuple whose fields the UI (and the tests) read by name."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image, ImageDraw
from plotly.subplots import make_subplots

from hieratok import MASK_KINDS, ImageError, generate, interpolate, load_image, place_by_neighbours, to_pil
from hieratok.losses import downsample_image
from hieratok.metrics import psnr, ssim

from .models import AppError, ModelStore

DISPLAY = 192  # pixels a side for every displayed image (upscaled from the 1 x 1 scale's patch upwards)
DEFAULT_STEPS = 10     # Heun steps of the Generate view: 16 samples in about 3 s on 2 CPU cores
DEFAULT_GUIDANCE = 2.0  # where no family loads (each family has its measured default: models.Family.guidance)


class Reconstruction(NamedTuple):
    input: Image.Image                        # the upload as the model sees it
    gallery: list[tuple[Image.Image, str]]    # (image, caption) per scale, coarse -> fine
    final: Image.Image                        # the finest scale's reconstruction
    difference: Image.Image                   # |final - input| heatmap
    text: str                                 # markdown: PSNR / SSIM, latent size, per-scale table
    psnr_points: list[tuple[int, int, float]]  # (scale, pixels, PSNR) per scale, for `psnr_figure`


class AttentionView(NamedTuple):
    maps: go.Figure    # the query's attention over every scale
    mass: go.Figure    # attention mass per scale
    text: str


class Samples(NamedTuple):
    grid: Image.Image                         # every sample
    scales: list[tuple[Image.Image, str]]     # the first sample decoded at every scale
    text: str


class LatentMap(NamedTuple):
    figure: go.Figure  # UMAP of the shipped latents (and the upload's place)
    text: str          # markdown: latent density of both tokenizers


class ExperimentView(NamedTuple):
    text: str                  # the results table (or how to produce it)
    figure: go.Figure | None   # learning curves
    front: go.Figure | None    # each arm's finest PSNR against its DiT's speed-up (None before DiTs of two arms)


def _load(store: ModelStore, source, name: str = "HieraTok"):
    tok = store.tokenizer(name)
    try:
        return load_image(source, tok.config.image_size)
    except ImageError as e:
        raise AppError(f"Could not use this image: {e}") from e


def integer(value, name: str, lo: int, hi: int) -> int:
    """A whole number in lo..hi from an API or UI value (int, integral float, digit string), or an AppError that
    names the parameter and its range."""
    if isinstance(value, bool) or value is None or value == "":
        raise AppError(f"{name} must be a whole number in {lo}..{hi}, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise AppError(f"{name} must be a whole number in {lo}..{hi}, got {value!r}") from None
    if not f.is_integer() or not lo <= f <= hi:
        raise AppError(f"{name} must be a whole number in {lo}..{hi}, got {value!r}")
    return int(f)


def number(value, name: str, lo: float, hi: float) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise AppError(f"{name} must be a number in {lo}..{hi}, got {value!r}") from None
    if not lo <= f <= hi:
        raise AppError(f"{name} must be a number in {lo}..{hi}, got {value!r}")
    return f


def choice(value, name: str, options):
    if value not in options:
        raise AppError(f"{name} must be one of {', '.join(map(str, options))}; got {value!r}")
    return value


def _caption_notes(notes: list[str]) -> str:
    return "; ".join(notes) if notes else "used as is"


# ------------------------------------------------------------------------------------------------------------
#                                               Reconstruct
# ------------------------------------------------------------------------------------------------------------
def diff_heatmap(a: torch.Tensor, b: torch.Tensor) -> Image.Image:
    """Per-pixel absolute error (mean over RGB), as an inferno-like colour map, upscaled for display."""
    err = (a.float() - b.float()).abs().mean(0) / 2  # in [0, 1]
    e = (err / max(float(err.max()), 1e-6)).clamp(0, 1).numpy()
    rgb = np.stack([np.clip(1.5 * e, 0, 1), np.clip(1.5 * e - 0.5, 0, 1), np.clip(0.6 - np.abs(e - 0.3) * 2, 0, 1)],
                   -1)
    return Image.fromarray((rgb * 255).astype(np.uint8)).resize((DISPLAY, DISPLAY), Image.Resampling.NEAREST)


def missing_scale_tile(side: int) -> Image.Image:
    """A grey tile standing in for a scale the tokenizer does not have (keeps galleries aligned by scale)."""
    img = Image.new("RGB", (DISPLAY, DISPLAY), (236, 236, 240))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate((f"{side}x{side}", "no such scale", "in this tokenizer")):
        draw.text((DISPLAY // 2, DISPLAY // 2 - 18 + 16 * i), line, fill=(110, 110, 120), anchor="mm")
    return img


@torch.inference_mode()
def reconstruct(store: ModelStore, source, model: str = "HieraTok", resample: str = "nearest",
                align_to: tuple[int, ...] = ()):
    """The upload reconstructed from every scale (`Reconstruction`).

    `align_to`: scales to lay the gallery out by; those the tokenizer lacks get a `missing_scale_tile`, so the
    single-scale baseline's one image sits under HieraTok's 16x16 one."""
    tok = store.tokenizer(model)
    choice(resample, "display upscaling", ("nearest", "bicubic"))
    loaded = _load(store, source, model)
    x = loaded.tensor[None]
    z = tok.encode(x)
    out = tok.decode(z)
    gallery = [(missing_scale_tile(s), f"{s}x{s}: not a scale of {model}")
               for s in align_to if s not in out.scales and s < max(out.scales)]
    per_scale = []
    for s, im in zip(out.scales, out.images):
        target = downsample_image(x, im.shape[-1])
        p = float(psnr(im, target)[0])
        px = im.shape[-1]
        gallery.append((to_pil(im[0], DISPLAY, resample), f"{s}x{s} · {px} px · {p:.1f} dB"))
        per_scale.append((s, px, p))
    final = out.reconstruction
    p, q = float(psnr(final, x)[0]), float(ssim(final, x)[0])
    c, h, w = tok.config.latent_shape
    lines = [f"**{model}** — final reconstruction PSNR **{p:.2f} dB**, SSIM **{q:.4f}**",
             f"latent {c} x {h} x {w} = {c * h * w} values for {3 * tok.config.image_size ** 2} input values "
             f"(compression {tok.config.compression_ratio:.1f}x); decoder tokens {tok.layout.num_tokens} "
             f"(scales {', '.join(f'{s}x{s}' for s in tok.layout.scales)})",
             f"input: {_caption_notes(loaded.notes)}; display upscaling: {resample}",
             "| scale (tokens) | image | PSNR |\n|---|---:|---:|\n" +
             "\n".join(f"| {s}x{s} ({s * s}) | {px}x{px} px | {p:.2f} dB |" for s, px, p in per_scale),
             "PSNR at each scale is against the input area-downsampled to that scale's size."]
    return Reconstruction(to_pil(x[0], DISPLAY, resample), gallery, to_pil(final[0], DISPLAY, resample),
                          diff_heatmap(final[0], x[0]), "\n\n".join(lines), per_scale)


def psnr_figure(curves: dict[str, list[tuple[int, int, float]]]) -> go.Figure:
    """PSNR against each scale's image size, one trace per tokenizer (the single-scale one is a single point)."""
    fig = go.Figure()
    for name, points in curves.items():
        fig.add_trace(go.Scatter(x=[px for _, px, _ in points], y=[p for _, _, p in points], name=name,
                                 mode="lines+markers+text", text=[f"{p:.1f}" for _, _, p in points],
                                 textposition="top center", marker=dict(size=9)))
    sizes = sorted({px for points in curves.values() for _, px, _ in points})
    fig.update_xaxes(type="log", tickvals=sizes, ticktext=[f"{px} px" for px in sizes], title="image side")
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), yaxis_title="PSNR (dB)",
                      title="PSNR at each scale", legend=dict(orientation="h", y=-0.35))
    return fig


# ------------------------------------------------------------------------------------------------------------
#                                                Attention
# ------------------------------------------------------------------------------------------------------------
def mask_image(store: ModelStore, kind: str = "scale_causal", cell: int = 64) -> Image.Image:
    """The decoder mask as a block diagram: one equal-sized block per (query scale, key scale) pair, white where
    those queries attend to those keys, labelled with each scale's token count (drawn to token scale, the 256
    finest tokens would hide the coarse blocks)."""
    layout = store.tokenizer("HieraTok").layout
    choice(kind, "mask", MASK_KINDS)
    mask = layout.mask(kind)
    n, margin = layout.num_scales, 84
    img = Image.new("RGB", (margin + n * cell + 8, margin + n * cell + 8), "white")
    draw = ImageDraw.Draw(img)
    for a in range(n):
        for b in range(n):
            block = mask[layout.slice(a), layout.slice(b)]
            frac = float(block.float().mean())
            shade = int(40 + 205 * frac)  # all attend: white; none: dark; partly (block-diagonal): in between
            x0, y0 = margin + b * cell, margin + a * cell
            draw.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=(shade, shade, shade), outline=(150, 150, 160))
    for i, s in enumerate(layout.scales):
        label = f"{s}x{s}"
        draw.text((margin - 6, margin + i * cell + cell // 2 - 6), label, fill=(20, 20, 20), anchor="rm")
        draw.text((margin - 6, margin + i * cell + cell // 2 + 7), f"{s * s} tok", fill=(110, 110, 120), anchor="rm")
        draw.text((margin + i * cell + cell // 2, margin - 18), label, fill=(20, 20, 20), anchor="mm")
        draw.text((margin + i * cell + cell // 2, margin - 6), f"{s * s}", fill=(110, 110, 120), anchor="mm")
    draw.text((4, 4), "query scale (rows) x key scale (columns)", fill=(60, 60, 70))
    return img


@torch.inference_mode()
def attention(store: ModelStore, source, layer: int, head: int, query_scale: int, row: int, col: int):
    """Attention of one decoder query token over every scale (`AttentionView`)."""
    tok = store.tokenizer("HieraTok")
    layout = tok.layout
    cfg = tok.config
    layer = integer(layer, "layer", 0, cfg.dec_depth - 1)
    head = integer(head, "head", 0, cfg.dec_heads - 1)
    query_scale = integer(query_scale, "query scale", 1, layout.finest)
    choice(query_scale, "query scale", layout.scales)
    level = layout.level_of(query_scale)
    row = integer(row, f"query row (scale {query_scale}x{query_scale})", 0, query_scale - 1)
    col = integer(col, f"query column (scale {query_scale}x{query_scale})", 0, query_scale - 1)
    x = _load(store, source).tensor[None]
    attn = tok.decode(tok.encode(x), return_attention=True).attentions[layer][0, head]  # (L, L)
    q = layout.position(query_scale, row, col)
    weights = attn[q]
    mass = layout.mass_per_scale(weights)
    titles = [f"{s}x{s}" for s in layout.scales]
    fig = make_subplots(rows=1, cols=layout.num_scales, subplot_titles=titles, horizontal_spacing=0.03)
    for i, s in enumerate(layout.scales):
        m = weights[layout.slice(i)].view(s, s).tolist()
        fig.add_trace(go.Heatmap(z=m, colorscale="Viridis", showscale=i == layout.num_scales - 1,
                                 zmin=0, zmax=float(weights.max())), row=1, col=i + 1)
        # the query's position on every map: its own cell at its scale, the same image region elsewhere
        k = s / query_scale
        y0, x0 = row * k - 0.5, col * k - 0.5
        fig.add_shape(type="rect", x0=x0, x1=x0 + max(k, 1.0), y0=y0, y1=y0 + max(k, 1.0), row=1, col=i + 1,
                      line=dict(color="#ff3355" if s == query_scale else "#ff99aa", width=2))
        fig.update_yaxes(autorange="reversed", showticklabels=False, scaleanchor=f"x{i + 1}", row=1, col=i + 1)
        fig.update_xaxes(showticklabels=False, row=1, col=i + 1)
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10),
                      title=f"layer {layer}, head {head}: query at ({row}, {col}) of scale {query_scale}x{query_scale}")
    bars = go.Figure(go.Bar(x=titles, y=mass.tolist(), marker_color=["#636efa" if i <= level else "#cccccc"
                                                                      for i in range(layout.num_scales)]))
    bars.update_layout(height=280, yaxis_title="attention mass", margin=dict(l=10, r=10, t=30, b=10),
                       title="mass per scale (finer scales are masked: exactly 0)")
    text = (f"Scale-causal decoder: a query of scale {query_scale}x{query_scale} sees every token of scales <= "
            f"{query_scale}x{query_scale} and none finer. Mass: " +
            ", ".join(f"{t} {m:.3f}" for t, m in zip(titles, mass.tolist())))
    return AttentionView(fig, bars, text)


# ------------------------------------------------------------------------------------------------------------
#                                               Interpolate
# ------------------------------------------------------------------------------------------------------------
@torch.inference_mode()
def interpolation(store: ModelStore, source_a, source_b, method: str = "spherical", steps: int = 8,
                  scale: str = "all", model: str = "HieraTok"):
    """Decode latents along the path between two images -> [(image, caption)] (rows: scales, columns: steps)."""
    tok = store.tokenizer(model)
    steps = integer(steps, "steps", 2, 16)
    choice(method, "interpolation", ("spherical", "linear"))
    choice(scale, "scale", ["all"] + [f"{s}x{s}" for s in tok.layout.scales])
    za, zb = (tok.encode(_load(store, s, model).tensor[None])[0] for s in (source_a, source_b))
    path = interpolate(za, zb, steps, method)
    out = tok.decode(path)
    scales = list(out.scales) if scale == "all" else [int(scale.split("x")[0])]
    items = []
    for s in scales:
        if s not in out.scales:
            raise AppError(f"{model} has no {s}x{s} scale (its scales: {out.scales})")
        ims = out.images[out.scales.index(s)]
        items += [(to_pil(ims[i], 96), f"{s}x{s}, t={i / (steps - 1):.2f}") for i in range(steps)]
    return items


# ------------------------------------------------------------------------------------------------------------
#                                                 Generate
# ------------------------------------------------------------------------------------------------------------
def grid(images: torch.Tensor, columns: int, cell: int = 96) -> Image.Image:
    n = images.shape[0]
    rows = (n + columns - 1) // columns
    canvas = Image.new("RGB", (columns * cell, rows * cell), "white")
    for i in range(n):
        canvas.paste(to_pil(images[i], cell), ((i % columns) * cell, (i // columns) * cell))
    return canvas


@torch.inference_mode()
def generate_samples(store: ModelStore, class_name: str, guidance: float, steps: int, seed: int, count: int,
                     model: str = "HieraTok", progress=None):
    """Class-conditional samples of a DiT decoded by its tokenizer (`Samples`)."""
    names = store.class_names()
    choice(class_name, "class", names)
    count = integer(count, "samples", 1, 64)
    steps = integer(steps, "steps", 1, 100)
    guidance = number(guidance, "guidance", 0.0, 20.0)
    if seed is None or seed == "":  # an empty seed box: a random seed, reported back
        seed = int(torch.randint(0, 2 ** 31 - 1, ()).item())
    seed = integer(seed, "seed", 0, 2 ** 63 - 1)
    dit, tok = store.dit(model), store.dit_tokenizer(model)
    if not tok.has_latent_stats:
        raise AppError(f"the tokenizer of the {model} DiT in assets has no latent statistics; ship the one "
                       f"train/dit.py wrote")
    labels = torch.full((count,), names.index(class_name))
    z, out = generate(dit, tok, labels, steps=steps, guidance=guidance, seed=int(seed), progress=progress,
                      precision=store.sampling_precision)
    per_scale = [(to_pil(im[0], DISPLAY), f"{s}x{s}") for s, im in zip(out.scales, out.images)]
    text = (f"{count} sample{'s' if count != 1 else ''} of **{class_name}** from the {model} DiT: guidance "
            f"{guidance}, {steps} Heun steps, seed {seed}. Right: the first sample's latent decoded at every scale.")
    preview = store.scales_preview(model)
    if preview is not None:  # a single-scale latent that a multi-scale tokenizer shares: decode it at every scale
        other, multi = preview
        coarse = multi.decode(z[:1])
        per_scale = [(to_pil(im[0], DISPLAY), f"{s}x{s} ({other} decoder)")
                     for s, im in zip(coarse.scales[:-1], coarse.images[:-1])] + per_scale
        text += (f" The coarser scales are the {other} tokenizer's decoding of that latent: it encodes to exactly "
                 f"the {model} tokenizer's latent (the same encoder and latent statistics), so it decodes this DiT's "
                 f"samples at every scale; the grid and the finest image are the {model} decoder's.")
    if store.dit_has_own_tokenizer(model):
        text += (f" This DiT was trained on the latent of an earlier {model} tokenizer ({tok.config.name}), which "
                 f"decodes its samples; the {model} tokenizer the other views use was retrained since and encodes "
                 f"to another latent.")
    return Samples(grid(out.reconstruction, min(count, 8)), per_scale, text)


# ------------------------------------------------------------------------------------------------------------
#                                               Latent space
# ------------------------------------------------------------------------------------------------------------
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]


@torch.inference_mode()
def latent_space(store: ModelStore, model: str = "HieraTok", scale: int = 16, source=None):
    """The shipped latents' UMAP coloured by class, the upload placed among them (`LatentMap`)."""
    lm = store.latent_map()
    scale = integer(scale, "scale", 1, 4096)
    if model not in lm.coords or scale not in lm.coords[model]:
        raise AppError(f"the latent map has no {scale}x{scale} scale for {model}")
    xy, labels = lm.coords[model][scale], lm.labels
    fig = go.Figure()
    for c, name in enumerate(lm.class_names):
        sel = labels == c
        fig.add_trace(go.Scattergl(x=xy[sel, 0].tolist(), y=xy[sel, 1].tolist(), mode="markers", name=name,
                                   marker=dict(size=4, color=PALETTE[c % len(PALETTE)], opacity=0.7)))
    note = ""
    if source is not None:
        tok = store.tokenizer(model)
        z = tok.encode(_load(store, source, model).tensor[None])
        maps = tok.latent_pyramid(z)
        query = maps[tok.layout.level_of(scale)][0]
        pos, idx = place_by_neighbours(query, lm.latents[model][scale], xy)
        fig.add_trace(go.Scatter(x=[float(pos[0])], y=[float(pos[1])], mode="markers", name="your image",
                                 marker=dict(size=18, symbol="star", color="black", line=dict(color="white",
                                                                                                  width=2))))
        votes = torch.bincount(labels[idx], minlength=len(lm.class_names))
        note = ("\n\nYour image lands among: " + ", ".join(f"{lm.class_names[i]} ({int(v)})"
                                                          for i, v in enumerate(votes) if v > 0) +
                " (its 10 nearest shipped latents).")
    fig.update_layout(height=520, margin=dict(l=10, r=10, t=40, b=10), legend=dict(itemsizing="constant"),
                      title=f"UMAP of {len(labels)} test-image latents, {model}, scale {scale}x{scale}")
    rows = ["| tokenizer | scale | Gini (lower = more even) | entropy (higher = more even) | channels used "
            "| high-frequency share (lower = smoother) / white noise's |", "|---|---|---:|---:|---:|---:|"]
    for m, per in lm.density.items():
        for s, d in sorted(per.items(), key=lambda kv: int(kv[0])):
            spectrum, ch = lm.spectrum(m, int(s)), lm.channels(m, int(s))
            hf = (f"{spectrum['high_frequency_fraction']:.3f} / {spectrum['white_noise_fraction']:.3f}" if spectrum
                  else "—")
            used = f"{ch['participation']:.1f} of {ch['channels']}" if ch else "—"
            rows.append(f"| {m} | {s}x{s} | {d['gini']:.4f} | {d['entropy']:.4f} | {used} | {hf} |")
    text = ("Latent density: a 24x24 histogram over the first two principal components of the standardised "
            "latents, at 2,000 latents (hieratok.metrics.latent_density; fewer when the map holds fewer). "
            "High-frequency share: the part of the latent's energy above 0.25 cycles per position, every channel "
            "standardised (hieratok.metrics.latent_spectrum, from 4x4 up), beside white noise's at that size: a "
            "diffusion model learns the low frequencies first: given the paper recipe's smoother spectrum, a DiT on "
            "single-scale's latent started far ahead and its samples stayed more recognisable, but it ended level "
            "with the unshaped one in FD-cls (docs/experiment.md). Channels used: the participation ratio of the "
            "channels' correlations (hieratok.metrics.channel_participation; all of them when no two channels say "
            "the same thing): the paper recipe's photo latent uses about 8 of its 16 (one mode, the image's "
            "luminance, holds 28% of its variance), single-scale's all 16. Given the paper recipe's channel "
            "correlations by an invertible mix, a DiT on single-scale's latent reached single-scale's final FD-cls "
            "2.04x sooner, the paper recipe's latent 2.18x (the experiment's tier, one seed). " + note +
            "\n\n" + "\n".join(rows))
    return LatentMap(fig, text)


# ---- the controlled experiment ---------------------------------------------------------------------------------
EXPERIMENT_RESULTS = Path("eval") / "experiment.json"   # inside the assets folder


def experiment(assets: Path) -> ExperimentView:
    """The controlled experiment's table (`<assets>/eval/experiment.md`) and learning curves (from the records of
    `experiment.json` beside it), read anew on every call (a running grid adds runs to both)."""
    import json

    from hieratok.report import curves_figure, front_figure
    path = Path(assets) / EXPERIMENT_RESULTS
    try:
        report = json.loads(path.read_text()) if path.exists() else None
        table = path.with_suffix(".md").read_text() if report and report.get("records") else ""
    except (OSError, ValueError) as e:
        raise AppError(f"the experiment's results file {path} could not be read: {e}") from e
    if not report or not report.get("records"):
        return ExperimentView(
            f"No results of the controlled experiment yet ({path} is missing or empty). Run `python "
            "train/experiment.py --data DATA/train --val DATA/val --output-dir runs/experiment --results "
            f"{Path(assets) / 'eval' / 'experiment'}` (see docs/experiment.md); finished runs appear here as they "
            "land.", None, None)
    try:
        fig = curves_figure(report["records"], report.get("linear_reference"), report.get("generation"))
        front = front_figure(report["records"], report.get("generation_summary"))
    except (KeyError, TypeError, IndexError) as e:
        raise AppError(f"the experiment's results file {path} is not in the expected format: {e}") from e
    arms = sorted({r["arm"] for r in report["records"]})
    text = table.replace("# Controlled experiment", "### Controlled experiment", 1)
    text += (f"\n{len(report['records'])} runs so far over {len(arms)} arms; each curve point is the mean over "
             "seeds with a 95% t-interval (no interval with one seed).")
    return ExperimentView(text, fig, front)
