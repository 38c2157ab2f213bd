"""Test-time adaptation of a causal LM to one document: adapt on its known prefix, score its suffix.

The text analogue of MOTIA ("Be-Your-Outpainter", Wang et al. 2024, https://arxiv.org/abs/2403.13745). MOTIA
outpaints a video in two phases: *input-specific adaptation*, a fresh LoRA trained on the one video to extend
(parts of its known frames are masked and regenerated), then *pattern-aware outpainting*, generation with that
LoRA at a strength that depends on position (its spatial-aware insertion: weight 1 over the known region and
``exp(-d / (k * D))`` at distance ``d`` from it, ``D`` the size of the expansion, ``k`` in {1, 2, inf}). Here
a document's first tokens are the known content and its suffix is what is extended; the suffix is scored
(its perplexity) rather than generated, so methods compare on one number. Methods (:data:`DOCUMENT_METHODS`):

* ``input-lora``: a fresh LoRA learned on the prefix alone for ``steps`` steps (next-token loss over the
  whole prefix, or ``span``: MOTIA's pseudo-outpainting, the loss on a random tail span of the prefix given
  what precedes it), the suffix scored in one forward pass with the LoRA at a constant strength or MOTIA's
  decaying one (:func:`strength_schedule`), then the LoRA discarded;
* ``dynamic-eval``: dynamic evaluation (Krause et al. 2018, https://arxiv.org/abs/1709.07432): the document
  read in chunks, each chunk scored and then trained on (one step), a fresh LoRA or the whole model updated
  online; the keys and values of earlier chunks are kept as computed (truncated back-propagation, as in the
  paper's recurrent models).

The plain pass (the model unadapted, one forward over the document) is scored beside every method: it is
the baseline and the unit of cost. Every run puts the model back as it found it (the tests check the weights
bit for bit).
"""

from __future__ import annotations

import contextlib
import math
import time
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch

from adaptforge.backbone import Backbone
from adaptforge.core import AdaptforgeError, Registry
from adaptforge.lora.hooks import eval_mode
from adaptforge.methods import Method
from adaptforge.params import Params, param
from adaptforge.tta.tunable import LiveLora, fresh_lora_on, last_blocks

MOTIA_URL = "https://arxiv.org/abs/2403.13745"
KRAUSE_URL = "https://arxiv.org/abs/1709.07432"
STRENGTHS = ("constant", "decay")
OBJECTIVES = ("next-token", "span")
UPDATES = ("lora", "full")


@dataclass(frozen=True)
class Document:
    """One document's token ids (``[1, n]``) and the position of its first suffix token (``cut``)."""

    ids: torch.Tensor
    cut: int

    @property
    def n(self) -> int:
        return int(self.ids.shape[1])


@dataclass(frozen=True)
class DocScore:
    """A document's suffix under a method: per-token NLL (nats), and what the adaptation cost."""

    nll: torch.Tensor
    seconds: float
    steps: int = 0
    trained_tokens: int = 0

    @property
    def perplexity(self) -> float:
        return math.exp(float(self.nll.double().mean()))


@dataclass(frozen=True, kw_only=True)
class DocumentParams(Params):
    """Parameters every document method takes."""

    seed: int = param(0, ge=0, help="seed of the fresh LoRA's initialisation and of the span draws")


@dataclass(frozen=True, kw_only=True)
class LoraParams(DocumentParams):
    """A fresh LoRA: rank, scale ``alpha / rank``, Adam learning rate, where it sits."""

    lr: float = param(1e-3, gt=0, help="learning rate (Adam for a LoRA, SGD for the full model)")
    rank: int = param(8, ge=1, help="rank of the fresh LoRA")
    alpha: float = param(16.0, gt=0, help="its scale is alpha / rank")
    blocks: int = param(0, ge=0, help="LoRA only on the last this many transformer blocks (0: every block)")
    mlp: bool = param(
        False, help="also on the MLP projections of the base's default targets (settings were chosen on attention)"
    )


@dataclass(frozen=True, kw_only=True)
class InputLoraParams(LoraParams):
    # 5: about the most a 10x-plain-pass budget holds on SmolLM2 with 256-token prefixes (LoRA training runs at
    # ~220 tokens/s on the project's 2 cores, docs/experiments/llm.md); benchmarks/motia_llm.py chooses on dev
    steps: int = param(5, ge=0, help="training steps on the prefix (0: the LoRA adds nothing)")
    objective: str = param(
        "next-token", choices=OBJECTIVES, help="next-token loss on the whole prefix, or on a random tail span of it"
    )
    span_max: float = param(0.4, gt=0, le=1, help="span: the tail span is up to this fraction of the prefix")
    strength: str = param(
        "constant", choices=STRENGTHS, help="LoRA strength over the suffix: constant, or decay (MOTIA's insertion)"
    )
    decay_k: float = param(1.0, gt=0, help="decay: strength exp(-d / (decay_k * suffix length)) at distance d")


@dataclass(frozen=True, kw_only=True)
class DynamicEvalParams(LoraParams):
    update: str = param("lora", choices=UPDATES, help="what is updated online: a fresh LoRA or the whole model")
    chunk: int = param(32, ge=1, help="tokens per chunk: each chunk is scored, then trained on for one step")


def strength_schedule(kind: str, n: int, cut: int, k: float = 1.0) -> torch.Tensor | None:
    """LoRA strength per input position of a document of ``n`` tokens whose suffix starts at ``cut``:
    ``None`` for ``constant`` (1 everywhere); for ``decay``, 1 over the prefix and
    ``exp(-d / (k * (n - cut)))`` at position ``cut - 1 + d`` (MOTIA's spatial-aware insertion, with the
    suffix as the expansion). The strength at a position shapes the prediction of the next token."""
    if kind == "constant":
        return None
    if kind != "decay":
        raise AdaptforgeError(f"strength must be one of {', '.join(STRENGTHS)}, got {kind!r}")
    d = (torch.arange(n) - (cut - 1)).clamp_min(0).float()
    return torch.exp(-d / (k * max(n - cut, 1)))


class ScheduledLora(LiveLora):
    """A trainable LoRA through hooks whose output is multiplied, position by position, by ``strength``
    (``[n]``; ``None``: 1)."""

    strength: torch.Tensor | None = None

    def _hook(self, index: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            x = args[0]
            A, B = self.A[index].to(x.dtype), self.B[index].to(x.dtype)
            added = ((x @ A.T) @ B.T) * self.scales[index]
            if self.strength is not None:
                added = added * self.strength.to(added.dtype)[: x.shape[-2], None]
            return output + added

        return hook


def new_lora(backbone: Backbone, p: LoraParams) -> ScheduledLora:
    """A fresh LoRA (``B = 0``: it adds nothing yet) on the attention layers among the base's default targets
    (and its MLP ones with ``p.mlp``) in its last ``p.blocks`` blocks."""
    model = backbone.model
    within = last_blocks(model, p.blocks, backbone.name)
    shapes = {
        name: shape
        for name, shape in backbone.target_shapes().items()
        if within(name) and (p.mlp or "attn" in name.split(".")[-2])
    }
    if not shapes:
        raise AdaptforgeError(f"{backbone.name}: no linear {list(backbone.default_targets())} layer to put a LoRA on")
    return ScheduledLora(model, fresh_lora_on(shapes, p.rank, p.alpha, torch.Generator().manual_seed(p.seed)))


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL of ``targets`` (``[t]``) under ``logits`` (``[t, vocab]``), in fp32."""
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")


@torch.no_grad()
def suffix_nll(model: torch.nn.Module, doc: Document) -> torch.Tensor:
    """NLL of every suffix token given all tokens before it, in one forward pass over the document."""
    logits = model(input_ids=doc.ids).logits[0, doc.cut - 1 : -1]
    return token_nll(logits, doc.ids[0, doc.cut :])


def plain_score(backbone: Backbone, doc: Document) -> DocScore:
    """The unadapted model's suffix NLL, timed: the baseline and the unit of cost."""
    with eval_mode(backbone.model):
        t0 = time.perf_counter()
        nll = suffix_nll(backbone.model, doc)
        return DocScore(nll, time.perf_counter() - t0)


DocP = TypeVar("DocP", bound=DocumentParams)


class DocumentMethod(Method[DocP]):
    """Adapt on a document's prefix (or read it online) and score its suffix; the model is left as found."""

    kind = "document method"
    params_base = DocumentParams
    params_type: ClassVar[type[Params]] = DocumentParams

    @abstractmethod
    def score(self, backbone: Backbone, doc: Document, params: DocP) -> DocScore:
        """The suffix's per-token NLL after adapting, and the seconds adaptation and scoring took."""


DOCUMENT_METHODS: Registry[type[DocumentMethod[Any]]] = Registry(
    "document method",
    base=DocumentMethod,
    entries={
        "input-lora": "adaptforge.tta.document:InputLoraDocument",
        "dynamic-eval": "adaptforge.tta.document:DynamicEval",
    },
)


@DOCUMENT_METHODS.register
class InputLoraDocument(DocumentMethod[InputLoraParams]):
    """Input-specific LoRA, MOTIA's two phases on text: a fresh LoRA learned on the document's prefix
    (``steps`` Adam steps), the suffix scored with it at a constant or decaying strength, the LoRA discarded."""

    name = "input-lora"
    reference_url = MOTIA_URL

    def score(self, backbone: Backbone, doc: Document, params: InputLoraParams) -> DocScore:
        p = params
        model = backbone.model
        lora = new_lora(backbone, p)
        generator = torch.Generator().manual_seed(p.seed)
        prefix = doc.ids[:, : doc.cut]
        trained = 0
        t0 = time.perf_counter()
        with eval_mode(model), lora:
            optimizer = torch.optim.Adam(lora.parameters(), lr=p.lr)
            for _ in range(p.steps):
                labels = prefix.clone()
                if p.objective == "span":  # hide nothing, score only a random tail span given the rest
                    span = max(1, math.ceil(float(torch.rand((), generator=generator)) * p.span_max * (doc.cut - 1)))
                    labels[:, : doc.cut - span] = -100
                trained += int((labels[:, 1:] != -100).sum())
                with torch.enable_grad():
                    loss = model(input_ids=prefix, labels=labels).loss
                    if not torch.isfinite(loss):
                        raise AdaptforgeError(f"input-lora: the prefix loss became {float(loss)}; lower lr")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                optimizer.step()
            lora.strength = strength_schedule(p.strength, doc.n, doc.cut, p.decay_k)
            nll = suffix_nll(model, doc)
        return DocScore(nll, time.perf_counter() - t0, p.steps, trained)


@contextlib.contextmanager
def whole_model_trainable(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Every parameter of ``model`` trainable for the block; values, flags and gradients put back after."""
    params = list(model.parameters())
    saved = [(p, p.detach().clone(), p.requires_grad) for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield params
    finally:
        with torch.no_grad():
            for p, value, flag in saved:
                p.copy_(value)
                p.requires_grad_(flag)
                p.grad = None


def detach_cache(cache: Any) -> None:
    """Cut the graph behind a key/value cache so the next chunk's backward pass stops at it."""
    for layer in getattr(cache, "layers", []):
        for attr in ("keys", "values"):
            value = getattr(layer, attr, None)
            if isinstance(value, torch.Tensor):
                setattr(layer, attr, value.detach())


def chunks(start: int, end: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, end)) for s in range(start, end, size)]


@DOCUMENT_METHODS.register
class DynamicEval(DocumentMethod[DynamicEvalParams]):
    """Dynamic evaluation (Krause et al. 2018): the document read chunk by chunk (prefix chunks, then suffix
    chunks), each scored and then trained on for one step; a fresh LoRA (Adam) or the whole model (SGD)."""

    name = "dynamic-eval"
    reference_url = KRAUSE_URL

    def score(self, backbone: Backbone, doc: Document, params: DynamicEvalParams) -> DocScore:
        p = params
        model = backbone.model
        t0 = time.perf_counter()
        with contextlib.ExitStack() as stack:
            stack.enter_context(eval_mode(model))
            if p.update == "full":
                optimizer: torch.optim.Optimizer = torch.optim.SGD(
                    stack.enter_context(whole_model_trainable(model)), lr=p.lr
                )
            else:
                lora = new_lora(backbone, p)
                stack.enter_context(lora)
                optimizer = torch.optim.Adam(lora.parameters(), lr=p.lr)
            from transformers import DynamicCache

            cache = DynamicCache()
            ids, parts, steps, trained = doc.ids, [], 0, 0
            # inputs at positions s..e-1 predict tokens s+1..e; prefix chunks end where the suffix's first
            # prediction (made at position cut - 1) begins
            for s, e in chunks(0, doc.cut - 1, p.chunk) + chunks(doc.cut - 1, doc.n - 1, p.chunk):
                with torch.enable_grad():
                    out = model(input_ids=ids[:, s:e], past_key_values=cache, use_cache=True)
                    nll = token_nll(out.logits[0], ids[0, s + 1 : e + 1])
                    if s >= doc.cut - 1:
                        parts.append(nll.detach())
                    loss = nll.mean()
                    if not torch.isfinite(loss):
                        raise AdaptforgeError(f"dynamic-eval: the chunk loss became {float(loss)}; lower lr")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                optimizer.step()
                detach_cache(out.past_key_values)
                cache = out.past_key_values
                steps += 1
                trained += e - s
        return DocScore(torch.cat(parts), time.perf_counter() - t0, steps, trained)
