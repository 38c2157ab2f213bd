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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adaptforge.core import AdaptforgeError, LoraDelta, LoraModule
from adaptforge.layers import is_lora_layer, layer_type, weight_view
from adaptforge.structured import parse_json

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.[^.]+)?\.weight$")


class AdapterFormatError(AdaptforgeError):
    """An adapter folder that is not a LoRA adapter we can read exactly."""


class IncompatibleAdapterError(AdaptforgeError):
    """An adapter that does not fit the base model it is being applied to."""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class PeftLoraConfig:
    """The fields of a PEFT ``adapter_config.json`` that decide what a LoRA folder means, validated once.

    Defaults are PEFT's (``r`` 8, ``lora_alpha`` 8). Every bad field is refused with its name and what was
    expected, so no malformed config reaches the arithmetic (where it would fail with a traceback or,
    worse, silently scale the adapter wrongly).
    """

    r: int = 8
    lora_alpha: float = 8.0
    use_rslora: bool = False
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    target_modules: str | tuple[str, ...] | None = None
    base_model_name_or_path: str | None = None

    @classmethod
    def parse(cls, raw: object, where: Path | str) -> PeftLoraConfig:
        if not isinstance(raw, dict):
            raise AdapterFormatError(f"{where}: expected a JSON object, got {type(raw).__name__}")

        def bad(key: str, expected: str) -> AdapterFormatError:
            return AdapterFormatError(f"{where}: field {key!r} is {raw.get(key)!r}; expected {expected}")

        if raw.get("peft_type", "LORA") != "LORA":
            raise bad("peft_type", "'LORA' (adaptforge reads LoRA adapters only)")
        r = raw.get("r", 8)
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise bad("r", "a positive integer (the LoRA rank)")
        alpha = raw.get("lora_alpha", 8)
        if not _is_number(alpha) or not math.isfinite(alpha):
            raise bad("lora_alpha", "a finite number")
        rslora = raw.get("use_rslora") or False
        if not isinstance(rslora, bool):
            raise bad("use_rslora", "true or false")
        # fan_in_fan_out (GPT-2 Conv1D bases) only says the base weight is stored (in, out); the factors mean
        # the same either way (A: r x in, B: out x r), and the layout is taken from the model (adaptforge.layers).
        if not isinstance(raw.get("fan_in_fan_out", False), bool):
            raise bad("fan_in_fan_out", "true or false")
        patterns: dict[str, dict[str, Any]] = {}
        for key, ok, expected in (
            ("rank_pattern", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "positive integers"),
            ("alpha_pattern", lambda v: _is_number(v) and math.isfinite(v), "finite numbers"),
        ):
            value = raw.get(key) or {}
            if not isinstance(value, dict):
                raise bad(key, "an object mapping module-name patterns to values")
            for pattern, v in value.items():
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise AdapterFormatError(
                        f"{where}: field {key!r}: {pattern!r} is not a valid regex ({err})"
                    ) from None
                if not ok(v):
                    raise AdapterFormatError(f"{where}: field {key!r}: value {v!r} of {pattern!r}; expected {expected}")
            patterns[key] = dict(value)
        targets = raw.get("target_modules")
        if isinstance(targets, str):
            try:
                re.compile(targets)
            except re.error as err:
                raise bad("target_modules", f"a valid regex or a list of module names ({err})") from None
        elif isinstance(targets, list) and all(isinstance(t, str) and t for t in targets):
            targets = tuple(targets)
        elif targets is not None:
            raise bad("target_modules", "a regex string or a list of module names")
        base = raw.get("base_model_name_or_path")
        if base is not None and not isinstance(base, str):
            raise bad("base_model_name_or_path", "a string or null")
        for key, is_set in _UNSUPPORTED.items():
            if is_set(raw.get(key)):
                raise AdapterFormatError(
                    f"{where}: field {key!r} is {raw.get(key)!r}; adaptforge reads plain LoRA adapters "
                    "(no DoRA, biases, modules_to_save or trainable tokens)"
                )
        return cls(r, float(alpha), rslora, patterns["rank_pattern"], patterns["alpha_pattern"], targets, base)

    def rank(self, module: str) -> int:
        return int(_pattern_value(self.rank_pattern, module, self.r))

    def scale(self, module: str) -> float:
        r = self.rank(module)
        alpha = float(_pattern_value(self.alpha_pattern, module, self.lora_alpha))
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def targets(self, module: str) -> bool:
        """PEFT's rule: a regex string must match the whole module path; a list entry matches a name suffix."""
        if self.target_modules is None:
            return True
        if isinstance(self.target_modules, str):
            return re.fullmatch(self.target_modules, module) is not None
        return any(matches_target(module, t) for t in self.target_modules)


def matches_target(module: str, target: str) -> bool:
    """PEFT's rule for a ``target_modules`` list entry: the module path itself or its last dotted parts."""
    return module == target or module.endswith("." + target)


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's rule: a pattern key matches a module whose dotted name ends with it (as a regex)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


_UNSUPPORTED = {
    "use_dora": lambda v: bool(v),
    "modules_to_save": lambda v: bool(v),
    "bias": lambda v: v not in (None, "none"),
    "lora_bias": lambda v: bool(v),
    "trainable_token_indices": lambda v: bool(v),
}


def read_adapter(folder: str | Path) -> tuple[LoraDelta, dict[str, Any]]:
    """Read a PEFT LoRA folder into a :class:`LoraDelta` (scales folded from the config).

    The config is validated (:class:`PeftLoraConfig`) and checked against the tensors as PEFT would on load:
    every module's factor shapes must agree with its configured rank and be covered by ``target_modules``;
    factors must be finite floating-point tensors.
    """
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise AdapterFormatError(f"{path}: missing; a PEFT LoRA folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        text = config_path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise AdapterFormatError(f"{config_path}: unreadable ({err})") from None
    config = parse_json(text, str(config_path), AdapterFormatError)
    typed = PeftLoraConfig.parse(config, config_path)
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
        if not typed.targets(name):
            raise AdapterFormatError(
                f"{weights_path}: module {name!r} has LoRA tensors but {config_path.name} field 'target_modules' "
                f"({typed.target_modules!r}) does not cover it"
            )
        rank = typed.rank(name)
        if pair["A"].ndim != 2 or pair["A"].shape[0] != rank:
            raise AdapterFormatError(
                f"{weights_path}: module {name!r} lora_A has shape {tuple(pair['A'].shape)} but {config_path.name} "
                f"gives it rank {rank} (field 'r' or 'rank_pattern'); the config does not describe these tensors"
            )
        try:
            modules[name] = LoraModule(A=pair["A"], B=pair["B"], scale=typed.scale(name))
        except AdaptforgeError as err:
            raise AdapterFormatError(f"{weights_path}: module {name!r}: {err}") from None
    if not modules:
        raise AdapterFormatError(f"{weights_path}: holds no LoRA tensors")
    delta = LoraDelta(modules)
    bad = delta.non_finite()
    if bad is not None:
        raise AdapterFormatError(f"{weights_path}: {bad}")
    return delta, config


def peft_config_for(delta: LoraDelta, base_model: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A PEFT LoraConfig dict that reproduces every module's rank and scale exactly (``extra`` sets
    ``fan_in_fan_out`` for a GPT-2-style base, see :func:`adaptforge.layers.mostly_transposed`)."""
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
        if not is_lora_layer(module):
            raise IncompatibleAdapterError(
                f"{what}: target module {name!r} is a {layer_type(module)} in the base model; "
                "LoRA targets nn.Linear or GPT-2's Conv1D layers"
            )
        weight = weight_view(module)
        if tuple(weight.shape) != m.shape:
            raise IncompatibleAdapterError(
                f"{what}: module {name!r} has delta shape {m.shape} but the base weight is {tuple(weight.shape)}"
                " (out, in)"
            )
