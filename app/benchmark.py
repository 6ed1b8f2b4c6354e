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
from hieratok.explorer.models import Catalog, ModelStore
from hieratok.explorer.server import AppServer
from hieratok.explorer.components import example_images
from hieratok.perf import PRECISIONS, native_bf16, tune_allocator_for_serving

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


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS in /proc), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# the soak's request mix: (share, endpoint)
SOAK_MIX = ((0.50, "reconstruct"), (0.20, "latent_space"), (0.15, "attention"), (0.10, "interpolate"),
            (0.05, "generate"))


def soak(server: AppServer, catalog: Catalog, examples: list[str], minutes: float, users: int = 4,
         sample_every: float = 30.0) -> dict:
    """`users` gradio_client clients send the mixed load for `minutes`, with inputs drawn (with repeats) from
    `examples`; every image an answer names must open and decode whole. Returns the counts and the RSS series."""
    import random
    import threading

    from gradio_client import Client, handle_file
    from PIL import Image

    stop_at = time.monotonic() + 60 * minutes
    counts = {"answered": 0, "errors": 0, "cut_short": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def request(client, rng):
        label = rng.choice(catalog.labels)
        store = catalog[label]
        names = store.class_names()
        img, other = handle_file(rng.choice(examples)), handle_file(rng.choice(examples))
        kind = rng.choices([k for _, k in SOAK_MIX], [w for w, _ in SOAK_MIX])[0]
        if kind == "reconstruct":
            return client.predict(label, img, "HieraTok", rng.random() < 0.3, "nearest", api_name="/reconstruct")
        if kind == "latent_space":
            return client.predict(label, "HieraTok", 16, img, api_name="/latent_space")
        if kind == "attention":
            return client.predict(label, img, 0, 0, 4, 1, 1, api_name="/attention")
        if kind == "interpolate":
            return client.predict(label, img, other, "spherical", 4, "all", "HieraTok", api_name="/interpolate")
        return client.predict(label, rng.choice(names), store.family.guidance, 10, rng.randrange(1000), 4,
                              "HieraTok", api_name="/generate")

    def files_in(answer):
        if isinstance(answer, str) and answer.lower().endswith((".png", ".webp", ".jpg", ".jpeg")):
            yield answer
        elif isinstance(answer, dict):
            for v in answer.values():
                yield from files_in(v)
        elif isinstance(answer, (list, tuple)):
            for v in answer:
                yield from files_in(v)

    def user(i):
        rng, client = random.Random(i), Client(server.url, verbose=False)
        while time.monotonic() < stop_at:
            try:
                answer = request(client, rng)
                for path in files_in(answer):
                    with Image.open(path) as im:
                        im.load()
                with lock:
                    counts["answered"] += 1
            except OSError as e:  # an image that does not decode: a response cut short
                with lock:
                    counts["cut_short"] += 1
                    errors.append(f"cut short: {e}")
            except Exception as e:  # noqa: BLE001 -- every failure is counted and reported, none stops the soak
                with lock:
                    counts["errors"] += 1
                    errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    series = []

    def sample():
        series.append((round(time.monotonic() - t0), round(rss_mb(server.proc.pid), 1)))
        print(f"  {series[-1][0]:5d} s  RSS {series[-1][1]:8.1f} MB  answered {counts['answered']}  errors "
              f"{counts['errors']}  cut short {counts['cut_short']}", flush=True)

    while time.monotonic() + sample_every < stop_at:
        time.sleep(sample_every)
        sample()
    for t in threads:  # the last requests finish
        t.join()
    sample()
    return {**counts, "rss_mb": series, "first_errors": errors[:5]}


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: loads the model once
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def report_soak(assets: Path, catalog: Catalog, examples: list[str], minutes: float) -> None:
    server = AppServer(assets)
    try:
        result = soak(server, catalog, examples, minutes)
    finally:
        server.stop()
    rss = result["rss_mb"]
    after5 = [mb for s, mb in rss if s >= 300]
    print(f"answered {result['answered']}, errors {result['errors']}, cut short {result['cut_short']}; RSS "
          f"{rss[0][1]:.0f} MB at {rss[0][0]} s -> {rss[-1][1]:.0f} MB at {rss[-1][0]} s"
          + (f"; growth after the first 5 minutes {after5[-1] - after5[0]:+.0f} MB (target < 50)" if after5 else ""))
    for line in result["first_errors"]:
        print("  " + line)


def report_app_latency(assets: Path, catalog: Catalog, steps: int, precision: str) -> None:
    """The first page and Generate through the running app, alone and with 4 users at once."""
    server = AppServer(assets, env={"HIERATOK_SAMPLING_PRECISION": precision})
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


def report_views(label: str, store, examples: list[str], steps: int, repeats: int) -> None:
    """Each view's time in-process for one model set, against its target where it has one."""
    example, other = str(examples[0]), str(examples[min(1, len(examples) - 1)])
    tok = store.tokenizer("HieraTok")
    x = views.load_image(example, tok.config.image_size).tensor[None]

    def all_scales():
        with torch.inference_mode():
            tok.decode(tok.encode(x))

    guidance, cls = store.family.guidance, store.class_names()[0]
    fp32 = ModelStore(store.assets, store.family, "fp32")  # the reference for the app's sampling precision
    rows = [
        ("encode + decode every scale, 1 image", median_time(all_scales, repeats), 0.050),
        ("Reconstruct view (incl. image loading, PSNR, rendering)",
         median_time(lambda: views.reconstruct(store, example), repeats), None),
        (f"16 samples, {steps} Heun steps, guidance {guidance:g} (Generate view, sampling {store.sampling_precision})",
         median_time(lambda: views.generate_samples(store, cls, guidance, steps, 0, 16), max(1, repeats // 2)), 5.0),
        ("the same, sampling fp32", median_time(lambda: views.generate_samples(fp32, cls, guidance, steps, 0, 16),
                                                 max(1, repeats // 2)), 5.0),
        ("place an upload in the UMAP (Latent space view)",
         median_time(lambda: views.latent_space(store, "HieraTok", tok.layout.finest, example), repeats), 0.300),
        ("Interpolate view (8 steps between two images, every scale)",
         median_time(lambda: views.interpolation(store, example, other, "spherical", 8, "all"), repeats), None),
        ("Attention view (one query, all layers' maps)",
         median_time(lambda: views.attention(store, example, 0, 0, tok.layout.scales[-2], 1, 1), repeats), None),
    ]
    print(f"\n### {label}\n")
    print("| measurement | seconds | target | met |")
    print("|---|---:|---:|:---:|")
    for name, t, target in rows:
        met = "" if target is None else ("yes" if t <= target else "NO")
        print(f"| {name} | {t:.3f} | {'' if target is None else f'<= {target:g}'} | {met} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", default=str(ASSETS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None, help="sampler steps for the generation timing "
                                                             "(default: the app's default)")
    ap.add_argument("--sampling-precision", default="auto", choices=PRECISIONS,
                    help="the Generate view's (as app/main.py's flag; auto: bf16 on a CPU with AMX or AVX512-BF16)")
    ap.add_argument("--soak", type=float, default=None, metavar="MINUTES",
                    help="instead of the timings: 4 clients send the mixed load (reconstruct 50%%, latent space 20%%, "
                         "attention 15%%, interpolate 10%%, generate 5%%) for MINUTES; prints the server's RSS series")
    args = ap.parse_args(argv)
    allocator = tune_allocator_for_serving()  # the in-process timings under the server's allocator (app/main.py)
    assets = Path(args.assets)
    catalog = Catalog(assets, args.sampling_precision)
    examples = example_images(assets)
    if not examples:
        raise SystemExit("no example image (install scikit-image / scikit-learn, or put PNGs in assets/examples)")
    import platform
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    print(f"CPU: {cpu} ({native_bf16('cpu')[1]}); {os.cpu_count()} cores; torch threads {torch.get_num_threads()}; "
          f"median of {args.repeats}; assets {assets}; DiT sampling {args.sampling_precision}; {allocator}")
    if args.soak:
        report_soak(assets, catalog, examples, args.soak)
        return
    steps = args.steps or views.DEFAULT_STEPS
    report_app_latency(assets, catalog, steps, args.sampling_precision)
    for label in catalog.labels:
        report_views(label, catalog[label], examples, steps, args.repeats)


if __name__ == "__main__":
    main()
