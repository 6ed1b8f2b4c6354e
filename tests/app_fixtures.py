"""A tiny, randomly initialised set of app assets and a live app server on a free local port (for app tests)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hieratok import DiT, HieraTok, dit_config, tokenizer_config
from hieratok.classifier import Classifier, ClassifierConfig

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PHOTO_CLASSES = ("tench", "English springer", "cassette player", "chain saw", "church", "French horn",
                 "garbage truck", "gas pump", "golf ball", "parachute")
# the tiny decoders differ between the families (2 layers x 3 heads, 3 layers x 2 heads), so the tests see every
# control follow the picked model
TINY = {"cifar10": dict(enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=48, dec_depth=2, dec_heads=3),
        "imagenette128": dict(enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=48, dec_depth=3, dec_heads=2)}
FAMILY_LABELS = {"imagenette128": "Photos (ImageNet subset, 128 px)", "cifar10": "CIFAR-10 (32 px)"}


def make_family(assets: Path, data: Path, preset: str, classes: tuple[str, ...]):
    """One family's tokenizers, DiTs and classifier (random weights) and its latent map (train/latent_map.py)."""
    for variant in ("hieratok", "singlescale"):
        tok = HieraTok(tokenizer_config(preset, variant, **TINY[preset]))
        C = tok.config.latent_channels
        tok.set_latent_stats(torch.zeros(C), torch.ones(C), count=1)
        tok.save_pretrained(assets / f"{variant}-{preset}")
        DiT(dit_config(preset, latent_channels=C, dim=64, depth=1, heads=2, class_names=classes)).save_pretrained(
            assets / f"dit-{variant}-{preset}", dtype=torch.float16)
    size = tok.config.image_size
    Classifier(ClassifierConfig(width=8, image_size=min(size, 64), class_names=classes)).save_pretrained(
        assets / f"classifier-{preset}")
    rng = np.random.default_rng(0)
    for c in range(2):
        (data / preset / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(20):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                data / preset / f"c{c}" / f"{i}.png")
    from train import latent_map
    latent_map.main(["--data", str(data / preset), "--num-images", "40", "--tokenizer",
                     f"HieraTok={assets / f'hieratok-{preset}'}", "--tokenizer",
                     f"Single-scale={assets / f'singlescale-{preset}'}",
                     "--output", str(assets / f"latent-map-{preset}")])


def make_assets(root: Path, data: Path) -> Path:
    """Both families' models (random weights), latent maps and examples."""
    torch.manual_seed(0)
    assets = root / "assets"
    make_family(assets, data, "imagenette128", PHOTO_CLASSES)
    make_family(assets, data, "cifar10", CLASSES)
    rng = np.random.default_rng(0)
    (assets / "examples").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(assets / "examples" / f"ex{i}.png")
    return assets
