"""Every endpoint of the live app through gradio_client, and a corpus of bad uploads (the server keeps serving)."""
import json
import os
import platform
import subprocess
import sys

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.app_fixtures import FAMILY_LABELS, PHOTO_CLASSES, TINY
from tests.test_image import BAD, GOOD

PHOTOS, CIFAR = FAMILY_LABELS["imagenette128"], FAMILY_LABELS["cifar10"]


@pytest.fixture(scope="module")
def assets(app_server):
    return app_server.assets


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server.url, verbose=False)


def reconstruct(client, path, model="HieraTok", both=False, family=CIFAR):
    return client.predict(family, handle_file(path), model, both, "nearest", api_name="/reconstruct")


def test_experiment_tab_says_when_there_are_no_results_yet(client):
    text, plot, front = client.predict(api_name="/experiment")
    assert "No results of the controlled experiment yet" in text and "train/experiment.py" in text
    assert plot is None and front is None


def test_the_photo_family_is_the_default_and_every_control_follows_the_picked_family(client, app_server):
    import urllib.request
    page = urllib.request.urlopen(app_server.url + "config").read().decode()
    config = json.loads(page)
    radio = next(c for c in config["components"] if c.get("props", {}).get("label") == "Models")
    assert radio["props"]["value"] == PHOTOS and [ch[0] for ch in radio["props"]["choices"]] == [PHOTOS, CIFAR]
    from hieratok.explorer.models import Catalog
    from hieratok.explorer.ui import follow_family
    catalog = Catalog(app_server.assets)
    for family, preset, classes in ((PHOTOS, "imagenette128", PHOTO_CLASSES), (CIFAR, "cifar10", None)):
        k = follow_family(catalog, family)   # what the family switch sends to each control, by the control's name
        tiny = TINY[preset]
        assert k["att_layer"]["maximum"] == tiny["dec_depth"] - 1 and k["att_head"]["maximum"] == tiny["dec_heads"] - 1
        assert k["att_scale"]["choices"] == [1, 2, 4, 8, 16]
        assert k["att_row"]["maximum"] == k["att_scale"]["value"] - 1 == k["att_col"]["maximum"]
        assert k["lat_scale"]["choices"] == [1, 2, 4, 8, 16] and k["int_scale"]["value"] == "all"
        size = 128 if preset == "imagenette128" else 32
        assert f"{size}x{size}" in k["rec_in"]["label"] and k["att_in"]["label"] == k["rec_in"]["label"]
        if classes:
            assert k["gen_class"]["choices"] == list(classes)
        assert k["gen_guidance"]["value"] == (4.0 if preset == "imagenette128" else 2.0)  # each family's default
        assert k["mask_kind"]["value"] == "scale_causal"


def test_each_dit_starts_at_the_guidance_the_generation_protocol_chose(tmp_path):
    from hieratok.explorer.models import FAMILIES, ModelStore
    store = ModelStore(tmp_path, FAMILIES[0])
    assert store.guidance("HieraTok") == store.guidance("Single-scale") == FAMILIES[0].guidance  # nothing measured
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "generation-imagenette128.json").write_text(json.dumps(
        {"summary": {"default_guidance": {"hieratok": 4.0, "singlescale": 2.5}}}))
    store = ModelStore(tmp_path, FAMILIES[0])
    assert (store.guidance("HieraTok"), store.guidance("Single-scale")) == (4.0, 2.5)
    (tmp_path / "eval" / "generation-imagenette128.json").write_text("{not json")
    assert ModelStore(tmp_path, FAMILIES[0]).guidance("HieraTok") == FAMILIES[0].guidance  # unreadable: the default


def test_every_public_endpoint_names_its_parameters_as_the_readme_says(client):
    """gradio_client's view of the API: the README's endpoints, each parameter named for what it is, no internal
    handler (the family switch, the query-range update, the mask on page load) exposed."""
    import re
    from pathlib import Path
    api = client.view_api(return_format="dict", print_info=False)
    endpoints = {name: [p["parameter_name"] for p in e["parameters"]] for name, e in api["named_endpoints"].items()}
    assert not api["unnamed_endpoints"] and "/lambda" not in endpoints and "/controls" not in endpoints
    assert not [(n, p) for n, ps in endpoints.items() for p in ps if re.fullmatch(r"param_\d+", p)], endpoints
    readme = (Path(__file__).resolve().parents[1] / "docs" / "app.md").read_text()
    rows = re.findall(r"^\| `(/\w+)` \| ([^|]*) \|", readme, re.M)
    documented = {name: [p.strip(" `") for p in params.split(",") if p.strip(" `—")] for name, params in rows}
    assert documented == endpoints


def test_photo_family_reconstructs_at_128_px_and_generates_named_classes(client, photo):
    inp, gallery, _, final, _, _, text = reconstruct(client, photo, family=PHOTOS)
    assert [g["caption"].split(" ")[0] for g in gallery] == ["1x1", "2x2", "4x4", "8x8", "16x16"]
    assert "128 px" in gallery[-1]["caption"] and "resized from 300 x 200" in text
    grid, scales, text = client.predict(PHOTOS, "church", 2.0, 2, 0, 2, "HieraTok", api_name="/generate")
    assert "2 samples of **church**" in text and len(scales) == 5


def test_reconstruct_returns_every_scale_with_psnr(client, photo):
    inp, gallery, other, final, diff, plot, text = reconstruct(client, photo)
    assert len(gallery) == 5
    assert [g["caption"].split(" ")[0] for g in gallery] == ["1x1", "2x2", "4x4", "8x8", "16x16"]
    assert all(g["caption"].endswith(" dB") for g in gallery)
    for g in gallery:
        assert Image.open(g["image"]).size == (192, 192)
    assert Image.open(final).size == (192, 192) and Image.open(diff).size == (192, 192)
    assert "compression 3.0x" in text and "resized from 300 x 200" in text and "341" in text
    # the per-scale PSNR curve of HieraTok beside the single-scale point, always
    traces = json.loads(plot["plot"])["data"]
    assert [t["name"] for t in traces] == ["HieraTok", "Single-scale"]
    assert traces[0]["x"] == [2, 4, 8, 16, 32] and traces[1]["x"] == [32]
    # each scale's PSNR as readable text, in a table beside the gallery
    for s, px in ((1, 2), (2, 4), (4, 8), (8, 16), (16, 32)):
        assert f"| {s}x{s} ({s * s}) | {px}x{px} px |" in text


def test_reconstruct_side_by_side_and_single_scale(client, photo):
    _, gallery, other, _, _, plot, text = reconstruct(client, photo, both=True)
    assert other["visible"] and other["label"] == "Single-scale"  # a component update: shown, relabelled
    # the single-scale baseline has only the 16x16 scale: stand-in tiles keep it under HieraTok's 16x16 image
    assert len(gallery) == 5 and len(other["value"]) == 5
    assert [g["caption"] for g in other["value"][:4]] == [f"{s}x{s}: not a scale of Single-scale" for s in (1, 2, 4, 8)]
    assert other["value"][4]["caption"].startswith("16x16 · 32 px") and "dB" in other["value"][4]["caption"]
    _, gallery, _, _, _, _, text = reconstruct(client, photo, model="Single-scale")
    assert len(gallery) == 5 and "256" in text


def test_mask_endpoint_draws_each_mask(client):
    import numpy as np
    images = {k: np.asarray(Image.open(client.predict(CIFAR, k, api_name="/mask")).convert("L"))
              for k in ("scale_causal", "full", "scale_independent")}
    # one equal-sized block per (query scale, key scale): 84 px of labels, then 64 px per block
    block = lambda a, b: (84 + 64 * a + 32, 84 + 64 * b + 32)  # noqa: E731  (row, column) pixel of a block
    for img in images.values():
        assert img.shape == (412, 412)
    # top-right: the 1x1 query looking at 16x16 keys: masked except in full attention
    assert images["scale_causal"][block(0, 4)] < 100 and images["full"][block(0, 4)] > 200
    # bottom-left: a 16x16 query looking at the 1x1 key: visible except when scales are independent
    assert images["scale_causal"][block(4, 0)] > 200 and images["scale_independent"][block(4, 0)] < 100
    # the diagonal is seen in every mask
    assert all(img[block(2, 2)] > 200 for img in images.values())


def test_attention_endpoint_reports_zero_mass_on_finer_scales(client, photo):
    maps, bars, text = client.predict(CIFAR, handle_file(photo), 1, 2, 4, 1, 2, api_name="/attention")
    mass = json.loads(bars["plot"])["data"][0]["y"]
    assert "query of scale 4x4" in text
    assert mass[3] == 0 and mass[4] == 0 and min(mass[:3]) > 0  # finer scales masked, coarser ones seen
    assert abs(sum(mass) - 1) < 1e-3
    assert len(json.loads(maps["plot"])["data"]) == 5


def test_interpolate_returns_steps_times_scales(client, photo, assets):
    other = str(next((assets / "examples").iterdir()))
    items = client.predict(CIFAR, handle_file(photo), handle_file(other), "spherical", 4, "all", "HieraTok",
                           api_name="/interpolate")
    assert len(items) == 4 * 5
    items = client.predict(CIFAR, handle_file(photo), handle_file(other), "linear", 3, "8x8", "HieraTok",
                           api_name="/interpolate")
    assert len(items) == 3 and all(i["caption"].startswith("8x8") for i in items)


def test_generate_returns_the_requested_number_of_samples(client):
    grid, scales, text = client.predict(CIFAR, "cat", 2.0, 3, 0, 6, "HieraTok", api_name="/generate")
    assert Image.open(grid).size == (6 * 96, 96)
    assert len(scales) == 5 and "6 samples of **cat**" in text
    grid, scales, _ = client.predict(CIFAR, "cat", 2.0, 3, 0, 10, "Single-scale", api_name="/generate")
    assert Image.open(grid).size == (8 * 96, 2 * 96) and len(scales) == 1


def test_latent_space_plots_every_point_and_places_the_upload(client, photo):
    fig, text = client.predict(CIFAR, "HieraTok", 16, handle_file(photo), api_name="/latent_space")
    traces = json.loads(fig["plot"])["data"]
    points = sum(len(t["x"]) for t in traces if t["name"] != "your image")
    assert points == 40
    assert traces[-1]["name"] == "your image" and "lands among" in text
    assert "| Single-scale | 16x16 |" in text and "Gini" in text
    fig, _ = client.predict(CIFAR, "Single-scale", 16, None, api_name="/latent_space")
    assert all(t["name"] != "your image" for t in json.loads(fig["plot"])["data"])
    with pytest.raises(Exception, match="no 4x4 scale"):
        client.predict(CIFAR, "Single-scale", 4, None, api_name="/latent_space")


@pytest.mark.parametrize("endpoint,args,message", [
    ("/attention", [CIFAR, None, 1.5, 0, 4, 0, 0], "layer must be a whole number in 0..1"),
    ("/attention", [CIFAR, None, 0, 7, 4, 0, 0], "head must be a whole number in 0..2"),
    ("/attention", [CIFAR, None, 0, 0, 4, 9, 0], "query row (scale 4x4) must be a whole number in 0..3"),
    ("/attention", [CIFAR, None, 0, 0, 3, 0, 0], "query scale must be one of 1, 2, 4, 8, 16"),
    ("/interpolate", [CIFAR, None, None, "spherical", 8.5, "all", "HieraTok"], "steps must be a whole number"),
    ("/interpolate", [CIFAR, None, None, "cubic", 4, "all", "HieraTok"], "interpolation must be one of"),
    ("/interpolate", [CIFAR, None, None, "linear", 4, "3x3", "HieraTok"], "scale must be one of all, 1x1"),
    ("/generate", [CIFAR, "cat", 2.0, 3, 2 ** 70, 2, "HieraTok"], "seed must be a whole number"),
    ("/generate", [CIFAR, "cat", 2.0, 3, 1.5, 2, "HieraTok"], "seed must be a whole number"),
    ("/generate", [CIFAR, "unicorn", 2.0, 3, 0, 2, "HieraTok"], "class must be one of"),
    ("/generate", [CIFAR, "cat", 2.0, 3, 0, 0, "HieraTok"], "samples must be a whole number in 1..64"),
    ("/generate", [CIFAR, "cat", 2.0, 3, 0, 2, "Other"], "model must be one of"),
    ("/generate", ["Nope", "cat", 2.0, 3, 0, 2, "HieraTok"], "model set must be one of"),
    ("/latent_space", [CIFAR, "HieraTok", 3, None], "no 3x3 scale"),
])
def test_invalid_api_inputs_get_a_message_naming_the_parameter(client, photo, endpoint, args, message):
    args = [handle_file(photo) if a is None and endpoint != "/generate" else a for a in args]
    with pytest.raises(Exception) as err:
        client.predict(*args, api_name=endpoint)
    assert message in str(err.value)


def test_an_empty_seed_means_a_random_one_reported_back(client):
    _, _, text = client.predict(CIFAR, "cat", 2.0, 2, None, 1, "HieraTok", api_name="/generate")
    assert "1 sample of **cat**" in text and "seed" in text


@pytest.mark.parametrize("kind", list(GOOD) + list(BAD) + ["oversized"])
def test_bad_input_corpus_gets_a_result_or_a_clear_error_and_the_server_keeps_serving(client, photo, kind,
                                                                                      tmp_path):
    path = tmp_path / f"upload-{kind}.bin"
    if kind == "oversized":
        path.write_bytes(b"\xff\xd8\xff" + b"\x00" * (21 * 1024 * 1024))  # over the 20 MB upload limit
    else:
        path.write_bytes((GOOD.get(kind) or BAD[kind])[0])
    if kind in GOOD:
        _, gallery, _, _, _, _, text = reconstruct(client, str(path))
        assert len(gallery) == 5 and GOOD[kind][1] in text
    else:
        with pytest.raises(Exception) as err:
            reconstruct(client, str(path))
        message = str(err.value)
        assert ("Could not use this image" in message or "too large" in message.lower()
                or "413" in message or "exceeds" in message.lower()), message
    _, gallery, _, _, _, _, _ = reconstruct(client, photo)  # a valid request right after succeeds
    assert len(gallery) == 5


def test_user_errors_are_logged_as_one_line_each_without_tracebacks(client, app_server):
    """Runs after the bad-input tests above: each user error left one log line and no traceback."""
    with pytest.raises(Exception):
        client.predict(CIFAR, "cat", 2.0, 3, 0, 0, "HieraTok", api_name="/generate")
    app_server.log.flush()
    text = open(app_server.log.name).read()
    assert text.count("user error in") >= 10, text[-2000:]
    assert "Traceback" not in text, text[-3000:]


def test_the_app_starts_without_weights_and_says_what_is_missing(tmp_path):
    from hieratok.explorer.models import Catalog
    from hieratok.explorer.ui import build_demo
    demo = build_demo(Catalog(tmp_path))
    intro = next(b for b in demo.blocks.values() if type(b).__name__ == "Markdown")
    assert "weights are missing" in intro.value and str(tmp_path) in intro.value


def test_benchmark_reports_the_cpu_and_every_view_for_each_model_set(assets):
    """app/benchmark.py on the tiny assets: the CPU line, Generate alone and with 4 users, every view's row."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "app" / "benchmark.py"), "--assets", str(assets), "--repeats",
                           "1", "--steps", "2"], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith("CPU: ") and "cores" in out and "first page after launch" in out
    for family in (PHOTOS, CIFAR):
        assert f"| {family} |" in out and f"### {family}" in out
    for view in ("Reconstruct view", "Interpolate view", "Generate view", "Latent space view", "Attention view"):
        assert out.count(view) == 2, view
    assert out.count("the same, sampling fp32") == 2  # the app's sampling precision against fp32


def test_views_return_named_results(assets, photo):
    """What the UI reads from each view, by name (hieratok.explorer.views' named tuples)."""
    from hieratok.explorer import views
    from hieratok.explorer.models import Catalog
    store = Catalog(assets)[CIFAR]
    r = views.reconstruct(store, photo, "HieraTok")
    assert [p[0] for p in r.psnr_points] == [1, 2, 4, 8, 16] and r.gallery[-1][1].startswith("16x16")
    assert r.input.size == r.final.size == r.difference.size and "final reconstruction PSNR" in r.text
    a = views.attention(store, photo, 0, 0, 4, 1, 2)
    assert abs(sum(a.mass.data[0].y) - 1) < 1e-3 and len(a.maps.data) == 5 and "scale-causal" in a.text.lower()
    s = views.generate_samples(store, "cat", 2.0, 2, 0, 2)
    assert len(s.scales) == 5 and "2 samples of **cat**" in s.text and s.grid.size[0] > 0
    m = views.latent_space(store, "HieraTok", 16, photo)
    assert m.figure.data[-1].name == "your image" and "Gini" in m.text
    # each map's high-frequency share, from the stored latents, where the map has spatial frequencies (4x4 and up)
    from hieratok.metrics import latent_spectrum
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in m.text.splitlines()
            if line.startswith("| HieraTok |")}
    lm = store.latent_map()
    hf = latent_spectrum(lm.latents["HieraTok"][16])["high_frequency_fraction"]
    assert lm.spectrum("HieraTok", 16) is lm.spectrum("HieraTok", 16)   # computed once per map, not per request
    assert lm.spectrum("HieraTok", 2) is None and lm.spectrum("nobody", 16) is None
    assert rows["HieraTok", "16x16"].endswith(f"| {hf:.3f} / 0.809 |") and rows["HieraTok", "1x1"].endswith("| — |")
    # ... and how many of its channels it uses, for every map
    from hieratok.metrics import channel_participation
    used = channel_participation(lm.latents["HieraTok"][16])
    assert lm.channels("HieraTok", 16) is lm.channels("HieraTok", 16) and lm.channels("nobody", 16) is None
    assert f"| {used['participation']:.1f} of {used['channels']} |" in rows["HieraTok", "16x16"]
    assert rows["HieraTok", "1x1"].count(" of ") == 1   # 1x1 maps: channels over images, no spectrum
    e = views.experiment(assets)
    assert e.figure is None and e.front is None and "No results" in e.text


CLI_PROBE = """
import sys
from hieratok.explorer import cli
try:
    cli.main(sys.argv[1:])
except SystemExit as e:
    print(e)
print("gradio imported:", "gradio" in sys.modules)
"""


@pytest.mark.parametrize("args, message", [
    (["--assets", "no/such/folder"], "--assets no/such/folder: no such folder"),
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--help"], "--sampling-precision"),
])
def test_the_command_line_answers_help_and_bad_arguments_before_importing_gradio(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-c", CLI_PROBE, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert message in proc.stdout and "gradio imported: False" in proc.stdout, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


TELEMETRY_PROBE = """
import os
import hieratok.explorer.ui
from huggingface_hub import constants
analytics = os.environ["GRADIO_ANALYTICS_ENABLED"]
print("hub telemetry off:", constants.HF_HUB_DISABLE_TELEMETRY, "gradio analytics:", analytics)
"""


@pytest.mark.parametrize("env, expected", [
    ({}, "hub telemetry off: True gradio analytics: False"),
    ({"HF_HUB_DISABLE_TELEMETRY": "0", "GRADIO_ANALYTICS_ENABLED": "True"},
     "hub telemetry off: False gradio analytics: True"),
])
def test_the_app_sends_no_usage_data_unless_asked(tmp_path, env, expected):
    clean = {k: v for k, v in os.environ.items()
             if k not in ("HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "GRADIO_ANALYTICS_ENABLED")}
    proc = subprocess.run([sys.executable, "-c", TELEMETRY_PROBE], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**clean, **env})
    assert expected in proc.stdout, proc.stdout + proc.stderr


def test_the_start_up_log_says_threads_and_the_allocator_bound(app_server):
    app_server.log.flush()
    text = open(app_server.log.name).read()
    assert "torch threads: " in text
    assert "glibc malloc: 2 arenas" in text or "allocator left as is" in text
    if platform.libc_ver()[0] == "glibc":
        assert "free memory handed back to the kernel every 10 s" in text


def test_freed_memory_goes_back_to_the_kernel():
    from hieratok.perf import release_free_memory, release_free_memory_every
    if platform.libc_ver()[0] != "glibc":
        assert release_free_memory() is False and release_free_memory_every(1) is None
        return
    import resource  # noqa: F401  (Linux)

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    # 64 KiB blocks (below the mmap threshold) with every other one freed: the holes stay in the heap until trimmed
    blocks = [bytearray(64 << 10) for _ in range(3000)]
    for b in blocks:
        b[::4096] = b"\x01" * len(b[::4096])  # touch every page
    del blocks[::2]
    before = rss_mb()
    assert release_free_memory() is True
    assert rss_mb() < before - 50, (before, rss_mb())  # ~94 MB of holes handed back
    assert release_free_memory_every(0) is None
    assert release_free_memory_every(3600).daemon


REUSE = """
import resource, sys, torch
from hieratok.perf import tune_allocator_for_serving
note = tune_allocator_for_serving(**eval(sys.argv[1]))
def use():
    x = torch.ones(4 << 20)  # 16 MiB, every page written
    del x
for _ in range(3):
    use()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    use()
print(note)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_the_serving_allocator_caps_arenas_and_reuses_large_blocks_unless_thresholds_are_fixed():
    """The server's allocator: 2 arenas, glibc's adaptive thresholds, so that a request's large activations reuse
    heap pages (fixed low thresholds made each one fresh, page-faulted memory: Generate ~20% slower, docs/app.md,
    "Allocator"); fixed thresholds only when asked for, and said. Each in a process of its own (process-wide)."""
    def run(kwargs: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", REUSE, kwargs], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        note, faults = out.stdout.split("\n")[:2]
        return note, int(faults)
    if platform.libc_ver()[0] != "glibc":
        assert run("{}")[0].startswith("allocator left as is (")
        return
    note, adaptive = run("{}")
    assert note == "glibc malloc: 2 arenas, glibc's adaptive mmap and trim thresholds"
    note, fixed = run("dict(mmap_bytes=4 << 20, trim_bytes=8 << 20)")
    assert note == "glibc malloc: 2 arenas, blocks over 4 MiB mmap'ed, heap top trimmed above 8 MiB"
    # ten 16 MiB tensors: under fixed thresholds each one fresh pages (10 x 4,096 faults: 40,970 measured), under
    # the adaptive ones the same pages again (0 measured)
    assert fixed > 30_000 and adaptive < fixed / 4, (adaptive, fixed)


def test_a_dit_generates_with_the_tokenizer_it_was_trained_on_after_its_family_tokenizer_is_retrained(tmp_path):
    """A DiT fits only the latent it learned: where its folder ships its own tokenizer (the family's was retrained
    since), Generate decodes with that one and says so; without one, with the family's tokenizer."""
    import torch

    from hieratok import DiT, HieraTok, dit_config, generate, tokenizer_config
    from hieratok.explorer import views
    from hieratok.explorer.models import FAMILIES, AppError, ModelStore, dit_tokenizer_path
    from tests.app_fixtures import CLASSES
    family = next(f for f in FAMILIES if f.suffix == "cifar10")
    assets = tmp_path / "assets"
    torch.manual_seed(0)
    old, new = (HieraTok(tokenizer_config("cifar10", v, **TINY["cifar10"])) for v in ("hieratok", "stopgrad-shared"))
    C = old.config.latent_channels
    old.set_latent_stats(torch.full((C,), 0.5), torch.full((C,), 2.0), count=1)  # new has no latent statistics
    new.save_pretrained(assets / "hieratok-cifar10")
    dit = DiT(dit_config("cifar10", latent_channels=C, dim=64, depth=1, heads=2, class_names=CLASSES))
    dit.save_pretrained(assets / "dit-hieratok-cifar10")
    assert dit_tokenizer_path(assets, "dit-hieratok-cifar10") == assets / "hieratok-cifar10"
    store = ModelStore(assets, family)
    assert not store.dit_has_own_tokenizer("HieraTok")
    with pytest.raises(AppError, match="no latent statistics"):  # the retrained tokenizer cannot decode this DiT
        views.generate_samples(store, "cat", 2.0, 2, 0, 1)

    old.save_pretrained(assets / "dit-hieratok-cifar10" / "tokenizer")
    store = ModelStore(assets, family)
    assert store.dit_has_own_tokenizer("HieraTok") and store.dit_tokenizer("HieraTok").config.name == "hieratok"
    assert store.tokenizer("HieraTok").config.name == "hieratok-stopgrad-shared"  # the other views: the new one
    import numpy as np
    for precision in ("fp32", "bf16"):  # the store's sampling precision reaches the DiT
        s = views.generate_samples(ModelStore(assets, family, precision), "cat", 2.0, 2, 0, 1)
        _, want = generate(dit, HieraTok.from_pretrained(assets / "dit-hieratok-cifar10", subfolder="tokenizer"),
                           torch.full((1,), CLASSES.index("cat")), steps=2, guidance=2.0, seed=0, precision=precision)
        assert "earlier HieraTok tokenizer (hieratok)" in s.text
        assert np.array_equal(np.asarray(s.scales[-1][0]),
                              np.asarray(views.to_pil(want.images[-1][0], views.DISPLAY)))
    with pytest.raises(ValueError, match="precision must be one of"):
        ModelStore(assets, family, "fp16")


def test_a_single_scale_dits_samples_are_shown_at_every_scale_by_a_tokenizer_that_shares_its_latent(tmp_path):
    """A HieraTok whose encoder and latent statistics are the single-scale tokenizer's (stage1.py --warm-start
    --train coarse) decodes the single-scale DiT's samples at every scale; any difference in the latent turns that
    off, and `latent_differences` names it."""
    import numpy as np
    import torch

    from hieratok import DiT, HieraTok, dit_config, generate, tokenizer_config
    from hieratok.explorer import views
    from hieratok.explorer.models import FAMILIES, ModelStore
    from tests.app_fixtures import CLASSES
    family = next(f for f in FAMILIES if f.suffix == "cifar10")
    assets = tmp_path / "assets"
    torch.manual_seed(0)
    single, multi = (HieraTok(tokenizer_config("cifar10", v, **TINY["cifar10"])) for v in ("singlescale", "hieratok"))
    C = single.config.latent_channels
    single.set_latent_stats(torch.linspace(-0.5, 0.5, C), torch.linspace(1.0, 2.0, C), count=10)
    assert "latent statistics (missing)" in single.latent_differences(multi)
    assert any(k.startswith("encoder.") for k in single.latent_differences(multi, statistics=False))
    multi.load_state_dict({k: v for k, v in single.state_dict().items() if k.startswith("encoder.")}, strict=False)
    multi.set_latent_stats(single.latent_mean, single.latent_std, count=10)
    assert single.latent_differences(multi) == [] and multi.latent_differences(single) == []
    single.save_pretrained(assets / "singlescale-cifar10")
    multi.save_pretrained(assets / "hieratok-cifar10")
    dit = DiT(dit_config("cifar10", latent_channels=C, dim=64, depth=1, heads=2, class_names=CLASSES))
    for variant in ("hieratok", "singlescale"):
        dit.save_pretrained(assets / f"dit-{variant}-cifar10")

    store = ModelStore(assets, family)
    assert store.scales_preview("HieraTok") is None  # its own tokenizer has every scale already
    s = views.generate_samples(store, "cat", 2.0, 2, 0, 1, model="Single-scale")
    z, want = generate(dit, single, torch.full((1,), CLASSES.index("cat")), steps=2, guidance=2.0, seed=0)
    coarse = multi.decode(z)
    assert [c for _, c in s.scales] == [f"{n}x{n} (HieraTok decoder)" for n in (1, 2, 4, 8)] + ["16x16"]
    for (im, _), ref in zip(s.scales, coarse.images[:-1] + [want.images[-1]]):
        assert np.array_equal(np.asarray(im), np.asarray(views.to_pil(ref[0], views.DISPLAY)))
    assert "encodes to exactly the Single-scale tokenizer's latent" in s.text

    # other statistics (or another encoder): the latents differ, so no preview
    multi.set_latent_stats(single.latent_mean + 0.1, single.latent_std, count=10)
    assert single.latent_differences(multi) == ["latent statistics"]
    assert single.latent_differences(multi, statistics=False) == []
    multi.save_pretrained(assets / "hieratok-cifar10")
    s = views.generate_samples(ModelStore(assets, family), "cat", 2.0, 2, 0, 1, model="Single-scale")
    assert [c for _, c in s.scales] == ["16x16"] and "encodes to exactly" not in s.text
