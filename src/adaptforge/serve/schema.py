"""Request bodies, validated by pydantic before anything runs: unknown fields and wrong types are refused
with a 422 naming the field. Cross-field rules (exactly one way to pick adapters, one adapter per text) and
limits are checked by the service, which knows the library and the limits."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

RouteName = Literal["arrow", "dawin", "retrieval"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class MergeSpec(_Body):
    """A merge made for this request: ``adapters`` with task-preference ``weights`` by a registered method."""

    method: StrictStr = "task_arithmetic"
    adapters: list[StrictStr] = Field(min_length=1)
    weights: list[StrictFloat | StrictInt] | None = None
    params: dict[StrictStr, Any] = Field(default_factory=dict)


class RouteSpec(_Body):
    """Per-input routing for this request over ``adapters`` (default: the library's tasks' own adapters)."""

    method: RouteName
    adapters: list[StrictStr] | None = None
    params: dict[StrictStr, Any] = Field(default_factory=dict)


class ClassifyRequest(_Body):
    texts: list[StrictStr] = Field(min_length=1)
    adapter: StrictStr | None = None
    adapters: list[StrictStr | None] | None = None
    merge: MergeSpec | None = None
    route: RouteName | RouteSpec | None = None
    labels: list[StrictStr] | None = None
    description: StrictStr | None = None
    task: StrictStr | None = None


class EmbeddingsRequest(_Body):
    """OpenAI's embeddings body: ``model`` is an adapter name (or the base model's name, or ``base``)."""

    model: StrictStr
    input: StrictStr | list[StrictStr]
    encoding_format: Literal["float"] = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None


FIELDS: dict[str, tuple[str, ...]] = {
    "classify": tuple(ClassifyRequest.model_fields),
    "merge": tuple(MergeSpec.model_fields),
    "route": tuple(RouteSpec.model_fields),
    "embeddings": tuple(EmbeddingsRequest.model_fields),
}
