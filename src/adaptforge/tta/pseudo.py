"""Pseudo-label self-training at test time, T-SAS style.

T-SAS (Jeong et al. 2023, "Test-Time Self-Adaptive Small Language Models for Question Answering",
https://arxiv.org/abs/2310.13307) samples several stochastic predictions of each unlabelled input with
dropout, takes the majority vote as a pseudo label, keeps only inputs whose votes agree enough, and trains
on them for a few steps. Here the dropout is our own, seeded and applied to the inputs of the adapter's
target modules during the votes (so a model whose config has no dropout, like most LLaMAs, still votes
stochastically, and a run is reproducible); training and the final prediction run without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from adaptforge.params import param
from adaptforge.tta.base import TTA_METHODS, GradientParams, Inputs, Session, Step, TtaMethod, TtaSetup
from adaptforge.tta.entropy import UPDATES, norm_reason, tunable_for

TSAS_URL = "https://arxiv.org/abs/2310.13307"


@contextlib.contextmanager
def input_dropout(
    model: torch.nn.Module, modules: Sequence[str], rate: float, generator: torch.Generator
) -> Iterator[None]:
    """Dropout (rate ``rate``, survivors scaled by ``1 / (1 - rate)``) on the input of every module named,
    with masks drawn from ``generator``; hooks removed on exit."""
    named = dict(model.named_modules())

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        keep = (torch.rand(x.shape, generator=generator) >= rate).to(x.dtype)
        return (x * keep / (1.0 - rate), *args[1:])

    handles = [named[name].register_forward_pre_hook(hook) for name in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True, kw_only=True)
class PseudoParams(GradientParams):
    """``samples`` stochastic votes per input with ``dropout``; inputs whose majority label has at least
    ``agreement`` of the votes are self-trained on for ``steps`` steps."""

    steps: int = param(3, ge=1, help="self-training steps per input, batch or stream batch")
    update: str = param("lora", choices=UPDATES, help="lora: the adapter's factors; norm: norm affine parameters")
    samples: int = param(8, ge=2, help="stochastic predictions (votes) per input")
    dropout: float = param(0.1, gt=0, lt=1, help="dropout rate on the adapted modules' inputs during the votes")
    agreement: float = param(0.75, gt=0, le=1, help="keep an input when this fraction of votes agree")


class PseudoSession(Session[PseudoParams]):
    def votes(self, inputs: Inputs) -> torch.Tensor:
        """``[samples, n]`` predicted labels under independent dropout masks."""
        p = self.params
        out = []
        with torch.no_grad(), input_dropout(self.model, self.setup.adapter.targets, p.dropout, self.generator):
            for _ in range(p.samples):
                out.append(self.logits(inputs).argmax(-1))
        return torch.stack(out)

    def adapt(self, inputs: Inputs) -> Step:
        p = self.params
        votes = self.votes(inputs)
        n_labels = len(self.labels.labels)
        counts = F.one_hot(votes, n_labels).sum(dim=0)  # [n, labels]
        agree, pseudo = counts.max(dim=-1)
        keep = torch.nonzero(agree >= p.agreement * p.samples).flatten().tolist()
        if keep:
            chosen = inputs.subset(keep)
            targets = pseudo[keep]
            with torch.enable_grad():
                for _ in range(p.steps):
                    self.update(F.cross_entropy(self.logits(chosen), targets))
        return Step(self.predict(inputs), len(keep))


@TTA_METHODS.register
class Pseudo(TtaMethod[PseudoParams]):
    """Pseudo-label self-training, T-SAS style (Jeong et al. 2023, https://arxiv.org/abs/2310.13307). Majority
    votes of dropout predictions are kept when they agree and trained on for a few steps."""

    name = "pseudo"
    reference_url = TSAS_URL

    def unsaved_reason(self, params: PseudoParams) -> str | None:
        return norm_reason(self.name, params.update)

    def open(self, setup: TtaSetup, params: PseudoParams) -> Session[PseudoParams]:
        p = params
        return PseudoSession(self.name, setup, p, tunable_for(setup, p.update))
