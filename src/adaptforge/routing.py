"""The Router contract: per-input (or per-token) mixing of a fixed list of adapters, and its registry.

A routed adapter is not one set of tensors: what it computes depends on each input. Its stored tensors are
only a static fallback, so every consumer (``merge --eval``, ``compose``, ``adaptforge eval``, later
``serve``) must score it through its router. One contract makes that one path:

* a router is registered in :data:`ROUTERS` under its ``name``;
* :meth:`Router.describe` gives its JSON settings, stored in the adapter's recipe under :data:`RECIPE_KEY`
  together with the ids of the adapters it routes over;
* :meth:`Router.from_settings` rebuilds it from those adapters and settings, and :meth:`Router.evaluate`
  scores a split through it, so a stored routed adapter evaluates exactly as it did when it was made.

Registered routers: ``entropy`` (DaWin, :mod:`adaptforge.merge.dawin`) and ``arrow``
(:mod:`adaptforge.compose.arrow`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from adaptforge.core import AdaptforgeError, LoraDelta, Registry
from adaptforge.evaluate import EvalResult
from adaptforge.library import AdapterRecord, Library
from adaptforge.methods import Method
from adaptforge.params import Params
from adaptforge.provenance import ROUTER_KEY, router_of
from adaptforge.scorers import Scorer
from adaptforge.tasks import Example, Task

RECIPE_KEY = ROUTER_KEY  # (the legacy key of early Arrow compositions is read by adaptforge.provenance)


class Router(Method[Params]):
    """Mixes ``deltas`` per input; subclasses say how (and are registered in :data:`ROUTERS`)."""

    kind = "router"

    def __init__(self, deltas: Sequence[LoraDelta]) -> None:
        if not deltas:
            raise AdaptforgeError(f"router {self.name!r} needs at least one adapter")
        self.deltas = list(deltas)

    def describe(self) -> dict[str, Any]:
        """JSON-able settings that :meth:`from_settings` rebuilds the router from (``router`` is the name)."""
        return {"router": self.name}

    @classmethod
    @abstractmethod
    def from_settings(cls, deltas: Sequence[LoraDelta], settings: Mapping[str, Any]) -> Router:
        """The router :meth:`describe` described, over the same adapters in the same order."""

    @abstractmethod
    def logits(self, scorer: Scorer, task: Task, examples: Sequence[Example]) -> torch.Tensor:
        """``[n, labels]`` logits of the routed model on ``examples``, in order: what ``predict`` and ``serve``
        score per text (``evaluate`` is these logits on a split, with metrics)."""

    @abstractmethod
    def evaluate(
        self, scorer: Scorer, task: Task, split: str, limit: int | None = None, adapter: str | None = None
    ) -> EvalResult:
        """Accuracy, macro-F1 and loss of the routed model on a split (the examples ``evaluate`` would use)."""


ROUTERS: Registry[type[Router]] = Registry(
    "router",
    base=Router,
    entries={"entropy": "adaptforge.merge.dawin:EntropyRouter", "arrow": "adaptforge.compose.arrow:ArrowRouter"},
)


def stored_settings(recipe: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The router settings in a stored recipe (``None``: a static adapter), read from either key."""
    return router_of(recipe or {})


def rebuild(settings: Mapping[str, Any], deltas: Sequence[LoraDelta]) -> Router:
    """A registered router from stored settings and its adapters."""
    return ROUTERS.get(str(settings["router"])).from_settings(deltas, settings)


def routed_settings(router: Router | None, adapter_ids: Sequence[str]) -> dict[str, Any] | None:
    """What a routed adapter's recipe stores under :data:`RECIPE_KEY`: the router's settings and the ids of
    the adapters it routes over, in order (``None`` for a static adapter)."""
    return None if router is None else {**router.describe(), "adapter_ids": list(adapter_ids)}


def stored_router(library: Library, record: AdapterRecord, fingerprint: str) -> Router | None:
    """The router of a stored routed adapter (DaWin merge, Arrow composition), rebuilt from its recipe;
    ``None`` for a static adapter. Its stored tensors are only the static fallback, so evaluating it without
    the router would measure something else. Recipes written before the router stored its adapter ids name
    them as the merge's inputs (``adapter_ids``) or the composition's candidates."""
    settings = record.router_settings
    if settings is None:
        return None
    names = list(record.routed_over)
    missing = [n for n in names if not library.exists(n)]
    if not names or missing:
        raise AdaptforgeError(
            f"adapter {record.name!r} routes over {names} but {missing or 'none'} of them are not in the library "
            f"{library.root}; re-add them or make it again"
        )
    return rebuild(settings, [library.load(n, expected_fingerprint=fingerprint)[0] for n in names])
