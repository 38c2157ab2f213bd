"""Label-shift correction at test time: the class prior of the inputs re-estimated by EM, no gradient.

Saerens, Latinne & Decaestecker 2002, "Adjusting the outputs of a classifier to new a priori probabilities: a
simple procedure" (https://doi.org/10.1162/089976602753284446). When only the class prior changes between the
data a classifier was trained on and the data it meets (``p(x|y)`` fixed), its posteriors ``p_s(y|x)`` become
``p_t(y|x) ∝ p_s(y|x) π_t(y) / π_s(y)``. The target prior ``π_t`` is unknown but is the maximum-likelihood fixed
point of EM over the unlabelled inputs: E-step, re-weight every input's posterior by ``π_t / π_s`` and
normalise; M-step, ``π_t`` = the mean re-weighted posterior. No parameter of the model changes: the task
adapter predicts once (a plain forward pass) and only the posteriors are re-weighted.

The source prior ``π_s`` is what the adapter's posteriors were trained under: the label frequencies of its own
task's train split (``source_prior="train"``, as in the paper and QuaPy's EMQ; the adapters here are trained on a
proportionally stratified sample of that split, so the sample's prior is the split's), or uniform
(``"uniform"``, when that split is not at hand; it is also what a classifier trained on balanced data assumes).

Where this differs from the paper: EM is run on a stream (every input seen since the last reset, the prior
assumed fixed along the stream) or on each batch alone, and it is guarded the way the package guards every
stream: an estimated prior that gives one class more than ``collapse_fraction`` of the mass is not used (the
source posteriors are returned, the stream's memory is cleared and a reset is counted), since EM on
over-confident posteriors can run away to a degenerate prior; the prediction watch of :class:`~adaptforge.tta.Stream`
(``reset_window``) resets it as it resets the gradient methods.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass

import torch

from adaptforge.core import AdaptforgeError
from adaptforge.params import param
from adaptforge.tta.base import TTA_METHODS, Inputs, Session, Step, TtaMethod, TtaParams, TtaSetup
from adaptforge.tta.tunable import Tunable

SAERENS_URL = "https://doi.org/10.1162/089976602753284446"
SOURCE_PRIORS = ("train", "uniform")


@dataclass(frozen=True, kw_only=True)
class EmPriorParams(TtaParams):
    """EM's iterations and tolerance, where the source prior comes from, and the collapse guard (no steps or lr:
    em-prior takes no gradient step)."""

    reset_window: int = param(64, ge=0, help="stream: predictions watched for collapse (0: never reset)")
    collapse_fraction: float = param(
        0.9, gt=0, le=1, help="collapse: one class above this fraction of the estimated prior or (stream) of the window"
    )
    iterations: int = param(100, ge=1, help="EM iterations at most (stops earlier at tolerance)")
    tolerance: float = param(1e-6, gt=0, help="stop when no class prior moves by more than this")
    source_prior: str = param(
        "train", choices=SOURCE_PRIORS, help="train: label frequencies of the adapter task's train split; uniform"
    )


def em_prior(
    log_posteriors: torch.Tensor, source: torch.Tensor, iterations: int, tolerance: float
) -> tuple[torch.Tensor, int]:
    """The target prior maximising the likelihood of the inputs (Saerens et al. 2002, eq. 2.9-2.10) and the EM
    iterations it took. ``log_posteriors`` are ``[n, C]`` source log-posteriors, ``source`` the ``[C]`` prior
    they were trained under; EM starts from ``source``."""
    log_source = source.log()
    prior = source.clone()
    for it in range(1, iterations + 1):
        adjusted = torch.softmax(log_posteriors + prior.log() - log_source, dim=-1)
        new = adjusted.mean(dim=0)
        moved = float((new - prior).abs().max())
        prior = new
        if moved < tolerance:
            return prior, it
    return prior, iterations


def adjust(log_posteriors: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Posteriors re-weighted from prior ``source`` to ``target`` (normalised log-probabilities)."""
    return torch.log_softmax(log_posteriors + target.log() - source.log(), dim=-1)


def train_prior(setup: TtaSetup) -> torch.Tensor:
    """Label frequencies of the adapter's own task's train split (``setup.source``), in ``setup.task``'s label
    order; every label gets at least one count (a label never seen in training would otherwise get prior 0 and
    an infinite weight)."""
    source = setup.source
    if source is None:
        raise AdaptforgeError(
            "tta method 'em-prior': source_prior 'train' needs the train split of the adapter's own task (pass that "
            "task with --pool TASK_DIR), or use --param source_prior=uniform"
        )
    examples = source.split("train") if "train" in source.splits else None
    if not examples:
        raise AdaptforgeError(f"tta method 'em-prior': task {source.name!r} has no train split to take the prior from")
    if set(source.labels) != set(setup.task.labels):
        raise AdaptforgeError(
            f"tta method 'em-prior': the adapter's task {source.name!r} has labels {list(source.labels)}, the "
            f"adapted task {setup.task.name!r} has {list(setup.task.labels)}; a prior needs the same label set "
            "(or use --param source_prior=uniform)"
        )
    counts = Counter(e.label for e in examples)
    freq = torch.tensor([max(counts[label], 1) for label in setup.task.labels], dtype=torch.float)
    return freq / freq.sum()


class AppliedAdapter(Tunable):
    """The task adapter added to the base weights and nothing trainable: what a gradient-free method predicts
    with. It cannot be stored as a new adapter (it is the input adapter)."""

    def __init__(self, setup: TtaSetup) -> None:
        super().__init__()
        self.setup = setup

    def _enter(self, stack: contextlib.ExitStack) -> None:
        stack.enter_context(self.setup.scorer.backbone.applied(self.setup.adapter))

    def parameters(self) -> list[torch.Tensor]:
        return []


class EmPriorSession(Session[EmPriorParams]):
    """Predicts with the task adapter, keeps the source log-posteriors of the inputs since the last reset (the
    stream's memory; in batch mode every batch starts empty), re-estimates the prior over them and re-weights
    the current inputs' posteriors."""

    def start(self) -> None:
        p = self.params
        n = len(self.setup.task.labels)
        self.source = train_prior(self.setup) if p.source_prior == "train" else torch.full((n,), 1.0 / n)
        self.seen: list[torch.Tensor] = []
        self.prior = self.source.clone()
        self.iterations = 0

    def on_reset(self) -> None:
        self.seen = []
        self.prior = self.source.clone()

    def adapt(self, inputs: Inputs) -> Step:
        p = self.params
        log_posteriors = torch.log_softmax(self.predict(inputs), dim=-1)
        self.seen.append(log_posteriors)
        prior, self.iterations = em_prior(torch.cat(self.seen), self.source, p.iterations, p.tolerance)
        if float(prior.max()) > p.collapse_fraction:  # a runaway estimate: not used, the stream starts over
            self.reset()
            return Step(log_posteriors, 0, reset=True)
        self.prior = prior
        return Step(adjust(log_posteriors, self.source, prior), len(inputs))


@TTA_METHODS.register
class EmPrior(TtaMethod[EmPriorParams]):
    """Label-shift correction (Saerens et al. 2002, https://doi.org/10.1162/089976602753284446): the inputs' class
    prior estimated by EM from the task adapter's posteriors, which are re-weighted by target / source prior.
    Gradient-free; per batch by default, in a stream the prior is estimated over every input since the last
    reset."""

    name = "em-prior"
    reference_url = SAERENS_URL
    default_granularity = "batch"  # chosen on the shift pairs' dev splits (benchmarks/results/tta_dev.json)

    def source_wanted(self, params: EmPriorParams) -> bool:
        return params.source_prior == "train"

    def unsaved_reason(self, params: EmPriorParams) -> str | None:
        return (
            "tta method 'em-prior' changes no weights (it re-weights the predictions by a label prior, which a "
            "LoRA adapter cannot hold)"
        )

    def check(self, setup: TtaSetup, params: EmPriorParams) -> None:
        if self.source_wanted(params):
            train_prior(setup)

    def open(self, setup: TtaSetup, params: EmPriorParams) -> Session[EmPriorParams]:
        return EmPriorSession(self.name, setup, params, AppliedAdapter(setup))
