"""`train/stage1.py` with a non-finite loss injected on one process at one step, for the test that every process
stops together: python -m torch.distributed.run ... tests/nan_on_rank.py RANK:STEP <stage1 arguments>."""
import runpy
import sys
from pathlib import Path

from hieratok.training.run import Run

RANK_STEP = sys.argv.pop(1)
_check_finite = Run.check_finite


def check_finite(self, loss, step):
    if f"{self.accelerator.process_index}:{step}" == RANK_STEP:
        loss = loss * float("nan")
    return _check_finite(self, loss, step)


Run.check_finite = check_finite
script = Path(__file__).resolve().parents[1] / "train" / "stage1.py"
sys.argv[0] = str(script)
runpy.run_path(str(script), run_name="__main__")
