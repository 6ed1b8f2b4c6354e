"""Turning whatever a person uploads into a model input, and model outputs back into pictures.

`load_image` accepts any file PIL can read — any size, EXIF-rotated, RGBA / LA / palette with transparency
(composited on white), grayscale, 16-bit and 32-bit, CMYK, animated (first frame) — and says what it did. Corrupt
files, non-images, empty files, files over the byte limit, decompression bombs and extreme aspect ratios raise
`ImageError` with a message meant for the person who uploaded them.

It is the one loader of the project: the app, training (`hieratok.training.data`) and evaluation all see an image the
same way. The centred square is cropped *before* anything is converted or resized, so no intermediate is ever larger
than the decoded source, whatever its shape.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_BYTES = 20 * 1024 * 1024          # 20 MB per upload
MAX_PIXELS = 40_000_000               # ~ 6300 x 6300; larger is refused before decoding (decompression bombs)
MAX_ASPECT = 20                       # long side / short side; stranger strips are refused with a message


class ImageError(ValueError):
    """An upload that cannot be used; the message says why in plain words."""


@dataclass
class LoadedImage:
    tensor: torch.Tensor              # (3, size, size) in [-1, 1]
    original_size: tuple[int, int]    # (width, height) after EXIF rotation
    notes: list[str] = field(default_factory=list)

    @property
    def pil(self) -> Image.Image:
        return to_pil(self.tensor)


def _to_rgb(img: Image.Image, notes: list[str]) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = (0.0, 65535.0) if mode.startswith("I;16") else (float(arr.min()), float(arr.max()))
        arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L")
        notes.append(f"{mode} ({'16-bit' if mode.startswith('I;16') else 'high bit-depth'}) scaled to 8-bit")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        notes.append("palette image converted to RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
        notes.append("transparency composited on white")
    elif img.mode == "CMYK":
        img = img.convert("RGB")
        notes.append("CMYK converted to RGB")
    elif img.mode in ("L", "1"):
        img = img.convert("RGB")
        notes.append("grayscale replicated to RGB")
    elif img.mode != "RGB":
        notes.append(f"{img.mode} converted to RGB")
        img = img.convert("RGB")
    return img


def load_image(source: str | os.PathLike | bytes, size: int, *, max_bytes: int = MAX_BYTES,
               max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """A file path or raw bytes -> a (3, size, size) tensor in [-1, 1]: short side resized (bicubic, antialiased)
    to `size`, then center-cropped."""
    if source is None:
        raise ImageError("no image was given: upload or choose one first")
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        try:
            n = os.path.getsize(source)
        except OSError:
            raise ImageError("the uploaded file could not be found on the server; please upload it again") from None
        if n > max_bytes:
            raise ImageError(f"the file is {n / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
        with open(source, "rb") as f:
            data = f.read()
    if len(data) == 0:
        raise ImageError("the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"the file is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
    return from_bytes(data, size, max_pixels=max_pixels)


def from_bytes(data: bytes, size: int, *, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Encoded image bytes -> LoadedImage (see `load_image`)."""
    notes: list[str] = []
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > max_pixels:
            raise ImageError(f"the image is {w} x {h} pixels ({w * h / 1e6:.0f} MP); the limit is "
                             f"{max_pixels / 1e6:.0f} MP")
        if max(w, h) > MAX_ASPECT * min(w, h):
            raise ImageError(f"the image is {w} x {h} pixels, an aspect ratio over {MAX_ASPECT}:1; crop it to "
                             f"something closer to a square first")
        if getattr(img, "n_frames", 1) > 1:
            notes.append(f"animated image: first of {img.n_frames} frames used")
            img.seek(0)
        img.load()
        orientation = img.getexif().get(0x0112, 1)  # EXIF Orientation
        if orientation not in (1, None):
            img = ImageOps.exif_transpose(img)
            notes.append(f"rotated according to its EXIF orientation ({orientation})")
        original = img.size
        if original[0] != original[1]:  # the centred square first: every later step works on at most this
            side = min(original)
            left, top = (original[0] - side) // 2, (original[1] - side) // 2
            img = img.crop((left, top, left + side, top + side))
        img = _to_rgb(img, notes)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
            crop = " with a center crop" if original[0] != original[1] else ""
            notes.append(f"resized from {original[0]} x {original[1]} to {size} x {size}{crop}")
        arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError("the image declares an enormous size (a decompression bomb?) and was refused") from None
    except UnidentifiedImageError:
        raise ImageError("this file is not an image format we can read (PNG, JPEG, GIF, WebP, BMP, TIFF, ...)") \
            from None
    except MemoryError:
        raise ImageError("the image is too large to decode on this server") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"the image file is corrupt or truncated ({e or type(e).__name__})") from None
    except Exception as e:  # any other decoder failure: still a readable message, never an empty one
        raise ImageError(f"the image could not be decoded ({type(e).__name__}: {e or 'no details'})") from None
    return LoadedImage(arr / 127.5 - 1.0, original, notes)


def to_pil(x: torch.Tensor, display_size: int | None = None, resample: str = "nearest") -> Image.Image:
    """(3, H, W) in [-1, 1] -> a PIL image, optionally upscaled for display (nearest keeps pixels visible)."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    img = Image.fromarray(arr, "RGB")
    if display_size and img.size[0] != display_size:
        method = Image.Resampling.NEAREST if resample == "nearest" else Image.Resampling.BICUBIC
        img = img.resize((display_size, display_size), method)
    return img
