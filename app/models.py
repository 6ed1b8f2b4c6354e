"""The shipped checkpoints, loaded lazily and once, shared read-only by all requests."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from hieratok import CheckpointError, DiT, HieraTok
from hieratok.classifier import Classifier

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ASSETS = ROOT / "assets"

# display name -> folder in assets/
TOKENIZERS = {"HieraTok": "hieratok-cifar10", "Single-scale": "singlescale-cifar10"}
DITS = {"HieraTok": "dit-hieratok-cifar10", "Single-scale": "dit-singlescale-cifar10"}
CLASSIFIER = "classifier-cifar10"
LATENT_MAP = "latent-map-cifar10"


class AppError(RuntimeError):
    """Something the person using the app should read (shown as an error message, the server keeps serving)."""


@dataclass
class LatentMap:
    labels: torch.Tensor                          # (N,)
    class_names: list[str]
    latents: dict[str, dict[int, torch.Tensor]]   # model -> scale -> (N, C, s, s)
    coords: dict[str, dict[int, torch.Tensor]]    # model -> scale -> (N, 2) UMAP embedding
    density: dict                                 # model -> scale -> {"gini", "entropy"}
    info: dict


class ModelStore:
    def __init__(self, assets: Path = DEFAULT_ASSETS):
        self.assets = Path(assets)
        self._cache: dict[str, object] = {}
        self._lock = threading.Lock()

    def _load(self, key: str, loader):
        with self._lock:  # load once, even when the first requests arrive together
            if key not in self._cache:
                self._cache[key] = loader()
            return self._cache[key]

    def _checkpoint(self, cls, folder: str, what: str):
        path = self.assets / folder
        if not path.exists():
            raise AppError(f"{what} weights are missing: {path} does not exist. Train them with the scripts in "
                           f"train/ (see README) or start the app with --assets pointing at your checkpoints.")

        def load():
            try:
                return cls.from_pretrained(path).eval().requires_grad_(False)
            except CheckpointError as e:
                raise AppError(f"{what} weights could not be loaded: {e}") from e
        return self._load(folder, load)

    def available(self, folder: str) -> bool:
        return (self.assets / folder).exists()

    def tokenizer(self, name: str) -> HieraTok:
        return self._checkpoint(HieraTok, TOKENIZERS[name], f"{name} tokenizer")

    def dit(self, name: str) -> DiT:
        return self._checkpoint(DiT, DITS[name], f"{name} DiT")

    def classifier(self) -> Classifier:
        return self._checkpoint(Classifier, CLASSIFIER, "classifier")

    def class_names(self) -> list[str]:
        if self.available(CLASSIFIER):
            return list(self.classifier().config.class_names)
        return [str(i) for i in range(10)]

    def latent_map(self) -> LatentMap:
        path = self.assets / LATENT_MAP / "latents.safetensors"
        if not path.exists():
            raise AppError(f"the latent map is missing ({path}); make it with train/latent_map.py (see README)")

        def load():
            tensors, latents, coords = {}, {}, {}
            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
                for key in f.keys():
                    tensors[key] = f.get_tensor(key)
            info = json.loads(meta["info"])
            for key, t in tensors.items():
                if key == "labels":
                    continue
                model, kind, scale = key.split("/")
                (latents if kind == "latent" else coords).setdefault(model, {})[int(scale)] = t.float()
            return LatentMap(tensors["labels"].long(), info["class_names"], latents, coords, info["density"], info)
        return self._load("latent_map", load)
