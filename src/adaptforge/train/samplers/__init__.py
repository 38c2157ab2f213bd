"""Task samplers for multi-task LoRA training: which tasks each step's batch comes from.

One module per family: ``base`` (the contract, :class:`TaskInfo`, the ``SAMPLERS`` registry),
``static`` (uniform, proportional, temperature), ``robust`` (group_dro, drm) and ``mpts`` (Model
Predictive Task Sampling and its risk learners). Every sampler is a :class:`~adaptforge.methods.Method`
whose ``params_type`` is its configuration (a typed :class:`~adaptforge.params.Params`; unknown keys are
refused naming the known ones). Samplers draw with their own ``numpy.random.Generator`` seeded from
``seed`` (MPTS's neural risk learner also with its own torch generator), so a sequence is a pure
function of (seed, observed losses).
"""

from adaptforge.train.samplers.base import (
    SAMPLERS,
    STATE_FORMAT,
    CandidateConfig,
    Evaluator,
    SamplerConfig,
    TaskInfo,
    TaskSampler,
    draw_candidates,
    make_sampler,
)
from adaptforge.train.samplers.mpts import LinearRiskLearner, MPTSConfig, MPTSSampler, NeuralRiskLearner
from adaptforge.train.samplers.robust import DRMConfig, DRMSampler, GroupDROConfig, GroupDROSampler
from adaptforge.train.samplers.static import (
    ProportionalConfig,
    ProportionalSampler,
    TemperatureConfig,
    TemperatureSampler,
    UniformConfig,
    UniformSampler,
)

__all__ = [
    "SAMPLERS",
    "STATE_FORMAT",
    "CandidateConfig",
    "DRMConfig",
    "DRMSampler",
    "Evaluator",
    "GroupDROConfig",
    "GroupDROSampler",
    "LinearRiskLearner",
    "MPTSConfig",
    "MPTSSampler",
    "NeuralRiskLearner",
    "ProportionalConfig",
    "ProportionalSampler",
    "SamplerConfig",
    "TaskInfo",
    "TaskSampler",
    "TemperatureConfig",
    "TemperatureSampler",
    "UniformConfig",
    "UniformSampler",
    "draw_candidates",
    "make_sampler",
]
