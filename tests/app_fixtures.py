"""A tiny, randomly initialised set of app assets and a live app server on a free local port (for app tests)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hieratok import DiT, HieraTok, dit_config, tokenizer_config
from hieratok.classifier import Classifier, ClassifierConfig

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TINY = dict(enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=48, dec_depth=2, dec_heads=3)


def make_assets(root: Path, data: Path) -> Path:
    """Tokenizers, DiTs and classifier (random weights), the latent map (through train/latent_map.py), examples."""
    torch.manual_seed(0)
    assets = root / "assets"
    for variant, folder, dit_folder in (("hieratok", "hieratok-cifar10", "dit-hieratok-cifar10"),
                                        ("singlescale", "singlescale-cifar10", "dit-singlescale-cifar10")):
        tok = HieraTok(tokenizer_config("cifar10", variant, **TINY))
        tok.set_latent_stats(torch.zeros(4), torch.ones(4), count=1)
        tok.save_pretrained(assets / folder)
        DiT(dit_config("cifar10", dim=64, depth=1, heads=2)).save_pretrained(assets / dit_folder, dtype=torch.float16)
    Classifier(ClassifierConfig(width=8, class_names=CLASSES)).save_pretrained(assets / "classifier-cifar10")
    rng = np.random.default_rng(0)
    for c in CLASSES[:2]:
        (data / c).mkdir(parents=True, exist_ok=True)
        for i in range(20):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / c / f"{i}.png")
    from train import latent_map
    latent_map.main(["--data", str(data), "--num-images", "40", "--tokenizer",
                     f"HieraTok={assets / 'hieratok-cifar10'}", "--tokenizer",
                     f"Single-scale={assets / 'singlescale-cifar10'}", "--output", str(assets / "latent-map-cifar10")])
    (assets / "examples").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(assets / "examples" / f"ex{i}.png")
    return assets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    def __init__(self, assets: Path, log: Path):
        self.assets = assets
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "app" / "main.py"), "--assets", str(assets),
                                      "--port", str(self.port)], cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}; see {log}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the app did not answer on {self.url} within 120 s; see {log}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
