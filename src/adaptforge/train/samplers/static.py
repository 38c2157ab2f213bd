"""Static samplers: a fixed distribution over tasks computed once from their sizes.

- ``uniform``: every task equally often (ERM over the task set).
- ``proportional``: ``p_i ~ n_i`` (examples-proportional mixing), optionally with the size cap
  ``K`` of Raffel et al. 2020 (T5, arXiv 1910.10683): ``p_i ~ min(n_i, K)``.
- ``temperature``: ``p_i ~ n_i^(1/T)`` (Arivazhagan et al. 2019, arXiv 1907.05019; the same rule
  with ``alpha = 1/T`` in Conneau & Lample 2019, arXiv 1901.07291). ``T = 1`` is proportional and
  ``T -> inf`` is uniform.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from adaptforge.params import param
from adaptforge.train.samplers.base import SAMPLERS, SC, FloatArray, SamplerConfig, TaskInfo, TaskSampler, softmax


@dataclass(frozen=True, kw_only=True)
class UniformConfig(SamplerConfig):
    """``uniform`` takes no options."""


@dataclass(frozen=True, kw_only=True)
class ProportionalConfig(SamplerConfig):
    size_cap: int | None = param(None, ge=1, help="K of Raffel et al. 2020: sizes above K count as K; null: no cap")


@dataclass(frozen=True, kw_only=True)
class TemperatureConfig(SamplerConfig):
    temperature: float = param(2.0, gt=0, help="T in p_i ~ n_i^(1/T); 1: proportional, large: uniform")
    size_cap: int | None = param(
        None, ge=1, help="sizes above this count as this (applied before the temperature); null: no cap"
    )


class _StaticSampler(TaskSampler[SC]):
    """A fixed distribution computed once from the task sizes."""

    def __init__(
        self, config: SC | Mapping[str, Any] | None = None, *, tasks: Sequence[TaskInfo], seed: int = 0
    ) -> None:
        super().__init__(config, tasks=tasks, seed=seed)
        self._p = self._fixed_probabilities()

    @abstractmethod
    def _fixed_probabilities(self) -> FloatArray: ...

    def probabilities(self) -> FloatArray:
        return self._p.copy()

    def _capped_sizes(self, cap: int | None) -> FloatArray:
        """Training-set sizes with every size above ``cap`` counted as ``cap`` (no cap: ``None``)."""
        return self._sizes if cap is None else np.minimum(self._sizes, float(cap))


@SAMPLERS.register
class UniformSampler(_StaticSampler[UniformConfig]):
    """``p_i = 1 / N``."""

    name = "uniform"
    reference_url = "https://arxiv.org/abs/1910.10683"

    def _fixed_probabilities(self) -> FloatArray:
        return np.full(self.n_tasks, 1.0 / self.n_tasks)


@SAMPLERS.register
class ProportionalSampler(_StaticSampler[ProportionalConfig]):
    """``p_i = m_i / sum_j m_j`` with ``m_i = min(n_i, K)`` (Raffel et al. 2020, arXiv 1910.10683, Sec. 3.5.2)."""

    name = "proportional"
    reference_url = "https://arxiv.org/abs/1910.10683"

    def _fixed_probabilities(self) -> FloatArray:
        sizes = self._capped_sizes(self.config.size_cap)
        return sizes / sizes.sum()


@SAMPLERS.register
class TemperatureSampler(_StaticSampler[TemperatureConfig]):
    """``p_i ~ m_i^(1/T)``, ``m_i = min(n_i, K)`` (Arivazhagan et al. 2019, arXiv 1907.05019).

    Computed as a softmax of ``log(m_i) / T`` so large sizes and small ``T`` do not overflow.
    """

    name = "temperature"
    reference_url = "https://arxiv.org/abs/1907.05019"

    def _fixed_probabilities(self) -> FloatArray:
        return softmax(np.log(self._capped_sizes(self.config.size_cap)) / self.config.temperature)
