"""Latency of the app on this machine: cold start to first page, and the median time of each view's main call.

    python app/benchmark.py                    # the shipped assets
    python app/benchmark.py --assets runs/x --repeats 7

Targets: every scale of one image <= 50 ms; 16 samples <= 5 s; placing an upload in the UMAP <= 300 ms; first
page <= 15 s after launch. Each model set the app serves is measured.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from hieratok.explorer import views
from hieratok.explorer.models import Catalog
from hieratok.explorer.server import AppServer
from hieratok.explorer.ui import example_images

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def generate_latency(url: str, family: str, class_name: str, users: int, steps: int, guidance: float) -> float:
    """Median seconds per Generate request (16 samples) through the app's queue with `users` at once."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client
    clients = [Client(url, verbose=False) for _ in range(users)]
    clients[0].predict(family, class_name, guidance, steps, 0, 16, "HieraTok", api_name="/generate")  # warm-up

    def one(i):
        t0 = time.perf_counter()
        clients[i].predict(family, class_name, guidance, steps, i, 16, "HieraTok", api_name="/generate")
        return time.perf_counter() - t0
    with ThreadPoolExecutor(users) as pool:
        return statistics.median(pool.map(one, range(users)))


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: loads the model once
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", default=str(ASSETS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None, help="sampler steps for the generation timing "
                                                             "(default: the app's default)")
    args = ap.parse_args(argv)
    assets = Path(args.assets)
    catalog = Catalog(assets)
    examples = example_images(assets)
    if not examples:
        raise SystemExit("no example image (install scikit-image / scikit-learn, or put PNGs in assets/examples)")
    example = examples[0]
    import platform
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    print(f"CPU: {cpu}; {os.cpu_count()} cores; torch threads {torch.get_num_threads()}; median of {args.repeats}; "
          f"assets {assets}")
    steps = args.steps or views.DEFAULT_STEPS
    server = AppServer(assets)
    try:
        print(f"first page after launch: {server.first_page_s:.2f} s (target <= 15)")
        print("\nGenerate through the running app (16 samples, HieraTok), median seconds per request:\n")
        print("| models | alone | 4 users at once |\n|---|---:|---:|")
        for label in catalog.labels:
            names, guidance = catalog[label].class_names(), catalog[label].family.guidance
            alone = generate_latency(server.url, label, names[0], 1, steps, guidance)
            four = generate_latency(server.url, label, names[0], 4, steps, guidance)
            print(f"| {label} | {alone:.2f} | {four:.2f} |")
    finally:
        server.stop()
    for label in catalog.labels:
        store = catalog[label]
        tok = store.tokenizer("HieraTok")
        x = views.load_image(str(example), tok.config.image_size).tensor[None]

        def all_scales():
            with torch.inference_mode():
                tok.decode(tok.encode(x))

        rows = [
            ("encode + decode every scale, 1 image", median_time(all_scales, args.repeats), 0.050),
            ("Reconstruct view (incl. image loading, PSNR, rendering)",
             median_time(lambda: views.reconstruct(store, str(example)), args.repeats), None),
            (f"16 samples, {steps} Heun steps, guidance {store.family.guidance:g} (Generate view)",
             median_time(lambda: views.generate_samples(store, store.class_names()[0], store.family.guidance, steps,
                                                        0, 16),
                         max(1, args.repeats // 2)), 5.0),
            ("place an upload in the UMAP (Latent space view)",
             median_time(lambda: views.latent_space(store, "HieraTok", tok.layout.finest, str(example)),
                         args.repeats), 0.300),
            ("Interpolate view (8 steps between two images, every scale)",
             median_time(lambda: views.interpolation(store, str(example), str(examples[min(1, len(examples) - 1)]),
                                                     "spherical", 8, "all"), args.repeats), None),
            ("Attention view (one query, all layers' maps)",
             median_time(lambda: views.attention(store, str(example), 0, 0, tok.layout.scales[-2], 1, 1),
                         args.repeats), None),
        ]
        print(f"\n### {label}\n")
        print("| measurement | seconds | target | met |")
        print("|---|---:|---:|:---:|")
        for name, t, target in rows:
            met = "" if target is None else ("yes" if t <= target else "NO")
            print(f"| {name} | {t:.3f} | {'' if target is None else f'<= {target:g}'} | {met} |")


if __name__ == "__main__":
    main()
