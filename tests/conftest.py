import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]

# two threads, the machine this suite is sized for, unless $OMP_NUM_THREADS says (the suite beside a training:
# docs/training.md, "Runs side by side")
if not os.environ.get("OMP_NUM_THREADS", "").isdigit():
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---- the live app (test_app.py, test_browser.py share one set of tiny assets and one server) ------------------
@pytest.fixture(scope="session")
def app_assets(tmp_path_factory):
    """One set of tiny app assets for every test that serves the app (the live server, the staged Space)."""
    from tests.app_fixtures import make_assets
    return make_assets(tmp_path_factory.mktemp("app"), tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def app_server(app_assets, tmp_path_factory):
    from hieratok.explorer.server import AppServer
    assets = app_assets
    # the README's entry point, as a user starts it
    server = AppServer(assets, tmp_path_factory.mktemp("log") / "app.log",
                       command=[sys.executable, str(ROOT / "app" / "main.py")], env={"OMP_NUM_THREADS": "1"})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def photo(tmp_path_factory):
    """A 300 x 200 JPEG upload."""
    from PIL import Image
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    Image.new("RGB", (300, 200), (30, 120, 200)).save(path)
    return str(path)
