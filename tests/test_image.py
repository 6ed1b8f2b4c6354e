"""The upload loader against a corpus of awkward files: each gets a sensible result or a clear ImageError."""
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from hieratok import ImageError, load_image


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def photo(w=64, h=48) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 128)], -1).astype(np.uint8)
    return Image.fromarray(arr)


def bomb_png(w=100_000, h=100_000) -> bytes:
    """A tiny PNG whose header declares w x h pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def exif_rotated() -> bytes:
    img = photo(64, 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    return png_bytes(img, format="JPEG", exif=exif)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 40), (i * 100, 50, 200 - i * 60)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


GOOD = {
    "rgba": (png_bytes(Image.new("RGBA", (32, 32), (255, 0, 0, 0))), "transparency composited on white"),
    "palette": (png_bytes(photo().convert("P")), "palette"),
    "grayscale": (png_bytes(photo().convert("L")), "grayscale"),
    "16-bit": (png_bytes(Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))), "16-bit"),
    "cmyk": (png_bytes(photo().convert("CMYK"), format="JPEG"), "CMYK"),
    "one-pixel": (png_bytes(Image.new("RGB", (1, 1), (10, 200, 30))), "resized from 1 x 1"),
    "animated-gif": (animated_gif(), "first of 3 frames"),
    "exif-rotated": (exif_rotated(), "EXIF orientation"),
    "large-photo": (png_bytes(photo(1200, 900), format="JPEG"), "resized from 1200 x 900"),
}
BAD = {
    "empty": (b"", "empty"),
    "text": (b"hello, this is a text file\n" * 20, "not an image"),
    "corrupt": (b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50, "corrupt|not an image"),
    "truncated-jpeg": (png_bytes(photo(200, 200), format="JPEG")[:400], "corrupt or truncated"),
    "bomb": (bomb_png(), "MP; the limit|decompression bomb"),
}


@pytest.mark.parametrize("kind", list(GOOD))
def test_awkward_but_valid_images_load_and_say_what_happened(kind):
    data, note = GOOD[kind]
    out = load_image(data, 32)
    assert out.tensor.shape == (3, 32, 32) and out.tensor.dtype == torch.float32
    assert -1 <= out.tensor.min() and out.tensor.max() <= 1
    assert any(note in n for n in out.notes), out.notes


def test_transparent_pixels_become_white_and_exif_rotation_is_applied():
    assert torch.allclose(load_image(GOOD["rgba"][0], 32).tensor, torch.ones(3, 32, 32))
    assert load_image(exif_rotated(), 32).original_size == (32, 64)  # 64 x 32 stored, shown rotated


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_files_raise_a_clear_error(kind):
    data, message = BAD[kind]
    with pytest.raises(ImageError, match=message):
        load_image(data, 32)


def test_byte_limit_and_missing_path(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x00" * 2048)
    with pytest.raises(ImageError, match="limit is"):
        load_image(big, 32, max_bytes=1024)
    with pytest.raises(ImageError, match="could not be found"):
        load_image(tmp_path / "missing.png", 32)
    with pytest.raises(ImageError, match="no image"):
        load_image(None, 32)


@pytest.mark.parametrize("w,h", [(1_000_000, 1), (1, 2_000_000), (500_000, 1)])
def test_extreme_strips_are_refused_with_a_message_and_bounded_memory(w, h):
    """A 3 KB strip PNG once made a 32,000,000 x 32 intermediate (5 GB); now it is refused before conversion, and
    a separate process measures the peak memory of trying."""
    import subprocess
    import sys
    code = f"""
import io, resource, sys
from PIL import Image
from hieratok import ImageError, load_image
buf = io.BytesIO(); Image.new("RGB", ({w}, {h}), (200, 10, 10)).save(buf, format="PNG"); data = buf.getvalue()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_image(data, 128)
    print("LOADED")
except ImageError as e:
    print("ERROR", e)
print("PEAK_MB", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1])).stdout
    assert "ERROR" in out and "aspect ratio over 20:1" in out, out
    peak = float(out.split("PEAK_MB")[1])
    assert peak < 100, out  # the decoded strip is 3-6 MB; nothing near it is allocated on top


def test_a_tall_photo_is_cropped_to_its_centre_square_before_resizing():
    arr = np.zeros((300, 100, 3), np.uint8)
    arr[100:200] = 255  # the middle third is white: the centre square
    loaded = load_image(png_bytes(Image.fromarray(arr)), 32)
    assert torch.allclose(loaded.tensor, torch.ones(3, 32, 32)) and "center crop" in loaded.notes[-1]
