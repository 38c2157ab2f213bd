"""Input-specific LoRA, MOTIA style: a fresh low-rank delta trained on the input itself, then discarded.

MOTIA ("Be-Your-Outpainter", Wang et al. 2024, https://arxiv.org/abs/2403.13745) adapts a generator to
the very video it must outpaint: a small LoRA is trained for a few steps on a self-supervised objective
built from that input (masked parts of its own frames), the input is processed, and the LoRA is thrown
away. Here the task adapter is added to the base weights, a fresh LoRA (B = 0, so it starts as the task
adapter) is trained on the input's own signal, the input is predicted, and the LoRA is reset:

* ``agreement`` (the encoder's default): the input's clean view and ``views`` augmented views (each word
  dropped with probability ``drop_rate``) should agree on the label, and confidently: the entropy of their
  mean prediction is minimised (the marginal entropy over augmentations of MEMO, Zhang et al. 2022,
  https://arxiv.org/abs/2110.09506). Words are dropped rather than replaced by a mask token: a sentence
  encoder never saw mask tokens, and masked views then disagree for that reason alone (measured: they
  drive the adapted predictions to one class); asking a masked view to match the clean prediction instead
  collapses the representation within a few steps;
* ``lm`` (the causal LM's default): the language-model loss on the input text, MOTIA's reconstruction of
  the input's own content.

In stream mode the delta is not discarded: it keeps learning along the stream, and ``--save`` stores the
task adapter plus it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaptforge.core import AdaptforgeError
from adaptforge.evaluate import entropy
from adaptforge.params import param
from adaptforge.tta.base import (
    TTA_METHODS,
    GradientParams,
    Inputs,
    Session,
    Step,
    TtaMethod,
    TtaSetup,
    encode_inputs,
    lm_loss,
)
from adaptforge.tta.tunable import FreshLora, fresh_lora

MOTIA_URL = "https://arxiv.org/abs/2403.13745"
OBJECTIVES = ("auto", "agreement", "lm")


@dataclass(frozen=True, kw_only=True)
class InputLoraParams(GradientParams):
    """The fresh LoRA (``rank``, scale ``alpha / rank``, on the task adapter's target modules) and its
    self-supervised ``objective`` (``auto``: agreement for encoders, lm for causal LMs)."""

    # steps and lr chosen on dev splits only (movie_review adapter on customer_review and mpqa_polarity dev, 48
    # inputs each; grid lr 1e-6..1e-4 x steps 1, 2): larger values move every prediction to one class (Adam's
    # first step is ~lr per weight whatever the gradient), smaller ones change nothing. Neutral on average there.
    steps: int = param(1, ge=1, help="training steps of the fresh LoRA per input (or batch)")
    lr: float = param(3e-5, gt=0, help="Adam learning rate of the fresh LoRA")
    rank: int = param(4, ge=1, help="rank of the fresh LoRA")
    alpha: float = param(8.0, gt=0, help="its scale is alpha / rank")
    objective: str = param("auto", choices=OBJECTIVES, help="agreement of augmented views, or the LM loss on the input")
    views: int = param(2, ge=1, help="agreement: augmented views besides the clean input, per step")
    drop_rate: float = param(0.15, gt=0, lt=1, help="agreement: probability of dropping each word in a view")


def drop_words(text: str, rate: float, generator: torch.Generator) -> str:
    """``text`` with each word dropped with probability ``rate`` (at least one word kept): an augmented view."""
    words = text.split()
    if not words:
        return text
    keep = (torch.rand(len(words), generator=generator) >= rate).tolist()
    return " ".join(w for w, k in zip(words, keep, strict=True) if k) or words[0]


class InputLoraSession(Session[InputLoraParams]):
    def objective(self) -> str:
        p = self.params
        if p.objective != "auto":
            return p.objective
        return "lm" if self.scorer.backbone.kind == "causal" else "agreement"

    def loss(self, inputs: Inputs) -> torch.Tensor:
        p = self.params
        if self.objective() == "lm":
            return lm_loss(self.scorer, self.model, inputs.texts)
        texts = list(inputs.texts) + [
            drop_words(t, p.drop_rate, self.generator) for _ in range(p.views) for t in inputs.texts
        ]
        logits = self.logits(encode_inputs(self.scorer, self.setup.task, texts))  # every view in one forward pass
        probs = torch.softmax(logits, dim=-1).view(p.views + 1, len(inputs), -1).mean(dim=0)
        return entropy(probs.clamp_min(1e-12).log()).mean()

    def adapt(self, inputs: Inputs) -> Step:
        p = self.params
        with torch.enable_grad():
            for _ in range(p.steps):
                self.update(self.loss(inputs))
        return Step(self.predict(inputs), len(inputs))


@TTA_METHODS.register
class InputLora(TtaMethod[InputLoraParams]):
    """Input-specific LoRA, MOTIA style (https://arxiv.org/abs/2403.13745): a fresh LoRA per input, then discarded.
    The low-rank delta sits on top of the task adapter and is trained for a few steps on the input's own
    self-supervised loss before the input is predicted."""

    name = "input-lora"
    reference_url = MOTIA_URL
    default_granularity = "input"

    def check(self, setup: TtaSetup, params: InputLoraParams) -> None:
        p = params
        if p.objective == "lm" and setup.scorer.backbone.kind != "causal":
            raise AdaptforgeError(
                "tta method 'input-lora': objective 'lm' needs a causal LM base; this base is an encoder "
                "(use objective 'agreement')"
            )

    def open(self, setup: TtaSetup, params: InputLoraParams) -> Session[InputLoraParams]:
        p = params
        self.check(setup, p)
        init = fresh_lora(setup.adapter, p.rank, p.alpha, torch.Generator().manual_seed(p.seed))
        return InputLoraSession(self.name, setup, p, FreshLora(setup.scorer.backbone, setup.adapter, init))
