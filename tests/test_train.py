"""Tiny runs of every trainer on a synthetic ImageFolder: what they write, that they learn, resume, and fail well."""
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hieratok import DiT, HieraTok
from hieratok.classifier import Classifier, ClassifierConfig

ROOT = Path(__file__).resolve().parents[1]
TINY_TOK = ["--set", "enc_dim=32", "enc_depth=1", "enc_heads=2", "dec_dim=48", "dec_depth=1", "dec_heads=3"]
FAST = ["--mixed-precision", "no", "--log-every", "1", "--sample-every", "0", "--ckpt-every", "1000"]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 classes x 12 images of 32 x 32: each class a colour, each image a shifted square."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    colours = [(220, 40, 40), (40, 200, 60), (50, 60, 220)]
    for c, colour in enumerate(colours):
        d = root / f"class{c}"
        d.mkdir()
        for i in range(12):
            img = np.full((32, 32, 3), 30, np.uint8)
            y, x = rng.integers(2, 18, size=2)
            img[y:y + 12, x:x + 12] = colour
            img = np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def read_metrics(out: Path) -> list[dict]:
    with open(out / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def stage1(argv):
    from train import stage1 as script
    script.main([str(a) for a in argv])


def weights(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path / "model.safetensors"))


# ---------------------------------------------------------------------------------------------------------------
def test_stage1_tiny_run_writes_everything(image_folder, tmp_path, caplog, monkeypatch):
    from hieratok import perf
    out = tmp_path / "s1"
    # as if on an AVX2-only CPU (oneDNN held below bf16; read by hieratok.perf, too late to slow this process down)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    perf._cpu_bf16.cache_clear()
    try:
        stage1(["--data", image_folder, "--output-dir", out, "--steps", 4, "--batch-size", 8, *TINY_TOK,
                "--mixed-precision", "bf16", "--log-every", 2, "--sample-every", 2, "--ckpt-every", 2])
    finally:
        perf._cpu_bf16.cache_clear()
    # the missing backbone is said, once, and training goes on
    assert [r.levelname for r in caplog.records if "LPIPS unavailable" in r.getMessage()] == ["WARNING"]
    # bf16 asked for where it is emulated: said before the first step, and the run still trains in it
    assert [r.levelname for r in caplog.records if "bf16 is not native here" in r.getMessage()] == ["WARNING"]
    model = HieraTok.from_pretrained(out / "final")
    assert model.config.enc_dim == 32 and model.layout.num_tokens == 341
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [2, 4]
    assert {"l1_1", "mse_16", "kl", "loss", "images_per_s", "lr"} <= set(rows[0])
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-00000002.png", "step-00000004.png"]
    config = json.loads((out / "run_config.json").read_text())
    assert config["lpips"] is False and "VGG-16" in config["lpips_note"]
    assert config["mixed_precision"]["used"] == "bf16"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 4 and summary["images_seen"] == 32 and summary["skipped"] == 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]  # none left half-written


def test_a_run_takes_the_cores_it_may_use_and_says_when_others_are_busy_on_them(image_folder, tmp_path, caplog,
                                                                               monkeypatch):
    """Threads: the cores this process may use (`available_cpus`) unless $OMP_NUM_THREADS says; recorded in
    run_config.json. A busy process already on the cores: a warning before the first step (oversubscribed OpenMP
    threads slow each other several-fold), and the run still trains."""
    from hieratok.perf import available_cpus
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        stage1(["--data", image_folder, "--output-dir", tmp_path / "a", "--steps", 1, "--batch-size", 8, *TINY_TOK,
                *FAST])
    finally:
        busy.kill()
        busy.wait()
    speed = json.loads((tmp_path / "a" / "run_config.json").read_text())["speed"]
    assert (speed["threads"], speed["threads_why"]) == available_cpus()
    assert [r.levelname for r in caplog.records if "other thread(s) are running" in r.getMessage()] == ["WARNING"]
    assert (tmp_path / "a" / "final" / "model.safetensors").exists()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        stage1(["--data", image_folder, "--output-dir", tmp_path / "b", "--steps", 1, "--batch-size", 8, *TINY_TOK,
                *FAST])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    speed = json.loads((tmp_path / "b" / "run_config.json").read_text())["speed"]
    assert (speed["threads"], speed["threads_why"]) == (1, "set by $OMP_NUM_THREADS")


def test_stage1_warm_start_from_a_single_scale_run(image_folder, tmp_path):
    common = ["--data", image_folder, "--steps", 2, "--batch-size", 8, *TINY_TOK, *FAST]
    stage1(["--output-dir", tmp_path / "single", "--variant", "singlescale", *common])
    stage1(["--output-dir", tmp_path / "multi", "--variant", "stopgrad-shared", "--warm-start",
            tmp_path / "single" / "final", *common])
    config = json.loads((tmp_path / "multi" / "run_config.json").read_text())
    assert config["warm_start"]["from"].endswith("final") and config["warm_start"]["fresh"]
    assert HieraTok.from_pretrained(tmp_path / "multi" / "final").config.is_multiscale
    with pytest.raises(SystemExit, match="single-scale"):  # a multi-scale source is refused with a clear error
        stage1(["--output-dir", tmp_path / "again", "--warm-start", tmp_path / "multi" / "final", *common])
    with pytest.raises(SystemExit, match="cannot be combined"):
        stage1(["--output-dir", tmp_path / "both", "--warm-start", tmp_path / "single" / "final", "--init-from",
                tmp_path / "single" / "final", *common])


def test_stage1_train_coarse_moves_only_the_coarse_scales_own_parts(image_folder, tmp_path):
    common = ["--data", image_folder, "--batch-size", 8, "--max-images", 8, *FAST]
    stage1(["--output-dir", tmp_path / "s1", "--variant", "stopgrad-shared-context", "--steps", 3, *TINY_TOK, *common])
    start = tmp_path / "s1" / "final"
    stage1(["--output-dir", tmp_path / "coarse", "--init-from", start, "--train", "coarse", "--steps", 40,
            "--lr", 3e-3, "--warmup", 2, "--ema-decay", 0, *common, "--log-every", 4])
    before, after = weights(start), weights(tmp_path / "coarse" / "final")
    model = HieraTok.from_pretrained(start)
    coarse = set(model.coarse_parameters())
    assert coarse and any(k.startswith("downsampler.") for k in coarse) and any("scale_heads" in k for k in coarse)
    for k in before:
        if k in coarse:
            continue
        assert torch.equal(before[k], after[k]), f"{k} is not a coarse part and must stay frozen"
    assert all(not torch.equal(before[k], after[k]) for k in coarse if k.endswith("weight") and "context" not in k)
    rows = read_metrics(tmp_path / "coarse")
    # the finest image, decoded only for the log, is in every row
    assert [r["step"] for r in rows] == list(range(4, 41, 4)) and all("l1_16" in r and "mse_16" in r for r in rows)
    coarse_loss = [sum(r[f"l1_{s}"] + r[f"mse_{s}"] for s in (1, 2, 4, 8)) for r in rows]
    assert coarse_loss[-1] < 0.7 * coarse_loss[0], coarse_loss
    config = json.loads((tmp_path / "coarse" / "run_config.json").read_text())
    assert config["train"] == "coarse" and config["frozen_tensors"] > 0 and not config["lpips"]

    stage1(["--output-dir", tmp_path / "single", "--variant", "singlescale", "--steps", 1, *TINY_TOK, *common])
    with pytest.raises(SystemExit, match="single-scale tokenizer has no coarse scales"):
        stage1(["--output-dir", tmp_path / "bad", "--init-from", tmp_path / "single" / "final", "--train", "coarse",
                "--steps", 1, *common])
    with pytest.raises(SystemExit, match="finishes a trained tokenizer"):
        stage1(["--output-dir", tmp_path / "fresh", "--train", "coarse", "--steps", 1, *TINY_TOK, *common])


@pytest.mark.parametrize("variant", ["hieratok", "singlescale"])
def test_stage1_overfits_a_fixed_batch(image_folder, tmp_path, variant):
    out = tmp_path / variant
    stage1(["--data", image_folder, "--output-dir", out, "--variant", variant, "--steps", 60, "--batch-size", 8,
            "--max-images", 8, "--lr", 3e-3, "--warmup", 5, *TINY_TOK, *FAST])
    losses = [r["loss"] for r in read_metrics(out)]
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])


def test_kill_and_resume_is_bit_identical(image_folder, tmp_path, monkeypatch):
    common = ["--data", image_folder, "--steps", 6, "--batch-size", 8, "--ckpt-every", 2, *TINY_TOK,
              "--mixed-precision", "bf16", "--log-every", 1, "--sample-every", 0]
    stage1(["--output-dir", tmp_path / "straight", *common])

    from hieratok.training.run import Run
    original = Run.step

    def killed_at_step_5(self, loss, *args, **kwargs):
        if args[-1] == 5:  # run.step(loss, optimizer, scheduler, model, step)
            raise KeyboardInterrupt  # the process dies mid-run, after the checkpoint of step 4
        return original(self, loss, *args, **kwargs)

    monkeypatch.setattr(Run, "step", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        stage1(["--output-dir", tmp_path / "resumed", *common])
    assert not (tmp_path / "resumed" / "final").exists()
    monkeypatch.setattr(Run, "step", original)
    stage1(["--output-dir", tmp_path / "resumed", *common])  # --resume latest is the default

    a, b = weights(tmp_path / "straight" / "final"), weights(tmp_path / "resumed" / "final")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["step"] == 6 and summary["images_seen"] == 48
    # the log holds each step once, with the same losses as the uninterrupted run
    assert [r["step"] for r in read_metrics(tmp_path / "resumed")] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in read_metrics(tmp_path / "resumed")] == \
        [r["loss"] for r in read_metrics(tmp_path / "straight")]
    # the run's config history: the first config, then one record per resume
    config = json.loads((tmp_path / "resumed" / "run_config.json").read_text())
    assert config["started_at_step"] == 0 and [r["started_at_step"] for r in config["resumes"]] == [4]
    # the checkpoint is safetensors + JSON only
    ckpt = sorted((tmp_path / "resumed" / "checkpoints").iterdir())[-1]
    assert {p.suffix for p in ckpt.iterdir()} == {".safetensors", ".json"}


def test_the_fast_path_learns_the_reference_paths_loss_curve(image_folder, tmp_path):
    """200 steps: the fast path as a long CPU run takes it against the reference path (SDPA, eager). Where the CPU
    computes bf16 natively, both in bf16 and the fast path is `--attention auto` (there: the explicit attention),
    blocks compiled with the sigmoid GELU, the fused AdamW. Where bf16 is emulated (~500x slower than fp32 on an
    AVX2-only EPYC: this test alone took 157 s of the suite there), both in fp32, the precision `--mixed-precision
    auto` trains in there, and the fast path's parts are asked for by name (`--attention math`, compiled), since
    `auto` in fp32 is the reference path itself. Tolerance: every 20-step mean of the loss within 3% of the
    reference's (bf16, measured on the AVX512-BF16 EPYC: within 0.1% for the first 80 steps, then 1.3%, and 1.9%
    lower at the end as the two bf16 trajectories part; the eager explicit path alone was within 1%; fp32 on the
    AVX2-only EPYC: within 1.1%, 83 s with a cold compile cache)."""
    from hieratok.perf import compile_available, native_bf16
    bf16 = native_bf16("cpu")[0]
    common = ["--data", image_folder, "--steps", 200, "--batch-size", 8, "--lr", 2e-3, "--variant", "hieratok",
              *TINY_TOK, "--mixed-precision", "bf16" if bf16 else "no", "--log-every", 1, "--sample-every", 0,
              "--ckpt-every", 1000]
    compiled = compile_available()[0]
    attention = "auto" if bf16 else "math"
    paths = {"reference": ["--attention", "sdpa", "--compile", "off"],
             "fast": ["--attention", attention, "--compile", "on" if compiled else "off"]}
    curves = {}
    for path, flags in paths.items():
        stage1(["--output-dir", tmp_path / path, *flags, *common])
        curves[path] = np.array([r["loss"] for r in read_metrics(tmp_path / path)])
    ref, fast = curves["reference"].reshape(10, 20).mean(1), curves["fast"].reshape(10, 20).mean(1)
    assert ref[-1] < 0.5 * ref[0]  # it learned
    np.testing.assert_allclose(fast, ref, rtol=0.03)
    speed = json.loads((tmp_path / "fast" / "run_config.json").read_text())["speed"]
    assert speed["attention"] == attention and speed["compile"] is compiled


@pytest.mark.skipif(not __import__("hieratok.perf").perf.compile_available()[0], reason="no C++ compiler")
def test_compiled_training_resumes_bit_identically(image_folder, tmp_path):
    """--compile on: the blocks are compiled, and a run stopped by its time limit and resumed ends with the
    weights of the run that went straight through."""
    common = ["--data", image_folder, "--steps", 6, "--batch-size", 8, "--ckpt-every", 1000, *TINY_TOK,
              "--mixed-precision", "bf16", "--log-every", 1, "--sample-every", 0, "--compile", "on"]
    stage1(["--output-dir", tmp_path / "straight", *common])
    config = json.loads((tmp_path / "straight" / "run_config.json").read_text())
    assert config["speed"]["compile"] is True
    stage1(["--output-dir", tmp_path / "resumed", *common, "--steps", 6, "--time-limit", 1e-9])
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["stopped_by_time_limit_at"] == 1
    stage1(["--output-dir", tmp_path / "resumed", *common])
    a, b = weights(tmp_path / "straight" / "final"), weights(tmp_path / "resumed" / "final")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.skipif(not hasattr(signal, "SIGCONT"), reason="no SIGSTOP/SIGCONT on this platform")
def test_the_loop_clock_leaves_out_time_the_process_was_stopped():
    """A run paused with SIGSTOP (to free the cores) and continued: the step it was stopped in counts as long as
    the step before it, not the pause (summary.json's wall_s is training time)."""
    from hieratok.training.run import LoopClock
    clock = LoopClock().install()
    clock.restart(100.0)
    assert (clock.tick(102.0), clock.tick(104.5)) == (2.0, 2.5)
    os.kill(os.getpid(), signal.SIGCONT)  # what `kill -CONT` sends after `kill -STOP`
    time.sleep(0.05)
    assert clock.tick(704.5) == 2.5  # a 600-s gap with a continue in it
    assert clock.tick(706.5) == 2.0  # and the next step is measured again
    assert LoopClock().install().tick(time.time() + 1.0) == pytest.approx(1.0, abs=0.1)  # one handler, any clock


def test_an_export_records_the_runs_counters_at_its_step(image_folder, tmp_path):
    out = tmp_path / "run"
    stage1(["--data", image_folder, "--steps", 3, "--batch-size", 8, *TINY_TOK, *FAST, "--output-dir", out,
            "--export-at", 2])
    export = out / "exports" / "step-00000002"
    state = json.loads((export / "train_state.json").read_text())
    assert (state["step"], state["images_seen"], state["planned_steps"]) == (2, 16, 3)
    final = json.loads((out / "summary.json").read_text())
    assert 0 < state["wall_s"] <= final["wall_s"]
    assert HieraTok.from_pretrained(export).config.enc_dim == 32  # still a from_pretrained folder


def test_time_limit_stops_exports_and_a_resume_finishes_the_same_schedule(image_folder, tmp_path):
    common = ["--data", image_folder, "--steps", 4, "--batch-size", 8, *TINY_TOK, *FAST]
    stage1(["--output-dir", tmp_path / "straight", *common])
    out = tmp_path / "limited"
    stage1(["--output-dir", out, *common, "--time-limit", 1e-6])  # spent after the first step
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 1 and summary["images_seen"] == 8 and summary["stopped_by_time_limit_at"] == 1
    assert HieraTok.from_pretrained(out / "final").config.enc_dim == 32  # exported where it stopped
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000001"]
    stage1(["--output-dir", out, *common])  # the next job: the rest of the same schedule
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 4 and summary["stopped_by_time_limit_at"] is None
    a, b = weights(tmp_path / "straight" / "final"), weights(out / "final")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_cached_images_serve_the_loaders_pixels_and_train_bit_identically(image_folder, tmp_path):
    from hieratok.training.data import CachedImages, FolderImages
    ds = FolderImages(str(image_folder), 32)
    cached = CachedImages(ds, batch_size=5)
    assert len(cached) == len(ds) and cached.class_names == ds.class_names and cached.pixels.dtype == torch.uint8
    for i in (0, 7, 35):
        for flip in (False, True):
            (a, la), (b, lb) = ds[(i, flip)], cached[(i, flip)]
            assert torch.equal(a, b) and la == lb
    common = ["--data", image_folder, "--steps", 3, "--batch-size", 8, *TINY_TOK, *FAST]
    stage1(["--output-dir", tmp_path / "files", *common])
    stage1(["--output-dir", tmp_path / "cached", *common, "--cache-images", "--num-workers", 2])
    a, b = weights(tmp_path / "files" / "final"), weights(tmp_path / "cached" / "final")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_pack_dataset_keeps_classes_names_and_pixels(image_folder, tmp_path):
    import tarfile

    from hieratok.metrics import psnr
    from hieratok.training.data import FolderImages
    from train import pack_dataset
    (image_folder.parent / "classes.json").write_text(json.dumps({f"class{c}": f"name {c}" for c in range(3)}))
    try:
        pack_dataset.main(["--data", str(image_folder), "--size", "24", "--output", str(tmp_path / "p.tar")])
        with tarfile.open(tmp_path / "p.tar") as tar:
            tar.extractall(tmp_path / "x", filter="data")
        original = FolderImages(str(image_folder), 24)
        packed = FolderImages(str(tmp_path / "x" / image_folder.name), 24)
        assert packed.classes == original.classes and packed.class_names == ["name 0", "name 1", "name 2"]
        assert packed.targets == original.targets
        x = torch.stack([original[i][0] for i in range(len(original))])
        y = torch.stack([packed[i][0] for i in range(len(packed))])
        # lossy: 29 dB on these images of per-pixel noise (38 dB on photographs); another image of its class: 16 dB
        assert y.shape == (36, 3, 24, 24) and psnr(y, x).mean() > 25 and psnr(y, x.roll(1, 0)).mean() < 20
        pack_dataset.main(["--data", str(image_folder), "--size", "24", "--images", "5",
                           "--output", str(tmp_path / "q.tar")])
        with tarfile.open(tmp_path / "q.tar") as tar:
            assert len([n for n in tar.getnames() if n.endswith(".webp")]) == 5
    finally:
        (image_folder.parent / "classes.json").unlink()
    with pytest.raises(SystemExit, match="does not exist"):
        pack_dataset.main(["--data", str(tmp_path / "nowhere"), "--size", "24", "--output", str(tmp_path / "r.tar")])


class _Payload:
    """Unpickling this creates the file named by `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_resume_never_unpickles_files_planted_in_a_checkpoint(image_folder, tmp_path):
    import pickle
    out = tmp_path / "run"
    common = ["--data", image_folder, "--batch-size", 8, "--ckpt-every", 2, *TINY_TOK, *FAST]
    stage1(["--output-dir", out, "--steps", 2, *common, "--ckpt-every", 1])
    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    markers = []
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl", "optimizer.bin",
                 "scheduler.bin", "pytorch_model.bin"):
        marker = tmp_path / f"pwned-{name}"
        markers.append(marker)
        (ckpt / name).write_bytes(pickle.dumps(_Payload(str(marker))))
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)
    stage1(["--output-dir", out, "--steps", 4, *common, "--resume", str(ckpt)])
    assert json.loads((out / "summary.json").read_text())["step"] == 4
    assert not any(m.exists() for m in markers)
    # sanity: the payload does run when something unpickles it
    pickle.loads((ckpt / "optimizer.bin").read_bytes())
    assert markers[3].exists()


def test_a_checkpoint_without_state_is_refused_with_a_message(image_folder, tmp_path):
    (tmp_path / "old" / "checkpoints" / "step-00000002").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no state.json"):
        stage1(["--output-dir", tmp_path / "old", "--data", image_folder, "--steps", 3, "--batch-size", 4,
                *TINY_TOK, *FAST])


@pytest.mark.parametrize("cache", [[], ["--cache-images"]], ids=["files", "cached"])
def test_corrupt_image_is_skipped_and_counted(image_folder, tmp_path, caplog, cache):
    data = tmp_path / "data"
    for c in image_folder.iterdir():
        (data / c.name).mkdir(parents=True)
        for f in sorted(c.iterdir())[:4]:
            (data / c.name / f.name).write_bytes(f.read_bytes())
    (data / "class0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (data / "class1" / "truncated.png").write_bytes((image_folder / "class1" / "000.png").read_bytes()[:60])
    out = tmp_path / "s1"
    stage1(["--data", data, "--output-dir", out, "--steps", 4, "--batch-size", 7, *TINY_TOK, *FAST, *cache])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] >= 2  # 14 images, 28 drawn: each unreadable file is met twice
    assert summary["images_seen"] == 28 - summary["skipped"]
    # each unreadable file is named once, in the log and in the summary
    assert sorted(Path(p).name for p in summary["unreadable_files"]) == ["broken.png", "truncated.png"]
    assert any("skipped" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("broken.png" in m for m in warned) == 1 and sum("truncated.png" in m for m in warned) == 1


def test_training_and_the_app_load_awkward_files_alike(tmp_path):
    """16-bit gray, transparent RGBA and EXIF-rotated files: the trainer's dataset gives the app's pixels."""
    from hieratok import load_image
    from hieratok.training.data import FolderImages
    from tests.test_image import GOOD
    for kind in ("16-bit", "rgba", "exif-rotated"):
        (tmp_path / "c").mkdir(exist_ok=True)
        (tmp_path / "c" / f"{kind}.png").write_bytes(GOOD[kind][0])
    ds = FolderImages(str(tmp_path), 32)
    for i, (path, _) in enumerate(ds.samples):
        x, _ = ds[i]
        torch.testing.assert_close(x, load_image(path, 32).tensor)
    rgba = ds[[Path(p).stem for p, _ in ds.samples].index("rgba")][0]
    assert torch.allclose(rgba, torch.ones_like(rgba))  # transparent red composited on white, not red


def test_a_classes_json_names_the_classes(image_folder, tmp_path):
    from hieratok.training.data import DataError, FolderImages
    data = tmp_path / "named"
    (data / "train").mkdir(parents=True)
    for c in image_folder.iterdir():
        (data / "train" / c.name).symlink_to(c)
    names = {"class0": "tench", "class1": "church", "class2": "golf ball"}
    (data / "classes.json").write_text(json.dumps(names))
    ds = FolderImages(str(data / "train"), 32)
    assert ds.classes == ["class0", "class1", "class2"] and ds.class_names == ["tench", "church", "golf ball"]
    (data / "classes.json").write_text(json.dumps({"class0": "tench"}))
    with pytest.raises(DataError, match="no name for the class folder"):
        FolderImages(str(data / "train"), 32)


def test_nan_loss_stops_with_last_good_checkpoint_intact(image_folder, tmp_path, monkeypatch):
    from hieratok.losses import ReconstructionLoss
    from hieratok.training.run import NonFiniteLoss
    original = ReconstructionLoss.forward
    calls = {"n": 0}

    def nan_on_fourth_call(self, *a, **kw):
        terms = original(self, *a, **kw)
        calls["n"] += 1
        if calls["n"] == 4:
            terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(ReconstructionLoss, "forward", nan_on_fourth_call)
    out = tmp_path / "s1"
    with pytest.raises(NonFiniteLoss, match=r"loss became non-finite at step 3 .*nan.*step-00000002"):
        stage1(["--data", image_folder, "--output-dir", out, "--steps", 6, "--batch-size", 8, *TINY_TOK,
                *FAST[:-2], "--ckpt-every", 2])
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-00000002"]
    assert not (out / "final").exists()


def test_missing_or_empty_dataset_is_a_clear_error(image_folder, tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        stage1(["--data", tmp_path / "nowhere", "--output-dir", tmp_path / "o", "--steps", 1])
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no images"):
        stage1(["--data", tmp_path / "empty", "--output-dir", tmp_path / "o", "--steps", 1])
    with pytest.raises(FileNotFoundError, match="lpips-weights"):
        stage1(["--data", image_folder, "--output-dir", tmp_path / "o", "--lpips-weights", tmp_path / "no.pth"])


# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_tokenizer(image_folder, tmp_path_factory):
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)
    out = tmp_path_factory.mktemp("tok")
    stage1(["--data", image_folder, "--output-dir", out, "--steps", 30, "--batch-size", 12, "--lr", 3e-3,
            "--variant", "hieratok", *TINY_TOK, *FAST])
    return out / "final"


def test_stage2_trains_decoder_only_and_learns(image_folder, tiny_tokenizer, tmp_path):
    from train import stage2
    out = tmp_path / "s2"
    stage2.main([str(a) for a in ["--init-from", tiny_tokenizer, "--data", image_folder, "--output-dir", out,
                                  "--steps", 55, "--batch-size", 8, "--max-images", 8, "--lr", 1e-3,
                                  "--warmup", 3, "--gan-start", 50, *FAST,
                                  "--set", "scale_loss_weights=[0.25,0.25,0.25,0.25,1]"]])
    before, after = HieraTok.from_pretrained(tiny_tokenizer), HieraTok.from_pretrained(out / "final")
    assert after.config.loss.scale_loss_weights == (0.25, 0.25, 0.25, 0.25, 1.0)  # a loss field may change ...
    # ... the architecture may not
    with pytest.raises(SystemExit, match="--set dec_dim cannot be combined with --init-from"):
        stage2.main([str(a) for a in ["--init-from", tiny_tokenizer, "--data", image_folder, "--output-dir",
                                      tmp_path / "x", "--set", "dec_dim=64"]])
    for (name, p0), p1 in zip(before.named_parameters(), after.parameters()):
        frozen = name.startswith(("encoder.", "downsampler."))
        assert torch.equal(p0, p1) == frozen, name
    rows = read_metrics(out)
    assert "gan_weight" in rows[-1] and "gan_weight" not in rows[0] and "d_loss" in rows[0]
    rec = [r["l1_16"] + r["mse_16"] for r in rows]
    assert np.mean(rec[40:50]) < 0.85 * rec[0]  # the decoder fits the fixed batch better before the GAN starts


def test_stage2_without_gan_fine_tunes_the_decoder_on_reconstruction_alone(image_folder, tiny_tokenizer, tmp_path):
    from train import stage2
    out = tmp_path / "s2"
    stage2.main([str(a) for a in ["--init-from", tiny_tokenizer, "--data", image_folder, "--output-dir", out,
                                  "--steps", 50, "--batch-size", 8, "--max-images", 8, "--lr", 1e-3,
                                  "--warmup", 3, "--gan-weight", 0, *FAST, "--ckpt-every", 25]])
    rows = read_metrics(out)
    assert not any("d_loss" in r or "gan_weight" in r for r in rows)  # no discriminator was built
    assert json.loads((out / "run_config.json").read_text())["discriminator"] is None
    rec = [r["l1_16"] + r["mse_16"] for r in rows]
    assert np.mean(rec[-5:]) < 0.85 * rec[0]
    ckpt = next((out / "checkpoints").iterdir())
    assert sorted(p.name for p in ckpt.glob("model_*")) == ["model_0.safetensors"]  # the tokenizer alone
    with pytest.raises(SystemExit, match="--gan-weight -1"):
        stage2.main([str(a) for a in ["--init-from", tiny_tokenizer, "--data", image_folder, "--output-dir",
                                      tmp_path / "x", "--gan-weight", -1]])


def test_dit_caches_latents_stores_stats_and_learns(image_folder, tiny_tokenizer, tmp_path):
    from train import dit as script
    out = tmp_path / "dit"
    args = ["--tokenizer", tiny_tokenizer, "--data", image_folder, "--output-dir", out, "--steps", 80,
            "--batch-size", 18, "--lr", 2e-3, "--warmup", 5, "--set", "dim=64", "depth=2", "heads=2", *FAST[:-4],
            "--sample-every", 80, "--sample-steps", 2, "--ckpt-every", 1000]
    script.main([str(a) for a in args])
    assert (out / "latents.safetensors").exists() and (out / "samples" / "step-00000080.png").exists()
    tok = HieraTok.from_pretrained(out / "tokenizer")
    assert tok.has_latent_stats and int(tok.latent_stats_count) == 72  # 36 images and their mirrors
    dit = DiT.from_pretrained(out / "final")
    assert dit.config.num_classes == 3 and dit.config.latent_channels == 4
    losses = [r["loss"] for r in read_metrics(out)]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])


def test_classifier_learns_the_synthetic_classes(image_folder, tmp_path):
    from train import classifier as script
    out = tmp_path / "cls"
    script.main([str(a) for a in ["--data", image_folder, "--output-dir", out, "--steps", 40, "--batch-size", 12,
                                  "--set", "width=8", *FAST]])
    model = Classifier.from_pretrained(out / "final")
    assert model.config.class_names == ("class0", "class1", "class2")
    rows = read_metrics(out)
    assert np.mean([r["loss"] for r in rows[-5:]]) < 0.6 * np.mean([r["loss"] for r in rows[:5]])


def test_a_strided_stem_classifier_sees_the_full_image_and_round_trips(tmp_path):
    cfg = ClassifierConfig(image_size=64, width=4, stem_stride=2)
    model = Classifier(cfg).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        base = model.embed(x)
        x2 = x.clone()
        x2[:, :, 1::2, 1::2] = -x2[:, :, 1::2, 1::2]  # change only the pixels a stride-2 subsample would drop
        assert base.shape == (2, 32) and not torch.allclose(model.embed(x2), base)
    model.save_pretrained(tmp_path / "c")
    loaded = Classifier.from_pretrained(tmp_path / "c")
    assert loaded.config == cfg
    with torch.no_grad():
        assert torch.equal(loaded.eval().embed(x), base)
    old = ClassifierConfig.from_dict({"num_classes": 10, "image_size": 64, "width": 32})  # written before the field
    assert old.stem_stride == 1
    with pytest.raises(ValueError, match="stem_stride"):
        ClassifierConfig(stem_stride=3)


def test_evaluate_produces_every_metric(image_folder, tiny_tokenizer, tmp_path):
    from accelerate.state import AcceleratorState

    from train import classifier, dit, evaluate
    classifier.main([str(a) for a in ["--data", image_folder, "--output-dir", tmp_path / "cls", "--steps", 5,
                                      "--batch-size", 12, "--set", "width=8", *FAST]])
    AcceleratorState._reset_state(True)
    dit.main([str(a) for a in ["--tokenizer", tiny_tokenizer, "--data", image_folder, "--output-dir",
                               tmp_path / "dit", "--steps", 3, "--batch-size", 12, "--set", "dim=64", "depth=1",
                               "heads=2", *FAST]])
    argv = [str(a) for a in ["--data", image_folder, "--classifier", tmp_path / "cls" / "final",
                             "--tokenizer", f"tok={tiny_tokenizer}", "--tokenizer", f"base={tiny_tokenizer}",
                             "--paired-against", "base", "--dit", f"tok={tmp_path}/dit/final",
                             "--dit-tokenizer", f"tok={tmp_path}/dit/tokenizer", "--num-samples", 12,
                             "--sample-steps", 2, "--batch-size", 12, "--fit-data", image_folder,
                             "--fit-images", 20, "--output", tmp_path / "eval"]]
    with pytest.raises(SystemExit, match="12 samples for a Fréchet distance over 64 feature dimensions"):
        evaluate.main(argv)  # refused before any work, with what to do
    evaluate.main([*argv, "--allow-few-samples"])
    report = json.loads((tmp_path / "eval.json").read_text())
    # the linear reference of the tokenizer's latent size sits beside it, fitted on the --fit-data images
    ref = report["tokenizers"]["linear-pca-C4"]
    assert ref["kind"] == "linear" and ref["fit"]["images"] == 20 and list(ref["scales"]) == ["16x16"]
    assert ref["scales"]["16x16"]["psnr"]["mean"] > 20
    assert 0 <= report["classifier"]["accuracy"]["mean"] <= 1
    tok = report["tokenizers"]["tok"]
    assert list(tok["scales"]) == ["1x1", "2x2", "4x4", "8x8", "16x16"]
    for s in tok["scales"].values():
        assert s["psnr"]["mean"] > 0 and -1 <= s["ssim"]["mean"] <= 1
        assert 0 <= s["latent_density"]["gini"] <= 1 and 0 <= s["latent_density"]["entropy"] <= 1
    assert tok["rfd"] > 0 and tok["lpips"] is None and "unavailable" in report["notes"]["lpips"]
    # the paired difference to the codec of its latent size: the mean of per-image differences is the difference
    # of the means; its interval is its own
    paired = tok["finest_psnr_minus_linear"]
    assert paired["reference"] == "linear-pca-C4" and paired["ci95"] > 0
    means = [r["scales"]["16x16"]["psnr"]["mean"] for r in (tok, ref)]
    assert paired["mean"] == pytest.approx(means[0] - means[1])
    # and to the baseline tokenizer (--paired-against; here the same weights: exactly zero, and the baseline has none)
    assert tok["finest_psnr_minus_baseline"] == {"mean": 0.0, "ci95": 0.0, "reference": "base"}
    assert "finest_psnr_minus_baseline" not in report["tokenizers"]["base"]
    assert report["notes"]["fd_name"] == "FD-cls"
    gen = report["generators"]["tok"]
    assert gen["gfd"] > 0 and 0 <= gen["class_accuracy"]["mean"] <= 1
    md = (tmp_path / "eval.md").read_text()
    assert "rFD-cls" in md and "gFD-cls" in md and "PSNR 16x16" in md and "linear-pca-C4" in md
    assert "finest − linear codec (paired" in md and "finest − base (paired" in md
    assert "| rFID" not in md and "| gFID" not in md  # without Inception weights, nothing is called FID

    # --update adds a second DiT to the report without evaluating the tokenizers again; both commands are kept
    evaluate.main([str(a) for a in ["--data", image_folder, "--classifier", tmp_path / "cls" / "final",
                                    "--dit", f"again={tmp_path}/dit/final", "--dit-tokenizer",
                                    f"again={tmp_path}/dit/tokenizer", "--num-samples", 12, "--sample-steps", 2,
                                    "--batch-size", 12, "--output", tmp_path / "eval", "--update",
                                    "--allow-few-samples"]])
    updated = json.loads((tmp_path / "eval.json").read_text())
    assert set(updated["generators"]) == {"tok", "again"} and updated["tokenizers"] == report["tokenizers"]
    assert updated["command"] == f"{report['command']}; {report['command']}"  # (pytest's argv, twice)
    # --drop takes a stale entry out (an unknown name is refused, the report kept as it was)
    from train.evaluate import merged
    assert set(merged(updated, {**updated, "generators": {}}, ("again",))["generators"]) == {"tok"}
    with pytest.raises(SystemExit, match="--drop: nope not in the report"):
        merged(updated, updated, ("nope",))
    with pytest.raises(SystemExit, match="was evaluated before"):
        evaluate.main([str(a) for a in ["--data", image_folder, "--max-images", 5, "--classifier",
                                        tmp_path / "cls" / "final", "--output", tmp_path / "eval", "--update"]])


def test_two_processes_stay_in_sync_and_track_one_process(image_folder, tmp_path):
    args = ["train/stage1.py", "--data", image_folder, "--steps", 5, "--batch-size", 8, "--lr", 1e-3, *TINY_TOK,
            *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    single = tmp_path / "one"
    subprocess.run([sys.executable, *map(str, args), "--output-dir", str(single)], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    double = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", *map(str, args), "--output-dir", str(double)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((double / "summary.json").read_text())
    assert summary["num_processes"] == 2
    hashes = summary["rank_weight_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    l1 = [r["loss"] for r in read_metrics(single)]
    l2 = [r["loss"] for r in read_metrics(double)]
    np.testing.assert_allclose(l2, l1, rtol=2e-3)


def test_nan_on_one_of_two_processes_stops_both_cleanly(image_folder, tmp_path):
    """A non-finite loss on rank 1 alone (injected) stops both processes at once with the message, exit non-zero
    and no hang; the checkpoint written before it is intact and nothing is saved after it."""
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29523", "tests/nan_on_rank.py", "1:3", "--data", str(image_folder),
                           "--steps", "6",
                           "--batch-size", "8", *TINY_TOK, "--mixed-precision", "no", "--log-every", "1",
                           "--sample-every", "0", "--ckpt-every", "2", "--output-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("loss became non-finite at step 3 on 1 process(es)") == 2  # said by both ranks
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    assert not (out / "final").exists()


NONSENSE = [
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--steps", "-3"], "--steps must be at least 1, got -3"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--keep-ckpts", "0"], "--keep-ckpts must be at least 1, got 0"),
    (["--lr", "0"], "--lr must be positive"),
    (["--init-from", "/nonexistent/ckpt"], "--init-from /nonexistent/ckpt:"),
]


@pytest.mark.parametrize("flags,message", NONSENSE)
def test_nonsense_arguments_are_refused_with_their_message(image_folder, tmp_path, flags, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        stage1(["--data", image_folder, "--output-dir", tmp_path / "x", *flags])
    assert not (tmp_path / "x" / "final").exists()


@pytest.mark.parametrize("flags,message", [NONSENSE[0], NONSENSE[-1]])  # before the run starts / while it loads
def test_nonsense_arguments_exit_non_zero_with_one_line(image_folder, tmp_path, flags, message):
    """As a user runs it, in a new interpreter: exit status, one line, no traceback. Two of the refusals only (one
    checked before the run starts, one while it loads); each costs 5-8 s of imports on 2 cores."""
    proc = subprocess.run([sys.executable, "train/stage1.py", "--data", str(image_folder), "--output-dir",
                           str(tmp_path / "x"), *flags], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode != 0 and message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x" / "final").exists()


def test_init_from_takes_the_checkpoint_config_and_refuses_conflicting_flags(image_folder, tiny_tokenizer, tmp_path,
                                                                           capsys):
    with pytest.raises(SystemExit, match="--variant cannot be combined with --init-from"):
        stage1(["--data", image_folder, "--output-dir", tmp_path / "a", "--init-from", tiny_tokenizer,
                "--variant", "singlescale", *FAST, "--steps", 1])
    with pytest.raises(SystemExit, match="--set dec_depth cannot be combined with --init-from"):
        stage1(["--data", image_folder, "--output-dir", tmp_path / "b", "--init-from", tiny_tokenizer,
                "--set", "dec_depth=2", *FAST, "--steps", 1])
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)
    stage1(["--data", image_folder, "--output-dir", tmp_path / "c", "--init-from", tiny_tokenizer, "--steps", 2,
            "--batch-size", 4, *FAST])
    config = json.loads((tmp_path / "c" / "run_config.json").read_text())
    assert config["model"] == HieraTok.from_pretrained(tiny_tokenizer).config.to_dict()
    assert config["args"]["variant"] is None  # the default variant is not recorded for a model it did not build
    assert "l1_16" in read_metrics(tmp_path / "c")[0]  # every scale of the checkpoint's model is supervised


def test_the_loss_refuses_a_model_whose_scales_it_was_not_built_for():
    from hieratok import tokenizer_config
    from hieratok.losses import ReconstructionLoss
    tiny = dict(enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=48, dec_depth=1, dec_heads=3)
    model = HieraTok(tokenizer_config("cifar10", **tiny))
    loss = ReconstructionLoss(tokenizer_config("cifar10", "singlescale", **tiny))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out, post = model(x)
    with pytest.raises(ValueError, match="built for scales"):
        loss(x, out, post)


# ---------------------------------------------------------------------------------------------------------------
# FSDP2: accelerate shards only on accelerators; Run switches FSDP2 on over gloo on CPUs
# (hieratok.training.distributed), so the sharded path -- parameters, optimizer state, EMA, checkpoints,
# export -- runs here with the shipped config.
def fsdp_launch(script: str, args: list, port: int, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           "train/configs/fsdp.yaml", "--num_processes", "2", "--main_process_port", str(port),
                           script, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, launch_failure(proc)
    return proc


def launch_failure(proc: subprocess.CompletedProcess) -> str:
    """What a failed multi-process launch says: the tail of its output, and before it every line that names an
    error or an abort wherever it sits -- a rank that dies in C++ (SIGABRT) writes its reason early, and the last few
    thousand characters are then the other rank's traceback and the launcher's summary."""
    lines = (proc.stdout + proc.stderr).splitlines()
    telling = [line for line in lines if re.search(r"terminate|abort|Error|error:|exception", line)
               and "GLHF" not in line]
    return "\n".join(["lines naming an error:", *telling[:40], "-- tail:", proc.stdout[-1500:], proc.stderr[-3000:]])


def test_fsdp_keeps_the_recipes_stop_gradient(image_folder, tmp_path):
    """The recipe's coarse losses must not reach the shared decoder weights. The decoder once kept them out by
    swapping in detached weights from outside (`torch.func.functional_call`), which FSDP2's pre-forward hooks undid:
    the sharded run's decoder ended 7e-3 away from the one-process run's after six steps. The decoder now reads
    them as constants inside its own forward; the sharded run trains what one process does."""
    args = ["--data", image_folder, "--steps", 6, "--batch-size", 8, "--lr", 1e-3, *TINY_TOK,
            "--mixed-precision", "no", "--log-every", 1, "--sample-every", 0, "--ckpt-every", 0]
    stage1([*args, "--output-dir", tmp_path / "one"])
    fsdp_launch("train/stage1.py", [*args, "--output-dir", tmp_path / "fsdp"], 29538)
    recorded = json.loads((tmp_path / "fsdp" / "run_config.json").read_text())["args"]
    assert recorded["variant"] == "stopgrad-shared-context"  # the default: the project's recipe
    one, two = weights(tmp_path / "one" / "final"), weights(tmp_path / "fsdp" / "final")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=2e-4, msg=k)


def test_fsdp_shards_resumes_bit_identically_and_tracks_one_process(image_folder, tmp_path):
    args = ["--data", image_folder, "--steps", 6, "--batch-size", 8, "--lr", 1e-3, "--ckpt-every", 2,
            "--keep-ckpts", 3, *TINY_TOK, "--mixed-precision", "no", "--log-every", 1, "--sample-every", 3,
            "--variant", "hieratok"]
    stage1([*args, "--output-dir", tmp_path / "one"])
    fsdp_launch("train/stage1.py", [*args, "--output-dir", tmp_path / "fsdp"], 29531)
    out = tmp_path / "fsdp"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["distributed"] == "DistributedType.FSDP" and summary["num_processes"] == 2
    ckpt = out / "checkpoints" / "step-00000004"
    # one safetensors file per process for the model, the optimizer and the EMA; no pickle, no whole copies
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(
        [f"{kind}-rank{r}-of2.safetensors" for kind in ("model_0", "optimizer_0", "ema") for r in (0, 1)] +
        ["state.json"])
    from safetensors.torch import load_file
    shard = load_file(str(ckpt / "model_0-rank0-of2.safetensors"))
    whole = weights(tmp_path / "one" / "final")
    name = next(k for k in whole if whole[k].ndim == 2 and whole[k].shape[0] % 2 == 0)
    assert shard[name].shape[0] == whole[name].shape[0] // 2  # a shard, half of the rows
    # the exported EMA is whole and matches what one process trains at the same global batch
    one, two = weights(tmp_path / "one" / "final"), weights(out / "final")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=2e-4, msg=k)
    l1, l2 = [r["loss"] for r in read_metrics(tmp_path / "one")], [r["loss"] for r in read_metrics(out)]
    np.testing.assert_allclose(l2, l1, rtol=2e-3)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-00000003.png", "step-00000006.png"]

    # killed after the checkpoint of step 2: the resumed run ends bit-identical to the uninterrupted one
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "final")
    for later in ("step-00000004", "step-00000006"):
        shutil.rmtree(resumed / "checkpoints" / later, ignore_errors=True)
    proc = fsdp_launch("train/stage1.py", [*args, "--output-dir", resumed], 29532)
    assert "resumed from" in proc.stdout + proc.stderr
    again = weights(resumed / "final")
    for k in two:
        assert torch.equal(two[k], again[k]), k
    assert [r["loss"] for r in read_metrics(resumed)] == l2


def test_fsdp_stage2_dit_and_classifier(image_folder, tiny_tokenizer, tmp_path):
    common = ["--data", image_folder, "--steps", 4, "--batch-size", 8, "--log-every", 1, "--ckpt-every", 2,
              "--sample-every", 4]
    # stage 2: two models (decoder + discriminator) prepared in one call, adaptive GAN weight on the gathered
    # last layer, encoder still frozen
    fsdp_launch("train/stage2.py", ["--init-from", tiny_tokenizer, "--output-dir", tmp_path / "s2", "--gan-start", 2,
                                    *common], 29533)
    before, after = HieraTok.from_pretrained(tiny_tokenizer), HieraTok.from_pretrained(tmp_path / "s2" / "final")
    for (name, p0), p1 in zip(before.named_parameters(), after.parameters()):
        assert torch.equal(p0, p1) == name.startswith(("encoder.", "downsampler.")), name
    assert "gan_weight" in read_metrics(tmp_path / "s2")[-1]
    # DiT: sample grids from the gathered EMA
    fsdp_launch("train/dit.py", ["--tokenizer", tiny_tokenizer, "--output-dir", tmp_path / "dit", "--set", "dim=64",
                                 "depth=2", "heads=2", "--sample-steps", 2, *common], 29534)
    assert DiT.from_pretrained(tmp_path / "dit" / "final").config.depth == 2
    assert (tmp_path / "dit" / "samples" / "step-00000004.png").exists()
    # each process encoded its share of the latents; the cache holds them in dataset order
    from safetensors.torch import load_file

    from hieratok.training.data import build_dataset
    cache = load_file(str(tmp_path / "dit" / "latents.safetensors"))
    assert cache["labels"].tolist() == [0] * 12 + [1] * 12 + [2] * 12
    ds, tok = build_dataset(str(image_folder), 32), HieraTok.from_pretrained(tiny_tokenizer)
    with torch.no_grad():
        z = tok.encode(torch.stack([ds[i][0] for i in (0, 13, 35)]))
    torch.testing.assert_close(cache["z"][[0, 13, 35]], z, atol=0.05, rtol=0.05)  # bf16 autocast vs fp32
    # classifier: BatchNorm in bf16 autocast under sharding
    fsdp_launch("train/classifier.py", ["--output-dir", tmp_path / "cls", "--set", "width=8", *common], 29535)
    assert Classifier.from_pretrained(tmp_path / "cls" / "final").config.num_classes == 3


def test_dit_init_from_continues_a_finished_run(image_folder, tiny_tokenizer, tmp_path, caplog):
    from train import dit as script
    base = ["--tokenizer", tiny_tokenizer, "--data", image_folder, "--batch-size", 12, *FAST]
    script.main([str(a) for a in [*base, "--output-dir", tmp_path / "a", "--steps", 3, "--set", "dim=64", "depth=2",
                                  "heads=2"]])
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)
    longer = [*base, "--output-dir", tmp_path / "b", "--steps", 3, "--init-from", tmp_path / "a" / "final",
              "--latent-cache", tmp_path / "a" / "latents.safetensors"]
    script.main([str(a) for a in longer])
    assert "latents from cache" in caplog.text  # the first run's encoding is reused
    assert DiT.from_pretrained(tmp_path / "b" / "final").config.depth == 2  # the architecture came along
    assert json.loads((tmp_path / "b" / "run_config.json").read_text())["init_from"].endswith("final")
    AcceleratorState._reset_state(True)
    with pytest.raises(SystemExit, match="--set depth cannot be combined with --init-from"):
        script.main([str(a) for a in [*base, "--output-dir", tmp_path / "c", "--steps", 3, "--init-from",
                                      tmp_path / "a" / "final", "--set", "depth=3"]])
    assert not (tmp_path / "c" / "latents.safetensors").exists()  # refused before the dataset was encoded


def test_dit_keeps_the_tokenizers_latent_statistics_when_asked(image_folder, tiny_tokenizer, tmp_path):
    from train import dit as script
    base = ["--data", image_folder, "--batch-size", 12, "--steps", 2, *FAST]
    small = ["--set", "dim=64", "depth=2", "heads=2"]
    with pytest.raises(SystemExit, match="carries no latent statistics"):
        script.main([str(a) for a in [*base, *small, "--tokenizer", tiny_tokenizer, "--output-dir", tmp_path / "x",
                                      "--latent-stats", "tokenizer"]])
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)
    script.main([str(a) for a in [*base, *small, "--tokenizer", tiny_tokenizer, "--output-dir", tmp_path / "a"]])
    fitted = HieraTok.from_pretrained(tmp_path / "a" / "tokenizer")
    # statistics the data would not give: kept as they are, not refitted
    fitted.set_latent_stats(fitted.latent_mean + 0.5, fitted.latent_std * 2, count=7)
    fitted.save_pretrained(tmp_path / "given")
    AcceleratorState._reset_state(True)
    script.main([str(a) for a in [*base, "--tokenizer", tmp_path / "given", "--output-dir", tmp_path / "b",
                                  "--init-from", tmp_path / "a" / "final", "--latent-stats", "tokenizer"]])
    kept = HieraTok.from_pretrained(tmp_path / "b" / "tokenizer")
    assert torch.equal(kept.latent_mean, fitted.latent_mean) and torch.equal(kept.latent_std, fitted.latent_std)
    assert int(kept.latent_stats_count) == 7


def test_dit_learns_a_latent_with_another_tokenizers_spectrum_and_decodes_it_unchanged(image_folder, tiny_tokenizer,
                                                                                        tmp_path):
    from hieratok import tokenizer_config
    from hieratok.metrics import latent_spectrum
    from train import dit as script
    from train.dit import first_latents
    torch.manual_seed(3)
    other = HieraTok(tokenizer_config("cifar10", enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=32, dec_depth=1,
                                      dec_heads=2, name="singlescale", scales=(16,)))
    other.save_pretrained(tmp_path / "other")
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)
    script.main([str(a) for a in ["--data", image_folder, "--batch-size", 12, "--steps", 2, *FAST, "--set", "dim=64",
                                  "depth=2", "heads=2", "--tokenizer", tiny_tokenizer, "--output-dir", tmp_path / "a",
                                  "--latent-spectrum-like", tmp_path / "other"]])
    copy = HieraTok.from_pretrained(tmp_path / "a" / "tokenizer")
    assert copy.config.latent_spectral_gain and int(copy.latent_stats_count) > 0
    info = json.loads((tmp_path / "a" / "run_config.json").read_text())["latent_spectrum"]
    assert info["like"] == str(tmp_path / "other") and info["images"] == 36
    # what the DiT learned has the other tokenizer's high-frequency share (the same images), not its own
    from hieratok.training.data import build_dataset
    ds = build_dataset(str(image_folder), 32)
    z = first_latents(HieraTok.from_pretrained(tiny_tokenizer), ds, 2000, 16, "cpu")
    zt = first_latents(other, ds, 2000, 16, "cpu")
    got = latent_spectrum(copy.normalize_latent(z))["high_frequency_fraction"]
    assert got == pytest.approx(info["high_frequency_shaped"], abs=1e-6)
    # per frequency: the shaped power is the other tokenizer's, the own one is not
    from hieratok.metrics import latent_power
    own, target, shaped = latent_power(z), latent_power(zt), latent_power(copy.normalize_latent(z))
    off = lambda p: float(((p / p.sum()) / (target / target.sum()) - 1).abs().max())  # noqa: E731
    assert off(shaped) < 0.15 and off(own) > 0.5   # (0.05 and 1.0 here; channels weigh a little differently)
    assert torch.allclose(copy.denormalize_latent(copy.normalize_latent(z)), z, atol=1e-4)
    # a tokenizer of another latent grid has no spectrum to lend
    torch.manual_seed(4)
    HieraTok(tokenizer_config("cifar10", image_size=16, enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=32, dec_depth=1,
                              dec_heads=2, scales=(8,))).save_pretrained(tmp_path / "small")
    AcceleratorState._reset_state(True)
    with pytest.raises(SystemExit, match="8x8 latent"):
        script.main([str(a) for a in ["--data", image_folder, "--batch-size", 12, "--steps", 2, *FAST, "--set",
                                      "dim=64", "depth=2", "heads=2", "--tokenizer", tiny_tokenizer, "--output-dir",
                                      tmp_path / "b", "--latent-spectrum-like", tmp_path / "small"]])
    # the channel version: the other tokenizer's channel correlations, by an invertible mix; one shaping at a time
    from hieratok.metrics import channel_correlation, channel_participation
    AcceleratorState._reset_state(True)
    script.main([str(a) for a in ["--data", image_folder, "--batch-size", 12, "--steps", 2, *FAST, "--set", "dim=64",
                                  "depth=2", "heads=2", "--tokenizer", tiny_tokenizer, "--output-dir", tmp_path / "c",
                                  "--latent-channels-like", tmp_path / "other"]])
    mixed = HieraTok.from_pretrained(tmp_path / "c" / "tokenizer")
    assert mixed.config.latent_channel_mix and not mixed.config.latent_spectral_gain
    info = json.loads((tmp_path / "c" / "run_config.json").read_text())["latent_channels"]
    assert info["like"] == str(tmp_path / "other") and info["participation_target"] == pytest.approx(
        channel_participation(zt)["participation"], rel=1e-6)
    assert torch.allclose(channel_correlation(mixed.normalize_latent(z)), channel_correlation(zt), atol=0.05)
    assert info["participation_shaped"] == pytest.approx(info["participation_target"], rel=0.02)
    # aligned on the same images: closer to the target's latent than the unaligned mix of the same correlations
    from hieratok.metrics import channel_mix
    from hieratok.metrics import paired_correlation
    unaligned = mixed.with_channel_mix(channel_mix(z, zt)).normalize_latent(z)
    assert info["aligned"] and info["target_correlation"] >= paired_correlation(unaligned, zt) - 1e-6
    assert torch.allclose(mixed.denormalize_latent(mixed.normalize_latent(z)), z, atol=1e-4)
    with pytest.raises(SystemExit):
        script.parse_args(["--data", "x", "--tokenizer", "t", "--output-dir", "o", "--latent-channels-like", "a",
                           "--latent-spectrum-like", "b"])
    # a resumed shaped run keeps the normalisation it started with, even where this code would now make another
    AcceleratorState._reset_state(True)
    argv = [str(a) for a in ["--data", image_folder, "--batch-size", 12, "--steps", 2, *FAST, "--set", "dim=64",
                             "depth=2", "heads=2", "--tokenizer", tiny_tokenizer, "--output-dir", tmp_path / "c2",
                             "--latent-channels-like", tmp_path / "other", "--ckpt-every", 1]]
    script.main(argv)
    started = HieraTok.from_pretrained(tmp_path / "c2" / "tokenizer")
    other_mix = started.latent_mix[torch.randperm(len(started.latent_mix))]   # as if made differently back then
    started.with_channel_mix(other_mix).save_pretrained(tmp_path / "c2" / "tokenizer")
    shutil.rmtree(tmp_path / "c2" / "final")
    AcceleratorState._reset_state(True)
    script.main(argv)   # resumes from the step-1 checkpoint
    for copy in ("tokenizer", "final/tokenizer"):
        assert torch.equal(HieraTok.from_pretrained(tmp_path / "c2" / copy).latent_mix, other_mix)
    # the covariance version: every second-order statistic at once (cross-spectra), both measures reported
    from hieratok.metrics import cross_spectra
    AcceleratorState._reset_state(True)
    script.main([str(a) for a in ["--data", image_folder, "--batch-size", 12, "--steps", 2, *FAST, "--set", "dim=64",
                                  "depth=2", "heads=2", "--tokenizer", tiny_tokenizer, "--output-dir", tmp_path / "d",
                                  "--latent-covariance-like", tmp_path / "other", "--export-at", 1]])
    xmixed = HieraTok.from_pretrained(tmp_path / "d" / "tokenizer")
    # the DiT folder carries the copy it decodes through (what the app pairs a shipped DiT with)
    from hieratok.hub import paired_tokenizer
    for folder in ("final", "exports/step-00000001"):   # an intermediate export as well as the final one
        assert paired_tokenizer(tmp_path / "d" / folder) is not None, folder
        assert torch.equal(HieraTok.from_pretrained(paired_tokenizer(tmp_path / "d" / folder)).latent_xmix,
                           xmixed.latent_xmix)
    assert xmixed.config.latent_covariance_mix and not xmixed.config.latent_channel_mix
    info = json.loads((tmp_path / "d" / "run_config.json").read_text())
    assert info["latent_channels"] is None and info["latent_spectrum"] is None
    info = info["latent_covariance"]
    assert info["aligned"] and -1 <= info["target_correlation"] <= 1
    for key in ("participation", "high_frequency"):
        assert info[f"{key}_shaped"] == pytest.approx(info[f"{key}_target"], rel=0.02, abs=1e-3)
    want = cross_spectra(zt)
    assert (cross_spectra(xmixed.normalize_latent(z)) - want).abs().max() < 0.02 * want.abs().max()
    assert torch.allclose(xmixed.denormalize_latent(xmixed.normalize_latent(z)), z, atol=1e-3)


def test_fsdp1_configs_are_refused_with_a_message(image_folder, tmp_path):
    config = tmp_path / "fsdp1.yaml"
    config.write_text((ROOT / "train" / "configs" / "fsdp.yaml").read_text().replace("fsdp_version: 2",
                                                                                     "fsdp_version: 1"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                           "--num_processes", "2", "--main_process_port", "29536", "train/stage1.py", "--data",
                           str(image_folder), "--output-dir", str(tmp_path / "out"), "--steps", "1", *TINY_TOK],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "fsdp_version: 2" in proc.stdout + proc.stderr
    assert not (tmp_path / "out" / "final").exists()


def test_ship_carries_latent_statistics_only_across_an_unchanged_latent(tmp_path):
    from hieratok import tokenizer_config
    from train.ship import load_entry
    cfg = tokenizer_config("cifar10", enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=32, dec_depth=1, dec_heads=2)
    donor = HieraTok(cfg)
    donor.set_latent_stats(torch.randn(cfg.latent_channels), torch.rand(cfg.latent_channels) + 0.5, count=99)
    donor.save_pretrained(tmp_path / "dit" / "tokenizer")
    tuned = HieraTok.from_pretrained(tmp_path / "dit" / "tokenizer")
    tuned.latent_stats_count.zero_()                      # a stage-2 export: no statistics of its own ...
    with torch.no_grad():
        tuned.decoder.head.weight.add_(0.1)               # ... a fine-tuned decoder ...
        next(tuned.downsampler.parameters()).add_(0.1)    # ... and downsampler (--train coarse): z is unchanged
    tuned.save_pretrained(tmp_path / "s2" / "final")
    shipped = load_entry(tmp_path, (HieraTok, "s2/final", "dit/tokenizer"))
    assert torch.equal(shipped.latent_mean, donor.latent_mean) and int(shipped.latent_stats_count) == 99
    assert torch.equal(shipped.decoder.head.weight, tuned.decoder.head.weight)
    assert torch.equal(next(shipped.downsampler.parameters()), next(tuned.downsampler.parameters()))
    with torch.no_grad():
        next(tuned.encoder.parameters()).add_(0.1)       # a changed encoder changes every latent
    tuned.save_pretrained(tmp_path / "s2b" / "final")
    with pytest.raises(SystemExit, match="their latents differ"):
        load_entry(tmp_path, (HieraTok, "s2b/final", "dit/tokenizer"))


def test_model_card_update_evaluation_keeps_the_training_part(tmp_path):
    from train import model_card
    report = {"data": "val", "images": 10, "command": "train/evaluate.py --update", "tokenizers": {},
              "notes": {"fd": "FD-cls", "fd_name": "FD-cls", "lpips": "unavailable"},
              "classifier": {"accuracy": {"mean": 0.9, "ci95": 0.01}, "images": 10}}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "cifar10.json").write_text(json.dumps(report))
    (tmp_path / "cards").mkdir()
    card = tmp_path / "cards" / "cifar10.md"
    card.write_text("# Shipped weights\n\n| training table |\n\n## Evaluation\n\nold numbers\n")
    model_card.main(["--family", "cifar10", "--assets", str(tmp_path), "--update-evaluation"])
    text = card.read_text()
    assert text.startswith("# Shipped weights\n\n| training table |\n\n## Evaluation")
    assert "old numbers" not in text and "0.9000 ± 0.0100" in text and "`train/evaluate.py --update`" in text
    card.write_text("# no evaluation section\n")
    with pytest.raises(SystemExit, match="no card with"):
        model_card.main(["--family", "cifar10", "--assets", str(tmp_path), "--update-evaluation"])


# the cifar10 checkpoints and runs the model-card tests below are written for (independent of what ships now)
CARD_RUNS = [("hieratok-cifar10", ["hieratok-s1", "hieratok-s2"]),
             ("singlescale-cifar10", ["singlescale-s1", "singlescale-s2"]),
             ("dit-hieratok-cifar10", ["dit-hieratok", "dit-hieratok-long"])]


def _card_assets(tmp_path, monkeypatch):
    """An assets folder with a minimal cifar10 evaluation and a tiny shipped singlescale-cifar10; the cifar10
    checkpoints' runs as CARD_RUNS."""
    from hieratok import HieraTok, tokenizer_config
    from train import model_card
    monkeypatch.setitem(model_card.RUNS, "cifar10", CARD_RUNS)
    report = {"data": "val", "images": 10, "command": "train/evaluate.py --x", "tokenizers": {},
              "notes": {"fd": "FD-cls", "fd_name": "FD-cls", "lpips": "unavailable"}}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "cifar10.json").write_text(json.dumps(report))
    HieraTok(tokenizer_config("cifar10", "singlescale", enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=48,
                              dec_depth=1, dec_heads=3)).save_pretrained(tmp_path / "singlescale-cifar10")


def test_model_card_update_runs_rewrites_one_checkpoints_rows_and_keeps_the_rest(tmp_path, monkeypatch):
    """A checkpoint retrained after the others' run folders are gone: its table rows and commands come from its new
    runs, every other checkpoint's stay as the card has them."""
    from train import model_card
    _card_assets(tmp_path, monkeypatch)
    runs = tmp_path / "runs"
    for i, folder in enumerate(["singlescale-s1", "singlescale-s2"]):
        (runs / folder).mkdir(parents=True)
        args = {"preset": "cifar10", "variant": "singlescale", "warm_start": "assets/x" if i == 0 else None,
                "data": "d", "output_dir": f"/work/runs/{folder}", "steps": 10 + i, "batch_size": 8, "lr": 1e-3}
        (runs / folder / "run_config.json").write_text(json.dumps({"script": "stage1", "args": args}))
        (runs / folder / "summary.json").write_text(json.dumps({"step": 10 + i, "images_seen": 80, "wall_s": 60}))
    (tmp_path / "cards").mkdir()
    card = tmp_path / "cards" / "cifar10.md"
    card.write_text("# Shipped weights\n\nintro\n\n| checkpoint | params |\n|---|---:|\n"
                    "| hieratok-cifar10 | 1M | x |\n|  |  | y |\n| singlescale-cifar10 | 1M | old |\n\n"
                    "## Commands\n\n```bash\n# hieratok-s1 (CPU)\npython a\n# (a note (on it))\n"
                    "# hieratok-s2 (CPU)\npython b\n"
                    "# singlescale-s1 (CPU)\npython old\n```\n\ntail\n\n## Evaluation\n\nold numbers\n")
    model_card.main(["--family", "cifar10", "--assets", str(tmp_path), "--runs", str(runs), "--update-runs",
                     "singlescale-cifar10"])
    text = card.read_text()
    assert "| hieratok-cifar10 | 1M | x |\n|  |  | y |\n| singlescale-cifar10 |" in text and "| old |" not in text
    assert "| singlescale-s1 | CPU | 10 | 80 | 1.0 min |" in text and "| singlescale-s2 | CPU | 11 |" in text
    kept = "# hieratok-s1 (CPU)\npython a\n# (a note (on it))\n# hieratok-s2 (CPU)\npython b\n# singlescale-s1 (CPU)\n"
    assert kept in text  # a comment line under a command stays with it
    assert "--warm-start assets/x" in text and "python old" not in text and "old numbers" not in text
    assert "intro" in text and "tail" in text and "## Evaluation" in text
    with pytest.raises(SystemExit, match="not among"):
        model_card.main(["--family", "cifar10", "--assets", str(tmp_path), "--update-runs", "nothing-cifar10"])


def test_model_card_update_runs_keeps_the_card_row_of_a_run_whose_folder_is_gone(tmp_path, monkeypatch):
    """A shipped checkpoint finished by a new run after its first run's folder was lost: the first run's row and
    command stay as the card has them (under the checkpoint's new size and cost), the new run's come from its folder;
    a run with neither folder nor card row is a clear error."""
    from hieratok import tokenizer_config
    from hieratok.cost import cost_of
    from train import model_card
    _card_assets(tmp_path, monkeypatch)
    HieraTok(tokenizer_config("cifar10", "hieratok", enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=48, dec_depth=1,
                              dec_heads=3)).save_pretrained(tmp_path / "hieratok-cifar10")
    runs = tmp_path / "runs"
    (runs / "hieratok-s2").mkdir(parents=True)
    args = {"init_from": "runs/hieratok-s1/final", "data": "d", "output_dir": "runs/hieratok-s2", "steps": 7,
            "batch_size": 8, "lr": 1e-4}
    (runs / "hieratok-s2" / "run_config.json").write_text(json.dumps({"script": "stage2", "args": args}))
    (runs / "hieratok-s2" / "summary.json").write_text(json.dumps({"step": 7, "images_seen": 56, "wall_s": 120}))
    (tmp_path / "cards").mkdir()
    card = tmp_path / "cards" / "cifar10.md"
    head = ("# Shipped weights\n\n| checkpoint | params | GFLOPs / image | decoder tokens | run | hardware | steps | "
            "images seen | wall time | size |\n|---|---:|---:|---:|---|---|---:|---:|---:|---:|\n"
            "| hieratok-cifar10 | 9.99M | 9.999 | 341 | hieratok-s1 | CPU | 1000 | 64,000 | 66.1 min | 9.9 MB |\n")
    card.write_text(head + "\n## Commands\n\n```bash\n# hieratok-s1 (CPU)\npython a\n# (its note)\n```\n\n"
                           "## Evaluation\n\nold\n")
    model_card.main(["--family", "cifar10", "--assets", str(tmp_path), "--runs", str(runs), "--update-runs",
                     "hieratok-cifar10"])
    lines = card.read_text().splitlines()
    rows = [line for line in lines if line.startswith("| hieratok-cifar10") or line.startswith("|  |  |")]
    cost = cost_of(HieraTok.from_pretrained(tmp_path / "hieratok-cifar10").config)
    assert rows[0].startswith(f"| hieratok-cifar10 | {cost.params / 1e6:.2f}M | {cost.gflops:.3f} | 341 | "
                              "hieratok-s1 | CPU | 1000 | 64,000 | 66.1 min | ") and "9.99M" not in rows[0]
    assert rows[1] == "|  |  |  |  | hieratok-s2 | CPU | 7 | 56 | 2.0 min |  |"
    text = "\n".join(lines)
    assert "# hieratok-s1 (CPU)\npython a\n# (its note)\n# hieratok-s2 (CPU)\npython train/stage2.py" in text
    # a stage-1 run that trained some parts only says so (stage 1's default, every part, goes unsaid)
    run = {"script": "stage1", "args": {"init_from": "x", "train": "coarse", "data": "d", "steps": 3}}
    assert "--init-from x --train coarse --data d" in model_card.command_line(run)
    run["args"]["train"] = "all"
    assert "--train" not in model_card.command_line(run)
    card.write_text(head.replace("hieratok-s1", "other-run") + "\n## Commands\n\n```bash\n```\n\n## Evaluation\n")
    with pytest.raises(SystemExit, match="hieratok-s1 \\(and no row and command"):
        model_card.main(["--family", "cifar10", "--assets", str(tmp_path), "--runs", str(runs), "--update-runs",
                         "hieratok-cifar10"])


def test_model_card_update_runs_upgrades_a_card_from_before_the_hardware_column(tmp_path, monkeypatch):
    """The CIFAR-10 card predates the hardware column and the "(HARDWARE)" in its command headings: --update-runs
    gives the kept rows the column (those cards were written for CPU-only runs) and keeps their commands; a new run
    names its CPU and precision."""
    from train import model_card
    _card_assets(tmp_path, monkeypatch)
    runs = tmp_path / "runs"
    for folder in ["singlescale-s1", "singlescale-s2"]:
        (runs / folder).mkdir(parents=True)
        args = {"preset": "cifar10", "variant": "singlescale", "data": "d", "output_dir": f"runs/{folder}",
                "steps": 10, "batch_size": 8, "lr": 1e-3}
        (runs / folder / "run_config.json").write_text(json.dumps(
            {"script": "stage1", "args": args, "device": "cpu", "hardware": "AMD EPYC",
             "mixed_precision": {"used": "no", "why": "auto"}}))
        (runs / folder / "summary.json").write_text(json.dumps({"step": 10, "images_seen": 80, "wall_s": 60}))
    (tmp_path / "cards").mkdir()
    card = tmp_path / "cards" / "cifar10.md"
    card.write_text("# Shipped weights\n\nintro\n\n"
                    "| checkpoint | params | GFLOPs / image | decoder tokens | run | steps | images seen | wall time | "
                    "size |\n|---|---:|---:|---:|---|---:|---:|---:|---:|\n"
                    "| hieratok-cifar10 | 2.65M | 2.104 | 341 | hieratok-s1 | 1000 | 64,000 | 66.1 min | 5.3 MB |\n"
                    "|  |  |  |  | hieratok-s2 | 300 | 19,200 | 14.8 min |  |\n"
                    "| singlescale-cifar10 | 2.63M | 1.647 | 256 | singlescale-s1 | 1000 | 64,000 | 50.1 min | "
                    "5.3 MB |\n"
                    "\n## Commands\n\n```bash\n# hieratok-s1\npython a\n# hieratok-s2\npython b\n"
                    "# singlescale-s1\npython old\n```\n\n## Evaluation\n\nold\n")
    model_card.main(["--family", "cifar10", "--assets", str(tmp_path), "--runs", str(runs), "--update-runs",
                     "singlescale-cifar10"])
    lines = card.read_text().splitlines()
    table = [line for line in lines if line.startswith("|") and "Evaluation" not in line][:6]
    assert table[0] == ("| checkpoint | params | GFLOPs / image | decoder tokens | run | hardware | steps | "
                        "images seen | wall time | size |")
    assert {line.count("|") for line in table} == {11}  # every row has the header's ten columns
    assert table[1] == "|---|---:|---:|---:|---|---|---:|---:|---:|---:|"  # each column keeps its alignment
    assert table[2] == ("| hieratok-cifar10 | 2.65M | 2.104 | 341 | hieratok-s1 | CPU | 1000 | 64,000 | 66.1 min | "
                        "5.3 MB |")
    assert table[3] == "|  |  |  |  | hieratok-s2 | CPU | 300 | 19,200 | 14.8 min |  |"
    assert "| singlescale-s1 | CPU (AMD EPYC, fp32) | 10 | 80 | 1.0 min |" in table[4]
    text = "\n".join(lines)
    assert "# hieratok-s1\npython a\n# hieratok-s2\npython b\n# singlescale-s1 (CPU (AMD EPYC, fp32))\n" in text
    assert "python old" not in text


def test_model_card_rows_of_a_run_shipped_from_an_export(tmp_path, monkeypatch):
    """A RUNS entry RUN@STEP ships the run's export at that step while the run goes on: its row and command say
    so, with the counters the export recorded (train_state.json); an export without them is a clear error."""
    from hieratok import DiT, dit_config
    from train import model_card
    monkeypatch.setitem(model_card.RUNS, "cifar10", [("dit-hieratok-cifar10", ["dit-x@5"])])
    report = {"data": "val", "images": 10, "command": "train/evaluate.py --x", "tokenizers": {},
              "notes": {"fd": "FD-cls", "fd_name": "FD-cls", "lpips": "unavailable"}}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "cifar10.json").write_text(json.dumps(report))
    DiT(dit_config("cifar10", dim=32, depth=1, heads=2)).save_pretrained(tmp_path / "dit-hieratok-cifar10")
    run = tmp_path / "runs" / "dit-x"
    (run / "exports" / "step-00000005").mkdir(parents=True)
    args = {"preset": "cifar10", "tokenizer": "t", "data": "d", "output_dir": "/work/runs/dit-x", "steps": 20,
            "batch_size": 128, "lr": 3e-4, "export_at": [5, 10]}
    (run / "run_config.json").write_text(json.dumps({"script": "dit", "args": args}))
    cli = ["--family", "cifar10", "--assets", str(tmp_path), "--runs", str(tmp_path / "runs")]
    with pytest.raises(SystemExit, match="train_state.json does not exist"):
        model_card.main(cli)
    (run / "exports" / "step-00000005" / "train_state.json").write_text(
        json.dumps({"step": 5, "images_seen": 640, "wall_s": 120.0, "planned_steps": 20}))
    model_card.main(cli)
    text = (tmp_path / "cards" / "cifar10.md").read_text()
    assert "| dit-x | CPU | 5 of 20 (export) | 640 | 2.0 min |" in text
    from hieratok.cost import dit_gflops
    gflops = dit_gflops(dit_config("cifar10", dim=32, depth=1, heads=2))
    assert gflops > 0 and f"| dit-hieratok-cifar10 | 0.03M | {gflops:.3f} |  | dit-x |" in text  # one denoiser pass
    assert "# dit-x@5 (CPU)\npython train/dit.py" in text and "--output-dir runs/dit-x --steps 20" in text
    assert "# shipped: its EMA export at step 5 (runs/dit-x/exports/step-00000005), the run planned for 20" in text


def test_the_card_and_the_shipping_step_name_the_same_export():
    """A checkpoint shipped from a run's export is named twice -- where train/ship.py copies it from and the card's
    RUN@STEP: a later export shipped in one place and not the other would give the card another run's numbers."""
    from train import model_card, ship
    pinned = 0
    for family, rows in model_card.RUNS.items():
        for name, entries in rows:
            for entry in entries:
                if model_card.run_folder(entry)[1] is not None:
                    assert ship.FAMILIES[family][name][1] == model_card.export_dir(Path(), entry).as_posix(), name
                    pinned += 1
    assert pinned >= 2  # the photo DiTs


def test_report_lists_each_generators_settings_when_they_differ():
    from hieratok.report import evaluation_markdown as markdown
    gen = {"gfd": 10.0, "class_accuracy": {"mean": 0.5, "ci95": 0.04}, "samples": 500, "sampler_steps": 10}
    report = {"data": "val", "images": 10, "notes": {"fd": "FD-cls", "fd_name": "FD-cls", "lpips": "n/a"},
              "generators": {"hieratok": {**gen, "guidance": 4.0}, "hieratok-g2": {**gen, "guidance": 2.0}}}
    md = markdown(report)
    assert "| guidance | 4 | 2 |" in md and "| Heun steps | 10 | 10 |" in md
    report["generators"].pop("hieratok-g2")
    assert "500 samples per model, guidance 4.0, 10 Heun steps." in markdown(report)


def test_init_from_is_one_behaviour_for_every_trainer(tmp_path):
    """The model comes from the directory; --set may change its training settings only; architecture flags are
    refused -- the same rule for stage 1, stage 2 and the DiT (hieratok.training.cli.init_from)."""
    from argparse import Namespace

    from hieratok import DiT, dit_config, tokenizer_config
    from hieratok.config import LOSS_FIELDS
    from hieratok.training.cli import init_from
    from train.dit import DIT_TRAINING_FIELDS
    DiT(dit_config("cifar10", dim=32, depth=1, heads=2)).save_pretrained(tmp_path / "dit")
    model = init_from(DiT, Namespace(init_from=str(tmp_path / "dit"), set=["class_dropout=0.2"]), DIT_TRAINING_FIELDS)
    assert model.config.class_dropout == 0.2 and model.config.dim == 32
    with pytest.raises(SystemExit, match="--set dim cannot be combined with --init-from"):
        init_from(DiT, Namespace(init_from=str(tmp_path / "dit"), set=["dim=64"]), DIT_TRAINING_FIELDS)
    HieraTok(tokenizer_config("cifar10", enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=48, dec_depth=1,
                              dec_heads=3)).save_pretrained(tmp_path / "tok")
    args = Namespace(init_from=str(tmp_path / "tok"), set=["kl_weight=1e-5"])
    assert init_from(HieraTok, args, LOSS_FIELDS).config.loss.kl_weight == 1e-5
    with pytest.raises(SystemExit, match="--variant cannot be combined with --init-from"):
        init_from(HieraTok, args, LOSS_FIELDS, {"--variant": True})
    with pytest.raises(SystemExit, match="--init-from .*nowhere"):
        init_from(HieraTok, Namespace(init_from=str(tmp_path / "nowhere"), set=[]), LOSS_FIELDS)


def test_model_card_commands_use_paths_a_reader_can_use():
    from train import model_card
    model_card.PATH_MAP["/tmp/d"] = "../shared/data/x"
    try:
        line = model_card.portable(f"python a --data /tmp/d/train --output-dir /work/runs/gpu/r "
                                   f"--tokenizer n={ROOT}/assets/h --lr 0.1")
    finally:
        model_card.PATH_MAP.clear()
    assert line == "python a --data ../shared/data/x/train --output-dir runs/gpu/r --tokenizer n=assets/h --lr 0.1"


def test_cross_decode_finds_a_shared_latent_and_a_foreign_one(image_folder, tmp_path, capsys):
    """train/cross_decode.py: a tokenizer against a copy of itself whose decoder alone changed shares its latent
    (cosine 1, distance 0, the copy's encoder feeds either decoder alike); a freshly initialised one does not."""
    from hieratok import tokenizer_config
    from train import cross_decode
    cfg = dict(enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=48, dec_depth=1, dec_heads=3)
    torch.manual_seed(0)
    a = HieraTok(tokenizer_config("cifar10", **cfg))
    b = HieraTok(tokenizer_config("cifar10", **cfg))
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        for p in b.decoder.parameters():
            p.add_(0.01 * torch.randn_like(p))  # a fine-tuned decoder, the latent untouched
    torch.manual_seed(1)
    c = HieraTok(tokenizer_config("cifar10", **cfg))
    for name, tok in (("a", a), ("b", b), ("c", c)):
        tok.save_pretrained(tmp_path / name)
    out = tmp_path / "x.json"
    cross_decode.main(["--data", str(image_folder), "--images", "20", "--json", str(out),
                       *[f"--tokenizer={n}={tmp_path / n}" for n in "abc"]])
    result = json.loads(out.read_text())
    assert result["images"] == 20 and set(result["psnr"]) == {"a", "b", "c"}
    same = result["latents"]["a|b"]
    assert same["cosine"]["mean"] == pytest.approx(1.0, abs=1e-6) and same["relative_l2"] == 0.0
    assert result["psnr"]["a"]["b"] == result["psnr"]["b"]["b"]  # the same latent into b's decoder
    assert result["latents"]["a|c"]["cosine"]["mean"] < 0.9 and result["latents"]["a|c"]["relative_l2"] > 0.1
    assert "| a vs b | 1.0000" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="at least two"):
        cross_decode.main(["--data", str(image_folder), f"--tokenizer=a={tmp_path / 'a'}"])
    HieraTok(tokenizer_config("cifar10", **{**cfg, "latent_channels": 8})).save_pretrained(tmp_path / "d")
    with pytest.raises(SystemExit, match="latents or image sizes differ"):
        cross_decode.main(["--data", str(image_folder), "--images", "4", f"--tokenizer=a={tmp_path / 'a'}",
                           f"--tokenizer=d={tmp_path / 'd'}"])


def test_make_examples_decodes_with_the_tokenizer_its_dit_was_trained_on(tmp_path):
    """The app's example images are DiT samples: decoded by the tokenizer the DiT ships in its folder (the one it was
    trained on) unless --tokenizer names another, so retraining the family's tokenizer cannot turn them to noise."""
    from hieratok import dit_config, generate, to_pil, tokenizer_config
    from tests.app_fixtures import CLASSES, TINY
    from train import make_examples
    torch.manual_seed(0)
    own, other = (HieraTok(tokenizer_config("cifar10", v, **TINY["cifar10"])) for v in ("hieratok", "singlescale"))
    C = own.config.latent_channels
    own.set_latent_stats(torch.full((C,), 0.5), torch.full((C,), 2.0), count=1)
    other.set_latent_stats(torch.zeros(C), torch.ones(C), count=1)
    dit = DiT(dit_config("cifar10", latent_channels=C, dim=64, depth=1, heads=2, class_names=CLASSES))
    dit.save_pretrained(tmp_path / "dit")
    own.save_pretrained(tmp_path / "dit" / "tokenizer")
    other.save_pretrained(tmp_path / "other")
    Classifier(ClassifierConfig(width=8, image_size=32, class_names=CLASSES)).save_pretrained(tmp_path / "clf")
    common = ["--dit", str(tmp_path / "dit"), "--classifier", str(tmp_path / "clf"), "--steps", "2"]
    make_examples.main([*common, "--output", str(tmp_path / "ex")])
    make_examples.main([*common, "--tokenizer", str(tmp_path / "other"), "--output", str(tmp_path / "ex-other")])
    files = sorted(p.name for p in (tmp_path / "ex").glob("*.png"))
    assert files == sorted(f"dit-sample-{c}.png" for c in CLASSES)
    _, want = generate(DiT.from_pretrained(tmp_path / "dit"), HieraTok.from_pretrained(tmp_path / "dit" / "tokenizer"),
                       torch.arange(10), steps=2, guidance=3.0, seed=0)
    got = np.asarray(Image.open(tmp_path / "ex" / "dit-sample-cat.png"))
    assert np.array_equal(got, np.asarray(to_pil(want.reconstruction[3])))
    assert not np.array_equal(got, np.asarray(Image.open(tmp_path / "ex-other" / "dit-sample-cat.png")))
