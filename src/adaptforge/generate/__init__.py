"""An adapter for a task from its description alone (``adaptforge generate``).

ICM-LoRA-style generation (Shao et al. 2025, "In-Context Meta LoRA Generation", https://arxiv.org/abs/2501.17635):
``collect_samples`` gathers the library's single-task adapters with their description embeddings,
``LoraGenerator.fit`` trains a conditional VAE over their coordinates in the sample set's principal directions,
and ``LoraGenerator.generate(embedding)`` decodes an adapter of the library's layout for a new task's embedding
(:func:`adaptforge.scorers.describe` of a ``Task`` built from the description and labels; see
:func:`describe_new_task`).
"""

from adaptforge.generate.basis import SpanBasis
from adaptforge.generate.cvae import ConditionalVAE
from adaptforge.generate.dataset import AdapterTemplate, GeneratorSamples, ModuleSpec, collect_samples
from adaptforge.generate.generator import Generation, GeneratorConfig, LoraGenerator, describe_new_task
from adaptforge.generate.storage import GeneratorFileError

__all__ = [
    "AdapterTemplate",
    "ConditionalVAE",
    "Generation",
    "GeneratorConfig",
    "GeneratorFileError",
    "GeneratorSamples",
    "LoraGenerator",
    "ModuleSpec",
    "SpanBasis",
    "collect_samples",
    "describe_new_task",
]
