"""HieraTok Explorer: see what a multi-scale tokenizer does.

    python app/main.py                      # from a clone: http://127.0.0.1:7860, the repository's assets/
    python app/main.py --host 0.0.0.0 --port 7861 --assets runs/my-checkpoints
    python -m hieratok.explorer --assets PATH   # from an installed package (`pip install "hieratok[app]"`)
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import logging
import os
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr
import torch

import hieratok
from hieratok import MASK_KINDS
from hieratok.image import MAX_BYTES

from hieratok.perf import thread_count

from . import views
from .models import DEFAULT_ASSETS, MODELS, AppError, Catalog, resolve_assets


@contextlib.contextmanager
def no_stub_files():
    """Define Gradio component subclasses without Gradio writing a `.pyi` stub beside this module: its
    ComponentMeta does so for every subclass (meant for custom-component packages), which writes into the installed
    package at import time and fails in a read-only install. Our subclasses are templates of built-in components
    and need no stub."""
    import gradio.component_meta as meta
    original = meta.create_or_modify_pyi
    meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        meta.create_or_modify_pyi = original


def save_pil_to_cache_atomically(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """Gradio's `processing_utils.save_pil_to_cache`, made safe for concurrent identical outputs.

    Gradio stores every output image under a path named by its content's hash and writes it in place, so two
    requests returning the same image (the same upload from two users) rewrote a file while it was being served:
    the client got a response cut short ("Too little data for declared Content-Length"). Here a finished file is
    never rewritten, and a new one appears whole (written under a temporary name, then renamed), as Gradio already
    does for files it copies (`save_file_to_cache`)."""
    from gradio import processing_utils
    data = processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    path = (folder / f"{name}.{format}").resolve()
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return str(path)


def use_atomic_image_cache() -> None:
    """Route Gradio's image caching through `save_pil_to_cache_atomically` (process-wide, idempotent)."""
    from gradio import processing_utils
    processing_utils.save_pil_to_cache = save_pil_to_cache_atomically


with no_stub_files():
    class UploadImage(gr.Image):
        """gr.Image (upload and paste) that hands our loader the raw file instead of decoding it first, so that
        corrupt, exotic or oversized files get our clear messages rather than a generic decoding error."""

        is_template = True  # rendered by the frontend as a plain Image

        @classmethod
        def get_component_class_id(cls) -> str:
            return gr.Image.get_component_class_id()  # the frontend looks the component up by this id

        def preprocess(self, payload):
            if payload is None:
                return None
            if payload.url and payload.url.startswith("data:"):
                return base64.b64decode(payload.url.split(",", 1)[1])
            return payload.path


def unchecked(component: type) -> type:
    """A Gradio input component whose value reaches the view as sent: the views check every input against the
    loaded model and answer with a message naming the parameter and its range or choices (Gradio's own checks
    name neither, log a traceback, and round 1.5 to 2 silently)."""

    with no_stub_files():
        class Unchecked(component):
            is_template = True  # rendered by the frontend as the base component

            @classmethod
            def get_component_class_id(cls) -> str:
                return component.get_component_class_id()

            def preprocess(self, payload):
                return payload

    Unchecked.__name__ = Unchecked.__qualname__ = component.__name__
    return Unchecked


Slider, Number, Radio = unchecked(gr.Slider), unchecked(gr.Number), unchecked(gr.Radio)


def upload_image(label: str) -> UploadImage:
    return UploadImage(label=label, type="filepath", image_mode=None, sources=["upload", "clipboard"])


PACKAGE_PHOTOS = (("skimage", "data", ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                                         "motorcycle_left.png")),
                  ("sklearn.datasets", "images", ("china.jpg", "flower.jpg")))


def example_images(assets: Path) -> list[str]:
    """Pictures that need no dataset: public-domain photographs shipped inside installed packages (scikit-image,
    scikit-learn), then our CIFAR-10 DiT's samples (assets/examples)."""
    import importlib
    photos = []
    for module, folder, names in PACKAGE_PHOTOS:
        try:
            base = Path(importlib.import_module(module).__file__).parent / folder
        except ImportError:
            continue
        photos += [str(base / n) for n in names if (base / n).exists()]
    ours = sorted(str(p) for p in (assets / "examples").glob("*.png")) if (assets / "examples").exists() else []
    return photos + ours


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
        "classes": names, "guidance": store.family.guidance,
    }


def build_demo(catalog: Catalog) -> gr.Blocks:
    examples = example_images(catalog.assets)
    try:
        c, missing = controls(catalog[catalog.default]), ""
    except AppError as e:  # no usable weights: the app still starts and each view says what is missing
        c = {"upload": "Image", "layers": 1, "heads": 1, "scales": [1, 2, 4, 8, 16], "query_scale": 8,
             "classes": [str(i) for i in range(10)], "guidance": views.DEFAULT_GUIDANCE}
        missing = f"\n\n**{e}**"
    use_atomic_image_cache()
    with gr.Blocks(title="HieraTok Explorer") as demo:
        gr.Markdown("# HieraTok Explorer\nA multi-scale ViT tokenizer (arXiv 2509.23736): one 16x16 latent, "
                    "downsampled to 8x8, 4x4, 2x2, 1x1, decoded coarse -> fine with scale-causal attention into an "
                    "image at every scale. Weights trained by this project (see assets/README.md)." + missing)
        family = Radio(catalog.labels, value=catalog.default, label="Models")
        with gr.Tabs():
            # 1. Reconstruct ------------------------------------------------------------------------------------
            with gr.Tab("Reconstruct"):
                with gr.Row():
                    with gr.Column(scale=1):
                        rec_in = upload_image(c["upload"])
                        if examples:
                            gr.Examples(examples, inputs=rec_in)
                        rec_model = Radio(list(MODELS), value="HieraTok", label="Tokenizer")
                        rec_both = gr.Checkbox(False, label="Side by side with the other tokenizer")
                        rec_resample = Radio(["nearest", "bicubic"], value="nearest", label="Display upscaling")
                        rec_btn = gr.Button("Reconstruct", variant="primary")
                    with gr.Column(scale=3):
                        rec_gallery = gr.Gallery(label="Reconstruction from each scale (coarse -> fine)",
                                                 columns=5, height=260, object_fit="contain", format="png")
                        rec_gallery2 = gr.Gallery(label="The other tokenizer", columns=5, height=260,
                                                  object_fit="contain", visible=False, format="png")
                        with gr.Row():
                            rec_input = gr.Image(label="Input as the model sees it", type="pil", height=220, format="png")
                            rec_final = gr.Image(label="Final reconstruction (finest scale)", type="pil",
                                                 height=220, format="png")
                            rec_diff = gr.Image(label="|difference| (brighter = larger)", type="pil", height=220, format="png")
                        with gr.Row():
                            rec_plot = gr.Plot(label="PSNR at each scale, both tokenizers")
                            rec_text = gr.Markdown()

                def do_reconstruct(fam, source, model, both, resample):
                    store = catalog[fam]
                    grid = store.tokenizer(MODELS[0]).layout.scales  # HieraTok's: every scale either model has
                    inp, gal, final, diff, text, points = views.reconstruct(store, source, model, resample,
                                                                            grid)
                    other = MODELS[1 - MODELS.index(model)]
                    curves = {model: points}
                    if store.has_tokenizer(other):
                        _, gal2, _, _, text2, curves[other] = views.reconstruct(store, source, other, resample,
                                                                                grid)
                    plot = views.psnr_figure(dict(sorted(curves.items(), key=lambda kv: MODELS.index(kv[0]))))
                    if not both or other not in curves:
                        return inp, gal, gr.update(visible=False, value=None), final, diff, plot, text
                    return inp, gal, gr.update(visible=True, value=gal2, label=other), final, diff, plot, \
                        text + "\n\n---\n\n" + text2

                rec_btn.click(guarded(do_reconstruct), [family, rec_in, rec_model, rec_both, rec_resample],
                              [rec_input, rec_gallery, rec_gallery2, rec_final, rec_diff, rec_plot, rec_text],
                              api_name="reconstruct")

            # 2. Attention --------------------------------------------------------------------------------------
            with gr.Tab("Attention"):
                with gr.Row():
                    with gr.Column(scale=1):
                        mask_kind = Radio(list(MASK_KINDS), value="scale_causal", label="Decoder mask")
                        mask_img = gr.Image(label="Decoder mask by scale (white = attends, dark = masked)",
                                            type="pil", height=420, format="png", show_label=True)
                    with gr.Column(scale=2):
                        att_in = upload_image(c["upload"])
                        if examples:
                            gr.Examples(examples, inputs=att_in)
                        with gr.Row():
                            att_layer = Slider(step=1, label="Layer", **index_range(c["layers"]))
                            att_head = Slider(step=1, label="Head", **index_range(c["heads"]))
                            att_scale = gr.Dropdown(c["scales"], value=c["query_scale"], label="Query scale",
                                                    allow_custom_value=True)  # checked by the view, per model
                            att_row = Slider(step=1, label="Query row", **index_range(c["query_scale"]))
                            att_col = Slider(step=1, label="Query column", **index_range(c["query_scale"]))
                        att_btn = gr.Button("Show attention", variant="primary")
                        att_maps = gr.Plot(label="Attention over every scale")
                        att_bars = gr.Plot(label="Attention mass per scale")
                        att_text = gr.Markdown()
                mask_kind.change(guarded(lambda fam, k: views.mask_image(catalog[fam], k)), [family, mask_kind],
                                 mask_img, api_name="mask")
                att_scale.change(
                    guarded(lambda s: (gr.update(**index_range(views.integer(s, "query scale", 1, 4096))),) * 2),
                    att_scale, [att_row, att_col], api_name=False)
                att_btn.click(guarded(lambda fam, *a: views.attention(catalog[fam], *a)),
                              [family, att_in, att_layer, att_head, att_scale, att_row, att_col],
                              [att_maps, att_bars, att_text], api_name="attention", concurrency_id="heavy", concurrency_limit=1)

            # 3. Interpolate ------------------------------------------------------------------------------------
            with gr.Tab("Interpolate"):
                with gr.Row():
                    int_a = upload_image("Image A")
                    int_b = upload_image("Image B")
                if len(examples) >= 2:
                    gr.Examples([[a, b] for a, b in zip(examples, examples[1:] + examples[:1])],
                                inputs=[int_a, int_b], examples_per_page=4)
                with gr.Row():
                    int_method = Radio(["spherical", "linear"], value="spherical", label="Interpolation")
                    int_steps = Slider(2, 16, value=8, step=1, label="Steps")
                    int_scale = gr.Dropdown(["all"] + [f"{s}x{s}" for s in c["scales"]], value="all",
                                            label="Scale", allow_custom_value=True)
                    int_model = Radio(list(MODELS), value="HieraTok", label="Tokenizer")
                int_btn = gr.Button("Interpolate", variant="primary")
                int_gallery = gr.Gallery(label="Decoded along the latent path", columns=8, height=520,
                                         object_fit="contain", format="png")
                int_btn.click(guarded(lambda fam, *a: views.interpolation(catalog[fam], *a)),
                              [family, int_a, int_b, int_method, int_steps, int_scale, int_model], int_gallery,
                              api_name="interpolate", concurrency_id="heavy", concurrency_limit=1)

            # 4. Generate ---------------------------------------------------------------------------------------
            with gr.Tab("Generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        gen_class = gr.Dropdown(c["classes"], value=c["classes"][0], label="Class",
                                                allow_custom_value=True)
                        gen_guidance = Slider(1.0, 8.0, value=c["guidance"], step=0.25,
                                                 label="Guidance scale")
                        gen_steps = Slider(2, 100, value=views.DEFAULT_STEPS, step=1, label="Sampler steps (Heun)")
                        gen_seed = Number(0, precision=0, label="Seed (empty: random)")
                        gen_count = Slider(1, 32, value=16, step=1, label="Samples")
                        gen_model = Radio(list(MODELS), value="HieraTok", label="Generator (DiT on its tokenizer)")
                        gen_btn = gr.Button("Generate", variant="primary")
                    with gr.Column(scale=2):
                        gen_grid = gr.Image(label="Samples", type="pil", format="png")
                        gen_scales = gr.Gallery(label="First sample at every scale", columns=5, height=220,
                                                object_fit="contain", format="png")
                        gen_text = gr.Markdown()

                def do_generate(fam, cls, guidance, steps, seed, count, model, progress=gr.Progress()):
                    progress(0, desc="sampling")
                    t0 = time.perf_counter()

                    def report(i, n):  # progress with an estimate of the time left
                        left = (time.perf_counter() - t0) / max(i, 1) * (n - i)
                        progress(i / n, desc=f"step {i}/{n}, about {left:.0f} s left")
                    return views.generate_samples(catalog[fam], cls, guidance, steps, seed, count, model,
                                                  progress=report)

                gen_btn.click(guarded(do_generate), [family, gen_class, gen_guidance, gen_steps, gen_seed,
                                                     gen_count, gen_model], [gen_grid, gen_scales, gen_text],
                              api_name="generate", concurrency_id="heavy", concurrency_limit=1)

            # 5. Latent space -----------------------------------------------------------------------------------
            with gr.Tab("Latent space"):
                with gr.Row():
                    with gr.Column(scale=1):
                        lat_model = Radio(list(MODELS), value="HieraTok", label="Tokenizer")
                        lat_scale = gr.Dropdown(c["scales"], value=c["scales"][-1], label="Scale",
                                                allow_custom_value=True)
                        lat_in = upload_image("Place your image (optional)")
                        if examples:
                            gr.Examples(examples, inputs=lat_in)
                        lat_btn = gr.Button("Show", variant="primary")
                    with gr.Column(scale=2):
                        lat_plot = gr.Plot(label="UMAP of latents, coloured by class")
                        lat_text = gr.Markdown()
                lat_btn.click(guarded(lambda fam, m, s, src: views.latent_space(catalog[fam], m, s, src)),
                              [family, lat_model, lat_scale, lat_in], [lat_plot, lat_text], api_name="latent_space")

            # 6. The controlled experiment (read at every page load: a running grid adds runs) ------------------
            with gr.Tab("Experiment"):
                gr.Markdown("Does multi-scale tokenization help at matched cost? Every arm over several seeds at "
                            "the same images seen; paired differences against HieraTok (see the README).")
                exp_text = gr.Markdown()
                exp_plot = gr.Plot(label="Learning curves")

        def switch(fam):
            """The picked family's ranges, choices and labels for every control that depends on the model."""
            store = catalog[fam]
            k = controls(store)
            q = k["query_scale"]
            return (gr.update(label=k["upload"]), gr.update(label=k["upload"]),
                    gr.update(**index_range(k["layers"])), gr.update(**index_range(k["heads"])),
                    gr.update(choices=k["scales"], value=q), gr.update(**index_range(q)), gr.update(**index_range(q)),
                    gr.update(choices=["all"] + [f"{s}x{s}" for s in k["scales"]], value="all"),
                    gr.update(choices=k["classes"], value=k["classes"][0]), gr.update(value=k["guidance"]),
                    gr.update(choices=k["scales"], value=k["scales"][-1]),
                    views.mask_image(store, "scale_causal"), gr.update(value="scale_causal"))

        family.change(guarded(switch), family,
                      [rec_in, att_in, att_layer, att_head, att_scale, att_row, att_col, int_scale, gen_class,
                       gen_guidance, lat_scale, mask_img, mask_kind], api_name="controls")
        demo.load(guarded(lambda fam: views.mask_image(catalog[fam], "scale_causal")), family, mask_img)
        demo.load(guarded(lambda: views.experiment(catalog.assets)), None, [exp_text, exp_plot], api_name="experiment")
    return demo


def main(argv=None, default_assets: Path = DEFAULT_ASSETS):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    ap.add_argument("--assets", default=str(default_assets),
                    help="the checkpoints the app serves: a folder, or a Hub model repo id ORG/NAME (downloaded once "
                         "into the Hub cache)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: $HIERATOK_THREADS, else the cores this process may use: the "
                         "affinity mask capped by the cgroup CPU quota, as on a Space)")
    ap.add_argument("--concurrency", type=int, default=2,
                    help="light requests (reconstruct, latent space) computed at once; the heavy ones (generate, "
                         "attention, interpolate) run one at a time on every core, the rest queue")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)  # our one-line user errors; other libraries stay at warnings
    # every core for each request: a lone Generate uses them all; heavy requests queue for their one slot instead of
    # splitting the cores (which would oversubscribe them and slow every request)
    try:
        threads, why = thread_count(args.threads)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    torch.set_num_threads(threads)
    log.info("torch threads: %d (%s)", threads, why)
    try:
        assets = resolve_assets(args.assets)
    except AppError as e:
        raise SystemExit(f"error: {e}") from None
    log.info("hieratok %s from %s; assets %s", hieratok.__version__, Path(hieratok.__file__).parent, assets)
    demo = build_demo(Catalog(assets))
    demo.queue(default_concurrency_limit=args.concurrency, max_size=64)
    demo.launch(server_name=args.host, server_port=args.port, share=False, max_file_size=MAX_BYTES,
                show_error=True, footer_links=["api", "settings"])


if __name__ == "__main__":
    main()
