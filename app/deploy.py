"""Put the app on a Hugging Face Space: stage exactly what the Space needs, then upload it with huggingface_hub.

    python app/deploy.py YOUR_NAME/hieratok-explorer                 # stage into a temporary folder and upload
    python app/deploy.py YOUR_NAME/hieratok-explorer --stage build/space --dry-run   # stage only, list the files

The staged tree is what a Gradio Space runs, with nothing else:

- `app.py` (the front matter's `app_file`), the same entry point as `app/main.py`: from the tree's root
  `python app.py` imports `hieratok/` beside it -- no editable install, no PYTHONPATH;
- `hieratok/` (the package's Python files), `assets/` (the weights and files the app serves), and the
  screenshots the README shows (`app/screenshots/`);
- `README.md`: the Space front matter (sdk, sdk_version = the Gradio this app is tested with, python_version,
  app_file, license, short_description) above this repository's README;
- `requirements.txt`: torch's CPU-only wheel from PyTorch's CPU index (a Space's CPU hardware has no use for the
  4 GB of CUDA libraries the default wheel pulls in) and only the app's packages, each pinned to the version
  installed here (the versions the tests ran with).

The upload uses `HfApi.upload_folder`, which stores the weights and images through LFS/Xet as the Hub requires
(a `git push` of this repository is refused: its binaries are plain git objects). Without a network (or with
HF_HUB_OFFLINE=1) it stops with a message and leaves the staged tree for a later `hf upload`.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP_FILE = "app.py"
# what the app imports (hieratok.explorer and the parts of hieratok it uses): distribution names
APP_PACKAGES = ("gradio", "numpy", "pillow", "safetensors", "huggingface_hub", "torchmetrics", "plotly",
                "scikit-image", "scikit-learn")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
NEVER = ("__pycache__", "*.pyc", "*.pyi", ".venv", "runs", "build", ".gradio", ".pytest_cache", "*.egg-info",
         ".DS_Store", "checkpoints")


def front_matter(license_id: str, models: str | None = None) -> str:
    version = importlib.metadata.version("gradio")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return "\n".join([
        "---", "title: HieraTok Explorer", "emoji: 🧱", "colorFrom: indigo", "colorTo: yellow", "sdk: gradio",
        f"sdk_version: {version}", f'python_version: "{py}"', f"app_file: {APP_FILE}", f"license: {license_id}",
        *(["models:", f"- {models}"] if models else []),
        "pinned: false", "short_description: See what a multi-scale image tokenizer does", "---", ""])


def entry(models: str | None) -> str:
    """The Space's app.py: app/main.py itself, or -- when the weights live in a Hub model repo -- the same entry
    with that repo as the default assets (downloaded at start into the Space's Hub cache)."""
    if not models:
        return (ROOT / "app" / "main.py").read_text()
    return (f'"""HieraTok Explorer on a Space (staged by app/deploy.py): the weights come from the Hub model repo '
            f'{models}."""\nfrom hieratok.explorer.cli import main\n\nif __name__ == "__main__":\n'
            f'    main(default_assets="{models}")\n')


def readme_body() -> str:
    """This repository's README without its own front matter."""
    text = (ROOT / "README.md").read_text()
    if text.startswith("---\n"):
        text = text.split("\n---\n", 1)[1].lstrip("\n")
    return text


def requirements() -> str:
    torch_version = importlib.metadata.version("torch").split("+")[0]
    lines = [f"--extra-index-url {TORCH_CPU_INDEX}", f"torch=={torch_version}+cpu"]
    lines += [f"{name}=={importlib.metadata.version(name)}" for name in APP_PACKAGES]
    return "\n".join(lines) + "\n"


def stage(dest: Path, assets: Path, license_id: str, models: str | None = None) -> list[Path]:
    """Write the Space's tree into `dest` (which must be empty or absent); returns its files. With `models` (a Hub
    model repo that `train/publish.py` filled) the weights stay there: no assets/ is staged."""
    if not models and not any(assets.glob("hieratok-*")):
        raise SystemExit(f"error: {assets} holds no tokenizer checkpoints (hieratok-*/): not an assets folder")
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"error: {dest} is not empty; stage into a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns(*NEVER)
    (dest / APP_FILE).write_text(entry(models))
    shutil.copytree(ROOT / "hieratok", dest / "hieratok", ignore=ignore)
    if not models:
        shutil.copytree(assets, dest / "assets", ignore=ignore)
    shutil.copytree(ROOT / "app" / "screenshots", dest / "app" / "screenshots", ignore=ignore)  # README's figures
    (dest / "README.md").write_text(front_matter(license_id, models) + "\n" + readme_body())
    (dest / "requirements.txt").write_text(requirements())
    return sorted(p for p in dest.rglob("*") if p.is_file())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo_id", help="the Space, USER/NAME")
    ap.add_argument("--stage", default=None, help="stage into this folder (default: a temporary one)")
    ap.add_argument("--dry-run", action="store_true", help="stage and list the files, upload nothing")
    ap.add_argument("--assets", default=str(ROOT / "assets"), help="the checkpoints the Space serves")
    ap.add_argument("--models", default=None, metavar="ORG/NAME",
                    help="serve the weights from this Hub model repo (filled by train/publish.py) instead of "
                         "uploading assets/ into the Space; named in the front matter's `models`")
    ap.add_argument("--license", default="other",
                    help="the Space's license id in the front matter (the project has not chosen one: 'other')")
    ap.add_argument("--private", action="store_true")
    ap.add_argument("--token", default=None, help="a Hub token (default: the one `hf auth login` stored)")
    args = ap.parse_args(argv)
    if args.repo_id.count("/") != 1:
        raise SystemExit(f"error: the Space must be given as USER/NAME, got {args.repo_id!r}")
    dest = Path(args.stage) if args.stage else Path(tempfile.mkdtemp(prefix="hieratok-space-"))
    if args.models and args.models.count("/") != 1:
        raise SystemExit(f"error: --models must be a Hub model repo ORG/NAME, got {args.models!r}")
    files = stage(dest, Path(args.assets), args.license, args.models)
    size = sum(p.stat().st_size for p in files)
    for p in files:
        print(f"{p.stat().st_size:>12,d}  {p.relative_to(dest)}")
    print(f"staged {len(files)} files, {size / 2**20:.1f} MiB, in {dest}")
    if args.dry_run:
        return
    from hieratok.hub import upload_tree  # after staging: the staged tree is the answer when this import fails
    print(upload_tree(dest, args.repo_id, "space", private=args.private, token=args.token, space_sdk="gradio",
                      message="HieraTok Explorer (app/deploy.py)"))


if __name__ == "__main__":
    main()
