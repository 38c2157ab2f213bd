"""A packed safetensors form of a pruned model: the non-zero values of each sparse weight plus a bitmask.

``adaptforge prune --compact`` writes ``model.packed.safetensors`` beside the Hugging Face weights. A weight
is packed when that is smaller: its non-zero values in order (``<key>@values``, the weight's dtype) and one
bit per entry saying where they go (``<key>@mask``, ``numpy.packbits`` of the flattened ``W != 0``, uint8),
and, when some zeros are ``-0.0`` (``W * mask`` leaves them where ``W`` was negative), one bit per zero for
its sign (``<key>@negzero``), so the weights come back bit for bit and the model's fingerprint is unchanged.
At 50% sparsity in float32 that is 50% + 1/32 (+ 1/64) of the weight; any sparsity pattern (unstructured, 2:4, 4:8)
packs the same way, so the loader needs no pattern. Tensors that do not pay off (embeddings, norms, dense
layers) are stored as they are, and tied tensors (shared storage) once, their other names listed as aliases.
The header's ``adaptforge_packed`` metadata (JSON) holds the version, the packed shapes and the aliases.

Why a bitmask rather than CSR or 2:4 indices: it costs 1 bit per entry for every pattern, and positions
need no arithmetic to restore (CSR's column indices cost 16-32 bits per kept value, more than the bitmask
below ~97% sparsity). Unpacking is exact to the bit: the values are copied, not re-quantised.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from adaptforge.core import AdaptforgeError

PACKED_FILE = "model.packed.safetensors"
_META = "adaptforge_packed"
_VERSION = 1


def pack(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata of ``state``'s packed form (see the module docstring)."""
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    aliases: dict[str, str] = {}
    owners: dict[tuple[int, tuple[int, ...], torch.dtype], str] = {}
    for key, tensor in state.items():
        t = tensor.detach().cpu()
        storage = (t.untyped_storage().data_ptr(), tuple(t.shape), t.dtype) if t.numel() else None
        if storage is not None and storage in owners:
            aliases[key] = owners[storage]
            continue
        if storage is not None:
            owners[storage] = key
        if t.is_floating_point() and t.ndim == 2:
            mask = t != 0
            zeros = t.numel() - int(mask.sum())
            if zeros * t.element_size() > (t.numel() + 7) // 8:  # the bitmask costs less than the zeros
                tensors[f"{key}@values"] = t[mask].contiguous()
                tensors[f"{key}@mask"] = torch.from_numpy(np.packbits(mask.reshape(-1).numpy()))
                negative = torch.signbit(t[~mask])  # -0.0 (what W * mask leaves) is kept bit for bit
                if bool(negative.any()):
                    tensors[f"{key}@negzero"] = torch.from_numpy(np.packbits(negative.numpy()))
                shapes[key] = list(t.shape)
                continue
        tensors[key] = t.contiguous()
    meta = {_META: json.dumps({"version": _VERSION, "packed": shapes, "aliases": aliases}, sort_keys=True)}
    return tensors, {"format": "pt", **meta}


def unpack(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], where: str = ""
) -> dict[str, torch.Tensor]:
    """The full state dict back from :func:`pack`'s output (zeros restored where the mask bit is 0)."""
    try:
        header = json.loads(metadata[_META])
        shapes, aliases = header["packed"], header["aliases"]
    except (KeyError, TypeError, json.JSONDecodeError):
        raise AdaptforgeError(f"{where}: not a packed model (no valid '{_META}' header metadata)") from None
    if header.get("version") != _VERSION:
        raise AdaptforgeError(f"{where}: packed format version {header.get('version')!r}; this adaptforge reads 1")
    state = {k: v for k, v in tensors.items() if "@" not in k}
    for key, shape in shapes.items():
        values, bits = tensors[f"{key}@values"], tensors[f"{key}@mask"]
        count = int(np.prod(shape))
        mask = torch.from_numpy(np.unpackbits(bits.numpy(), count=count).astype(bool))
        if int(mask.sum()) != values.numel():
            raise AdaptforgeError(f"{where}: {key}: {values.numel()} values for {int(mask.sum())} mask bits")
        full = torch.zeros(count, dtype=values.dtype)
        full[mask] = values
        signs = tensors.get(f"{key}@negzero")
        if signs is not None:
            negative = torch.from_numpy(np.unpackbits(signs.numpy(), count=count - values.numel()).astype(bool))
            zeros = torch.zeros(count - values.numel(), dtype=values.dtype)
            full[~mask] = torch.where(negative, -zeros, zeros)
        state[key] = full.reshape(shape)
    for key, owner in aliases.items():
        state[key] = state[owner]
    return state


def write_packed(model: torch.nn.Module, folder: str | Path) -> Path:
    """Write ``model``'s state dict packed to ``folder/model.packed.safetensors``; returns the file."""
    tensors, metadata = pack(model.state_dict())
    path = Path(folder) / PACKED_FILE
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_packed(folder: str | Path) -> dict[str, torch.Tensor]:
    """The full state dict of ``folder``'s packed file."""
    path = Path(folder) / PACKED_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has keys(), not iteration
    except Exception as err:  # safetensors raises its own error types for truncated/garbled files
        raise AdaptforgeError(f"{path}: not a readable safetensors file ({err})") from None
    return unpack(tensors, metadata, str(path))


def packed_only(folder: Path) -> bool:
    """A model folder whose weights exist only in packed form (the Hugging Face weights were left out)."""
    hf = any(p.name != PACKED_FILE for p in folder.glob("*.safetensors")) or any(
        folder.glob("*.safetensors.index.json")
    )
    return (folder / PACKED_FILE).is_file() and not hf
