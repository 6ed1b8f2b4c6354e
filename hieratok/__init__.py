"""HieraTok: a multi-scale ViT image tokenizer with a scale-causal decoder, and a class-conditional DiT."""
from .config import (DIT_PRESETS, TOKENIZER_PRESETS, VARIANTS, DiTConfig, HieraTokConfig, dit_config,
                     tokenizer_config)
from .dit import DiT
from .hub import CheckpointError
from .scales import MASK_KINDS, ScaleLayout
from .tokenizer import DecodeOutput, DiagonalGaussian, HieraTok
from .latent import INTERPOLATIONS, compute_latent_stats, generate, interpolate, place_by_neighbours
from .image import ImageError, load_image, to_pil
