"""aTLAS without labels: per-block coefficients over library adapters fitted on the unlabelled test inputs.

aTLAS (Zhang et al. 2024, "Knowledge Composition using Task Vectors with Learned Anisotropic Scaling",
https://arxiv.org/abs/2407.18242) learns one coefficient per block (target module) per task vector by
gradient descent with everything else frozen; the paper also fits them at test time from unlabelled data
with an unsupervised objective. Here the adapters are the task adapter (coefficient 1 at the start) and the
``candidates`` library adapters nearest to the task by description (``init`` at the start, 0 by default, so
adaptation starts from the task adapter alone), hooked in through the same
:class:`~adaptforge.lora.hooks.LoraMixture` aTLAS merging and composition use, and the coefficients are
fitted by Adam on the mean prediction entropy of the inputs. The result folds exactly into one adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaptforge.core import AdaptforgeError
from adaptforge.evaluate import entropy
from adaptforge.merge.atlas import ATLAS_URL
from adaptforge.params import param
from adaptforge.tta.base import TTA_METHODS, GradientParams, Inputs, Session, Step, TtaMethod, TtaSetup
from adaptforge.tta.tunable import Mixture


@dataclass(frozen=True, kw_only=True)
class AtlasUnsupParams(GradientParams):
    """``candidates`` other library adapters mixed in (nearest by task description; 0: the task adapter's
    per-block scaling alone), all starting at coefficient ``init``."""

    steps: int = param(5, ge=1, help="Adam steps on the coefficients per batch")
    lr: float = param(0.05, gt=0, help="Adam learning rate of the coefficients")
    candidates: int = param(4, ge=0, help="other library adapters mixed in, nearest by task description")
    init: float = param(0.0, help="start coefficient of the other adapters (the task adapter starts at 1)")


class AtlasSession(Session[AtlasUnsupParams]):
    def adapt(self, inputs: Inputs) -> Step:
        p = self.params
        with torch.enable_grad():
            for _ in range(p.steps):
                self.update(entropy(self.logits(inputs)).mean())
        return Step(self.predict(inputs), len(inputs))


@TTA_METHODS.register
class AtlasUnsup(TtaMethod[AtlasUnsupParams]):
    """aTLAS without labels (https://arxiv.org/abs/2407.18242): per-block coefficients over library adapters by
    entropy. One coefficient per block per adapter over the task adapter and its nearest library adapters,
    fitted by minimising the prediction entropy of the inputs."""

    name = "atlas-unsup"
    reference_url = ATLAS_URL

    def candidates_wanted(self, params: AtlasUnsupParams) -> int:
        return params.candidates

    def check(self, setup: TtaSetup, params: AtlasUnsupParams) -> None:
        modules = set(setup.adapter.modules)
        for name, delta in setup.candidates:
            if set(delta.modules) != modules:
                raise AdaptforgeError(
                    f"tta method 'atlas-unsup': candidate {name!r} targets other modules than the task adapter; "
                    "mix adapters trained on the same target modules"
                )

    def open(self, setup: TtaSetup, params: AtlasUnsupParams) -> Session[AtlasUnsupParams]:
        p = params
        self.check(setup, p)
        deltas = [setup.adapter, *[delta for _, delta in setup.candidates]]
        init = torch.full((len(setup.adapter), len(deltas)), float(p.init))
        init[:, 0] = 1.0
        return AtlasSession(self.name, setup, p, Mixture(setup.scorer.backbone.model, deltas, init))
