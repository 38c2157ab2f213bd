"""Training snapshots stored with an adapter: ``snapshots.safetensors`` in the adapter's folder.

ICM-LoRA (Shao et al. 2025, https://arxiv.org/abs/2501.17635) learns its generator from many checkpoints of
each task's LoRA run, not one final adapter. ``adaptforge train --snapshots N`` keeps N evenly spaced copies
of the LoRA factors; they are one file beside the PEFT files, hashed into the catalog like them, never
separate adapters. Keys are ``step<S>.<module>.lora_A`` / ``.lora_B`` (the scale is the adapter's own, one per
module, in ``adapter_config.json``); the safetensors metadata holds the steps and a few labelled training
examples of the task (``demonstrations``), so a generator conditioned on demonstrations (the in-context task
vector) can be fitted from the library alone. The reference code keeps one ``.safetensors`` per epoch and
the task's data elsewhere; one file per adapter keeps the library's atomic add and checksums unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule

SNAPSHOTS_FILE = "snapshots.safetensors"
FORMAT = "adaptforge-snapshots"


def snapshot_steps(total: int, n: int) -> list[int]:
    """``n`` evenly spaced steps in ``1..total`` ending at ``total`` (fewer if the run is shorter)."""
    if n <= 0 or total <= 0:
        return []
    return sorted({max(1, round(total * (i + 1) / n)) for i in range(n)})


@dataclass
class Snapshots:
    """LoRA factors at several training steps (scales are those of the final adapter) and demonstrations."""

    steps: list[int]
    factors: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]  # per step: module -> (A, B)
    demonstrations: list[dict[str, str]] = field(default_factory=list)  # {"text", "label"}

    def __post_init__(self) -> None:
        if len(self.steps) != len(self.factors):
            raise AdaptforgeError(f"snapshots: {len(self.steps)} steps but {len(self.factors)} sets of factors")

    def __len__(self) -> int:
        return len(self.steps)

    def deltas(self, scales: dict[str, float]) -> list[LoraDelta]:
        """Each snapshot as a :class:`LoraDelta` with the adapter's per-module ``scales``."""
        return [LoraDelta({m: LoraModule(A=a, B=b, scale=scales[m]) for m, (a, b) in f.items()}) for f in self.factors]

    def write(self, folder: Path) -> Path:
        tensors: dict[str, torch.Tensor] = {}
        for step, f in zip(self.steps, self.factors, strict=True):
            for module, (a, b) in f.items():
                tensors[f"step{step}.{module}.lora_A"] = a.detach().float().contiguous().cpu()
                tensors[f"step{step}.{module}.lora_B"] = b.detach().float().contiguous().cpu()
        meta = {"format": FORMAT, "steps": json.dumps(self.steps), "demonstrations": json.dumps(self.demonstrations)}
        path = Path(folder) / SNAPSHOTS_FILE
        save_file(tensors, str(path), metadata=meta)
        return path


def read_snapshots(path: Path) -> Snapshots:
    """The snapshots file at ``path``; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise AdaptforgeError(f"{path}: missing; train with `adaptforge train --snapshots N` to keep snapshots")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        steps = [int(s) for s in json.loads(meta["steps"])]
        demos = [{"text": str(d["text"]), "label": str(d["label"])} for d in json.loads(meta["demonstrations"])]
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        raise AdaptforgeError(f"{path}: malformed snapshots metadata ({type(err).__name__}: {err})") from None
    except Exception as err:  # safetensors' own errors for a garbled file
        raise AdaptforgeError(f"{path}: not a readable safetensors file ({err})") from None
    if meta.get("format") != FORMAT:
        raise AdaptforgeError(f"{path}: metadata field 'format' is not {FORMAT!r}")
    factors: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []
    for step in steps:
        prefix = f"step{step}."
        modules = sorted({k[len(prefix) :].rsplit(".", 1)[0] for k in tensors if k.startswith(prefix)})
        if not modules:
            raise AdaptforgeError(f"{path}: step {step} is listed in the metadata but has no tensors")
        factors.append({m: (tensors[f"{prefix}{m}.lora_A"], tensors[f"{prefix}{m}.lora_B"]) for m in modules})
    return Snapshots(steps, factors, demos)


def demonstrations_of(examples: Sequence[object]) -> list[dict[str, str]]:
    """``{"text", "label"}`` dicts of task examples (objects with ``text`` and ``label``)."""
    return [{"text": str(e.text), "label": str(e.label)} for e in examples]  # type: ignore[attr-defined]
