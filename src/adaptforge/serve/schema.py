"""Request bodies, validated by pydantic before anything runs: unknown fields and wrong types are refused
with a 422 naming the field. Cross-field rules (exactly one way to pick adapters, one adapter per text) and
limits are checked by the service, which knows the library and the limits."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

RouteName = Literal["arrow", "dawin", "retrieval"]


def _unicode(value: Any) -> Any:
    """Refuse a lone UTF-16 surrogate (JSON's ``"\\ud800"``) anywhere in a value: it is no text, so the
    tokenizer and the UTF-8 encoder of every answer would fail on it, as a 500 instead of this 422."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(
                f"holds a lone UTF-16 surrogate ({value[err.start]!r} at character {err.start}); send valid Unicode"
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _unicode(key)
            _unicode(item)
    elif isinstance(value, list):
        for item in value:
            _unicode(item)
    return value


Text = Annotated[StrictStr, AfterValidator(_unicode)]
Params = Annotated[dict[Text, Any], AfterValidator(_unicode)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class MergeSpec(_Body):
    """A merge made for this request: ``adapters`` with task-preference ``weights`` by a registered method."""

    method: Text = "task_arithmetic"
    adapters: list[Text] = Field(min_length=1)
    weights: list[StrictFloat | StrictInt] | None = None
    params: Params = Field(default_factory=dict)


class RouteSpec(_Body):
    """Per-input routing for this request over ``adapters`` (default: the library's tasks' own adapters)."""

    method: RouteName
    adapters: list[Text] | None = None
    params: Params = Field(default_factory=dict)


class ClassifyRequest(_Body):
    texts: list[Text] = Field(min_length=1)
    adapter: Text | None = None
    adapters: list[Text | None] | None = None
    merge: MergeSpec | None = None
    route: RouteName | RouteSpec | None = None
    labels: list[Text] | None = None
    description: Text | None = None
    task: Text | None = None


class EmbeddingsRequest(_Body):
    """OpenAI's embeddings body: ``model`` is an adapter name (or the base model's name, or ``base``)."""

    model: Text
    input: Text | list[Text]
    encoding_format: Literal["float"] = "float"
    dimensions: StrictInt | None = None
    user: Text | None = None


Number = StrictFloat | StrictInt


class ChatMessage(_Body):
    """One turn of a conversation (OpenAI's chat message; text content only)."""

    role: Literal["system", "user", "assistant"]
    content: Text


class StreamOptions(_Body):
    include_usage: StrictBool = False


class _Generation(_Body):
    """The sampling fields OpenAI's chat and completions bodies share (checked further by the planner)."""

    model: Text
    max_tokens: StrictInt | None = None
    temperature: Number = 1.0
    top_p: Number = 1.0
    seed: StrictInt | None = None
    stop: Text | list[Text] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt = 1
    user: Text | None = None
    min_tokens: StrictInt = 0  # vLLM's extra parameter
    merge: MergeSpec | None = None  # a request-time merge (as /v1/classify's); ``model`` then names the base
    route: RouteName | RouteSpec | None = None  # a request-time router (Arrow only: it routes per token)


class ChatRequest(_Generation):
    """OpenAI's ``/v1/chat/completions`` body; ``model`` is an adapter name (or the base model's name, or ``base``)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = None


class CompletionRequest(_Generation):
    """OpenAI's ``/v1/completions`` body (one prompt string)."""

    prompt: Text


FIELDS: dict[str, tuple[str, ...]] = {
    "classify": tuple(ClassifyRequest.model_fields),
    "merge": tuple(MergeSpec.model_fields),
    "route": tuple(RouteSpec.model_fields),
    "embeddings": tuple(EmbeddingsRequest.model_fields),
    "chat": tuple(ChatRequest.model_fields),
    "completions": tuple(CompletionRequest.model_fields),
    "messages": tuple(ChatMessage.model_fields),
    "stream_options": tuple(StreamOptions.model_fields),
}
