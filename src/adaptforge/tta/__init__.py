"""Test-time adaptation: adapt a task adapter to the unlabelled inputs it meets (TTA_METHODS).

- ``input-lora``: a fresh LoRA per input on its own self-supervised loss, MOTIA style (https://arxiv.org/abs/2403.13745);
- ``tent``: entropy minimisation over norm parameters or the adapter (https://arxiv.org/abs/2006.10726);
- ``eata``: reliable, non-redundant inputs only, reset on collapse (https://arxiv.org/abs/2204.02610);
- ``sar``: sharpness-aware, reliable inputs, recovery reset (https://arxiv.org/abs/2302.12400);
- ``pseudo``: agreement-filtered dropout pseudo labels, T-SAS style (https://arxiv.org/abs/2310.13307);
- ``ttt-nn``: a step on the input's nearest training neighbours (https://arxiv.org/abs/2305.18466);
- ``atlas-unsup``: aTLAS coefficients over library adapters by entropy (https://arxiv.org/abs/2407.18242);
- ``em-prior``: the inputs' class prior by EM, posteriors re-weighted, no gradient (Saerens et al. 2002).

:func:`run_tta` runs any of them per input, per batch or along a stream (:class:`Stream`, with resets).
``adaptforge tta`` itself is :mod:`adaptforge.pipelines.tta`.
"""

from adaptforge.tta.atlas import AtlasUnsup, AtlasUnsupParams
from adaptforge.tta.base import (
    GRANULARITIES,
    TTA_METHODS,
    AnchorGuard,
    GradientParams,
    GuardParams,
    Inputs,
    Session,
    Step,
    Stream,
    TtaMethod,
    TtaParams,
    TtaRun,
    TtaSetup,
    encode_inputs,
    run_tta,
)
from adaptforge.tta.entropy import Eata, EataParams, EntropyParams, Sar, SarParams, Tent, TentParams
from adaptforge.tta.input_lora import InputLora, InputLoraParams
from adaptforge.tta.neighbours import TttNn, TttNnParams
from adaptforge.tta.prior import EmPrior, EmPriorParams
from adaptforge.tta.pseudo import Pseudo, PseudoParams

__all__ = [
    "GRANULARITIES",
    "TTA_METHODS",
    "AnchorGuard",
    "AtlasUnsup",
    "AtlasUnsupParams",
    "Eata",
    "EataParams",
    "EmPrior",
    "EmPriorParams",
    "EntropyParams",
    "GradientParams",
    "GuardParams",
    "InputLora",
    "InputLoraParams",
    "Inputs",
    "Pseudo",
    "PseudoParams",
    "Sar",
    "SarParams",
    "Session",
    "Step",
    "Stream",
    "Tent",
    "TentParams",
    "TtaMethod",
    "TtaParams",
    "TtaRun",
    "TtaSetup",
    "TttNn",
    "TttNnParams",
    "encode_inputs",
    "run_tta",
]
