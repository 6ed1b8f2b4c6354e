"""The latent map: latents of a set of images at every scale, their 2-D UMAP embeddings and latent densities,
per tokenizer — what the app's latent-space view shows (written by `train/latent_map.py`).

One safetensors file: `<model>/latent/<scale>` (N, C, s, s) float16, `<model>/umap/<scale>` (N, 2), `labels` (N,)
int16, and a JSON `info` entry in its metadata (class names, densities, the UMAP settings, where the images came
from). No images and no pickled UMAP object: a new image is placed by its nearest stored latents
(`hieratok.place_by_neighbours`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FILE_NAME = "latents.safetensors"


@dataclass
class LatentMap:
    labels: torch.Tensor                          # (N,) class indices
    class_names: list[str]
    latents: dict[str, dict[int, torch.Tensor]]   # model -> scale -> (N, C, s, s)
    coords: dict[str, dict[int, torch.Tensor]]    # model -> scale -> (N, 2) UMAP embedding
    density: dict                                 # model -> scale (str) -> {"gini", "entropy", "samples"}
    info: dict = field(default_factory=dict)      # anything else worth keeping (data, tokenizers, UMAP settings)
    _spectra: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _channels: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def spectrum(self, model: str, scale: int) -> dict | None:
        """`hieratok.metrics.latent_spectrum` of one stored map (4 x 4 and up; None below or when absent), computed
        once per map: the latents do not change, and a request should not pay for it again (0.4-0.6 s)."""
        from .metrics import map_spectrum
        key = (model, int(scale))
        if key not in self._spectra:
            self._spectra[key] = map_spectrum(self.latents.get(model, {}).get(key[1]))
        return self._spectra[key]

    def channels(self, model: str, scale: int) -> dict | None:
        """`hieratok.metrics.channel_participation` of one stored map (None when absent), computed once per map."""
        from .metrics import map_channels
        key = (model, int(scale))
        if key not in self._channels:
            self._channels[key] = map_channels(self.latents.get(model, {}).get(key[1]))
        return self._channels[key]

    def save(self, folder: str | Path) -> Path:
        """Write `<folder>/latents.safetensors` (latents stored as float16)."""
        tensors = {"labels": self.labels.to(torch.int16).contiguous()}
        for model, per_scale in self.latents.items():
            for s, z in per_scale.items():
                tensors[f"{model}/latent/{s}"] = z.half().contiguous()
                tensors[f"{model}/umap/{s}"] = self.coords[model][s].float().contiguous()
        info = {**self.info, "class_names": list(self.class_names), "num_images": len(self.labels),
                "density": self.density}
        path = Path(folder) / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"info": json.dumps(info)})
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "LatentMap":
        """Read a latent map folder (or its `latents.safetensors`); latents come back as float32."""
        path = Path(folder)
        path = path / FILE_NAME if path.is_dir() else path
        latents: dict = {}
        coords: dict = {}
        with safe_open(str(path), "pt") as f:
            info = json.loads((f.metadata() or {}).get("info", "{}"))
            labels = f.get_tensor("labels").long()
            for key in f.keys():
                if key == "labels":
                    continue
                model, kind, scale = key.rsplit("/", 2)
                (latents if kind == "latent" else coords).setdefault(model, {})[int(scale)] = f.get_tensor(key).float()
        extra = {k: v for k, v in info.items() if k not in ("class_names", "num_images", "density")}
        return cls(labels, info.get("class_names", []), latents, coords, info.get("density", {}), extra)
