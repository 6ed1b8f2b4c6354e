"""Checkpoints that load without unpickling anything: safetensors for tensors, JSON for everything else.

A checkpoint folder `step-N/` holds

    state.json                  step counters, scheduler states, EMA count, the layout of the files below
    model_<i><part>.safetensors       each prepared model's parameters and buffers
    optimizer_<i><part>.safetensors   each optimizer's per-parameter tensors (exp_avg, ...), keyed "<param>/<name>"
    ema<part>.safetensors             the EMA's averaged parameters

With one process or DDP the tensors are whole and written once (`<part>` is empty). Under FSDP2 every process
writes its own shards (`<part>` = `-rank<r>-of<n>`), and a sharded checkpoint resumes with the same number of
processes. Nothing in a folder is read unless it is listed here, so files such as accelerate's `*.pkl` / `*.bin`
placed in a checkpoint folder are never loaded: resuming from a folder someone else wrote cannot run code.

The random state needs no saving: every random draw of a step comes from a generator seeded by (seed, step), and
the data order is a pure function of (seed, step) (`hieratok.training.data`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .distributed import local

STATE_FILE = "state.json"
EXPORT_STATE_FILE = "train_state.json"  # beside an export (exports/step-N): the run's counters at that step


@contextlib.contextmanager
def atomic_file(path: Path):
    """Write a file atomically: yields a temporary path beside `path` to write, then renames it into place, so a
    crash leaves the previous file or the new one, never half of one (every file the toolkit writes in place)."""
    tmp = Path(path).with_name(f"{Path(path).name}.{os.getpid()}.tmp")  # per process: writers never share one
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def finite(obj):
    """`obj` with every NaN or infinite float replaced by None: standard JSON has no NaN (Python writes a bare
    `NaN` token that browsers' and most other languages' parsers refuse); an undefined value -- e.g. the interval of
    a single seed -- is written as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def json_text(obj, indent: int | None = 2) -> str:
    """Standard JSON (`finite`; anything else JSON lacks as its str)."""
    return json.dumps(finite(obj), indent=indent, default=str, allow_nan=False)


def write_json(path: Path, obj) -> None:
    """Write standard JSON (`json_text`) atomically (`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json_text(obj))


def record_run_config(path: Path, config: dict, step: int) -> None:
    """Write a run's configuration to `path` (run_config.json). On a resume (step > 0) the first configuration
    stays and this one is appended to its "resumes", with the step it started at."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**json.loads(json.dumps(config, default=str)), "started_at_step": step,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if path.exists() and step > 0:
        history = json.loads(path.read_text())
        history.setdefault("resumes", []).append(record)
    else:
        history = record
    write_json(path, history)


def staging_dir(path: Path) -> Path:
    """An empty temporary folder beside `path` to write it in (see `publish_dir`)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, path: Path) -> None:
    """Move a finished temporary folder to `path`, replacing an older one: a reader finds the old folder or the new
    one whole, and a crash mid-write leaves only a `.tmp` folder behind."""
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def write_dir(path: Path, write) -> None:
    """`write(folder)` into a temporary folder, then publish it as `path` (e.g.
    `write_dir(p, model.save_pretrained)`)."""
    tmp = staging_dir(path)
    write(tmp)
    publish_dir(tmp, path)


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    return {k: local(v.detach()).cpu().contiguous() for k, v in state.items()}


def _model_tensors(model) -> dict:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def save_optimizer(optimizer, path: Path) -> dict:
    """Tensors of the optimizer state (this process's shards) into `path`; returns the JSON part."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entries in sd["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{pid}/{name}"] = value
            else:
                scalars[f"{pid}/{name}"] = value
    save_file(_tensors(tensors), str(path))
    return {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(optimizer, path: Path, meta: dict) -> None:
    """Inverse of `save_optimizer`; a state tensor of a sharded parameter becomes a DTensor laid out like it."""
    from torch.distributed.tensor import DTensor
    params = [p for group in optimizer.param_groups for p in group["params"]]
    tensors = load_file(str(path))
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split("/", 1)
        p = params[int(pid)]
        if torch.is_tensor(value) and isinstance(p, DTensor) and value.ndim == p.ndim and value.ndim > 0:
            value = DTensor.from_local(value.to(p.device), p.device_mesh, p.placements, run_check=False,
                                       shape=p.shape, stride=p.stride())
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_state(folder: Path, models: list, optimizers: list, ema, part: str = "") -> dict:
    """Models, optimizers and EMA as safetensors (this process's part); returns what state.json records."""
    record = {"models": [], "optimizers": [], "part": part}
    for i, model in enumerate(models):
        name = f"model_{i}{part}.safetensors"
        save_file(_tensors(_model_tensors(model)), str(folder / name))
        record["models"].append(name)
    for i, opt in enumerate(optimizers):
        name = f"optimizer_{i}{part}.safetensors"
        record["optimizers"].append({"file": name, **save_optimizer(opt, folder / name)})
    if ema is not None:
        save_file(_tensors(dict(zip(ema.names, ema.shadow))), str(folder / f"ema{part}.safetensors"))
        record["ema"] = {"file": f"ema{part}.safetensors", "n_averaged": ema.n_averaged}
    return record


@torch.no_grad()
def load_state(folder: Path, record: dict, models: list, optimizers: list, ema) -> None:
    """Inverse of `save_state` for this process's part (`record` as that process wrote it)."""
    if len(record["models"]) != len(models) or len(record["optimizers"]) != len(optimizers):
        raise ValueError(f"{folder} holds {len(record['models'])} model(s) and {len(record['optimizers'])} "
                         f"optimizer(s); this run has {len(models)} and {len(optimizers)}")
    for name, model in zip(record["models"], models):
        saved, own = load_file(str(folder / name)), _model_tensors(model)
        if set(saved) != set(own):
            raise ValueError(f"{folder / name} does not fit this model (differing keys: "
                             f"{sorted(set(saved) ^ set(own))[:5]})")
        for key, t in own.items():
            local(t.data).copy_(saved[key])
    for meta, opt in zip(record["optimizers"], optimizers):
        load_optimizer(opt, folder / meta["file"], meta)
    if ema is not None:
        if "ema" not in record:
            raise ValueError(f"{folder} holds no EMA")
        saved = load_file(str(folder / record["ema"]["file"]))
        for name, t in zip(ema.names, ema.shadow):
            local(t).copy_(saved[name])
        ema.n_averaged = int(record["ema"]["n_averaged"])


def read_state(folder: Path, part: str = "") -> dict:
    """state.json, with this process's file layout when the checkpoint is sharded (`parts` by rank)."""
    path = folder / STATE_FILE
    if not path.is_file():
        raise ValueError(f"{folder} is not a checkpoint of this project (no {STATE_FILE}; checkpoints written "
                         f"before the safetensors format cannot be resumed, start the run from its final/ export "
                         f"with --init-from instead)")
    state = json.loads(path.read_text())
    if "parts" in state:  # sharded: one file layout per process
        if part not in state["parts"]:
            raise ValueError(f"{folder} was written by {len(state['parts'])} processes with other ranks "
                             f"({sorted(state['parts'])}); resume it with the same number of processes")
        state.update(state["parts"][part])
    return state


class TrainState:
    """The scalars a checkpoint must restore besides modules: step and counters."""

    def __init__(self):
        self.step, self.images_seen, self.skipped, self.wall_s = 0, 0, 0, 0.0

    def state_dict(self):
        return {"step": self.step, "images_seen": self.images_seen, "skipped": self.skipped, "wall_s": self.wall_s}

    def load_state_dict(self, d):
        self.step, self.images_seen, self.skipped = int(d["step"]), int(d["images_seen"]), int(d["skipped"])
        self.wall_s = float(d.get("wall_s", 0.0))
