"""The app's Gradio Blocks: the tabs, their controls and the views they call (`build_demo`); `serve` launches it.
The command line (`python app/main.py`, `python -m hieratok.explorer`) is `cli`."""
from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path

import huggingface_hub.constants

# The app sends no usage data unless its user asks: Gradio's analytics and the Hub's telemetry default to off (an
# explicit setting of either variable wins). huggingface_hub read its variable when `hieratok` imported it, so its
# constant is set as well; Gradio reads its own when the Blocks are built.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if not {"HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY"} & os.environ.keys():
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY = True

import gradio as gr
import torch

from hieratok import MASK_KINDS
from hieratok.image import MAX_BYTES

from . import views
from .components import Number, Radio, Slider, example_images, upload_image, use_atomic_image_cache
from .models import MODELS, AppError, Catalog


log = logging.getLogger("hieratok.app")


def guarded(fn):
    """Run a view under inference mode. A user error (AppError: a bad upload or value) is shown to the user and
    logged as one line; anything else is a fault of ours, logged with its traceback. The server keeps serving."""
    @functools.wraps(fn)  # keeps the signature, so Gradio still sees a `progress=gr.Progress()` parameter
    def run(*args, **kwargs):
        try:
            with torch.inference_mode():
                return fn(*args, **kwargs)
        except AppError as e:
            log.info("user error in %s: %s", getattr(fn, "__name__", "view"), e)
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:
            log.exception("fault in %s", getattr(fn, "__name__", "view"))
            raise gr.Error(f"Something went wrong on our side ({type(e).__name__}); it has been logged.",
                           print_exception=False) from None
    return run


def index_range(n: int) -> dict:
    """Slider settings for an index in 0..n-1 (a one-value range is shown fixed: Gradio needs max > min)."""
    return {"minimum": 0, "maximum": max(n - 1, 1), "value": 0, "interactive": n > 1}


def controls(store) -> dict:
    """What each control offers for a family's models: ranges, choices and labels read from the checkpoints."""
    tok = store.tokenizer(MODELS[0])
    cfg, scales = tok.config, list(tok.layout.scales)
    names = store.class_names()
    size = cfg.image_size
    return {
        "upload": f"Image (center-cropped, resized to {size}x{size})",
        "layers": cfg.dec_depth, "heads": cfg.dec_heads, "scales": scales,
        "query_scale": scales[-2] if len(scales) > 1 else scales[-1],
        "classes": names, "guidance": store.guidance(MODELS[0]),
    }


FALLBACK_CONTROLS = {"upload": "Image", "layers": 1, "heads": 1, "scales": [1, 2, 4, 8, 16], "query_scale": 8,
                     "classes": [str(i) for i in range(10)], "guidance": views.DEFAULT_GUIDANCE}


def follow_family(catalog: Catalog, model_set: str) -> dict[str, dict]:
    """The picked family's ranges, choices and labels, by the name of the control they update (`build_demo`
    connects the names to its components)."""
    store = catalog[model_set]
    k = controls(store)
    q, scales = k["query_scale"], k["scales"]
    return {"rec_in": gr.update(label=k["upload"]), "att_in": gr.update(label=k["upload"]),
            "att_layer": gr.update(**index_range(k["layers"])), "att_head": gr.update(**index_range(k["heads"])),
            "att_scale": gr.update(choices=scales, value=q), "att_row": gr.update(**index_range(q)),
            "att_col": gr.update(**index_range(q)),
            "int_scale": gr.update(choices=["all"] + [f"{s}x{s}" for s in scales], value="all"),
            "gen_class": gr.update(choices=k["classes"], value=k["classes"][0]),
            "gen_guidance": gr.update(value=k["guidance"]), "gen_model": gr.update(value=MODELS[0]),
            "lat_scale": gr.update(choices=scales, value=scales[-1]),
            "mask_img": gr.update(value=views.mask_image(store, "scale_causal")),
            "mask_kind": gr.update(value="scale_causal")}


def examples_for(component, examples: list[str]) -> None:
    if examples:
        gr.Examples(examples, inputs=component)


def reconstruct_tab(catalog: Catalog, family, c: dict, examples: list[str]) -> dict:
    with gr.Row():
        with gr.Column(scale=1):
            rec_in = upload_image(c["upload"])
            examples_for(rec_in, examples)
            tokenizer = Radio(list(MODELS), value="HieraTok", label="Tokenizer")
            both = gr.Checkbox(False, label="Side by side with the other tokenizer")
            resample = Radio(["nearest", "bicubic"], value="nearest", label="Display upscaling")
            button = gr.Button("Reconstruct", variant="primary")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Reconstruction from each scale (coarse -> fine)", columns=5, height=260,
                                 object_fit="contain", format="png")
            gallery2 = gr.Gallery(label="The other tokenizer", columns=5, height=260, object_fit="contain",
                                  visible=False, format="png")
            with gr.Row():
                seen = gr.Image(label="Input as the model sees it", type="pil", height=220, format="png")
                final = gr.Image(label="Final reconstruction (finest scale)", type="pil", height=220, format="png")
                diff = gr.Image(label="|difference| (brighter = larger)", type="pil", height=220, format="png")
            with gr.Row():
                plot = gr.Plot(label="PSNR at each scale, both tokenizers")
                text = gr.Markdown()

    def reconstruct(model_set, image, tokenizer, side_by_side, display_upscaling):
        store = catalog[model_set]
        grid = store.tokenizer(MODELS[0]).layout.scales  # HieraTok's: every scale either model has
        mine = views.reconstruct(store, image, tokenizer, display_upscaling, grid)
        other = MODELS[1 - MODELS.index(tokenizer)]
        theirs = views.reconstruct(store, image, other, display_upscaling, grid) if store.has_tokenizer(other) else None
        curves = {tokenizer: mine.psnr_points, **({other: theirs.psnr_points} if theirs else {})}
        figure = views.psnr_figure(dict(sorted(curves.items(), key=lambda kv: MODELS.index(kv[0]))))
        shown = bool(side_by_side and theirs)
        return (mine.input, mine.gallery,
                gr.update(visible=shown, value=theirs.gallery if shown else None, label=other), mine.final,
                mine.difference, figure, mine.text + (f"\n\n---\n\n{theirs.text}" if shown else ""))

    button.click(guarded(reconstruct), [family, rec_in, tokenizer, both, resample],
                 [seen, gallery, gallery2, final, diff, plot, text], api_name="reconstruct")
    return {"rec_in": rec_in}


def attention_tab(catalog: Catalog, family, c: dict, examples: list[str]) -> dict:
    with gr.Row():
        with gr.Column(scale=1):
            mask_kind = Radio(list(MASK_KINDS), value="scale_causal", label="Decoder mask")
            mask_img = gr.Image(label="Decoder mask by scale (white = attends, dark = masked)", type="pil",
                                height=420, format="png", show_label=True)
        with gr.Column(scale=2):
            att_in = upload_image(c["upload"])
            examples_for(att_in, examples)
            with gr.Row():
                layer = Slider(step=1, label="Layer", **index_range(c["layers"]))
                head = Slider(step=1, label="Head", **index_range(c["heads"]))
                scale = gr.Dropdown(c["scales"], value=c["query_scale"], label="Query scale",
                                    allow_custom_value=True)  # checked by the view, per model
                row = Slider(step=1, label="Query row", **index_range(c["query_scale"]))
                col = Slider(step=1, label="Query column", **index_range(c["query_scale"]))
            button = gr.Button("Show attention", variant="primary")
            maps = gr.Plot(label="Attention over every scale")
            bars = gr.Plot(label="Attention mass per scale")
            text = gr.Markdown()

    def mask(model_set, mask_kind):
        return views.mask_image(catalog[model_set], mask_kind)

    def attention(model_set, image, layer, head, query_scale, query_row, query_column):
        return views.attention(catalog[model_set], image, layer, head, query_scale, query_row, query_column)

    def query_range(query_scale):
        return (gr.update(**index_range(views.integer(query_scale, "query scale", 1, 4096))),) * 2

    mask_kind.change(guarded(mask), [family, mask_kind], mask_img, api_name="mask")
    scale.change(guarded(query_range), scale, [row, col], api_visibility="private")
    button.click(guarded(attention), [family, att_in, layer, head, scale, row, col], [maps, bars, text],
                 api_name="attention", concurrency_id="heavy", concurrency_limit=1)
    return {"att_in": att_in, "att_layer": layer, "att_head": head, "att_scale": scale, "att_row": row,
            "att_col": col, "mask_img": mask_img, "mask_kind": mask_kind}


def interpolate_tab(catalog: Catalog, family, c: dict, examples: list[str]) -> dict:
    with gr.Row():
        image_a, image_b = upload_image("Image A"), upload_image("Image B")
    if len(examples) >= 2:
        gr.Examples([[a, b] for a, b in zip(examples, examples[1:] + examples[:1])], inputs=[image_a, image_b],
                    examples_per_page=4)
    with gr.Row():
        method = Radio(["spherical", "linear"], value="spherical", label="Interpolation")
        steps = Slider(2, 16, value=8, step=1, label="Steps")
        scale = gr.Dropdown(["all"] + [f"{s}x{s}" for s in c["scales"]], value="all", label="Scale",
                            allow_custom_value=True)
        tokenizer = Radio(list(MODELS), value="HieraTok", label="Tokenizer")
    button = gr.Button("Interpolate", variant="primary")
    gallery = gr.Gallery(label="Decoded along the latent path", columns=8, height=520, object_fit="contain",
                         format="png")

    def interpolate(model_set, image_a, image_b, method, steps, scale, tokenizer):
        return views.interpolation(catalog[model_set], image_a, image_b, method, steps, scale, tokenizer)

    button.click(guarded(interpolate), [family, image_a, image_b, method, steps, scale, tokenizer], gallery,
                 api_name="interpolate", concurrency_id="heavy", concurrency_limit=1)
    return {"int_scale": scale}


def generate_tab(catalog: Catalog, family, c: dict) -> dict:
    with gr.Row():
        with gr.Column(scale=1):
            cls = gr.Dropdown(c["classes"], value=c["classes"][0], label="Class", allow_custom_value=True)
            guidance = Slider(1.0, 8.0, value=c["guidance"], step=0.25, label="Guidance scale")
            steps = Slider(2, 100, value=views.DEFAULT_STEPS, step=1, label="Sampler steps (Heun)")
            seed = Number(0, precision=0, label="Seed (empty: random)")
            count = Slider(1, 32, value=16, step=1, label="Samples")
            generator = Radio(list(MODELS), value="HieraTok", label="Generator (DiT on its tokenizer)")
            button = gr.Button("Generate", variant="primary")
        with gr.Column(scale=2):
            grid = gr.Image(label="Samples", type="pil", format="png")
            scales = gr.Gallery(label="First sample at every scale", columns=5, height=220, object_fit="contain",
                                format="png")
            text = gr.Markdown()

    def generate(model_set, class_name, guidance, sampler_steps, seed, samples, generator, progress=gr.Progress()):
        progress(0, desc="sampling")
        t0 = time.perf_counter()

        def report(i, n):  # progress with an estimate of the time left
            left = (time.perf_counter() - t0) / max(i, 1) * (n - i)
            progress(i / n, desc=f"step {i}/{n}, about {left:.0f} s left")
        return views.generate_samples(catalog[model_set], class_name, guidance, sampler_steps, seed, samples,
                                      generator, progress=report)

    button.click(guarded(generate), [family, cls, guidance, steps, seed, count, generator], [grid, scales, text],
                 api_name="generate", concurrency_id="heavy", concurrency_limit=1)
    # each DiT starts at its own default guidance (ModelStore.guidance)
    generator.change(guarded(lambda model_set, model: gr.update(value=catalog[model_set].guidance(model))),
                     [family, generator], guidance, api_visibility="private")
    return {"gen_class": cls, "gen_guidance": guidance, "gen_model": generator}


def latent_space_tab(catalog: Catalog, family, c: dict, examples: list[str]) -> dict:
    with gr.Row():
        with gr.Column(scale=1):
            tokenizer = Radio(list(MODELS), value="HieraTok", label="Tokenizer")
            scale = gr.Dropdown(c["scales"], value=c["scales"][-1], label="Scale", allow_custom_value=True)
            image = upload_image("Place your image (optional)")
            examples_for(image, examples)
            button = gr.Button("Show", variant="primary")
        with gr.Column(scale=2):
            plot = gr.Plot(label="UMAP of latents, coloured by class")
            text = gr.Markdown()

    def latent_space(model_set, tokenizer, scale, image):
        return views.latent_space(catalog[model_set], tokenizer, scale, image)

    button.click(guarded(latent_space), [family, tokenizer, scale, image], [plot, text], api_name="latent_space")
    return {"lat_scale": scale}


def build_demo(catalog: Catalog) -> gr.Blocks:
    examples = example_images(catalog.assets)
    try:
        c, missing = controls(catalog[catalog.default]), ""
    except AppError as e:  # no usable weights: the app still starts and each view says what is missing
        c, missing = FALLBACK_CONTROLS, f"\n\n**{e}**"
    use_atomic_image_cache()
    with gr.Blocks(title="HieraTok Explorer") as demo:
        gr.Markdown("# HieraTok Explorer\nA multi-scale ViT tokenizer (arXiv 2509.23736): one 16x16 latent, "
                    "downsampled to 8x8, 4x4, 2x2, 1x1, decoded coarse -> fine with scale-causal attention into an "
                    "image at every scale. Weights trained by this project (see assets/README.md)." + missing)
        family = Radio(catalog.labels, value=catalog.default, label="Models")
        follows: dict = {}
        with gr.Tabs():
            with gr.Tab("Reconstruct"):
                follows |= reconstruct_tab(catalog, family, c, examples)
            with gr.Tab("Attention"):
                follows |= attention_tab(catalog, family, c, examples)
            with gr.Tab("Interpolate"):
                follows |= interpolate_tab(catalog, family, c, examples)
            with gr.Tab("Generate"):
                follows |= generate_tab(catalog, family, c)
            with gr.Tab("Latent space"):
                follows |= latent_space_tab(catalog, family, c, examples)
            with gr.Tab("Experiment"):  # read at every page load: a running grid adds runs
                gr.Markdown("Does multi-scale tokenization help at matched cost? Every arm over several seeds at "
                            "the same images seen; paired differences against HieraTok (docs/experiment.md).")
                exp_text, exp_plot = gr.Markdown(), gr.Plot(label="Learning curves")
                exp_front = gr.Plot(label="The trade-off: finest scale against the DiT's speed")

        def switch(model_set):
            return {follows[name]: update for name, update in follow_family(catalog, model_set).items()}

        def experiment():
            return views.experiment(catalog.assets)

        family.change(guarded(switch), family, list(follows.values()), api_visibility="private")
        demo.load(guarded(lambda model_set: views.mask_image(catalog[model_set], "scale_causal")), family,
                  follows["mask_img"], api_visibility="private")
        demo.load(guarded(experiment), None, [exp_text, exp_plot, exp_front], api_name="experiment")
    return demo


def serve(assets: Path, sampling_precision: str = "auto", host: str = "127.0.0.1", port: int = 7860,
          concurrency: int = 2) -> None:
    """Build the app on the checkpoints in `assets` and serve it until interrupted (`cli.main` reads the command
    line, sets the threads and the allocator, then calls this)."""
    demo = build_demo(Catalog(assets, sampling_precision))
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    demo.launch(server_name=host, server_port=port, share=False, max_file_size=MAX_BYTES, show_error=True,
                footer_links=["api", "settings"])
