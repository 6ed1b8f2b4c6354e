"""HieraTok Explorer: see what a multi-scale tokenizer does.

    python app/main.py                      # from a clone: http://127.0.0.1:7860, the repository's assets/
    python app/main.py --host 0.0.0.0 --port 7861 --assets runs/my-checkpoints
    python -m hieratok.explorer --assets PATH   # from an installed package (`pip install "hieratok[app]"`)
"""
# The command line reads and checks its arguments (the thread count, the assets folder or Hub repo) before Gradio and
# the views are imported: `--help` or a wrong `--assets` answers in the time torch takes to import, not the app's.
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch

import hieratok
from hieratok.perf import (PRECISIONS, inference_dtype, native_bf16, release_free_memory_every, thread_count,
                           tune_allocator_for_serving)

from .models import DEFAULT_ASSETS, AppError, resolve_assets

log = logging.getLogger("hieratok.app")


def build_parser(default_assets: Path | str = DEFAULT_ASSETS) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    ap.add_argument("--assets", default=str(default_assets),
                    help="the checkpoints the app serves: a folder, or a Hub model repo id ORG/NAME (downloaded once "
                         "into the Hub cache)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: $HIERATOK_THREADS, else the cores this process may use: the "
                         "affinity mask capped by the cgroup CPU quota, as on a Space)")
    ap.add_argument("--trim-every", type=float, default=float(os.environ.get("HIERATOK_TRIM_EVERY", 10)),
                    metavar="SECONDS", help="hand the allocator's free memory back to the kernel this often (glibc "
                    "malloc_trim; 0: never; env HIERATOK_TRIM_EVERY)")
    ap.add_argument("--sampling-precision", default=os.environ.get("HIERATOK_SAMPLING_PRECISION", "auto"),
                    choices=PRECISIONS, help="the DiTs' precision in Generate: auto (bf16 where the CPU computes "
                    "it natively: AMX, AVX512-BF16; fp32 elsewhere), fp32 or bf16 (env HIERATOK_SAMPLING_PRECISION); "
                    "the tokenizer views compute in fp32")
    ap.add_argument("--concurrency", type=int, default=2,
                    help="light requests (reconstruct, latent space) computed at once; the heavy ones (generate, "
                         "attention, interpolate) run one at a time on every core, the rest queue")
    return ap


def main(argv=None, default_assets: Path | str = DEFAULT_ASSETS) -> None:
    args = build_parser(default_assets).parse_args(argv)
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
    log.info("%s", tune_allocator_for_serving())  # before any worker thread exists (a Hub download starts some)
    if release_free_memory_every(args.trim_every):
        log.info("free memory handed back to the kernel every %g s (malloc_trim)", args.trim_every)
    try:
        assets = resolve_assets(args.assets)
    except AppError as e:
        raise SystemExit(f"error: {e}") from None
    log.info("hieratok %s from %s; assets %s", hieratok.__version__, Path(hieratok.__file__).parent, assets)
    dtype = inference_dtype(args.sampling_precision, "cpu")  # the app computes on the CPU
    log.info("DiT sampling precision: %s (%s; %s)", "bf16" if dtype else "fp32", args.sampling_precision,
             native_bf16("cpu")[1])
    from .ui import serve  # Gradio and the views: most of the start-up time
    serve(assets, args.sampling_precision, host=args.host, port=args.port, concurrency=args.concurrency)


if __name__ == "__main__":
    main()
