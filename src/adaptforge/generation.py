"""Generation tasks on causal LMs: chat prompts, the response-only SFT loss, batched greedy decoding, metrics.

The prompt of an example is the model's chat template over its turns, the last user turn being
``description + "\\n\\n" + prompt`` (the instruction and the input); a tokenizer without a template gets
``"User: ...\\nAssistant:"``. Training sees ``prompt ids + response ids + eos`` and is scored on the response
tokens only: the same tokens greedy decoding must produce after the same prompt ids. Prompts longer than
the room left are cut from the left (the end of a prompt, next to the answer, matters most), with a warning.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from adaptforge.backbone import Backbone
from adaptforge.batching import Batch, EncodedSplit, batch_order, make_batch, pad
from adaptforge.core import AdaptforgeError, LoraDelta
from adaptforge.lora.hooks import eval_mode
from adaptforge.progress import Steps
from adaptforge.scorers import CausalLMScorer, LabelInputs, needs_causal
from adaptforge.tasks import Example, Task

log = logging.getLogger(__name__)

IGNORE = -100  # label of a position the loss skips (prompt and padding), as in Hugging Face models


def user_turn(description: str, prompt: str) -> str:
    """The instruction and the input as one user message (just the input when there is no instruction)."""
    return f"{description.strip()}\n\n{prompt}" if description.strip() else prompt


def chat_messages(description: str, example: Example) -> list[dict[str, str]]:
    """An example's conversation up to the answer: earlier turns, then instruction + prompt as the user turn."""
    turns = [{"role": r, "content": c} for r, c in example.history]
    return [*turns, {"role": "user", "content": user_turn(description, example.text)}]


def prompt_text(tokenizer: object, messages: list[dict[str, str]]) -> str:
    """The text the model answers after: its chat template with the generation prompt, else a plain format."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"


def context_length(backbone: Backbone) -> int:
    """Positions the model can attend over (``max_position_embeddings``)."""
    config = backbone.model.config
    return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 0) or 2048)


def check_max_new_tokens(max_new_tokens: int, context: int) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise AdaptforgeError(f"--max-new-tokens must be a positive number of tokens, got {max_new_tokens!r}")
    if max_new_tokens >= context:
        raise AdaptforgeError(
            f"--max-new-tokens {max_new_tokens} leaves no room for the prompt in the model's context of {context} "
            "tokens; use fewer"
        )


def encode_prompts(
    tokenizer: object, description: str, examples: Sequence[Example], budget: int | Sequence[int]
) -> list[tuple[int, ...]]:
    """Prompt token ids of each example, cut from the left to ``budget`` tokens (one per example, or one for all);
    a warning says how many were cut."""
    texts = [prompt_text(tokenizer, chat_messages(description, e)) for e in examples]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    budgets = [budget] * len(ids) if isinstance(budget, int) else [max(1, b) for b in budget]
    long = sum(len(x) > b for x, b in zip(ids, budgets, strict=True))
    if long:
        log.warning(
            "%d of %d prompt(s) were longer than the context left for them (%d tokens or less) and were cut from "
            "the left",
            long,
            len(ids),
            max(budgets),
        )
    return [tuple(x[-b:]) for x, b in zip(ids, budgets, strict=True)]


class SFTScorer(CausalLMScorer):
    """A causal LM on a generation task: ``encode`` gives ``prompt + response + eos`` with the response's start
    as the example's target, and ``loss`` is the mean NLL per response token (supervised fine-tuning). It plugs
    into the trainer where the classification scorers do, so batching, checkpoints and samplers are shared."""

    def encode(self, task: Task, examples: Sequence[Example]) -> EncodedSplit:
        if not task.generative:
            raise AdaptforgeError(f"task {task.name!r} is a classification task; SFT needs a generation task")
        eos = self.tokenizer.eos_token_id
        responses = self.tokenizer([e.label for e in examples], add_special_tokens=False)["input_ids"]
        responses = [tuple(r[: self.max_length - 2]) + ((eos,) if eos is not None else ()) for r in responses]
        budgets = [self.max_length - len(r) for r in responses]
        prompts = encode_prompts(self.tokenizer, task.description, examples, budgets)
        ids, starts = [], []
        for prompt, response in zip(prompts, responses, strict=True):
            ids.append(prompt + response)
            starts.append(len(prompt))
        return EncodedSplit(tuple(ids), tuple(starts))

    def encode_labels(self, task: Task) -> LabelInputs:
        return LabelInputs((), ())

    def logits(self, model: torch.nn.Module, batch: Batch, context: object) -> torch.Tensor:
        raise AdaptforgeError("a generation task has no label logits; it is scored by its response loss")

    def loss(self, model: torch.nn.Module, batch: Batch, labels: LabelInputs) -> torch.Tensor:
        total, count = response_nll(model, batch, self.tokenizer.pad_token_id)
        return total / count.clamp(min=1)

    def summed_loss(self, model: torch.nn.Module, batch: Batch, context: object) -> tuple[torch.Tensor, int]:
        total, count = response_nll(model, batch, self.tokenizer.pad_token_id)
        return total, int(count)


def sft_labels(input_ids: torch.Tensor, mask: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Labels for right-padded ``input_ids``: the token itself on response positions, :data:`IGNORE` on the prompt
    (positions before ``starts``) and on padding, so the loss is the response's alone."""
    positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    keep = (positions >= starts.unsqueeze(-1)) & mask.bool()
    return torch.where(keep, input_ids, torch.full_like(input_ids, IGNORE))


SHARED_PREFIX_MIN = 16  # tokens a batch's rows must share before their prefix gets a pass of its own


def _forward_parameters(model: torch.nn.Module) -> Mapping[str, inspect.Parameter]:
    """The parameters of the causal LM's own forward (under a PEFT wrapper, whose forward takes ``**kwargs``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inspect.signature(base.forward).parameters


def keeps_logits(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs since 4.50)."""
    return "logits_to_keep" in _forward_parameters(model)


def cache_keyword(model: torch.nn.Module) -> str | None:
    """The keyword the model's forward takes a KV cache by (``cache`` in transformers 5.x, ``past_key_values``
    before), None without one."""
    names = _forward_parameters(model)
    return next((k for k in ("cache", "past_key_values") if k in names), None)


def dropout_active(model: torch.nn.Module) -> bool:
    """Whether a forward pass would draw dropout (training mode and a dropout module or attention dropout > 0)."""
    if not model.training:
        return False
    if float(getattr(getattr(model, "config", None), "attention_dropout", 0.0) or 0.0) > 0:
        return True
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training for m in model.modules())


def shared_prefix(input_ids: torch.Tensor, limit: int) -> int:
    """How many leading tokens every row of ``input_ids`` has in common (at most ``limit``)."""
    same = (input_ids[:, :limit] == input_ids[:1, :limit]).all(0)
    return int(same.int().cumprod(0).sum())


def response_logits(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, first: int) -> torch.Tensor:
    """Logits of right-padded rows at positions ``first - 1`` on (the ones predicting response tokens).

    Two savings, both exact. Only those positions go through the output layer (``logits_to_keep``): prompts
    are most of an SFT batch, and a 49k-word vocabulary makes their logits a fifth of the model's compute.
    And the tokens every row begins with (the chat template's system turn and the task's instruction: about
    60% of an SNI batch's tokens) run once, as one row whose KV cache the rows then attend to, instead of once
    per row; the gradient reaches that pass through the cache, so training gets the same loss and gradients
    as from the rows run in full (up to float rounding; ``tests/test_generation.py`` checks both). Not used
    while dropout is drawn: the rows would share one dropout mask over the prefix."""
    keep = input_ids.shape[1] - first + 1
    if not keeps_logits(model):
        return model(input_ids=input_ids, attention_mask=mask).logits[:, first - 1 :]
    shared = shared_prefix(input_ids, first - 1) if len(input_ids) > 1 else 0
    cache_name = cache_keyword(model) if shared >= SHARED_PREFIX_MIN else None
    if cache_name is None or dropout_active(model):
        return model(input_ids=input_ids, attention_mask=mask, logits_to_keep=keep).logits
    out = model(input_ids=input_ids[:1, :shared], use_cache=True, logits_to_keep=1)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    cache.batch_repeat_interleave(len(input_ids))
    rest = {cache_name: cache}
    return model(
        input_ids=input_ids[:, shared:], attention_mask=mask, use_cache=True, logits_to_keep=keep, **rest
    ).logits


def response_nll(model: torch.nn.Module, batch: Batch, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL of the response tokens of a batch (``batch.targets`` = response starts) and their count
    (logits from :func:`response_logits`)."""
    input_ids, mask = pad(batch.ids, pad_id)
    labels = sft_labels(input_ids, mask, batch.targets)
    first = max(1, int(batch.targets.min()))  # the earliest response token; position first - 1 predicts it
    logits = response_logits(model, input_ids, mask, first)
    target = labels[:, first:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=IGNORE, reduction="sum")
    return nll, (target != IGNORE).sum()


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: object,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
    min_new_tokens: int = 0,
) -> list[str]:
    """Greedy answers to token-id prompts, batched by length with left padding (KV cache on), in input order;
    ``min_new_tokens`` holds off the end-of-sequence token that long (vLLM's ``min_tokens``)."""
    outputs: list[str] = [""] * len(prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    steps = Steps("greedy answers: prompts", len(prompts))
    with eval_mode(model) as model:
        for index in batch_order([len(p) for p in prompts], batch_size, shuffle=False):
            input_ids, mask = pad([prompts[i] for i in index], pad_id, left=True)
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens or None,
                do_sample=False,
                num_beams=1,
                temperature=None,
                top_p=None,
                top_k=None,
                use_cache=True,
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            for row, i in enumerate(index):
                outputs[i] = tokenizer.decode(out[row, input_ids.shape[1] :], skip_special_tokens=True).strip()
            if on_batch:
                on_batch(len(index))
            else:
                steps.advance(len(index))
    return outputs


def normalize(text: str) -> str:
    """Case, surrounding punctuation and runs of whitespace do not count against an exact match."""
    return " ".join(text.casefold().split()).strip(" .!?;:,\"'")


def exact_match(predictions: Sequence[str], golds: Sequence[str]) -> float:
    if not golds:
        return float("nan")
    return sum(normalize(p) == normalize(g) for p, g in zip(predictions, golds, strict=True)) / len(golds)


def rouge_l(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (longest common subsequence of words, Lin 2004) with the ``rouge-score`` package."""
    from rouge_score import rouge_scorer

    if not golds:
        return float("nan")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return sum(scorer.score(g, p)["rougeL"].fmeasure for p, g in zip(predictions, golds, strict=True)) / len(golds)


@dataclass(frozen=True)
class GenerationResult:
    """One (adapter, generation task) cell: greedy answers scored by exact match and ROUGE-L, and the mean NLL per
    gold response token. ``primary`` (exact match) is what grids average, rank and take the worst of."""

    task: str
    adapter: str | None
    split: str
    exact_match: float
    rouge_l: float
    n: int
    loss: float
    subset: str = "all"

    primary_metric = "exact_match"

    @property
    def primary(self) -> float:
        return self.exact_match

    def cell_text(self) -> str:
        return f"{self.exact_match:.3f} / {self.rouge_l:.3f}"

    def to_json(self) -> dict:
        return asdict(self)

    def metric_values(self) -> dict[str, float]:
        return {"exact_match": self.exact_match, "rouge_l": self.rouge_l, "loss": self.loss}


def mean_response_loss(scorer: SFTScorer, model: torch.nn.Module, encoded: EncodedSplit, batch_size: int) -> float:
    """Mean NLL per gold response token over a split (token-weighted, like perplexity)."""
    total, count = 0.0, 0
    with torch.no_grad(), eval_mode(model) as model:
        for index in batch_order(encoded.lengths(), batch_size, shuffle=False):
            nll, n = response_nll(model, make_batch(encoded, index), scorer.tokenizer.pad_token_id)
            total, count = total + float(nll), count + int(n)
    return total / count if count else float("nan")


def evaluate_generation(
    backbone: Backbone,
    task: Task,
    split: str = "test",
    delta: LoraDelta | None = None,
    adapter: str | None = None,
    limit: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    max_length: int = 256,
    on_batch: Callable[[int], None] | None = None,
) -> GenerationResult:
    """Greedy answers of ``delta`` (None: the base model) on a split of a generation task, with their metrics."""
    from adaptforge.evaluate import subset_of

    if backbone.kind != "causal":
        raise AdaptforgeError(needs_causal(backbone))
    context = context_length(backbone)
    check_max_new_tokens(max_new_tokens, context)
    examples = task.sample(split, limit)
    scorer = SFTScorer(backbone, max_length=max_length)
    prompts = encode_prompts(backbone.tokenizer, task.description, examples, context - max_new_tokens)
    with backbone.applied(delta) as model:
        answers = generate(model, backbone.tokenizer, prompts, max_new_tokens, batch_size, on_batch)
        loss = mean_response_loss(scorer, model, scorer.encode(task, examples), batch_size)
    golds = [e.label for e in examples]
    return GenerationResult(
        task.name,
        adapter,
        split,
        exact_match(answers, golds),
        rouge_l(answers, golds),
        len(examples),
        loss,
        subset_of(task, split, limit),
    )
