"""``adaptforge.params.Params``: coercion by annotation, declared ranges, cross-field checks, dict round trips."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest

from adaptforge.core import AdaptforgeError
from adaptforge.params import ParamHelp, Params, is_finite_number, param


@dataclass(frozen=True, kw_only=True)
class Demo(Params):
    count: int = param(3, ge=1, help="how many things")
    rate: float = param(0.5, gt=0, le=10, help="a rate")
    flag: bool = param(False, help="a switch")
    mode: str = param(
        "fast", choices=("fast", "slow"), hints={"quick": "adaptforge calls it 'fast'"}, help="how to run"
    )
    limit: int | None = param(None, ge=2, help="optional cap")
    grid: tuple[float, ...] = param((0.0, 1.0), help="values tried")
    extra: Mapping[str, Any] = param(default_factory=dict, help="free-form options")


@dataclass(frozen=True, kw_only=True)
class Bounds(Params):
    a: float = param(0.0, ge=0, help="at least zero")
    b: float = param(1.0, gt=0, help="positive")
    c: float = param(0.0, le=1, help="at most one")
    d: float = param(0.0, lt=1, help="below one")
    e: float = param(0.5, ge=0, lt=1, help="a fraction")


@dataclass(frozen=True, kw_only=True)
class Window(Params):
    lo: int = param(0, help="start")
    hi: int = param(10, help="end")

    def check(self) -> None:
        self.require("hi", self.hi >= self.lo, f">= lo ({self.lo})")


@dataclass(frozen=True, kw_only=True)
class Labelled(Params):
    label: ClassVar[str] = "my sampler"
    size: int = param(1, ge=1, help="a size")


@dataclass(frozen=True, kw_only=True)
class Empty(Params):
    """No fields at all."""


def error_of(cls: type[Params], **values: Any) -> str:
    with pytest.raises(AdaptforgeError) as err:
        cls(**values)
    return str(err.value)


# ------------------------------------------------------------------------------------------- coercion


def test_defaults_construct_with_their_declared_values() -> None:
    d = Demo()
    assert (d.count, d.rate, d.flag, d.mode, d.limit, d.grid, d.extra) == (3, 0.5, False, "fast", None, (0.0, 1.0), {})


def test_int_becomes_float_for_a_float_field() -> None:
    d = Demo(rate=2)
    assert d.rate == 2.0 and type(d.rate) is float


def test_numpy_scalars_become_python_types() -> None:
    d = Demo(count=np.int64(4), rate=np.float32(0.25), flag=np.bool_(True), limit=np.int32(7))
    assert (d.count, d.rate, d.flag, d.limit) == (4, 0.25, True, 7)
    assert (type(d.count), type(d.rate), type(d.flag), type(d.limit)) == (int, float, bool, int)


def test_a_list_becomes_a_tuple_with_coerced_items() -> None:
    d = Demo(grid=[1, np.float64(0.5), 2])
    assert d.grid == (1.0, 0.5, 2.0)
    assert type(d.grid) is tuple and all(type(v) is float for v in d.grid)


def test_a_mapping_field_is_copied_into_a_dict() -> None:
    source = {"k": [1, 2]}
    d = Demo(extra=source)
    assert d.extra == source and type(d.extra) is dict and d.extra is not source


def test_optional_int_accepts_none_and_an_int() -> None:
    assert Demo(limit=None).limit is None
    assert Demo(limit=5).limit == 5


# ------------------------------------------------------------------------------------------- refusals


def test_a_bool_for_an_int_field_is_refused_with_field_and_type() -> None:
    message = error_of(Demo, count=True)
    assert message.startswith("Demo: 'count' must be an integer")
    assert "got True" in message


def test_a_float_for_an_int_field_is_refused() -> None:
    assert "'count' must be an integer" in error_of(Demo, count=2.0)


def test_a_bool_for_a_float_field_is_refused() -> None:
    assert "'rate' must be a finite number" in error_of(Demo, rate=False)


def test_a_quoted_number_for_a_float_field_is_refused() -> None:
    message = error_of(Demo, rate="0.5")
    assert "'rate' must be a finite number in (0, 10]" in message
    assert "got '0.5'" in message


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan")])
def test_non_finite_floats_are_refused(value: float) -> None:
    assert "'rate' must be a finite number" in error_of(Demo, rate=value)


def test_a_float_field_refuses_an_integer_too_large_for_a_float() -> None:
    """A YAML integer of 400 digits cannot be a float: refused like any other non-number, not an OverflowError."""
    assert "'rate' must be a finite number" in error_of(Demo, rate=10**400)


def test_a_non_bool_for_a_bool_field_is_refused() -> None:
    message = error_of(Demo, flag=1)
    assert "'flag' must be true or false" in message and "got 1" in message


def test_a_non_string_for_a_string_field_is_refused() -> None:
    assert "'mode' must be a string" in error_of(Demo, mode=3)


def test_a_string_for_a_tuple_field_is_refused() -> None:
    message = error_of(Demo, grid="0.1,0.2")
    assert "'grid' must be a list of float" in message


def test_a_tuple_with_a_bad_item_is_refused_naming_the_field() -> None:
    assert "'grid' must be a list of float" in error_of(Demo, grid=[0.1, "x"])


def test_a_non_mapping_for_a_mapping_field_is_refused() -> None:
    assert "'extra' must be a mapping" in error_of(Demo, extra=[("k", 1)])


def test_a_wrong_type_for_an_optional_int_names_both_options_and_the_range() -> None:
    message = error_of(Demo, limit="3")
    assert "'limit' must be int or null >= 2" in message


def test_an_unhashable_value_inside_a_tuple_is_refused_cleanly() -> None:
    """A tuple holding a list passes ``isinstance(_, Hashable)`` but cannot be hashed: still an AdaptforgeError."""
    assert "'grid' must be a list of float" in error_of(Demo, grid=([1.0],))


@pytest.mark.parametrize(
    ("field", "value", "bound"),
    [
        ("a", -0.1, ">= 0"),
        ("b", 0.0, "> 0"),
        ("c", 1.5, "<= 1"),
        ("d", 1.0, "< 1"),
        ("e", 1.0, "in [0, 1)"),
        ("e", -1e-9, "in [0, 1)"),
    ],
)
def test_out_of_range_values_are_refused_showing_the_bound(field: str, value: float, bound: str) -> None:
    message = error_of(Bounds, **{field: value})
    assert message == f"Bounds: {field!r} must be {bound}, got {value!r}"


@pytest.mark.parametrize(("field", "value"), [("a", 0.0), ("b", 1e-12), ("c", 1.0), ("d", 0.999), ("e", 0.0)])
def test_values_on_the_allowed_side_of_a_bound_are_accepted(field: str, value: float) -> None:
    assert getattr(Bounds(**{field: value}), field) == value


def test_out_of_range_int_shows_the_bound() -> None:
    assert error_of(Demo, count=0) == "Demo: 'count' must be >= 1, got 0"
    assert error_of(Demo, limit=1) == "Demo: 'limit' must be >= 2, got 1"


def test_both_bounds_of_a_float_are_enforced() -> None:
    assert "'rate' must be in (0, 10], got 0.0" in error_of(Demo, rate=0.0)
    assert "'rate' must be in (0, 10], got 10.5" in error_of(Demo, rate=10.5)
    assert Demo(rate=10).rate == 10.0


def test_a_bound_applies_to_every_item_of_a_tuple() -> None:
    @dataclass(frozen=True, kw_only=True)
    class Probs(Params):
        ps: tuple[float, ...] = param((0.5,), ge=0, le=1, help="probabilities")

    assert Probs(ps=[0.0, 1.0]).ps == (0.0, 1.0)
    assert "'ps' must be in [0, 1]" in error_of(Probs, ps=[0.2, 1.2])


def test_a_choice_outside_the_choices_is_refused_listing_them() -> None:
    message = error_of(Demo, mode="medium")
    assert message == "Demo: 'mode' must be one of 'fast', 'slow', got 'medium'"


def test_a_hinted_wrong_value_gets_its_advice_appended() -> None:
    message = error_of(Demo, mode="quick")
    assert message == "Demo: 'mode' must be one of 'fast', 'slow', got 'quick' (adaptforge calls it 'fast')"


# ---------------------------------------------------------------------------------------------- check()


def test_check_hook_runs_after_coercion_and_require_names_the_field() -> None:
    assert Window(lo=2, hi=np.int64(2)).hi == 2
    assert error_of(Window, lo=5, hi=3) == "Window: 'hi' must be >= lo (5), got 3"


def test_label_names_the_owner_in_errors() -> None:
    assert error_of(Labelled, size=0) == "my sampler: 'size' must be >= 1, got 0"


# -------------------------------------------------------------------------------------- from_dict / to_dict


def test_from_dict_builds_with_coercion_and_defaults() -> None:
    d = Demo.from_dict({"count": 5, "grid": [2, 3]})
    assert d == Demo(count=5, grid=(2.0, 3.0))
    assert Demo.from_dict(None) == Demo()
    assert Demo.from_dict({}) == Demo()


def test_from_dict_unknown_key_lists_known_keys_and_suggests_the_closest() -> None:
    with pytest.raises(AdaptforgeError) as err:
        Demo.from_dict({"cuont": 2})
    message = str(err.value)
    assert message.startswith("Demo: unknown parameter 'cuont'")
    assert "known: count, rate, flag, mode, limit, grid, extra." in message
    assert message.endswith("Did you mean 'count'?")


def test_from_dict_unknown_key_on_a_params_without_fields_says_so() -> None:
    with pytest.raises(AdaptforgeError, match=r"known: none \(it takes no parameters\)"):
        Empty.from_dict({"x": 1})


def test_from_dict_refuses_a_non_mapping() -> None:
    with pytest.raises(AdaptforgeError, match="Demo: expected a mapping"):
        Demo.from_dict([("count", 2)])  # type: ignore[arg-type]


def test_from_dict_owner_replaces_the_class_name_in_every_error() -> None:
    owner = "merge method 'ties'"
    with pytest.raises(AdaptforgeError) as unknown:
        Demo.from_dict({"rat": 1.0}, owner=owner)
    assert str(unknown.value).startswith(f"{owner}: unknown parameter 'rat'")
    with pytest.raises(AdaptforgeError) as bad:
        Demo.from_dict({"count": 0}, owner=owner)
    assert str(bad.value) == f"{owner}: 'count' must be >= 1, got 0"
    with pytest.raises(AdaptforgeError) as checked:
        Window.from_dict({"lo": 3, "hi": 1}, owner=owner)
    assert str(checked.value) == f"{owner}: 'hi' must be >= lo (3), got 1"
    assert "Demo" not in str(bad.value) and "Window" not in str(checked.value)


def test_to_dict_is_json_ready_and_round_trips_through_from_dict() -> None:
    d = Demo(count=7, rate=3, flag=True, mode="slow", limit=4, grid=(0.25, 0.75), extra={"nested": {"k": (1, 2)}})
    plain = d.to_dict()
    assert plain["grid"] == [0.25, 0.75] and plain["extra"] == {"nested": {"k": [1, 2]}}
    text = json.dumps(plain)
    back = Demo.from_dict(json.loads(text))
    assert back.to_dict() == plain
    assert (back.count, back.rate, back.flag, back.mode, back.limit, back.grid) == (
        7,
        3.0,
        True,
        "slow",
        4,
        (0.25, 0.75),
    )


def test_default_instance_round_trips_to_an_equal_instance() -> None:
    assert Demo.from_dict(json.loads(json.dumps(Demo().to_dict()))) == Demo()


def test_to_dict_does_not_share_the_mapping_with_the_instance() -> None:
    d = Demo(extra={"k": 1})
    plain = d.to_dict()
    plain["extra"]["k"] = 2
    assert d.extra == {"k": 1}


# ------------------------------------------------------------------------------------------- help_rows


def test_help_rows_give_one_row_per_field_with_type_default_and_range() -> None:
    rows = {row.name: row for row in Demo.help_rows()}
    assert list(rows) == [f.name for f in dataclasses.fields(Demo)]
    assert all(isinstance(row, ParamHelp) for row in rows.values())
    assert rows["count"] == ParamHelp("count", "int", 3, "how many things (>= 1)")
    assert rows["rate"] == ParamHelp("rate", "float", 0.5, "a rate (in (0, 10])")
    assert rows["flag"] == ParamHelp("flag", "bool", False, "a switch")
    assert rows["mode"] == ParamHelp("mode", "str", "fast", "how to run (one of 'fast', 'slow')")
    assert rows["limit"] == ParamHelp("limit", "int | null", None, "optional cap (>= 2)")
    assert rows["grid"] == ParamHelp("grid", "a list of float", [0.0, 1.0], "values tried")
    assert rows["extra"].default == {} and rows["extra"].help == "free-form options"
    assert "mapping" in rows["extra"].type.lower()


def test_help_rows_of_a_params_without_fields_is_empty() -> None:
    assert Empty.help_rows() == []


# ---------------------------------------------------------------------------------------------- frozen


def test_params_are_frozen() -> None:
    d = Demo()
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.count = 5  # type: ignore[misc]
    assert d.count == 3


def test_params_compare_by_value() -> None:
    assert Demo(count=4) == Demo(count=np.int64(4))
    assert Demo(count=4) != Demo(count=5)


# ---------------------------------------------------------------------------------------- is_finite_number


@pytest.mark.parametrize(("value", "ok"), [(1, True), (2.5, True), (np.float32(1), True), (True, False)])
def test_is_finite_number_accepts_real_numbers_but_not_bools(value: object, ok: bool) -> None:
    assert is_finite_number(value) is ok


@pytest.mark.parametrize("value", [math.nan, math.inf, "1", None])
def test_is_finite_number_refuses_non_finite_and_non_numbers(value: object) -> None:
    assert is_finite_number(value) is False
