"""Test-time training on nearest neighbours (TTT-NN).

Hardt & Sun 2024 ("Test-Time Training on Nearest Neighbors for Large Language Models",
https://arxiv.org/abs/2305.18466) retrieve the input's nearest neighbours from a large training corpus by
embedding and fine-tune on them for one gradient step each before predicting. Here the corpus is the
labelled training pools of the library's tasks (their ``train`` splits, a seeded label-stratified sample
of ``pool_per_task`` each); the input's ``neighbours`` nearest pool examples (cosine of the scorer's
sentence embeddings) are trained on, each scored against its own task's labels and description
(``objective="labels"``) or, on a causal LM, by the paper's language-model loss on their text
(``objective="lm"``). Then the input is predicted and the update discarded (or, in stream mode, kept).

Pool and queries are embedded by the model as it is when embedded: the pool with the task adapter on,
before any update; queries before their own update (in stream mode, after earlier ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from adaptforge.batching import EncodedSplit, make_batch
from adaptforge.core import AdaptforgeError
from adaptforge.params import param
from adaptforge.scorers import LabelInputs
from adaptforge.tasks import Example
from adaptforge.tta.base import (
    TTA_METHODS,
    GradientParams,
    Inputs,
    Session,
    Step,
    TtaMethod,
    TtaSetup,
    lm_loss,
)
from adaptforge.tta.entropy import UPDATES, norm_reason, tunable_for

TTT_NN_URL = "https://arxiv.org/abs/2305.18466"


@dataclass(frozen=True, kw_only=True)
class TttNnParams(GradientParams):
    """How many neighbours, from how large a pool per task, trained on with which objective."""

    update: str = param("lora", choices=UPDATES, help="lora: the adapter's factors; norm: norm affine parameters")
    neighbours: int = param(8, ge=1, help="nearest pool examples per input")
    pool_per_task: int | None = param(512, ge=1, help="train examples per pool task (seeded sample; null: all)")
    objective: str = param("labels", choices=("labels", "lm"), help="labels: each task's own; lm: LM loss (causal)")


@dataclass
class PoolPart:
    """One pool task's sampled examples, encoded, with its labels encoded."""

    examples: tuple[Example, ...]
    encoded: EncodedSplit
    labels: LabelInputs


class TttNnSession(Session[TttNnParams]):
    def start(self) -> None:
        p = self.params
        self.parts: list[PoolPart] = []
        owner: list[tuple[int, int]] = []
        texts: list[str] = []
        for t, task in enumerate(self.setup.pool):
            examples = task.sample("train", p.pool_per_task, seed=p.seed)
            self.parts.append(PoolPart(examples, self.scorer.encode(task, examples), self.scorer.encode_labels(task)))
            owner += [(t, i) for i in range(len(examples))]
            texts += [e.text for e in examples]
        self.owner = owner
        self.texts = texts
        self.embeddings = self.scorer.embed_texts(texts)

    def neighbours(self, inputs: Inputs) -> list[int]:
        """Pool positions of the nearest examples of every input (each once, nearest first per input)."""
        p = self.params
        query = self.scorer.embed_texts(list(inputs.texts))
        k = min(p.neighbours, len(self.owner))
        top = (query @ self.embeddings.T).topk(k, dim=-1).indices
        return list(dict.fromkeys(int(i) for i in top.flatten()))

    def loss(self, chosen: Sequence[int]) -> torch.Tensor:
        p = self.params
        if p.objective == "lm":
            return lm_loss(self.scorer, self.model, [self.texts[i] for i in chosen])
        by_task: dict[int, list[int]] = {}
        for i in chosen:
            t, j = self.owner[i]
            by_task.setdefault(t, []).append(j)
        total = torch.zeros(())
        for t, index in by_task.items():
            part = self.parts[t]
            batch = make_batch(part.encoded, index)
            logits = self.logits(batch, part.labels)
            total = total + torch.nn.functional.cross_entropy(logits, batch.targets, reduction="sum")
        return total / len(chosen)

    def adapt(self, inputs: Inputs) -> Step:
        p = self.params
        chosen = self.neighbours(inputs)
        with torch.enable_grad():
            for _ in range(p.steps):
                self.update(self.loss(chosen))
        return Step(self.predict(inputs), len(inputs))


@TTA_METHODS.register
class TttNn(TtaMethod[TttNnParams]):
    """TTT-NN (Hardt & Sun 2024, https://arxiv.org/abs/2305.18466): a gradient step on the input's neighbours.
    They are retrieved by embedding from the library tasks' training pools; then the input is predicted."""

    name = "ttt-nn"
    reference_url = TTT_NN_URL
    default_granularity = "input"
    needs_pool = True

    def unsaved_reason(self, params: TttNnParams) -> str | None:
        return norm_reason(self.name, params.update)

    def check(self, setup: TtaSetup, params: TttNnParams) -> None:
        p = params
        if not setup.pool:
            raise AdaptforgeError(
                "tta method 'ttt-nn' retrieves neighbours from labelled training pools: give --pool TASK_DIR "
                "(the tasks the library's adapters were trained on)"
            )
        lacking = [t.name for t in setup.pool if not t.splits.get("train")]
        if lacking:
            raise AdaptforgeError(f"--pool task(s) {', '.join(lacking)} have no train split to retrieve from")
        if p.objective == "lm" and setup.scorer.backbone.kind != "causal":
            raise AdaptforgeError(
                "tta method 'ttt-nn': objective 'lm' needs a causal LM base; this base is an encoder (use 'labels')"
            )

    def open(self, setup: TtaSetup, params: TttNnParams) -> Session[TttNnParams]:
        p = params
        self.check(setup, p)
        return TttNnSession(self.name, setup, p, tunable_for(setup, p.update))
