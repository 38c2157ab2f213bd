"""One base for every typed parameter set: method params, sampler configs, train and generator configs.

A subclass is a frozen dataclass whose fields carry their type (the annotation), their default and, through
:func:`param`, a help text and a range. :class:`Params` then does what each config used to do by hand:

* coerces values by annotation (``int`` to ``float``, numpy scalars to Python, lists to tuples), refusing
  anything else (a quoted number, a bool for a number) with the field's name and what was expected;
* checks declared ranges (``ge``, ``gt``, ``le``, ``lt``, ``choices``) and then the subclass's
  cross-field :meth:`Params.check`;
* builds from a mapping (:meth:`Params.from_dict`; an unknown key names the closest known one) and back
  (:meth:`Params.to_dict`, JSON-ready);
* describes itself for ``--list`` (:meth:`Params.help_rows`).

The pattern is the declarative validation ``SamplerConfig`` had, made general, in the spirit of
mergekit's typed method parameters and PEFT's dataclass configs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import numpy as np

from adaptforge.core import AdaptforgeError, did_you_mean

P = TypeVar("P", bound="Params")


def param(
    default: Any = MISSING,
    *,
    help: str,  # noqa: A002 - the word every CLI library uses for this
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    hints: Mapping[Any, str] | None = None,
    default_factory: Any = MISSING,
) -> Any:
    """A params field with its help text and range (numbers: bounds; strings: ``choices``). ``hints`` maps
    known wrong values to advice added to the error (e.g. another library's name for the same option)."""
    meta = {
        "help": help,
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
        "choices": tuple(choices) if choices else None,
        "hints": dict(hints or {}),
    }
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class _Mismatch(Exception):
    def __init__(self, expected: str) -> None:
        self.expected = expected


@dataclass(frozen=True)
class ParamHelp:
    """One row of ``--list``: a field's name, type, default and help text (with its range)."""

    name: str
    type: str
    default: Any
    help: str


@dataclass(frozen=True)
class Params:
    """Base of every typed parameter set; see the module docstring. Subclasses add fields with
    :func:`param` and, for checks across fields, override :meth:`check`."""

    label: ClassVar[str] = ""  # how errors name the owner when built directly (default: the class name)

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            bound = _bound_text(f.metadata)
            try:
                value = _coerce(value, hints[f.name])
            except _Mismatch as err:
                self._fail(f.name, f"{err.expected} {bound}".strip(), value, f.metadata)
            if bound and not _in_range(value, f.metadata):
                self._fail(f.name, bound, value, f.metadata)
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Checks that involve several fields (ranges of one field are declared with :func:`param`)."""

    @classmethod
    def owner(cls) -> str:
        return cls.label or cls.__name__

    def _fail(self, name: str, expected: str, value: object, meta: Mapping[str, Any] | None = None) -> typing.NoReturn:
        hints = (meta or {}).get("hints") or {}
        try:
            hint = f" ({hints[value]})" if value in hints else ""
        except TypeError:  # unhashable (a list inside a tuple): no hint applies
            hint = ""
        raise AdaptforgeError(f"{self.owner()}: {name!r} must be {expected}, got {value!r}{hint}")

    def require(self, name: str, ok: bool, expected: str) -> None:
        """For :meth:`check`: fail naming field ``name`` unless ``ok``."""
        if not ok:
            self._fail(name, expected, getattr(self, name))

    @classmethod
    def from_dict(cls: type[P], data: Mapping[str, Any] | None, owner: str | None = None) -> P:
        """Build from a recipe, YAML or command-line mapping; unknown keys name the closest known key."""
        where = owner or cls.owner()
        data = {} if data is None else data
        if not isinstance(data, Mapping):
            raise AdaptforgeError(f"{where}: expected a mapping of parameter names to values, got {data!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                listed = ", ".join(known) if known else "none (it takes no parameters)"
                raise AdaptforgeError(f"{where}: unknown parameter {key!r}; known: {listed}.{did_you_mean(key, known)}")
        try:
            return cls(**dict(data))
        except AdaptforgeError as err:
            if owner is None:
                raise
            message = str(err).removeprefix(f"{cls.owner()}: ")
            raise AdaptforgeError(f"{owner}: {message}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples become lists, nested mappings are copied."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def help_rows(cls) -> list[ParamHelp]:
        hints = _hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            default: Any = f.default
            if f.default_factory is not MISSING:
                default = f.default_factory()
            text = str(f.metadata.get("help", ""))
            bound = _bound_text(f.metadata)
            if bound:
                text = f"{text} ({bound})" if text else bound
            rows.append(ParamHelp(f.name, _type_text(hints[f.name]), _plain(default), text))
        return rows


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as the annotation ``hint`` says, or :class:`_Mismatch` naming what was expected."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        optional = type(None) in args
        if value is None and optional:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner:
            try:
                return _coerce(value, option)
            except _Mismatch:
                continue
        raise _Mismatch(" or ".join(_type_text(a) for a in inner) + (" or null" if optional else ""))
    if origin is Literal:
        if value in args:
            return value
        raise _Mismatch("one of " + ", ".join(repr(a) for a in args))
    if hint is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise _Mismatch("true or false")
    if hint is int:
        if _is_int(value):
            return int(value)
        raise _Mismatch("an integer")
    if hint is float:
        number = _number(value)
        if number is None:
            raise _Mismatch("a finite number")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch("a string")
    if origin is tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise _Mismatch(_type_text(hint))
        item = args[0] if args else Any
        try:
            return tuple(_coerce(v, item) for v in value)
        except _Mismatch:
            raise _Mismatch(_type_text(hint)) from None
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if isinstance(value, Mapping):
            return dict(value)
        raise _Mismatch("a mapping")
    raise TypeError(f"params fields of type {hint!r} are not supported")  # pragma: no cover - a developer error


def _number(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, str):  # YAML and the command line already give numbers; "0.5" is a mistake
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        return None
    return number if math.isfinite(number) else None


def _type_text(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_text(a) for a in args)
    if origin is tuple:
        return f"a list of {_type_text(args[0]) if args else 'values'}"
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return "mapping"
    names = {bool: "bool", int: "int", float: "float", str: "str"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _bound_text(meta: Mapping[str, Any]) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    low = ("[", meta["ge"]) if meta.get("ge") is not None else ("(", meta["gt"]) if meta.get("gt") is not None else None
    high = (
        ("]", meta["le"]) if meta.get("le") is not None else (")", meta["lt"]) if meta.get("lt") is not None else None
    )
    if low and high:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{'<=' if high[0] == ']' else '<'} {high[1]}"
    return ""


def _in_range(value: Any, meta: Mapping[str, Any]) -> bool:
    if value is None:
        return True
    if isinstance(value, tuple):
        return all(_in_range(v, meta) for v in value)
    if meta.get("choices"):
        return value in meta["choices"]
    if isinstance(value, (bool, str)):
        return True
    checks = (("ge", value.__ge__), ("gt", value.__gt__), ("le", value.__le__), ("lt", value.__lt__))
    return all(meta.get(key) is None or bool(test(meta[key])) for key, test in checks)


def is_finite_number(value: object) -> bool:
    """A real, finite number (bools are not numbers here)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)
