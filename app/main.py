"""HieraTok Explorer: see what a multi-scale tokenizer does (the app lives in `hieratok.explorer`).

    python app/main.py                      # http://127.0.0.1:7860, serving this repository's assets/
    python app/main.py --host 0.0.0.0 --port 7861 --assets runs/my-checkpoints
"""
from pathlib import Path

from hieratok.explorer.ui import main

if __name__ == "__main__":
    main(default_assets=Path(__file__).resolve().parents[1] / "assets")
