"""The shared LoRA layer below merge, compose and generate.

- :mod:`~adaptforge.lora.factors`: factor algebra (stacking, exact weighted sums, re-factoring by SVD);
- :mod:`~adaptforge.lora.hooks`: adapters applied through forward hooks (:class:`LoraMixture`, the gated
  hooks Arrow routes through) and :func:`eval_mode`;
- :mod:`~adaptforge.lora.rows`: per-row mixtures (each row of a forward on its own merge of the adapters), the
  one routed scoring path of eval, predict, serve and DaWin;
- :mod:`~adaptforge.lora.objective`: losses of a mixture on labelled examples, for methods that fit
  mixing coefficients.

It depends only on ``core``, ``adapters``, ``batching``, ``scorers`` and ``tasks``; nothing here knows a
merge method or a composer.
"""

from adaptforge.lora.factors import concat_modules, dense_svd, fold, lowrank_svd, stack_modules, truncate
from adaptforge.lora.hooks import GatedLora, LoraMixture, eval_mode

__all__ = [
    "GatedLora",
    "LoraMixture",
    "concat_modules",
    "dense_svd",
    "eval_mode",
    "fold",
    "lowrank_svd",
    "stack_modules",
    "truncate",
]
