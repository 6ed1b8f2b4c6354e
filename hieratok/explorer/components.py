"""The Gradio pieces the app is built from, adapted where Gradio's defaults do not serve it: input components that
hand the views raw values (the views check them), an upload that hands our loader the raw file, image caching that
is safe under concurrent identical outputs, and the example pictures."""
from __future__ import annotations

import base64
import contextlib
import os
import threading
from pathlib import Path

import gradio as gr


@contextlib.contextmanager
def no_stub_files():
    """Define Gradio component subclasses without Gradio writing a `.pyi` stub beside this module: its
    ComponentMeta does so for every subclass (meant for custom-component packages), which writes into the installed
    package at import time and fails in a read-only install. Our subclasses are templates of built-in components
    and need no stub."""
    import gradio.component_meta as meta
    original = meta.create_or_modify_pyi
    meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        meta.create_or_modify_pyi = original


def save_pil_to_cache_atomically(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """Gradio's `processing_utils.save_pil_to_cache`, made safe for concurrent identical outputs.

    Gradio stores every output image under a path named by its content's hash and writes it in place, so two
    requests returning the same image (the same upload from two users) rewrote a file while it was being served:
    the client got a response cut short ("Too little data for declared Content-Length"). Here a finished file is
    never rewritten, and a new one appears whole (written under a temporary name, then renamed), as Gradio already
    does for files it copies (`save_file_to_cache`)."""
    from gradio import processing_utils
    data = processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    path = (folder / f"{name}.{format}").resolve()
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return str(path)


def use_atomic_image_cache() -> None:
    """Route Gradio's image caching through `save_pil_to_cache_atomically` (process-wide, idempotent)."""
    from gradio import processing_utils
    processing_utils.save_pil_to_cache = save_pil_to_cache_atomically


with no_stub_files():
    class UploadImage(gr.Image):
        """gr.Image (upload and paste) that hands our loader the raw file instead of decoding it first, so that
        corrupt, exotic or oversized files get our clear messages rather than a generic decoding error."""

        is_template = True  # rendered by the frontend as a plain Image

        @classmethod
        def get_component_class_id(cls) -> str:
            return gr.Image.get_component_class_id()  # the frontend looks the component up by this id

        def preprocess(self, payload):
            if payload is None:
                return None
            if payload.url and payload.url.startswith("data:"):
                return base64.b64decode(payload.url.split(",", 1)[1])
            return payload.path


def unchecked(component: type) -> type:
    """A Gradio input component whose value reaches the view as sent: the views check every input against the
    loaded model and answer with a message naming the parameter and its range or choices (Gradio's own checks
    name neither, log a traceback, and round 1.5 to 2 silently)."""

    with no_stub_files():
        class Unchecked(component):
            is_template = True  # rendered by the frontend as the base component

            @classmethod
            def get_component_class_id(cls) -> str:
                return component.get_component_class_id()

            def preprocess(self, payload):
                return payload

    Unchecked.__name__ = Unchecked.__qualname__ = component.__name__
    return Unchecked


Slider, Number, Radio = unchecked(gr.Slider), unchecked(gr.Number), unchecked(gr.Radio)


def upload_image(label: str) -> UploadImage:
    return UploadImage(label=label, type="filepath", image_mode=None, sources=["upload", "clipboard"])


PACKAGE_PHOTOS = (("skimage", "data", ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                                         "motorcycle_left.png")),
                  ("sklearn.datasets", "images", ("china.jpg", "flower.jpg")))


def example_images(assets: Path) -> list[str]:
    """Pictures that need no dataset: public-domain photographs shipped inside installed packages (scikit-image,
    scikit-learn), then our CIFAR-10 DiT's samples (assets/examples)."""
    import importlib
    photos = []
    for module, folder, names in PACKAGE_PHOTOS:
        try:
            base = Path(importlib.import_module(module).__file__).parent / folder
        except ImportError:
            continue
        photos += [str(base / n) for n in names if (base / n).exists()]
    ours = sorted(str(p) for p in (assets / "examples").glob("*.png")) if (assets / "examples").exists() else []
    return photos + ours
