"""HieraTok: a multi-scale ViT image tokenizer with a scale-causal decoder, and a class-conditional DiT.

Subpackages with optional dependencies: `hieratok.training` (the `train` extra: accelerate, torchvision, ...) and
`hieratok.explorer` (the `app` extra: gradio, plotly, umap-learn); importing `hieratok` loads neither.
"""
from .config import (
                     DIT_PRESETS,
                     TOKENIZER_PRESETS,
                     VARIANT_BUILDERS,
                     VARIANTS,
                     DiTConfig,
                     HieraTokConfig,
                     dit_config,
                     tokenizer_config,
)
from .dit import DiT
from .hub import CheckpointError
from .image import ImageError, load_image, to_pil
from .latent import (
                     INTERPOLATIONS,
                     compute_latent_stats,
                     generate,
                     interpolate,
                     place_by_neighbours,
                     sample_plan,
                     score_samples,
)
from .latent_map import LatentMap
from .scales import MASK_KINDS, ScaleLayout
from .tokenizer import DecodeOutput, DiagonalGaussian, HieraTok

__version__ = "0.3.0"
__all__ = [
    "CheckpointError", "DIT_PRESETS", "DecodeOutput", "DiT", "DiTConfig", "DiagonalGaussian", "HieraTok",
    "HieraTokConfig", "INTERPOLATIONS", "ImageError", "LatentMap", "MASK_KINDS", "ScaleLayout", "TOKENIZER_PRESETS",
    "VARIANTS", "VARIANT_BUILDERS", "compute_latent_stats", "dit_config", "generate", "interpolate", "load_image",
    "place_by_neighbours", "sample_plan", "score_samples", "to_pil", "tokenizer_config",
]
