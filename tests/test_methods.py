"""One contract for every registered method (merge methods, composers, routers, task samplers, test-time methods).

Each registered class is a :class:`~adaptforge.methods.Method` with a paper link, typed params of its family's
params base that build from defaults and round-trip through JSON, errors that name the method, and a ``--list``
help with a summary and one described row per parameter.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from adaptforge.backends import BACKENDS
from adaptforge.compose import COMPOSERS
from adaptforge.core import AdaptforgeError, Registry
from adaptforge.generate.methods import GENERATORS
from adaptforge.merge import MERGE_METHODS, MergeMethod, MergeParams
from adaptforge.merge.generalized import GeneralizedTaskArithmetic, MagnitudeParams, TiesParams
from adaptforge.methods import Method, declared_params
from adaptforge.params import Params
from adaptforge.routing import ROUTERS
from adaptforge.train.samplers import SAMPLERS
from adaptforge.tta import TTA_METHODS

REGISTRIES: dict[str, Registry] = {
    "merge": MERGE_METHODS,
    "compose": COMPOSERS,
    "router": ROUTERS,
    "sampler": SAMPLERS,
    "tta": TTA_METHODS,
    "backend": BACKENDS,
    "generator": GENERATORS,
}
CASES = [(family, name) for family, registry in REGISTRIES.items() for name in registry.names()]


def method_of(family: str, name: str) -> type[Method]:
    return REGISTRIES[family].get(name)


def near_miss(field: str) -> str:
    """A misspelling of ``field``: its first two differing neighbouring letters (after the first) swapped, or,
    for names too short for that, its last letter doubled."""
    for i in range(1, len(field) - 1):
        if len(field) >= 4 and field[i] != field[i + 1]:
            return field[:i] + field[i + 1] + field[i] + field[i + 2 :]
    return field + field[-1]


def test_every_family_has_methods() -> None:
    for family, registry in REGISTRIES.items():
        assert registry.names(), f"no {family} registered"
    assert {"arrow", "entropy"} <= set(ROUTERS.names())


@pytest.mark.parametrize(("family", "name"), CASES)
def test_method_declares_its_contract(family: str, name: str) -> None:
    """A Method subclass whose name is its registry key, with an https paper link and a params type of its family."""
    cls = method_of(family, name)
    assert issubclass(cls, Method)
    assert cls.name == name
    assert REGISTRIES[family].kind == cls.kind
    assert isinstance(cls.reference_url, str) and cls.reference_url.startswith("https://")
    assert issubclass(cls.params_type, Params) and issubclass(cls.params_type, cls.params_base)
    assert dataclasses.is_dataclass(cls.params_type)


@pytest.mark.parametrize(("family", "name"), CASES)
def test_default_params_construct_and_round_trip_through_json(family: str, name: str) -> None:
    cls = method_of(family, name)
    defaults = cls.params_type()
    assert cls.parse_params(None) == defaults
    plain = json.loads(json.dumps(defaults.to_dict()))
    assert sorted(plain) == sorted(f.name for f in dataclasses.fields(cls.params_type))
    parsed = cls.parse_params(plain)
    assert type(parsed) is cls.params_type
    assert parsed == defaults
    assert cls.parse_params(defaults) is defaults


@pytest.mark.parametrize(("family", "name"), CASES)
def test_unknown_param_names_the_method(family: str, name: str) -> None:
    cls = method_of(family, name)
    with pytest.raises(AdaptforgeError) as err:
        cls.parse_params({"no_such_parameter_xyz": 1})
    message = str(err.value)
    assert message.startswith(f"{cls.kind} {name!r}: unknown parameter 'no_such_parameter_xyz'")


@pytest.mark.parametrize(("family", "name"), CASES)
def test_a_misspelt_param_gets_did_you_mean(family: str, name: str) -> None:
    cls = method_of(family, name)
    fields = [f.name for f in dataclasses.fields(cls.params_type)]
    if not fields:
        pytest.skip(f"{cls.kind} {name!r} takes no parameters")
    for field in fields:
        typo = near_miss(field)
        assert typo not in fields
        with pytest.raises(AdaptforgeError) as err:
            cls.parse_params({typo: 1})
        message = str(err.value)
        assert message.startswith(f"{cls.kind} {name!r}: unknown parameter {typo!r}")
        assert message.endswith(f"Did you mean {field!r}?"), message


@pytest.mark.parametrize(("family", "name"), CASES)
def test_a_bad_value_is_reported_under_the_method_name(family: str, name: str) -> None:
    """Value errors carry the method's kind and name, not the params class name."""
    cls = method_of(family, name)
    fields = dataclasses.fields(cls.params_type)
    if not fields:
        pytest.skip(f"{cls.kind} {name!r} takes no parameters")
    field = fields[0]
    with pytest.raises(AdaptforgeError) as err:
        cls.parse_params({field.name: object()})
    message = str(err.value)
    assert message.startswith(f"{cls.kind} {name!r}: {field.name!r} must be"), message
    assert cls.params_type.__name__ not in message


@pytest.mark.parametrize(("family", "name"), CASES)
def test_params_of_another_type_are_refused(family: str, name: str) -> None:
    cls = method_of(family, name)

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Foreign(Params):
        pass

    with pytest.raises(AdaptforgeError) as err:
        cls.parse_params(Foreign())
    assert str(err.value).startswith(f"{cls.kind} {name!r} takes {cls.params_type.__name__}")


@pytest.mark.parametrize(("family", "name"), CASES)
def test_help_has_a_summary_and_one_described_row_per_param(family: str, name: str) -> None:
    cls = method_of(family, name)
    info = cls.help()
    assert info.name == name
    assert info.reference_url == cls.reference_url
    assert info.summary.strip(), f"{cls.kind} {name!r} has no docstring summary"
    assert "http" not in info.summary
    assert [row.name for row in info.params] == [f.name for f in dataclasses.fields(cls.params_type)]
    for row in info.params:
        assert row.help.strip(), f"{cls.kind} {name!r}: parameter {row.name!r} has no help text"
        assert row.type.strip()
    assert all(isinstance(note, str) and note for note in info.notes)


@pytest.mark.parametrize(("family", "name"), CASES)
def test_help_summary_is_not_cut_inside_parentheses(family: str, name: str) -> None:
    """The first sentence ends outside any parenthesis: an abbreviation such as "Sec." inside a citation is not
    a sentence end (summaries shortened to the width limit end in "..." and are exempt)."""
    summary = method_of(family, name).help().summary
    if summary.endswith("..."):
        pytest.skip("summary shortened to the width limit")
    assert summary.count("(") == summary.count(")"), summary


@pytest.mark.parametrize(("family", "name"), CASES)
def test_params_type_is_the_type_the_method_is_generic_in(family: str, name: str) -> None:
    """``class Ties(GeneralizedTaskArithmetic[TiesParams])``: the hooks are typed with the generic argument, and
    ``params_type`` (what parse_params builds) is that class or a subclass of it."""
    cls = method_of(family, name)
    declared = declared_params(cls)
    assert declared is not None, f"{cls.kind} {name!r} does not name its params type in its base"
    assert issubclass(cls.params_type, declared)
    fields = {f.name for f in dataclasses.fields(cls.params_type)}
    assert set(cls.required_fields()) <= fields


def test_a_knob_whose_field_is_missing_from_the_params_type_is_refused_at_registration() -> None:
    registry: Registry[type[MergeMethod]] = Registry("merge method", base=MergeMethod)

    class Trimmed(GeneralizedTaskArithmetic[MergeParams]):
        """Magnitude trimming declared on params without a density."""

        name = "trimmed"
        reference_url = "https://arxiv.org/abs/2306.01708"
        sparsify = "magnitude"

    with pytest.raises(ValueError, match=r"knobs read \['density'\] but params_type MergeParams has no such field"):
        registry.register(Trimmed)
    assert "trimmed" not in registry

    class Trimmed2(GeneralizedTaskArithmetic[MagnitudeParams]):
        """The same knob with its field."""

        name = "trimmed2"
        reference_url = "https://arxiv.org/abs/2306.01708"
        sparsify = "magnitude"

    registry.register(Trimmed2)
    assert Trimmed2.params_type is MagnitudeParams
    assert Trimmed2.required_fields() == ("density",)


def test_a_params_type_other_than_the_generic_argument_is_refused_at_registration() -> None:
    registry: Registry[type[MergeMethod]] = Registry("merge method", base=MergeMethod)

    class Mismatched(GeneralizedTaskArithmetic[TiesParams]):
        """Hooks typed with TiesParams, params built as plain MergeParams."""

        name = "mismatched"
        reference_url = "https://arxiv.org/abs/2306.01708"
        params_type = MergeParams

    with pytest.raises(ValueError, match="params_type MergeParams is not the TiesParams its hooks are typed with"):
        registry.register(Mismatched)
