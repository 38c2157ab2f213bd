"""Entropy minimisation at test time: TENT, and EATA and SAR's reliable-sample variants.

All three lower the Shannon entropy of the predictions on unlabelled inputs, updating either the
LayerNorm/RMSNorm affine parameters (``update="norm"``, with the task adapter added to the weights) or the
task adapter's own LoRA factors (``update="lora"``, which ``--save`` can store), everywhere or, with
``last_blocks=N``, only in the last N transformer blocks (and a norm after them), where the backward pass stops:

* TENT (Wang et al. 2021, https://arxiv.org/abs/2006.10726): the mean entropy of every input;
* EATA (Niu et al. 2022, https://arxiv.org/abs/2204.02610): only reliable (entropy below
  ``e_margin * ln C``) and non-redundant inputs (probabilities not too close, by cosine, to the moving
  average of earlier updates' probabilities) update, each weighted by ``exp(E0 - E)``;
* SAR (Niu et al. 2023, https://arxiv.org/abs/2302.12400): reliable inputs only, a sharpness-aware step
  (SAM: the gradient taken at the parameters pushed ``rho`` along the first gradient), and a recovery
  reset when the moving average of the filtered entropy falls towards zero.

EATA and SAR default to stream mode with two resets on: the collapse reset (``reset_window``) and the anchor guard
(``anchor_agreement``: reset when the predictions stop agreeing with the unadapted model's on the same inputs,
:class:`~adaptforge.tta.base.AnchorGuard`), which catches the slow drift the collapse check misses; ``tent`` can
use both in a stream (off by default, as in TENT). By default an input's
prediction is a fresh forward pass after its updates (skipped when no update followed the last forward pass,
e.g. a filter kept no input: that pass already is the prediction); ``online=true`` takes it from the forward
pass of the last update instead, TENT's own protocol, which saves that forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from adaptforge.evaluate import entropy
from adaptforge.params import param
from adaptforge.tta.base import (
    ANCHOR_HELP,
    TTA_METHODS,
    GuardParams,
    Inputs,
    Session,
    Step,
    TtaMethod,
    TtaSetup,
)
from adaptforge.tta.tunable import AdapterFactors, NormAffine, Tunable

TENT_URL = "https://arxiv.org/abs/2006.10726"
EATA_URL = "https://arxiv.org/abs/2204.02610"
SAR_URL = "https://arxiv.org/abs/2302.12400"
UPDATES = ("norm", "lora")
LAST_BLOCKS_HELP = (
    "update only in the last N transformer blocks (and a norm after them; the backward pass stops there); "
    "0: everywhere, as in TENT"
)


def tunable_for(setup: TtaSetup, update: str, blocks: int = 0) -> Tunable:
    """What ``update`` names: norm affine parameters (adapter in the weights) or the adapter's LoRA factors;
    everywhere, or in the last ``blocks`` transformer blocks only."""
    backbone = setup.scorer.backbone
    if update == "norm":
        return NormAffine(backbone, setup.adapter, blocks)
    return AdapterFactors(backbone.model, setup.adapter, blocks, backbone.name)


def norm_reason(method: str, update: str) -> str | None:
    """Why ``--save`` cannot store a method's state when it updates norm parameters."""
    if update == "norm":
        return (
            f"tta method {method!r} updates LayerNorm parameters (update 'norm'), which a LoRA adapter cannot "
            "hold; pass --param update=lora to store the adapted adapter"
        )
    return None


@dataclass(frozen=True, kw_only=True)
class EntropyParams(GuardParams):
    """Adds what is updated and where predictions come from (see the module docstring), and the anchor guard."""

    update: str = param("norm", choices=UPDATES, help="norm: LayerNorm/RMSNorm affine parameters; lora: adapter")
    last_blocks: int = param(0, ge=0, help=LAST_BLOCKS_HELP)
    online: bool = param(False, help="predict from the forward pass of the last update (TENT's protocol)")


@dataclass(frozen=True, kw_only=True)
class TentParams(EntropyParams):
    """TENT's: the norm layers of the last block only by default (chosen on dev splits, benchmarks/tta_dev.py
    --study tent-blocks: as accurate as every norm layer and cheaper, the backward pass stops at the last block)."""

    last_blocks: int = param(1, ge=0, help=LAST_BLOCKS_HELP + "; 1 chosen on dev splits")


@dataclass(frozen=True, kw_only=True)
class EataParams(EntropyParams):
    """EATA's filters: ``e_margin`` (entropy threshold as a fraction of ln C; 0.4 in the paper), ``d_margin``
    (cosine threshold; the paper's 0.05 is for 1000 classes; a one-hot prediction has cosine 1/sqrt(C) with a
    uniform average, so small label sets need a value near 1) and ``ema`` (factor of the moving average)."""

    reset_window: int = param(64, ge=0, help="stream: predictions watched for collapse (0: never reset)")
    anchor_agreement: float = param(0.98, ge=0, le=1, help=ANCHOR_HELP + "; 0.98 chosen on dev splits")
    e_margin: float = param(0.4, gt=0, le=1, help="reliable: entropy below e_margin * ln(labels)")
    d_margin: float = param(0.9, gt=0, le=1, help="non-redundant: |cosine| to the average probabilities below this")
    ema: float = param(0.9, ge=0, lt=1, help="moving-average factor of the updating inputs' probabilities")


@dataclass(frozen=True, kw_only=True)
class SarParams(EntropyParams):
    """SAR's filter (``e_margin``), SAM radius ``rho`` and recovery threshold ``recover`` (a fraction of ln C:
    the paper's 0.2 for 1000 classes is 0.03 ln C; 0 turns recovery off)."""

    reset_window: int = param(64, ge=0, help="stream: predictions watched for collapse (0: never reset)")
    anchor_agreement: float = param(0.95, ge=0, le=1, help=ANCHOR_HELP + "; 0.95 chosen on dev splits")
    e_margin: float = param(0.4, gt=0, le=1, help="reliable: entropy below e_margin * ln(labels)")
    rho: float = param(0.05, gt=0, help="SAM neighbourhood radius")
    recover: float = param(0.03, ge=0, help="reset when the moving average of the entropy falls below this * ln C")


EP = TypeVar("EP", bound=EntropyParams)


class EntropySession(Session[EP]):
    """Steps on a (weighted) entropy of the selected inputs; subclasses choose inputs and weights."""

    def select(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Indices of the inputs that update, and their weights (``None``: equal)."""
        return torch.arange(len(logits)), None

    def after_update(self, probs: torch.Tensor) -> None:  # noqa: B027 - optional hook
        """Called with the probabilities of the inputs of each update."""

    def loss(self, logits: torch.Tensor, keep: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        values = entropy(logits[keep])
        return (values * weights).mean() if weights is not None else values.mean()

    def adapt(self, inputs: Inputs) -> Step:
        p = self.params
        last, updated, moved = None, 0, False  # moved: the parameters changed after ``last`` was computed
        with torch.enable_grad():
            for _ in range(p.steps):
                logits = self.logits(inputs)
                last = logits.detach()
                keep, weights = self.select(last)
                if len(keep) == 0:
                    moved = False
                    break
                moved = self.step(inputs, logits, keep, weights)
                self.after_update(torch.softmax(last[keep], dim=-1))
                updated = max(updated, len(keep))
        if last is not None and (p.online or not moved):  # no update since the last forward: it is the prediction
            return Step(last, updated)
        return Step(self.predict(inputs), updated)

    def step(self, inputs: Inputs, logits: torch.Tensor, keep: torch.Tensor, weights: torch.Tensor | None) -> bool:
        """One update on the kept inputs; whether the parameters changed."""
        self.update(self.loss(logits, keep, weights))
        return True


class EataSession(EntropySession[EataParams]):
    """Reliable and non-redundant inputs, weighted by ``exp(E0 - E)``."""

    def start(self) -> None:
        self.average: torch.Tensor | None = None

    def on_reset(self) -> None:
        self.average = None

    def select(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        p = self.params
        e0 = p.e_margin * math.log(logits.shape[-1])
        ent = entropy(logits)
        keep = torch.nonzero(ent < e0).flatten()
        if self.average is not None and len(keep):
            probs = torch.softmax(logits[keep], dim=-1)
            cos = torch.nn.functional.cosine_similarity(probs, self.average.unsqueeze(0), dim=-1)
            keep = keep[cos.abs() < p.d_margin]
        weights = torch.exp(e0 - ent[keep]).float() if len(keep) else None
        return keep, weights

    def after_update(self, probs: torch.Tensor) -> None:
        p = self.params
        mean = probs.mean(dim=0)
        self.average = mean if self.average is None else p.ema * self.average + (1 - p.ema) * mean


class SarSession(EntropySession[SarParams]):
    """Reliable inputs, a sharpness-aware step, recovery when the entropy's moving average collapses."""

    def start(self) -> None:
        self.average: float | None = None
        self.recovered = False

    def on_reset(self) -> None:
        self.average = None

    def select(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        p = self.params
        margin = p.e_margin * math.log(logits.shape[-1])
        return torch.nonzero(entropy(logits) < margin).flatten(), None

    def step(self, inputs: Inputs, logits: torch.Tensor, keep: torch.Tensor, weights: torch.Tensor | None) -> bool:
        p = self.params
        params = self.tunable.parameters()
        first = self.checked(self.loss(logits, keep, None))
        grads = torch.autograd.grad(first, params, allow_unused=True)
        norm = float(torch.sqrt(sum((g.pow(2).sum() for g in grads if g is not None), torch.zeros(()))))
        shifts = [None if g is None else g * (p.rho / (norm + 1e-12)) for g in grads]
        margin = p.e_margin * math.log(logits.shape[-1])
        second: torch.Tensor | None = None
        _shift(params, shifts, 1.0)
        try:  # the gradient at the sharpest nearby point, on the inputs that are still reliable there
            values = entropy(self.logits(inputs.subset(keep.tolist())))
            reliable = values.detach() < margin
            if bool(reliable.any()):
                second = self.checked(values[reliable].mean())
                assert self.optimizer is not None
                self.optimizer.zero_grad(set_to_none=True)
                second.backward()
        finally:
            _shift(params, shifts, -1.0)
        if second is None:  # no input is reliable at the shifted point: no update
            return False
        assert self.optimizer is not None
        self.optimizer.step()
        if p.recover > 0:
            value = float(second.detach())
            self.average = value if self.average is None else 0.9 * self.average + 0.1 * value
            if self.average < p.recover * math.log(logits.shape[-1]):
                self.reset()
                self.recovered = True
        return True

    def adapt(self, inputs: Inputs) -> Step:
        self.recovered = False
        step = super().adapt(inputs)
        return Step(step.logits, step.updated, self.recovered)


@torch.no_grad()
def _shift(params: list[torch.Tensor], shifts: list[torch.Tensor | None], sign: float) -> None:
    for t, e in zip(params, shifts, strict=True):
        if e is not None:
            t.add_(e, alpha=sign)


class EntropyMethod(TtaMethod[EP]):
    """Shared by TENT, EATA and SAR: the tunable named by ``update``."""

    params_type = EntropyParams
    session_type: type[EntropySession[Any]] = EntropySession

    def unsaved_reason(self, params: EP) -> str | None:
        return norm_reason(self.name, params.update)

    def open(self, setup: TtaSetup, params: EP) -> Session[EP]:
        return self.session_type(self.name, setup, params, tunable_for(setup, params.update, params.last_blocks))


@TTA_METHODS.register
class Tent(EntropyMethod[TentParams]):
    """TENT (Wang et al. 2021, https://arxiv.org/abs/2006.10726): minimise the mean prediction entropy. Over the
    norm layers' affine parameters (or the adapter's LoRA factors), reset per batch or carried along a
    stream.

    Where this differs from the paper and its reference code (github.com/DequanWang/tent, ``tent.py``): there every
    normalisation layer's affine parameters update; here by default only the last transformer block's
    (``last_blocks=1``; ``0`` is the paper's choice). On the dev pairs that was as accurate (+0.4 points mean change
    against -0.2) at 2.1x a plain forward pass instead of 3.1x, since the backward pass stops at that block. The
    reference predicts from the forward pass before its update (``online=true`` here); by default an input is
    predicted after the update it took part in."""

    name = "tent"
    reference_url = TENT_URL
    session_type = EntropySession


@TTA_METHODS.register
class Eata(EntropyMethod[EataParams]):
    """EATA (Niu et al. 2022, https://arxiv.org/abs/2204.02610): entropy minimisation on reliable, non-redundant
    inputs. Each is weighted by its confidence; in a stream, the state is reset when the predictions
    collapse or drift from the unadapted model's (the anchor guard, ``anchor_agreement``).

    Where this differs from the reference code (github.com/mr-eggplant/EATA, ``eata.py``/``main.py``): its
    anti-forgetting term, a Fisher-weighted L2 pull to the source parameters (Fisher from the squared gradients of
    the model's pseudo-label cross-entropy on 2000 in-distribution inputs), is not included. It needs source-domain
    inputs at test time and bounds the drift in parameter space, with a weight (2000 there) tuned per model. The
    anchor guard replaces it: it needs only the stream's own inputs and bounds the drift where it harms, in the
    predictions."""

    name = "eata"
    reference_url = EATA_URL
    session_type = EataSession
    default_granularity = "stream"


@TTA_METHODS.register
class Sar(EntropyMethod[SarParams]):
    """SAR (Niu et al. 2023, https://arxiv.org/abs/2302.12400): sharpness-aware entropy minimisation, reliable
    inputs only. With model recovery when the entropy's moving average collapses (the reference code,
    github.com/mr-eggplant/SAR ``sar.py``, resets when the 0.9 moving average of the second-step entropy is below
    0.2 nats for 1000 classes; here ``recover * ln C``); in a stream, also reset when the predictions collapse or
    drift from the unadapted model's (the anchor guard, ``anchor_agreement``), which the recovery rule, waiting for
    near-zero entropy, does not see."""

    name = "sar"
    reference_url = SAR_URL
    session_type = SarSession
    default_granularity = "stream"
