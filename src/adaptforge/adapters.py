"""LoRA tensors <-> PEFT adapter folders, and compatibility checks against a base model.

On disk an adapter is exactly what PEFT writes (``adapter_config.json`` + ``adapter_model.safetensors``
with keys ``base_model.model.<module>.lora_{A,B}.weight``), so ``PeftModel.from_pretrained`` loads
ours and we load PEFT's. The scale of each module is read from the config (``lora_alpha / r``, or
``/ sqrt(r)`` with rsLoRA, with ``rank_pattern``/``alpha_pattern`` overrides), never assumed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.[^.]+)?\.weight$")


class AdapterFormatError(AdaptforgeError):
    """An adapter folder that is not a LoRA adapter we can read exactly."""


class IncompatibleAdapterError(AdaptforgeError):
    """An adapter that does not fit the base model it is being applied to."""


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's rule: a pattern key matches a module whose dotted name ends with it (as a regex)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def module_scale(config: Mapping[str, Any], module: str) -> float:
    r = int(_pattern_value(config.get("rank_pattern") or {}, module, config.get("r", 8)))
    alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8)))
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _check_supported(config: Mapping[str, Any], where: Path) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterFormatError(f"{where}: field 'peft_type' is {config.get('peft_type')!r}; expected 'LORA'")
    unsupported = {
        "use_dora": lambda v: bool(v),
        "modules_to_save": lambda v: bool(v),
        "bias": lambda v: v not in (None, "none"),
        "lora_bias": lambda v: bool(v),
        "trainable_token_indices": lambda v: bool(v),
    }
    for key, is_set in unsupported.items():
        if is_set(config.get(key)):
            raise AdapterFormatError(
                f"{where}: field {key!r} is {config.get(key)!r}; adaptforge reads plain LoRA adapters "
                "(no DoRA, biases, modules_to_save or trainable tokens)"
            )


def read_adapter(folder: str | Path) -> tuple[LoraDelta, dict[str, Any]]:
    """Read a PEFT LoRA folder into a :class:`LoraDelta` (scales folded from the config)."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise AdapterFormatError(f"{path}: missing; a PEFT LoRA folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise AdapterFormatError(f"{config_path}: line {err.lineno}: invalid JSON ({err.msg})") from None
    _check_supported(config, config_path)
    try:
        tensors = load_file(str(weights_path))
    except Exception as err:  # safetensors raises its own error types for truncated/garbled files
        raise AdapterFormatError(f"{weights_path}: not a readable safetensors file ({err})") from None
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise AdapterFormatError(
                f"{weights_path}: tensor {key!r} is not a LoRA factor "
                f"(expected '{KEY_PREFIX}<module>.lora_A.weight' or '.lora_B.weight')"
            )
        factors.setdefault(match["module"], {})[match["factor"]] = tensor
    modules = {}
    for name, pair in sorted(factors.items()):
        if set(pair) != {"A", "B"}:
            missing = ({"A", "B"} - set(pair)).pop()
            raise AdapterFormatError(f"{weights_path}: module {name!r} has no lora_{missing} tensor")
        try:
            modules[name] = LoraModule(A=pair["A"], B=pair["B"], scale=module_scale(config, name))
        except AdaptforgeError as err:
            raise AdapterFormatError(f"{weights_path}: module {name!r}: {err}") from None
    if not modules:
        raise AdapterFormatError(f"{weights_path}: holds no LoRA tensors")
    return LoraDelta(modules), config


def peft_config_for(delta: LoraDelta, base_model: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A PEFT LoraConfig dict that reproduces every module's rank and scale exactly."""
    ranks = {name: m.rank for name, m in delta.modules.items()}
    scales = {name: float(m.scale) for name, m in delta.modules.items()}
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    scale = max(set(scales.values()), key=list(scales.values()).count)
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": scale * r,
        "use_rslora": False,
        # A regex string is matched against full module paths by PEFT: exactly our modules, no others.
        "target_modules": "^(?:" + "|".join(re.escape(n) for n in sorted(delta.modules)) + ")$",
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        # Exact per-module overrides, escaped so that PEFT's regex match selects one module only.
        "rank_pattern": {re.escape(n): k for n, k in ranks.items() if k != r},
        "alpha_pattern": {re.escape(n): scales[n] * ranks[n] for n in ranks if ranks[n] != r or scales[n] != scale},
    }
    if extra:
        config.update(extra)
    return config


def write_adapter(
    delta: LoraDelta, folder: str | Path, base_model: str, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``delta`` as a PEFT LoRA folder (creating it); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, m in delta.modules.items():
        tensors[f"{KEY_PREFIX}{name}.lora_A.weight"] = m.A.detach().contiguous().cpu()
        tensors[f"{KEY_PREFIX}{name}.lora_B.weight"] = m.B.detach().contiguous().cpu()
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    config = peft_config_for(delta, base_model, extra)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder


def check_compatible(delta: LoraDelta, model: torch.nn.Module, what: str = "adapter") -> None:
    """Refuse a delta whose target modules are missing from ``model`` or whose shapes differ."""
    named = dict(model.named_modules())
    for name, m in delta.modules.items():
        module = named.get(name)
        if module is None:
            raise IncompatibleAdapterError(f"{what}: target module {name!r} does not exist in the base model")
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            raise IncompatibleAdapterError(f"{what}: target module {name!r} is not a linear layer in the base model")
        if tuple(weight.shape) != m.shape:
            raise IncompatibleAdapterError(
                f"{what}: module {name!r} has delta shape {m.shape} but the base weight is {tuple(weight.shape)}"
            )
