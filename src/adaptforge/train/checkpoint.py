"""Resumable training checkpoints, stored with safetensors (no pickle) and written atomically.

A checkpoint holds the LoRA parameters, the AdamW moments, the global torch RNG state (dropout),
the step and the resolved config; the data order is a pure function of (seed, epoch), so a
resumed run replays exactly the batches the killed one would have seen.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adaptforge.core import AdaptforgeError
from adaptforge.durable import fsync_dir, fsync_tree, remove_inside, stage_folder

STATE_FILE = "state.safetensors"
META_FILE = "state.json"
# What a resume reads from state.json: the trainer's keys and this module's own.
META_FIELDS = (
    "step",
    "param_names",
    "groups",
    "config",
    "tasks",
    "base",
    "data",
    "history",
    "curves",
    "draws",
    "sampler",
)


@dataclass
class Checkpoint:
    step: int
    meta: dict[str, Any]
    params: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # the trainer's own tensors (snapshots)


def save_checkpoint(
    folder: Path,
    step: int,
    meta: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write to a temporary sibling folder, fsync, then swap it in with a rename."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    tensors: dict[str, torch.Tensor] = {f"param/{n}": params[n].detach().clone() for n in names}
    opt_state = optimizer.state_dict()
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"opt/{names[idx]}/{key}"] = torch.as_tensor(value).clone()
    tensors["rng/torch"] = torch.get_rng_state()
    tensors.update({f"extra/{k}": v.detach().contiguous() for k, v in (extra or {}).items()})
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt_state["param_groups"]]
    tmp = stage_folder(folder)
    save_file(tensors, str(tmp / STATE_FILE))
    (tmp / META_FILE).write_text(json.dumps({"step": step, "param_names": names, "groups": groups, **meta}, indent=1))
    fsync_tree(tmp)
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)
    remove_inside(old, folder.parent)


def load_checkpoint(folder: Path) -> Checkpoint | None:
    """The last complete checkpoint in ``folder`` (or its ``.old`` twin if a swap was interrupted)."""
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / META_FILE).is_file() and (candidate / STATE_FILE).is_file():
            break
    else:
        return None
    try:
        meta = json.loads((candidate / META_FILE).read_text())
        tensors = load_file(str(candidate / STATE_FILE))
    except Exception as err:
        raise AdaptforgeError(f"{candidate}: checkpoint is unreadable ({err}); delete it to start over") from None
    if not isinstance(meta, dict):
        raise AdaptforgeError(f"{candidate / META_FILE}: expected a JSON object; delete the folder to start over")
    missing = [key for key in META_FIELDS if key not in meta]
    if missing:
        raise AdaptforgeError(
            f"{candidate / META_FILE}: missing field(s) {', '.join(repr(k) for k in missing)}; the checkpoint is "
            "incomplete, delete the folder to start over"
        )
    names = meta["param_names"]
    absent = [k for k in [f"param/{n}" for n in names] + ["rng/torch"] if k not in tensors]
    if absent:
        raise AdaptforgeError(
            f"{candidate / STATE_FILE}: tensor {absent[0]!r} is missing; delete the folder to start over"
        )
    params = {n: tensors[f"param/{n}"] for n in names}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for idx, name in enumerate(names):
        prefix = f"opt/{name}/"
        entry = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if entry:
            state[idx] = entry
    groups = [{**g, "params": list(range(len(names)))} for g in meta["groups"]]
    extra = {k[len("extra/") :]: v for k, v in tensors.items() if k.startswith("extra/")}
    return Checkpoint(meta["step"], meta, params, {"state": state, "param_groups": groups}, tensors["rng/torch"], extra)


def restore(checkpoint: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in checkpoint.params if n not in params]
    if missing:
        raise AdaptforgeError(f"checkpoint has parameters the model lacks, e.g. {missing[0]!r}")
    with torch.no_grad():
        for name, value in checkpoint.params.items():
            params[name].copy_(value)
    optimizer.load_state_dict(checkpoint.optimizer)
    torch.set_rng_state(checkpoint.rng)
