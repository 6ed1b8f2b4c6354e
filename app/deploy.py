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


def front_matter(license_id: str) -> str:
    version = importlib.metadata.version("gradio")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return "\n".join([
        "---", "title: HieraTok Explorer", "emoji: 🧱", "colorFrom: indigo", "colorTo: yellow", "sdk: gradio",
        f"sdk_version: {version}", f'python_version: "{py}"', f"app_file: {APP_FILE}", f"license: {license_id}",
        "pinned: false", "short_description: See what a multi-scale image tokenizer does", "---", ""])


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


def stage(dest: Path, assets: Path, license_id: str) -> list[Path]:
    """Write the Space's tree into `dest` (which must be empty or absent); returns its files."""
    if not any(assets.glob("hieratok-*")):
        raise SystemExit(f"error: {assets} holds no tokenizer checkpoints (hieratok-*/): not an assets folder")
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"error: {dest} is not empty; stage into a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns(*NEVER)
    shutil.copy2(ROOT / "app" / "main.py", dest / APP_FILE)
    shutil.copytree(ROOT / "hieratok", dest / "hieratok", ignore=ignore)
    shutil.copytree(assets, dest / "assets", ignore=ignore)
    shutil.copytree(ROOT / "app" / "screenshots", dest / "app" / "screenshots", ignore=ignore)  # README's figures
    (dest / "README.md").write_text(front_matter(license_id) + "\n" + readme_body())
    (dest / "requirements.txt").write_text(requirements())
    return sorted(p for p in dest.rglob("*") if p.is_file())


def upload(staged: Path, repo_id: str, private: bool, token: str | None) -> str:
    """Create the Space if needed and upload the staged tree; a clear SystemExit when the Hub is out of reach."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(staged), repo_id=repo_id, repo_type="space",
                                 commit_message="HieraTok Explorer (app/deploy.py)")
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError) as e:
        raise SystemExit(f"error: could not upload to the Space {repo_id} ({type(e).__name__}: {e}).\n"
                         f"The staged tree is in {staged}; upload it from a machine with network access with\n"
                         f"  hf upload {repo_id} {staged} . --repo-type space") from None
    return str(info)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo_id", help="the Space, USER/NAME")
    ap.add_argument("--stage", default=None, help="stage into this folder (default: a temporary one)")
    ap.add_argument("--dry-run", action="store_true", help="stage and list the files, upload nothing")
    ap.add_argument("--assets", default=str(ROOT / "assets"), help="the checkpoints the Space serves")
    ap.add_argument("--license", default="other",
                    help="the Space's license id in the front matter (the project has not chosen one: 'other')")
    ap.add_argument("--private", action="store_true")
    ap.add_argument("--token", default=None, help="a Hub token (default: the one `hf auth login` stored)")
    args = ap.parse_args(argv)
    if args.repo_id.count("/") != 1:
        raise SystemExit(f"error: the Space must be given as USER/NAME, got {args.repo_id!r}")
    dest = Path(args.stage) if args.stage else Path(tempfile.mkdtemp(prefix="hieratok-space-"))
    files = stage(dest, Path(args.assets), args.license)
    size = sum(p.stat().st_size for p in files)
    for p in files:
        print(f"{p.stat().st_size:>12,d}  {p.relative_to(dest)}")
    print(f"staged {len(files)} files, {size / 2**20:.1f} MiB, in {dest}")
    if args.dry_run:
        return
    print(upload(dest, args.repo_id, args.private, args.token))


if __name__ == "__main__":
    main()
