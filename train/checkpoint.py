"""Checkpoints that load without unpickling anything: safetensors for tensors, JSON for everything else.

A checkpoint folder `step-N/` holds

    state.json                  step counters, scheduler states, EMA count, the layout of the files below
    model_<i>.safetensors       each prepared model's state dict (whole: one process or DDP)
    optimizer_<i>.safetensors   each optimizer's per-parameter tensors (exp_avg, ...), keyed "<param>/<name>"
    ema.safetensors             the EMA's averaged parameters

Under FSDP2 the models, optimizers and EMA are sharded over the processes and are written with
torch.distributed.checkpoint by every process (accelerate's `save_state`, and `EMA.save_sharded`); `state.json` is
the same. Nothing in a folder is read unless it is listed here, so files such as accelerate's `*.pkl` / `*.bin`
placed in a checkpoint folder are never loaded: resuming from a folder someone else wrote cannot run code.

The random state needs no saving: every random draw of a step comes from a generator seeded by (seed, step), and
the data order is a pure function of (seed, step) (train/data.py).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.json"


def write_json(path: Path, obj) -> None:
    """Write JSON atomically: a crash leaves the previous file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_optimizer(optimizer, path: Path) -> dict:
    """Tensors of the optimizer state into `path` (safetensors); returns the JSON part (param groups, scalars)."""
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
    tensors = load_file(str(path))
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_whole(folder: Path, models: list, optimizers: list, ema) -> dict:
    """Models, optimizers and EMA as safetensors (call on the main process); returns what state.json records."""
    record = {"models": [], "optimizers": []}
    for i, model in enumerate(models):
        name = f"model_{i}.safetensors"
        save_file(_tensors(model.state_dict()), str(folder / name))
        record["models"].append(name)
    for i, opt in enumerate(optimizers):
        name = f"optimizer_{i}.safetensors"
        record["optimizers"].append({"file": name, **save_optimizer(opt, folder / name)})
    if ema is not None:
        save_file(_tensors(dict(zip(ema.names, ema.shadow))), str(folder / "ema.safetensors"))
        record["ema"] = {"file": "ema.safetensors", "n_averaged": ema.n_averaged}
    return record


def load_whole(folder: Path, record: dict, models: list, optimizers: list, ema) -> None:
    if len(record["models"]) != len(models) or len(record["optimizers"]) != len(optimizers):
        raise ValueError(f"{folder} holds {len(record['models'])} model(s) and {len(record['optimizers'])} "
                         f"optimizer(s); this run has {len(models)} and {len(optimizers)}")
    for name, model in zip(record["models"], models):
        model.load_state_dict(load_file(str(folder / name)), strict=True)
    for meta, opt in zip(record["optimizers"], optimizers):
        load_optimizer(opt, folder / meta["file"], meta)
    if ema is not None:
        if "ema" not in record:
            raise ValueError(f"{folder} holds no EMA")
        ema.load_state_dict({"n_averaged": record["ema"]["n_averaged"],
                             "shadow": load_file(str(folder / record["ema"]["file"]))})


def read_state(folder: Path) -> dict:
    path = folder / STATE_FILE
    if not path.is_file():
        raise ValueError(f"{folder} is not a checkpoint of this project (no {STATE_FILE}; checkpoints written "
                         f"before the safetensors format cannot be resumed, start the run from its final/ export "
                         f"with --init-from instead)")
    return json.loads(path.read_text())
