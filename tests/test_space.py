"""Hosting: the thread count follows the CPU quota, and importing the app writes nothing into the package."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hieratok.perf import available_cpus, cgroup_cpu_limit, thread_count

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
    monkeypatch.setenv("HIERATOK_THREADS", "many")
    with pytest.raises(ValueError, match="whole number"):
        thread_count()


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is not installed")
def test_threads_follow_taskset():
    code = "from hieratok.perf import available_cpus; print(available_cpus()[0])"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "1"


def test_importing_the_app_writes_nothing_into_the_package(tmp_path):
    package = ROOT / "hieratok"
    for stub in package.rglob("*.pyi"):  # left by an older version of the app
        stub.unlink()
    before = sorted(p.relative_to(package) for p in package.rglob("*") if "__pycache__" not in p.parts)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONDONTWRITEBYTECODE": "1"}
    subprocess.run([sys.executable, "-c", "import hieratok.explorer.ui as ui; ui.unchecked(ui.gr.Checkbox)"],
                   check=True, env=env, cwd=tmp_path)
    after = sorted(p.relative_to(package) for p in package.rglob("*") if "__pycache__" not in p.parts)
    assert after == before
