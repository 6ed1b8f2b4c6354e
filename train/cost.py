"""Parameters, GFLOPs per image and decoder tokens of HieraTok, single-scale and the FLOP-matched single-scale
baseline for each preset, beside the paper's Table 7 (`hieratok.cost.format_report`).

    python train/cost.py                       # every preset
    python train/cost.py --presets imagenet256
"""
from __future__ import annotations

import argparse

from hieratok import TOKENIZER_PRESETS
from hieratok.cost import format_report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=list(TOKENIZER_PRESETS), choices=list(TOKENIZER_PRESETS))
    args = ap.parse_args(argv)
    print(format_report(args.presets))


if __name__ == "__main__":
    main()
