"""Data for every trainer: any ImageFolder or torchvision's CIFAR-10, a deterministic resumable batch order,
per-sample flips derived from (seed, position), and unreadable files skipped and counted instead of crashing."""
from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from ..image import ImageError, load_image
from ..linear import PatchPCA

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset path that cannot be used; raised before training starts."""


def read_class_names(root: str, classes: list[str]) -> list[str]:
    """Readable class names: a `classes.json` ({folder: name}, e.g. WordNet id -> name) in the dataset folder or
    its parent, else the folder names themselves. A names file that lacks a class folder is an error."""
    for folder in (root, os.path.dirname(os.path.abspath(root))):
        path = os.path.join(folder, "classes.json")
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    names = json.load(f)
            except (OSError, ValueError) as e:
                raise DataError(f"{path}: not a readable JSON file ({e})") from None
            if not isinstance(names, dict):
                raise DataError(f"{path}: expected a JSON object mapping class folders to names")
            missing = [c for c in classes if c not in names]
            if missing:
                raise DataError(f"{path} has no name for the class folder(s) {missing[:5]}")
            return [str(names[c]) for c in classes]
    return list(classes)


class FolderImages(Dataset):
    """ImageFolder layout (root/<class>/<image>); item (index, flip) -> (image, label) or None if unreadable."""

    def __init__(self, root: str, image_size: int):
        if not os.path.isdir(root):
            raise DataError(f"dataset path {root!r} does not exist or is not a folder")
        try:
            self.classes, class_to_idx = find_classes(root)
        except FileNotFoundError as e:
            raise DataError(f"dataset path {root!r} has no class folders (expected root/<class>/<images>): {e}")
        self.samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if not self.samples:
            raise DataError(f"dataset path {root!r} has class folders but no images ({', '.join(IMG_EXTENSIONS)})")
        self.targets = [label for _, label in self.samples]
        self.image_size, self.root = image_size, root
        self.unreadable: dict[int, str] = {}  # index -> why, each file once
        self.class_names = read_class_names(root, self.classes)

    def __len__(self):
        return len(self.samples)

    def read(self, index: int) -> bytes | str:
        """The encoded image (or its path) for `hieratok.load_image`."""
        return self.samples[index][0]

    def __getitem__(self, item):
        index, flip = item if isinstance(item, tuple) else (item, False)
        try:  # the project's one loader: the app and evaluation see the same pixels
            x = load_image(self.read(index), self.image_size).tensor
        except ImageError as e:
            if index not in self.unreadable:  # named once, however often the file is drawn
                self.unreadable[index] = str(e)
                logger.warning(f"warning: skipping unreadable image {self.samples[index][0]}: {e}")
            return None  # skipped and counted by `collate`; the trainer reports the count
        return (x.flip(-1) if flip else x), self.targets[index]


class TorchvisionCIFAR10(FolderImages):
    """`--data cifar10:ROOT`: torchvision's CIFAR-10 (downloaded into ROOT where the internet is reachable)."""

    def __init__(self, root: str, image_size: int, train: bool = True):
        from torchvision.datasets import CIFAR10
        try:
            self.base = CIFAR10(root, train=train, download=True)
        except Exception as e:  # offline and not already there
            raise DataError(f"cifar10:{root}: could not load or download CIFAR-10 ({type(e).__name__}: {e}); "
                            f"pass an ImageFolder path with --data instead") from e
        self.classes, self.targets = self.base.classes, list(self.base.targets)
        self.class_names = list(self.classes)
        self.samples = [(f"{root}#{i}", t) for i, t in enumerate(self.targets)]
        self.image_size, self.root, self.unreadable = image_size, root, {}

    def read(self, index: int) -> bytes:
        buf = io.BytesIO()
        self.base[index][0].save(buf, format="PNG")
        return buf.getvalue()


class CachedImages(FolderImages):
    """A dataset decoded once into memory as uint8 pixels, served like the dataset itself ((index, flip) ->
    (image, label), None for an unreadable file): for a fast accelerator fed by few CPU cores, where reading and
    resizing files, not the model, sets the pace. Imagenette at 128 px takes 465 MB; for datasets that fit."""

    def __init__(self, ds: FolderImages, num_workers: int = 0, batch_size: int = 256):
        # no FolderImages.__init__: `ds` has listed the files already; its listing and names are shared
        self.classes, self.class_names, self.root = ds.classes, ds.class_names, getattr(ds, "root", None)
        self.samples, self.targets, self.image_size = ds.samples, ds.targets, ds.image_size
        self.pixels = torch.zeros(len(ds), 3, ds.image_size, ds.image_size, dtype=torch.uint8)
        readable = torch.zeros(len(ds), dtype=torch.bool)
        loader = DataLoader(_AsUint8(ds), batch_size=batch_size, num_workers=num_workers, collate_fn=list)
        for batch in loader:
            for index, pixels in batch:
                if pixels is not None:
                    self.pixels[index], readable[index] = pixels, True
        # the loader processes named each unreadable file; the reason stays with them
        self.unreadable = {int(i): "unreadable (left out when the images were cached)"
                           for i in (~readable).nonzero().flatten()}

    def __getitem__(self, item):
        index, flip = item if isinstance(item, tuple) else (item, False)
        if index in self.unreadable:
            return None
        x = self.pixels[index].float() / 127.5 - 1  # exact: the loader's values are k / 127.5 - 1
        return (x.flip(-1) if flip else x), self.targets[index]


class _AsUint8(Dataset):
    """(index, uint8 pixels or None) of each item of an image dataset, for caching."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, index):
        item = self.ds[index]
        return index, None if item is None else (item[0] * 127.5 + 127.5).round().to(torch.uint8)


def build_dataset(spec: str, image_size: int, split: str = "train", max_images: int | None = None,
                  seed: int = 0) -> FolderImages:
    """`PATH` (an ImageFolder root) or `cifar10:ROOT`; `max_images` keeps a fixed random subset (tiny runs)."""
    if spec.startswith("cifar10:"):
        ds = TorchvisionCIFAR10(spec.split(":", 1)[1], image_size, train=(split == "train"))
    else:
        ds = FolderImages(spec, image_size)
    if max_images is not None and max_images < len(ds):
        keep = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:max_images].sort().values
        ds.samples = [ds.samples[i] for i in keep]
        ds.targets = [ds.targets[i] for i in keep]
        if isinstance(ds, TorchvisionCIFAR10):
            ds.base = torch.utils.data.Subset(ds.base, keep.tolist())
    return ds


def training_dataset(args, image_size: int, split: str = "train", info=logger.info) -> FolderImages:
    """A trainer's dataset from its arguments (`--data`, `--max-images`, `--seed`; `--cache-images` decodes it into
    memory, said through `info`, e.g. a run's main-process log); a missing or unreadable dataset exits with a
    one-line error."""
    try:
        ds = build_dataset(args.data, image_size, split=split, max_images=args.max_images, seed=args.seed)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    if getattr(args, "cache_images", False):
        start = time.time()
        ds = CachedImages(ds, args.num_workers)
        info(f"cached {len(ds)} images in memory ({ds.pixels.numel() / 2**20:.0f} MiB) in "
                    f"{time.time() - start:.0f} s")
    return ds


# ------------------------------------------------------------------------------------------------------------
#                                   Deterministic, resumable batch order
# ------------------------------------------------------------------------------------------------------------
@dataclass
class StreamBatches:
    """Batches of (index, flip) for one rank, as a pure function of (seed, step).

    The data stream is the concatenation of per-epoch permutations seeded by (seed, epoch); global step t takes
    positions [t * B, (t + 1) * B) of it and rank r takes its contiguous share of those. Flips are drawn per
    position. So a run resumed at step t sees exactly the batches an uninterrupted run would, and N processes see
    together exactly what one process sees at the same global batch.
    """

    num_samples: int
    global_batch: int
    start_step: int
    total_steps: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    flip: bool = True

    def __post_init__(self):
        if self.global_batch % self.world_size:
            raise ValueError(f"global batch {self.global_batch} is not divisible by {self.world_size} processes")
        self._perm_epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.num_samples, generator=g), epoch
        return self._perm

    def batch(self, step: int) -> list[tuple[int, bool]]:
        local = self.global_batch // self.world_size
        start = step * self.global_batch + self.rank * local
        out = []
        for pos in range(start, start + local):
            epoch, offset = divmod(pos, self.num_samples)
            flip = self.flip and bool(torch.rand((), generator=torch.Generator().manual_seed(
                self.seed * 7_919 + pos)) < 0.5)
            out.append((int(self._permutation(epoch)[offset]), flip))
        return out

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            yield self.batch(step)

    def __len__(self):
        return max(0, self.total_steps - self.start_step)


def collate(items):
    """Stack readable samples; the third element counts the unreadable ones that were skipped."""
    good = [it for it in items if it is not None]
    if not good:
        return None, None, len(items)
    xs, ys = zip(*good)
    return torch.stack(xs), torch.tensor(ys), len(items) - len(good)


def make_loader(ds: FolderImages, batches: StreamBatches, num_workers: int = 0) -> DataLoader:
    return DataLoader(ds, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


def eval_loader(ds: FolderImages, batch_size: int, num_workers: int = 0) -> DataLoader:
    """In-order, unflipped batches over the whole dataset (evaluation, latent caching)."""
    return DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)


def fit_patch_pca(ds: FolderImages, patch_size: int, channels: int, num_images: int,
                  batch_size: int = 64, num_workers: int = 0) -> tuple[PatchPCA, int]:
    """The patch-PCA codec (`hieratok.linear`) fitted on `num_images` evenly spaced images of `ds`: the same images
    whatever the seed, so every run of one geometry fits the same codec. Returns (codec, images used)."""
    n = min(num_images, len(ds))
    subset = torch.utils.data.Subset(ds, torch.linspace(0, len(ds) - 1, n).long().tolist())
    codec = PatchPCA.fit((x for x, _, _ in eval_loader(subset, batch_size, num_workers) if x is not None),
                         patch_size, channels)
    return codec, n
