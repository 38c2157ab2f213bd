"""Generator methods (GENERATORS): ``span`` (a CVAE over the span of the library's final adapters, conditioned
on the description) and ``icm`` (ICM-LoRA as published: raw factors of training snapshots, conditioned on the
in-context task vector).

A method obtains its fitted generator from the library (loaded from ``<library>/generators/<key>`` when one
was fitted on exactly these adapters with these params, else fitted and saved there) and turns a new task
(description, labels, optional demonstrations) into its condition.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np

from adaptforge.core import AdaptforgeError, LoraDelta, Registry
from adaptforge.generate.condition import description_vector, task_vector
from adaptforge.generate.dataset import collect_samples
from adaptforge.generate.generator import GeneratorConfig, LoraGenerator
from adaptforge.generate.icm import IcmGenerator, IcmParams, collect_icm_samples, icm_key
from adaptforge.library import GENERATORS_DIR, AdapterRecord, Library
from adaptforge.methods import Method
from adaptforge.params import Params
from adaptforge.scorers import Scorer, describe
from adaptforge.snapshots import SNAPSHOTS_FILE
from adaptforge.tasks import Example, Task

FEW_ADAPTERS = 8  # below this many training adapters a learned generator has little to learn from
Say = Callable[[str], None]


class Fitted(Protocol):
    info: dict[str, Any]

    def generate(self, condition: np.ndarray, seed: int | None = None) -> LoraDelta: ...


@dataclass
class Obtained:
    """A generator ready to use, the adapters it learned from, its folder and its size, the size of what it
    learned from (final adapters, or snapshots for icm) and of the final adapters, in bytes."""

    generator: Fitted
    records: list[AdapterRecord]
    folder: Path
    generator_bytes: int
    training_bytes: int
    fitted_now: bool
    final_bytes: int = 0  # the final adapters of the training tasks (float32); 0: same as training_bytes


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def generator_key(records: Sequence[AdapterRecord], config: GeneratorConfig) -> str:
    """Identity of a span generator: the exact adapters it was trained on (checksums) and its config."""
    payload = json.dumps(
        {"adapters": sorted(r.checksum for r in records), "config": config.to_dict()}, sort_keys=True
    ).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


GP = TypeVar("GP", bound=Params)


class Generator(Method[GP]):
    """Family base: learns ``p(adapter | task condition)`` from the library."""

    kind: ClassVar[str] = "generator"
    params_base: ClassVar[type[Params]] = Params

    @classmethod
    def obtain(
        cls, library: Library, backbone_fp: str, scorer: Scorer, params: GP, exclude_tasks: Sequence[str], say: Say
    ) -> Obtained:
        raise NotImplementedError

    @classmethod
    def condition(cls, scorer: Scorer, task: Task, examples: Sequence[Example], params: GP) -> tuple[np.ndarray, str]:
        """The task's condition vector and a short description of its source (recorded as lineage)."""
        raise NotImplementedError

    @classmethod
    def uses_demonstrations(cls, params: GP) -> int:
        """How many demonstrations the condition needs (0: none)."""
        return 0

    @classmethod
    def check_library(cls, library: Library) -> None:
        """Refuse, from the catalog alone (before the base model loads), a library this method cannot learn from."""


GENERATORS: Registry[type[Generator[Any]]] = Registry(
    "generator",
    Generator,
    entries={"span": "adaptforge.generate.methods:SpanMethod", "icm": "adaptforge.generate.methods:IcmMethod"},
)


@GENERATORS.register
class SpanMethod(Generator[GeneratorConfig]):
    """CVAE over the principal directions of the library's final adapters, conditioned on the description
    embedding; decodes mixing weights over them (Shao et al. 2025, https://arxiv.org/abs/2501.17635, adapted)."""

    name: ClassVar[str] = "span"
    reference_url: ClassVar[str] = "https://arxiv.org/abs/2501.17635"

    @classmethod
    def obtain(
        cls,
        library: Library,
        backbone_fp: str,
        scorer: Scorer,
        params: GeneratorConfig,
        exclude_tasks: Sequence[str],
        say: Say,
    ) -> Obtained:
        samples = collect_samples(library, backbone_fp, exclude_tasks=exclude_tasks)
        records = [library.get(name) for name in samples.names]
        folder = library.root / GENERATORS_DIR / generator_key(records, params)
        training = 4 * samples.template.adapter_parameters() * len(records)
        if folder.is_dir():
            say(f"reusing generator {folder.name} ({len(records)} adapters)")
            return Obtained(LoraGenerator.load(folder), records, folder, folder_bytes(folder), training, False)
        if len(records) < FEW_ADAPTERS:
            say(
                f"warning: the generator learns from only {len(records)} adapters; with fewer than {FEW_ADAPTERS} "
                "it can do little more than return their mean (train or import more tasks' adapters)"
            )
        say(f"fitting the generator on {len(records)} adapters")
        generator = LoraGenerator.fit(samples, params)
        generator.save(folder)
        return Obtained(generator, records, folder, folder_bytes(folder), training, True)

    @classmethod
    def condition(
        cls, scorer: Scorer, task: Task, examples: Sequence[Example], params: GeneratorConfig
    ) -> tuple[np.ndarray, str]:
        return describe(scorer, task), "description"


@GENERATORS.register
class IcmMethod(Generator[IcmParams]):
    """ICM-LoRA: a CVAE over raw, per-tensor normalised LoRA factors of training snapshots, conditioned on the
    base model's hidden state over k demonstrations (Shao et al. 2025, https://arxiv.org/abs/2501.17635)."""

    name: ClassVar[str] = "icm"
    reference_url: ClassVar[str] = "https://arxiv.org/abs/2501.17635"

    @classmethod
    def notes(cls) -> tuple[str, ...]:
        return ("needs adapters trained with --snapshots", "k demonstrations: --examples FILE, --shots K")

    @classmethod
    def check_library(cls, library: Library) -> None:
        if not any(r.is_task_adapter and SNAPSHOTS_FILE in r.extra_checksums for r in library.list()):
            raise AdaptforgeError(
                f"library {library.root}: no task adapter has training snapshots; --method icm learns from them: "
                "train adapters with `adaptforge train --snapshots 20` (or use --method span)"
            )

    @classmethod
    def obtain(
        cls,
        library: Library,
        backbone_fp: str,
        scorer: Scorer,
        params: IcmParams,
        exclude_tasks: Sequence[str],
        say: Say,
    ) -> Obtained:
        samples = collect_icm_samples(library, backbone_fp, params.tail, exclude_tasks)
        folder = library.root / GENERATORS_DIR / icm_key(samples.records, params, backbone_fp)
        if folder.is_dir():
            say(f"reusing generator {folder.name} ({len(samples.records)} adapters)")
            return Obtained(
                IcmGenerator.load(folder),
                samples.records,
                folder,
                folder_bytes(folder),
                samples.raw_bytes,
                False,
                samples.final_bytes,
            )
        say(f"fitting the icm generator on {len(samples.task_of)} snapshots of {len(samples.records)} adapters")

        def condition(task: Task, shots: Sequence[Example]) -> np.ndarray:
            return cls.condition(scorer, task, shots, params)[0]

        generator = IcmGenerator.fit(samples, condition, params)
        size = generator.save(folder)
        return Obtained(generator, samples.records, folder, size, samples.raw_bytes, True, samples.final_bytes)

    @classmethod
    def condition(
        cls, scorer: Scorer, task: Task, examples: Sequence[Example], params: IcmParams
    ) -> tuple[np.ndarray, str]:
        if params.condition == "description":
            return description_vector(scorer, task), "description"
        if not examples:
            raise AdaptforgeError(
                f"task {task.name!r}: --method icm conditions on demonstrations and none were given; pass "
                "--examples FILE (labelled JSONL) or --shots 0 for description-only conditioning"
            )
        return task_vector(scorer, task, examples), f"{len(examples)} demonstrations"

    @classmethod
    def uses_demonstrations(cls, params: IcmParams) -> int:
        return params.shots if params.condition == "demos" else 0
