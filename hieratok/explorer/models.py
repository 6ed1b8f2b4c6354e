"""The shipped checkpoints, loaded lazily and once, shared read-only by all requests."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from hieratok import CheckpointError, DiT, HieraTok
from hieratok.classifier import Classifier
from hieratok.hub import paired_tokenizer
from hieratok.latent_map import FILE_NAME as LATENT_MAP_FILE
from hieratok.latent_map import LatentMap
from hieratok.perf import inference_dtype

DEFAULT_ASSETS = Path("assets")  # relative to the working directory; `app/main.py` passes the repository's

MODELS = ("HieraTok", "Single-scale")  # display names; folders are <variant>-<family suffix> in assets/
_VARIANT = {"HieraTok": "hieratok", "Single-scale": "singlescale"}


def dit_tokenizer_path(assets: Path, dit_folder: str) -> Path:
    """The tokenizer folder a shipped DiT generates with: the one it was trained on. That is `<dit folder>/tokenizer`
    where the DiT ships its own (`hieratok.hub.paired_tokenizer`: the family's tokenizer was retrained after the
    DiT), else the family's tokenizer of the same variant (`dit-<variant>-<suffix>` -> `<variant>-<suffix>`)."""
    return paired_tokenizer(Path(assets) / dit_folder) or Path(assets) / dit_folder.removeprefix("dit-")


@dataclass(frozen=True)
class Family:
    """One set of shipped models trained together on one dataset: two tokenizers, their DiTs, a classifier
    and a latent map, in folders named `<kind>-<suffix>` (e.g. hieratok-imagenette128)."""

    label: str
    suffix: str
    guidance: float = 2.0  # the Generate view's default: the lowest FD-cls of the guidance scales measured

    def tokenizer_folder(self, model: str) -> str:
        return f"{_VARIANT[model]}-{self.suffix}"

    def dit_folder(self, model: str) -> str:
        return f"dit-{_VARIANT[model]}-{self.suffix}"

    @property
    def classifier_folder(self) -> str:
        return f"classifier-{self.suffix}"

    @property
    def latent_map_folder(self) -> str:
        return f"latent-map-{self.suffix}"


# the app's model picker, default first. `guidance`: the Generate view's default where assets/eval/generation-<suffix>
# .json (ModelStore.guidance) is not shipped -- the lowest gFD-cls its HieraTok DiT measured (the README's results).
FAMILIES = (Family("Photos (ImageNet subset, 128 px)", "imagenette128", guidance=4.0),
            Family("CIFAR-10 (32 px)", "cifar10", guidance=2.0))


class AppError(RuntimeError):
    """Something the person using the app should read (shown as an error message, the server keeps serving)."""


class ModelStore:
    """The checkpoints of one family, loaded lazily and once."""

    def __init__(self, assets: Path = DEFAULT_ASSETS, family: Family = FAMILIES[1], sampling_precision: str = "fp32"):
        """`sampling_precision`: the DiTs' (`DiT.sample`: fp32, bf16, or auto = bf16 where the CPU computes it
        natively); the app serves with auto, the tokenizer views compute in fp32 whatever it is."""
        inference_dtype(sampling_precision, "cpu")  # a ValueError now rather than at the first Generate
        self.assets, self.family, self.sampling_precision = Path(assets), family, sampling_precision
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
                           f"train/ (see docs/training.md) or start the app with --assets pointing at your "
                           f"checkpoints.")

        def load():
            try:
                return cls.from_pretrained(path).eval().requires_grad_(False)
            except CheckpointError as e:
                raise AppError(f"{what} weights could not be loaded: {e}") from e
        return self._load(folder, load)

    def available(self, folder: str) -> bool:
        return (self.assets / folder).exists()

    def _model(self, name: str) -> str:
        if name not in MODELS:
            raise AppError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
        return name

    def tokenizer(self, name: str) -> HieraTok:
        return self._checkpoint(HieraTok, self.family.tokenizer_folder(self._model(name)), f"{name} tokenizer")

    def dit(self, name: str) -> DiT:
        return self._checkpoint(DiT, self.family.dit_folder(self._model(name)), f"{name} DiT")

    def dit_tokenizer(self, name: str) -> HieraTok:
        """The tokenizer model `name`'s DiT was trained on (`dit_tokenizer_path`): the family's, unless the DiT
        ships its own because the family's tokenizer was retrained after it."""
        path = dit_tokenizer_path(self.assets, self.family.dit_folder(self._model(name)))
        return self._checkpoint(HieraTok, str(path.relative_to(self.assets)), f"{name} DiT's tokenizer")

    def dit_has_own_tokenizer(self, name: str) -> bool:
        """Whether model `name`'s DiT decodes with a tokenizer other than the family's (an earlier one)."""
        return paired_tokenizer(self.assets / self.family.dit_folder(self._model(name))) is not None

    def scales_preview(self, name: str) -> tuple[str, HieraTok] | None:
        """For a DiT whose tokenizer has one scale: (model, tokenizer) of this family's multi-scale tokenizer where
        that one encodes to exactly the latent the DiT generates in (`HieraTok.latent_differences`: the same
        encoder and statistics, e.g. a HieraTok made by `stage1.py --warm-start SINGLE_SCALE --train coarse`), so
        it can decode the DiT's samples at every scale; else None."""
        own = self.dit_tokenizer(name)
        if len(own.layout.scales) > 1:
            return None
        for other in MODELS:
            if other != self._model(name) and self.has_tokenizer(other):
                tok = self.tokenizer(other)
                if len(tok.layout.scales) > 1 and not tok.latent_differences(own):
                    return other, tok
        return None

    def classifier(self) -> Classifier:
        return self._checkpoint(Classifier, self.family.classifier_folder, "classifier")

    def has_tokenizer(self, name: str) -> bool:
        return self.available(self.family.tokenizer_folder(name))

    def class_names(self) -> list[str]:
        """Readable class names: the DiT's, else the classifier's, else class numbers."""
        for folder, load in ((self.family.dit_folder(MODELS[0]), lambda: self.dit(MODELS[0])),
                             (self.family.classifier_folder, self.classifier)):
            if self.available(folder):
                names = list(load().config.class_names)
                if names:
                    return names
        if self.available(self.family.dit_folder(MODELS[0])):
            return [str(i) for i in range(self.dit(MODELS[0]).config.num_classes)]
        return [str(i) for i in range(10)]

    def guidance(self, name: str) -> float:
        """The Generate view's default guidance for the DiT of model `name`: the one the generation protocol chose
        for it (`train/generation.py --dit hieratok=... --dit singlescale=...`: `default_guidance` in
        assets/eval/generation-<suffix>.json, the lowest mean gFD-cls at the app's step count), else the family's."""
        path = self.assets / "eval" / f"generation-{self.family.suffix}.json"

        def read():
            import json
            try:
                return json.loads(path.read_text())["summary"]["default_guidance"]
            except (OSError, ValueError, KeyError, TypeError):
                return {}
        chosen = self._load("guidance", read) if path.exists() else {}
        value = chosen.get(_VARIANT[self._model(name)]) if isinstance(chosen, dict) else None
        return float(value) if isinstance(value, (int, float)) else self.family.guidance

    def latent_map(self) -> LatentMap:
        path = self.assets / self.family.latent_map_folder / LATENT_MAP_FILE
        if not path.exists():
            raise AppError(f"the latent map is missing ({path}); make it with train/latent_map.py "
                           f"(see docs/training.md)")
        return self._load("latent_map", lambda: LatentMap.load(path))


def resolve_assets(spec: str) -> Path:
    """`--assets`: a folder, or a Hub model repo id (ORG/NAME) holding the same layout, downloaded once into the
    Hub cache (later starts read the cache, offline too). Raises AppError with what to do when neither works."""
    path = Path(spec)
    if path.is_dir():
        return path
    if spec.count("/") != 1 or spec.startswith((".", "/")) or path.suffix:
        raise AppError(f"--assets {spec}: no such folder (pass a folder of checkpoints or a Hub repo id ORG/NAME)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
    try:
        return Path(snapshot_download(spec, repo_type="model"))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as e:
        raise AppError(f"--assets {spec}: the Hub model repo could not be fetched and is not in the Hub cache "
                       f"({type(e).__name__}). On a machine with network access run `hf download {spec}` (the "
                       f"cache is then used offline) or `hf download {spec} --local-dir DIR` and pass "
                       f"--assets DIR") from None


class Catalog:
    """Every family whose HieraTok tokenizer is in the assets folder (all of them when none is), picker order."""

    def __init__(self, assets: Path = DEFAULT_ASSETS, sampling_precision: str = "fp32"):
        self.assets = Path(assets)
        stores = [ModelStore(self.assets, f, sampling_precision) for f in FAMILIES]
        present = [s for s in stores if s.has_tokenizer(MODELS[0])]
        self.stores = {s.family.label: s for s in (present or stores)}

    @property
    def labels(self) -> list[str]:
        return list(self.stores)

    @property
    def default(self) -> str:
        return self.labels[0]

    def __getitem__(self, label: str) -> ModelStore:
        if label not in self.stores:
            raise AppError(f"model set must be one of {self.labels}, got {label!r}")
        return self.stores[label]
