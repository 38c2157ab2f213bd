"""A base model folder plus a LoRA delta, written as a full model folder by streaming the base's safetensors.

What ``merge --dense-out`` (and mergekit) writes: the base's tensors with ``W + dW`` for every module the delta
adapts. Each weight file is read, changed and written with safetensors, without instantiating the model or
calling ``save_pretrained`` (which would also copy every untouched tensor through a model instance). Each
adapted weight gets ``dW`` cast to its dtype and added in place, exactly as
:meth:`~adaptforge.backbone.Backbone.applied` adds it, in its stored layout (``transposed``: GPT-2's ``Conv1D``
stores ``(in, out)``); ``keep_zeros`` masks ``dW`` where a pruned base is zero.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adaptforge.core import AdaptforgeError, LoraDelta

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
CONFIGS = ("config.json", "generation_config.json")


def weight_files(folder: Path) -> list[str]:
    """The base's safetensors weight files (one file, or the shards its index names); empty if it has none."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        return sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
    return [SINGLE] if (folder / SINGLE).is_file() else []


def stored_dtypes(folder: Path) -> set[torch.dtype]:
    """The dtypes of the floating-point tensors in the base's weight files (read from their headers)."""
    dtypes = set()
    for name in weight_files(folder):
        with safe_open(str(Path(folder) / name), "pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                dtype = f.get_slice(key).get_dtype()
                if dtype.startswith(("F", "BF")):
                    dtypes.add({"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}.get(dtype))
    return dtypes


def write_dense_model(
    base: Path, delta: LoraDelta, out: Path, transposed: Collection[str] = (), keep_zeros: Collection[str] = ()
) -> None:
    """Write ``base + delta`` into the (existing, empty) folder ``out``: the weight files and the configs."""
    base, out = Path(base), Path(out)
    files = weight_files(base)
    if not files:
        raise AdaptforgeError(f"{base} has no safetensors weights ({SINGLE} or {INDEX}) to write a dense model from")
    found: set[str] = set()
    for name in files:
        with safe_open(str(base / name), "pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(base / name))
        for module in delta:
            weight = tensors.get(f"{module}.weight")
            if weight is None:
                continue
            view = weight.T if module in transposed else weight
            dw = delta.dense(module).to(weight.dtype)
            if tuple(view.shape) != tuple(dw.shape):
                raise AdaptforgeError(
                    f"{base / name}: {module}.weight has shape {tuple(view.shape)}, the delta {tuple(dw.shape)}"
                )
            view.add_(dw * (view != 0) if module in keep_zeros else dw)
            found.add(module)
        save_file(tensors, str(out / name), metadata=metadata)
    missing = sorted(set(delta) - found)
    if missing:
        raise AdaptforgeError(f"{base}: no weight for {len(missing)} adapted modules, first {missing[0]}.weight")
    for name in (INDEX, *CONFIGS):
        if (base / name).is_file():
            shutil.copyfile(base / name, out / name)


def can_stream(base: Path, delta: LoraDelta, dtype: torch.dtype) -> bool:
    """Whether :func:`write_dense_model` writes what ``save_pretrained`` of the base loaded in ``dtype`` with
    ``delta`` added would: safetensors weights, every float tensor stored in ``dtype``, a weight per module."""
    base = Path(base)
    files = weight_files(base) if base.is_dir() else []
    if not files or stored_dtypes(base) - {dtype}:
        return False
    keys: set[str] = set()
    for name in files:
        with safe_open(str(base / name), "pt") as f:
            keys.update(f.keys())
    return all(f"{module}.weight" in keys for module in delta)
