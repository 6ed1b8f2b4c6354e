"""HieraTok Explorer: see what a multi-scale tokenizer does (the app lives in `hieratok.explorer`).

    python app/main.py                      # http://127.0.0.1:7860, serving this repository's assets/
    python app/main.py --host 0.0.0.0 --port 7861 --assets runs/my-checkpoints

`app/deploy.py` copies this file to a Space's root as `app.py`, beside `hieratok/` and `assets/`: the assets are
looked up beside this file first, then one folder up (the repository's layout).
"""
from pathlib import Path

from hieratok.explorer.cli import main

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    main(default_assets=HERE / "assets" if (HERE / "assets").is_dir() else HERE.parent / "assets")
