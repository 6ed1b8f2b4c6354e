"""Metric logging: a CSV tracker for accelerate (one row per log call, surviving resumes)."""
from __future__ import annotations

import csv
from pathlib import Path

from accelerate.tracking import GeneralTracker

from .checkpoint import atomic_file, write_json


class CSVTracker(GeneralTracker):
    """accelerate tracker writing one row per log call to `<dir>/metrics.csv` (appends across resumes)."""

    name = "csv"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: str):
        super().__init__()
        self.path = Path(logging_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns: list[str] | None = None
        if self.path.exists():
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), None)
            self.columns = header or None

    @property
    def tracker(self):
        return self.path

    def store_init_configuration(self, values: dict):
        write_json(self.path.parent / "hparams.json", values)

    def log(self, values: dict, step: int | None = None, **kwargs):
        row = {"step": step, **values}
        new_columns = [c for c in row if c not in (self.columns or [])]
        if new_columns:  # a key appeared (e.g. the GAN terms after warm-up): rewrite with the wider header
            rows = []
            if self.columns is not None:
                with open(self.path, newline="") as f:
                    rows = list(csv.DictReader(f))
            self.columns = (self.columns or []) + new_columns
            self._rewrite(rows)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in self.columns])


    def truncate_after(self, step: int):
        """Drop rows logged after `step` (a resumed run logs those steps again)."""
        if self.columns is None or not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["step"] and int(float(r["step"])) <= step]
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict]):
        """Replace the file atomically (a crash keeps the old file or the new one)."""
        with atomic_file(self.path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(rows)


def flat(d: dict, prefix: str = "") -> dict:
    """Flatten nested config dicts for trackers that want scalars."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
        else:
            out[key] = str(v)
    return out
