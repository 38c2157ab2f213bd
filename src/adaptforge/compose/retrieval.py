"""Candidate adapters for a new task, and the ``retrieval`` composer (the single best candidate).

Adapters are ranked by the cosine between their stored task-description embedding and the new task's
(:func:`adaptforge.scorers.describe`, the same function that made the stored embeddings), as
LoraRetriever retrieves LoRAs by embedding similarity (Zhao et al. 2024, https://arxiv.org/abs/2402.09997;
here over task descriptions rather than inputs). With shots, every retrieved adapter's mean cross-entropy
on them is measured (one forward each) and is the ranking key, since a few labels say more about transfer
than a description does; similarity breaks ties.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import replace

from adaptforge.compose.base import (
    COMPOSERS,
    Candidate,
    ComposeParams,
    Composer,
    ComposeResult,
    shot_losses,
)
from adaptforge.compose.shots import Shots
from adaptforge.core import AdaptforgeError
from adaptforge.library import Library
from adaptforge.scorers import Scorer, describe
from adaptforge.tasks import Task

RETRIEVAL_URL = "https://arxiv.org/abs/2402.09997"


def rank_candidates(
    library: Library,
    scorer: Scorer,
    task: Task,
    n: int = 20,
    shots: Shots | None = None,
    exclude_tasks: Collection[str] = (),
) -> list[Candidate]:
    """The ``n`` most promising single-task adapters of ``library`` for ``task``, loaded, best first.

    Only tasks' own adapters (:attr:`~adaptforge.library.AdapterRecord.is_task_adapter`: trained or imported
    for one task; never merges, compositions or generated ones) made for the scorer's base (fingerprint),
    with a stored description embedding and not of a task in ``exclude_tasks`` are considered. Without shots (or
    k = 0) they are ranked by description cosine; with shots, by mean cross-entropy on all of them (ties:
    higher cosine first). Each candidate carries its ``similarity`` and, with shots, its ``shot_loss``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise AdaptforgeError(f"rank_candidates: n must be a positive integer, got {n!r}")
    fingerprint = scorer.backbone.fingerprint
    query = describe(scorer, task)
    pool = max(1, len(library))
    scored = [
        (rec, sim)
        for rec, sim in library.similar(query, k=pool, base_fingerprint=fingerprint)
        if rec.is_task_adapter and rec.task not in exclude_tasks
    ]
    if not scored:
        raise AdaptforgeError(
            f"no candidate adapters for task {task.name!r} in {library.root} compatible with base "
            f"{scorer.backbone.name!r} (fingerprint {fingerprint}): need tasks' own adapters (trained or "
            f"imported for one task) with a description embedding, excluding tasks {sorted(exclude_tasks)}"
        )
    use_shots = shots is not None and shots.k > 0
    if not use_shots:
        scored = scored[:n]
    candidates = []
    for rec, sim in scored:
        delta, _ = library.load(rec.name, expected_fingerprint=fingerprint)
        candidates.append(Candidate(rec.name, delta, task=rec.task, similarity=sim))
    if use_shots:
        assert shots is not None
        for cand, loss in zip(candidates, shot_losses(scorer, shots, [c.delta for c in candidates]), strict=True):
            cand.shot_loss = loss
        candidates.sort(key=_shot_key)
    return candidates[:n]


def _shot_key(c: Candidate) -> tuple[float, float]:
    loss = c.shot_loss if c.shot_loss is not None and math.isfinite(c.shot_loss) else math.inf
    return loss, -(c.similarity if c.similarity is not None else -math.inf)


@COMPOSERS.register
class Retrieval(Composer[ComposeParams]):
    """The single best candidate, unchanged (weights one-hot): lowest shot loss when k > 0 (measured here for
    candidates that lack it), else highest description similarity, else the first given. The baseline every
    composition has to beat (LoraRetriever-style retrieval, https://arxiv.org/abs/2402.09997)."""

    name = "retrieval"
    reference_url = RETRIEVAL_URL

    def _compose(
        self, candidates: list[Candidate], scorer: Scorer, shots: Shots, params: ComposeParams
    ) -> ComposeResult:
        losses = [c.shot_loss for c in candidates]
        if shots.k > 0:
            missing = [i for i, loss in enumerate(losses) if loss is None]
            measured = shot_losses(scorer, shots, [candidates[i].delta for i in missing]) if missing else []
            for i, loss in zip(missing, measured, strict=True):
                losses[i] = loss
            scored = [replace(c, shot_loss=loss) for c, loss in zip(candidates, losses, strict=True)]
            best = min(range(len(scored)), key=lambda i: (*_shot_key(scored[i]), i))
            rule = "lowest shot loss"
        else:
            sims = [c.similarity if c.similarity is not None else -math.inf for c in candidates]
            best = min(range(len(candidates)), key=lambda i: (-sims[i], i))
            rule = "highest description similarity"
        weights = [1.0 if i == best else 0.0 for i in range(len(candidates))]
        chosen = candidates[best]
        info = {
            "chosen": chosen.name,
            "rule": rule,
            "shot_losses": losses,
            "similarities": [c.similarity for c in candidates],
        }
        return ComposeResult(chosen.delta, weights, info)
