"""Checkpoint I/O: a directory (or Hub repo) with `config.json` + `model.safetensors`, nothing ever unpickled.

Built on huggingface_hub's `PyTorchModelHubMixin` (so `save_pretrained`, `from_pretrained` and `push_to_hub` work
as users expect), with loading made strict: a missing file, a truncated or corrupt safetensors file, an unknown
config key, or weights that do not fit the config each raise `CheckpointError` naming the file and the problem.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import PyTorchModelHubMixin, constants, hf_hub_download
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG_NAME = constants.CONFIG_NAME                  # "config.json"
WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE     # "model.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded: the message names the file and what is wrong with it."""


class HubCheckpointMixin(PyTorchModelHubMixin):
    """Strict safetensors checkpoints for modules whose `__init__` takes a single dataclass `config`.

    Subclasses set `config_class` to the dataclass type.
    """

    config_class: ClassVar[type]

    def _save_pretrained(self, save_directory: Path) -> None:
        dtype = getattr(self, "_save_dtype", None)
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
                 for k, v in self.state_dict().items()}
        save_file(state, str(Path(save_directory) / WEIGHTS_NAME), metadata={"format": "pt"})

    def save_pretrained(self, save_directory, *, dtype: torch.dtype | None = None, **kwargs):
        """Write `config.json` + `model.safetensors` (optionally cast to `dtype`, e.g. torch.float16)."""
        self._save_dtype = dtype
        try:
            return super().save_pretrained(save_directory, config=self.config.to_dict(), **kwargs)
        finally:
            self._save_dtype = None

    def generate_model_card(self, *args, **kwargs):
        """The README.md `save_pretrained` writes: what the folder holds and how to load it (the card with metrics
        and training, written by `train/publish.py`, replaces it) -- not huggingface_hub's template of blanks."""
        from huggingface_hub import ModelCard
        name, info = type(self).__name__, self._hub_mixin_info
        tags = "".join(f"\n- {t}" for t in (info.model_card_data.tags or []))
        module = type(self).__module__.split(".")[0] + ("" if name != "Classifier" else ".classifier")
        return ModelCard(f"---\nlibrary_name: hieratok\ntags:{tags}\n---\n\n# A hieratok {name}\n\n"
                         f"`{CONFIG_NAME}` (its configuration) and `{WEIGHTS_NAME}` (its weights; no pickle): load "
                         f"with `from {module} import {name}; {name}.from_pretrained(PATH)`. HieraTok: "
                         f"[arXiv 2509.23736](https://arxiv.org/abs/2509.23736).\n")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, map_location: str = "cpu",
                        revision: str | None = None, cache_dir: str | None = None, token: str | None = None,
                        local_files_only: bool = False, force_download: bool = False, subfolder: str | None = None,
                        **config_overrides: Any):
        """Load from a local directory or a Hub repo id (`subfolder`: a checkpoint inside it, e.g. the tokenizer a
        DiT folder ships). Weights are upcast to float32 when stored in half.

        `config_overrides` change non-architectural fields (e.g. `grad_checkpointing=True`).
        """
        source = str(pretrained_model_name_or_path)
        if subfolder and os.path.isdir(source):
            source, subfolder = os.path.join(source, subfolder), None
        config_file, weights_file = _resolve_files(source, revision=revision, cache_dir=cache_dir, token=token,
                                                   local_files_only=local_files_only, force_download=force_download,
                                                   **({"subfolder": subfolder} if subfolder else {}))
        config = _read_config(cls.config_class, config_file, config_overrides)
        model = cls(config)
        state = _read_weights(weights_file)
        _load_state(model, state, weights_file, config_file)
        return model.to(map_location).eval()


def upload_tree(folder: Path, repo_id: str, repo_type: str, *, private: bool = False, token: str | None = None,
                message: str = "upload", **create_kwargs) -> str:
    """Create the Hub repo if needed and upload a staged folder (`HfApi.upload_folder`: LFS/Xet for binaries). When
    the Hub is out of reach (offline, HF_HUB_OFFLINE=1, no permission) a SystemExit says why and gives the `hf upload`
    command that uploads the same folder later."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **create_kwargs)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type,
                                 commit_message=message)
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError) as e:
        raise SystemExit(f"error: could not upload to the {repo_type} repo {repo_id} ({type(e).__name__}: {e}).\n"
                         f"The staged tree is in {folder}; upload it from a machine with network access with\n"
                         f"  hf upload {repo_id} {folder} . --repo-type {repo_type}") from None
    return str(info)


# A DiT checkpoint folder may ship the tokenizer whose latent it learned in this subfolder: a DiT fits only that
# latent, so a family tokenizer retrained after the DiT must not decode its samples.
PAIRED_TOKENIZER = "tokenizer"


def paired_tokenizer(dit_dir: str | os.PathLike) -> Path | None:
    """The tokenizer folder a local DiT checkpoint folder ships (`<dit_dir>/tokenizer`), or None."""
    own = Path(dit_dir) / PAIRED_TOKENIZER
    return own if (own / CONFIG_NAME).is_file() else None


def _resolve_files(source: str, **hub_kwargs) -> tuple[str, str]:
    if os.path.isdir(source):
        files = [os.path.join(source, name) for name in (CONFIG_NAME, WEIGHTS_NAME)]
        for f in files:
            if not os.path.isfile(f):
                raise CheckpointError(f"{f}: missing; a checkpoint directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
        return files[0], files[1]
    if os.path.exists(source) or source.startswith((".", "/")) or source.count("/") > 1:
        raise CheckpointError(f"{source}: not a checkpoint directory (expected a folder or a Hub repo id)")
    try:
        return tuple(hf_hub_download(repo_id=source, filename=name, **hub_kwargs) for name in (CONFIG_NAME,
                                                                                          WEIGHTS_NAME))
    except Exception as e:  # offline, unknown repo, missing file: say which and why
        raise CheckpointError(f"{source}: could not fetch {CONFIG_NAME}/{WEIGHTS_NAME} from the Hub "
                              f"({type(e).__name__}: {e})") from e


def _read_config(config_class, config_file: str, overrides: dict[str, Any]):
    try:
        with open(config_file, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_file}: not a readable JSON config ({e})") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object, got {type(raw).__name__}")
    try:
        return config_class.from_dict({**raw, **overrides})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{config_file}: invalid {config_class.__name__}: {e}") from e


def _read_weights(weights_file: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(weights_file)
    except (SafetensorError, OSError, ValueError) as e:
        size = os.path.getsize(weights_file) if os.path.exists(weights_file) else 0
        raise CheckpointError(f"{weights_file}: not a valid safetensors file ({size} bytes; truncated or corrupt?): "
                              f"{e}") from e


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], weights_file: str, config_file: str):
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
                   for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing keys {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_preview(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatches {_preview(wrong_shape)}")
    if problems:
        raise CheckpointError(f"{weights_file} does not match {config_file}: " + "; ".join(problems))
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}  # upcast half-precision storage
    model.load_state_dict(state, strict=True)


def _preview(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")
