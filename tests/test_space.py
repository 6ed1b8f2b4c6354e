"""Hosting and training: the thread count follows the CPU quota and says when the cores are busy, and importing the
app writes nothing into the package."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hieratok.perf import (available_cpus, cgroup_cpu_limit, machine_cpus, oversubscription_warning, running_elsewhere,
                           thread_count, training_threads)

ROOT = Path(__file__).resolve().parents[1]


def cgroup(tmp_path, files: dict) -> str:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


@pytest.mark.parametrize("files,cores", [
    ({"cpu.max": "200000 100000\n"}, 2.0),                 # v2: 2 cores
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),                   # v2: unlimited
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.0),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),     # v1: unlimited
    ({}, None),                                            # no cgroup files at all
])
def test_the_cgroup_quota_is_read_in_cores(tmp_path, files, cores):
    assert cgroup_cpu_limit(cgroup(tmp_path, files)) == cores


def test_threads_follow_the_quota_the_flag_and_the_environment(tmp_path, monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    n, why = available_cpus(cgroup(tmp_path, {"cpu.max": "100000 100000\n"}))
    assert n == 1 and "quota 1 cores" in why
    n, why = available_cpus(cgroup(tmp_path / "wide", {"cpu.max": "6400000 100000\n"}))  # quota above the mask
    assert n == affinity and "affinity" in why
    monkeypatch.setenv("HIERATOK_THREADS", "3")
    assert thread_count() == (3, "set by $HIERATOK_THREADS")
    assert thread_count(5)[0] == 5
    with pytest.raises(ValueError, match="at least 1"):
        thread_count(0)  # a flag of 0 is refused, not read as "unset"
    monkeypatch.setenv("HIERATOK_THREADS", "many")
    with pytest.raises(ValueError, match="whole number"):
        thread_count()


def test_training_threads_share_the_quota_among_processes_unless_omp_says(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    quota3 = cgroup(tmp_path, {"cpu.max": "300000 100000\n"})
    n, why = training_threads(1, quota3)
    assert n == min(3, len(os.sched_getaffinity(0))) and why == available_cpus(quota3)[1]
    n, why = training_threads(2, quota3)
    assert n == max(1, min(3, len(os.sched_getaffinity(0))) // 2) and why.endswith("shared by 2 processes")
    assert training_threads(64, quota3)[0] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert training_threads(1, quota3) == (1, "set by $OMP_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    n, why = training_threads(1, quota3)
    assert n is None and "'lots' is not a number" in why


def test_threads_running_elsewhere_are_counted_and_oversubscription_is_said(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\nprocs_running 4\nprocs_blocked 0\n")
    assert running_elsewhere(samples=3, interval=0, stat=str(stat)) == 3.0  # the reader itself is not counted
    stat.write_text("cpu  1 2 3\n")
    assert running_elsewhere(samples=1, stat=str(stat)) is None
    assert running_elsewhere(samples=1, stat=str(tmp_path / "missing")) is None
    # a real busy process: seen from here
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        __import__("time").sleep(0.5)
        assert running_elsewhere() >= 1
    finally:
        busy.kill()
        busy.wait()
    warning = oversubscription_warning(threads=2, cores=2, others=2.0)
    assert "2 other thread(s)" in warning and "OMP_NUM_THREADS" in warning
    assert oversubscription_warning(threads=1, cores=2, others=1.0) is None  # one core each
    assert oversubscription_warning(threads=2, cores=2, others=0.0) is None
    assert oversubscription_warning(threads=2, cores=2, others=None) is None  # unknown: nothing said


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is not installed")
def test_threads_follow_taskset():
    code = "from hieratok.perf import available_cpus, machine_cpus; print(available_cpus()[0], machine_cpus())"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    # the pinned process's threads follow its one core; the oversubscription check counts running threads
    # machine-wide, so it compares them with the machine's cores (two runs pinned a core each share nothing)
    assert out.split() == ["1", str(machine_cpus())]


def test_machine_cpus_are_capped_by_the_cgroup_quota(tmp_path):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two cores to see a quota below them")
    assert machine_cpus(cgroup(tmp_path, {"cpu.max": "100000 100000\n"})) == 1
    assert machine_cpus(cgroup(tmp_path / "none", {"cpu.max": "max 100000\n"})) == os.cpu_count()


def test_importing_the_app_writes_nothing_into_the_package(tmp_path):
    package = ROOT / "hieratok"
    for stub in package.rglob("*.pyi"):  # left by an older version of the app
        stub.unlink()
    before = sorted(p.relative_to(package) for p in package.rglob("*") if "__pycache__" not in p.parts)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONDONTWRITEBYTECODE": "1"}
    subprocess.run([sys.executable, "-c", "import hieratok.explorer.components as ui; ui.unchecked(ui.gr.Checkbox)"],
                   check=True, env=env, cwd=tmp_path)
    after = sorted(p.relative_to(package) for p in package.rglob("*") if "__pycache__" not in p.parts)
    assert after == before


def test_the_staged_space_starts_as_a_space_does_and_serves(tmp_path, app_assets, photo):
    """app/deploy.py --stage: only what a Space needs; started from the staged root with `python app.py` by an
    interpreter that sees site-packages but neither the repository nor the editable install (`-S` skips the
    .pth files that hold the editable finder), it serves a reconstruction through gradio_client."""
    import site
    import time
    import urllib.request

    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file
    from PIL import Image

    from app import deploy
    from hieratok.explorer.server import free_port
    from tests.app_fixtures import FAMILY_LABELS

    staged = tmp_path / "space"
    deploy.main(["me/hieratok-explorer", "--stage", str(staged), "--assets", str(app_assets), "--dry-run"])
    files = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert {"app.py", "README.md", "requirements.txt", "hieratok/__init__.py"} <= files
    for link in re.findall(r"\]\((app/screenshots/[^)]+)\)", (staged / "README.md").read_text()):
        assert link in files, f"the README shows {link}, which is not staged"
    assert not any(part in {".venv", "runs", "build", "__pycache__"} for f in files for part in f.split("/"))
    assert not any(f.endswith((".pyc", ".pyi")) for f in files)
    readme = (staged / "README.md").read_text()
    front = readme.split("\n---\n", 1)[0]
    for key in ("sdk: gradio", "sdk_version:", "python_version:", "app_file: app.py", "license:",
                "short_description:"):
        assert key in front
    reqs = (staged / "requirements.txt").read_text()
    assert "download.pytorch.org/whl/cpu" in reqs and "+cpu" in reqs
    for training_only in ("accelerate", "lpips", "torchvision", "torch-fidelity", "tqdm", "pytest", "playwright"):
        assert training_only not in reqs

    # offline (as here), the upload stops with a message that keeps the staged tree and says how to upload it
    with pytest.raises(SystemExit, match=r"could not upload to the space repo me/hieratok-explorer(.|\n)*hf upload"):
        deploy.main(["me/hieratok-explorer", "--stage", str(tmp_path / "again"), "--assets", str(app_assets)])
    assert (tmp_path / "again" / "app.py").exists()

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=os.pathsep.join(site.getsitepackages()), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", GRADIO_SERVER_PORT=str(port), OMP_NUM_THREADS="1")
    log = open(tmp_path / "space.log", "w")
    proc = subprocess.Popen([sys.executable, "-S", "app.py"], cwd=staged, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(600):
            assert proc.poll() is None, (tmp_path / "space.log").read_text()
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        assert f"from {staged / 'hieratok'}" in (tmp_path / "space.log").read_text()
        def reconstruct(_):
            client = Client(url, verbose=False)
            return client.predict(FAMILY_LABELS["cifar10"], handle_file(photo), "HieraTok", False, "nearest",
                                  api_name="/reconstruct")

        # the same upload from four clients at once: every image of every answer arrives whole and decodes
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(reconstruct, range(4)))
        for _, gallery, _, final, diff, _, text in answers:
            assert len(gallery) == 5 and "compression" in text
            for path in [g["image"] for g in gallery] + [final, diff]:
                with Image.open(path) as im:
                    im.load()
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_assets_from_a_hub_repo_offline_say_what_to_do(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.run([sys.executable, str(ROOT / "app" / "main.py"), "--assets", "someorg/hieratok-assets"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "someorg/hieratok-assets" in proc.stderr and "hf download someorg/hieratok-assets" in proc.stderr
    assert "Traceback" not in proc.stderr
    # a path that is no folder is refused the same way, before anything reaches for the Hub (in-process: a second app
    # start would cost the suite another 10-14 s of imports)
    from hieratok.explorer.models import AppError, resolve_assets
    for spec in (str(tmp_path / "nowhere"), "nowhere.safetensors", "./org/name"):
        with pytest.raises(AppError, match="no such folder"):
            resolve_assets(spec)


def test_a_cached_output_image_is_never_rewritten_in_place(tmp_path):
    """The same image returned to two requests: the second finds the first's file whole and leaves it alone
    (Gradio's own save_pil_to_cache rewrote it while it was being served)."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio import processing_utils
    from PIL import Image

    from hieratok.explorer.components import save_pil_to_cache_atomically, use_atomic_image_cache
    use_atomic_image_cache()
    assert processing_utils.save_pil_to_cache is save_pil_to_cache_atomically
    img = Image.new("RGB", (64, 64), (10, 200, 30))
    first = Path(save_pil_to_cache_atomically(img, str(tmp_path)))
    inode, mtime = first.stat().st_ino, first.stat().st_mtime_ns
    with ThreadPoolExecutor(8) as pool:
        paths = set(pool.map(lambda _: save_pil_to_cache_atomically(img, str(tmp_path)), range(32)))
    assert paths == {str(first)}
    assert (first.stat().st_ino, first.stat().st_mtime_ns) == (inode, mtime)
    assert not list(tmp_path.rglob("*.tmp"))
    with Image.open(first) as im:
        assert im.size == (64, 64)


def test_a_space_can_take_its_weights_from_a_model_repo(tmp_path, app_assets):
    from app import deploy
    staged = tmp_path / "space"
    deploy.main(["me/explorer", "--stage", str(staged), "--models", "me/weights", "--dry-run"])
    assert not (staged / "assets").exists()
    assert 'main(default_assets="me/weights")' in (staged / "app.py").read_text()
    assert "models:\n- me/weights" in (staged / "README.md").read_text().split("\n---\n", 1)[0]
    with pytest.raises(SystemExit, match="--models must be a Hub model repo"):
        deploy.main(["me/explorer", "--stage", str(tmp_path / "x"), "--models", "weights", "--dry-run"])


def test_publish_stages_a_model_set_whose_cards_name_the_json_metrics(tmp_path, app_assets):
    """train/publish.py on the tiny assets: the app's layout (the app loads it as --assets), each checkpoint's card
    with its numbers from the evaluation JSON, its rows of the family card, license and paper; offline, the upload
    stops with the `hf upload` command."""
    import json

    from hieratok.explorer.models import Catalog
    from tests.app_fixtures import FAMILY_LABELS
    from train import publish
    assets = tmp_path / "assets"
    shutil.copytree(app_assets, assets)
    (assets / "eval").mkdir()
    ci = {"mean": 31.2345, "ci95": 0.0512}
    report = {"data": "cifar10/test", "images": 100, "notes": {"fd": "FD-cls (test)", "fd_name": "FD-cls"},
              "classifier": {"accuracy": {"mean": 0.859, "ci95": 0.007}, "images": 100},
              "tokenizers": {"hieratok": {"scales": {"16x16": {"pixels": 32, "psnr": ci,
                                                               "ssim": {"mean": 0.95, "ci95": 0.001}}},
                                          "rfd": 3.85, "finest_psnr_minus_linear": {**ci, "mean": -0.18,
                                                                                    "reference": "linear-pca-C4"},
                                          "finest_psnr_minus_baseline": {"mean": 0.1181, "ci95": 0.0121,
                                                                         "reference": "singlescale"}}},
              "generators": {"hieratok": {"dit": "assets/dit-hieratok-cifar10", "guidance": 2.0, "sampler_steps": 15,
                                          "samples": 500, "gfd": 82.41, "class_accuracy": {"mean": 0.42,
                                                                                           "ci95": 0.043}}}}
    (assets / "eval" / "cifar10.json").write_text(json.dumps(report))
    (assets / "eval" / "cifar10.md").write_text("table\n")
    (assets / "cards").mkdir()
    (assets / "cards" / "cifar10.md").write_text(
        "# card\n\n| checkpoint | params | run |\n|---|---:|---|\n| hieratok-cifar10 | 1M | hieratok-s1 |\n"
        "|  |  | hieratok-s2 |\n| dit-hieratok-cifar10 | 7M | dit-hieratok |\n\nmore\n")
    dest = tmp_path / "weights"
    publish.main(["me/weights", "--family", "cifar10", "--assets", str(assets), "--stage", str(dest), "--dry-run"])
    card = (dest / "hieratok-cifar10" / "README.md").read_text()
    assert "31.23 ± 0.05" in card and "-0.18 ± 0.05" in card and "rFD-cls: 3.85" in card
    assert "minus the singlescale tokenizer's, paired per image: 0.12 ± 0.01 dB" in card
    assert "| hieratok-s1 |" in card and "| hieratok-s2 |" in card and "dit-hieratok |" not in card
    assert "license: other" in card and "arXiv 2509.23736" in card and "More Information Needed" not in card
    dit_card = (dest / "dit-hieratok-cifar10" / "README.md").read_text()
    assert "| 2 | 15 | 500 | 82.4 | 42.0 ± 4.3% |" in dit_card
    assert "85.9 ± 0.7%" in (dest / "classifier-cifar10" / "README.md").read_text()
    assert (dest / "eval" / "cifar10.json").exists() and (dest / "cards" / "cifar10.md").exists()
    assert not (dest / "hieratok-imagenette128").exists()                  # only the family asked for
    assert Catalog(dest).labels == [FAMILY_LABELS["cifar10"]]              # the app serves the staged tree
    with pytest.raises(SystemExit, match=r"could not upload to the model repo me/weights(.|\n)*--repo-type model"):
        publish.main(["me/weights", "--family", "cifar10", "--assets", str(assets), "--stage", str(tmp_path / "w2")])
