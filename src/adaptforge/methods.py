"""The one method contract: every registered algorithm (merge method, composer, task sampler, router, and
the prune and test-time methods to come) is a :class:`Method`.

A method declares its ``name`` once (its registry reads it), the paper it implements (``reference_url``),
and its typed params (``params_type``, a :class:`~adaptforge.params.Params`). :meth:`Method.parse_params`
turns ``None``, a mapping or an instance into those params, with errors that name the method; registries
call :meth:`Method.check_contract` when a method registers, and ``--list`` renders :meth:`Method.help`.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from abc import ABC
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, cast

from adaptforge.core import AdaptforgeError
from adaptforge.params import ParamHelp, Params

P = TypeVar("P", bound=Params)


@dataclass(frozen=True)
class MethodHelp:
    """What ``--list`` shows of one method."""

    name: str
    summary: str
    reference_url: str
    params: tuple[ParamHelp, ...]
    notes: tuple[str, ...] = ()


class Method(ABC, Generic[P]):
    """Base of every registered algorithm, generic in its params type ``P``. Families (``MergeMethod``,
    ``Composer``, ...) set ``kind`` and ``params_base``; concrete methods name their params in the base
    (``class Ties(GeneralizedTaskArithmetic[TiesParams])``, which also sets ``params_type``: a class variable
    cannot hold ``P``, and :meth:`check_contract` checks the two agree) and set ``name`` and
    ``reference_url``; every hook then receives its own params type."""

    name: ClassVar[str]
    kind: ClassVar[str] = "method"
    reference_url: ClassVar[str]
    params_base: ClassVar[type[Params]] = Params
    params_type: ClassVar[type[Params]] = Params

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        declared = declared_params(cls)
        if "params_type" not in cls.__dict__ and declared is not None and issubclass(declared, cls.params_type):
            cls.params_type = declared  # named once, in the base: ``class Tent(TtaMethod[EntropyParams])``

    @classmethod
    def required_fields(cls) -> tuple[str, ...]:
        """Params fields this method's class-level knobs read (e.g. a sparsifying merge reads ``density``);
        :meth:`check_contract` refuses a ``params_type`` without them."""
        return ()

    @classmethod
    def check_contract(cls) -> None:
        """Called at registration: the paper link and the params type are declared, the params type is the
        one the class is generic in, and it has every field the method's knobs need."""
        if not getattr(cls, "reference_url", "").startswith("https://"):
            raise ValueError(f"{cls.kind} {cls.__name__} must set reference_url to the paper's https link")
        if not issubclass(cls.params_type, cls.params_base):
            raise ValueError(f"{cls.kind} {cls.__name__}: params_type must subclass {cls.params_base.__name__}")
        declared = declared_params(cls)
        if declared is not None and not issubclass(cls.params_type, declared):
            raise ValueError(
                f"{cls.kind} {cls.__name__}: params_type {cls.params_type.__name__} is not the "
                f"{declared.__name__} its hooks are typed with"
            )
        fields = {f.name for f in dataclasses.fields(cls.params_type)}
        missing = [name for name in cls.required_fields() if name not in fields]
        if missing:
            raise ValueError(
                f"{cls.kind} {cls.__name__}: its knobs read {missing} but params_type {cls.params_type.__name__} "
                "has no such field"
            )

    @classmethod
    def parse_params(cls, params: P | Mapping[str, Any] | None) -> P:
        """Typed params from ``None`` (defaults), a mapping (unknown keys rejected) or a params instance."""
        if params is None:
            typed = cls.params_type()
        elif isinstance(params, Mapping):
            typed = cls.params_type.from_dict(params, owner=f"{cls.kind} {cls.name!r}")
        elif type(params) is not cls.params_type:
            raise AdaptforgeError(
                f"{cls.kind} {cls.name!r} takes {cls.params_type.__name__}, got {type(params).__name__}"
            )
        else:
            typed = params
        # the one place P meets the runtime class: check_contract made params_type a P at registration
        return cast(P, typed)

    @classmethod
    def notes(cls) -> tuple[str, ...]:
        """Short requirements shown by ``--list`` (e.g. "needs --data")."""
        return ()

    @classmethod
    def help(cls) -> MethodHelp:
        rows = tuple(cls.params_type.help_rows())
        return MethodHelp(cls.name, summary(cls.__doc__ or ""), cls.reference_url, rows, cls.notes())


def declared_params(cls: type) -> type[Params] | None:
    """The params class ``cls`` is generic in (``Ties(GeneralizedTaskArithmetic[TiesParams])`` -> ``TiesParams``),
    from the nearest base that names one; None when none does (a family base, still generic)."""
    for klass in cls.__mro__:
        for base in klass.__dict__.get("__orig_bases__", ()):
            for arg in typing.get_args(base):
                if isinstance(arg, type) and issubclass(arg, Params):
                    return arg
    return None


def summary(doc: str, width: int = 110) -> str:
    """The first sentence of a docstring without its parenthesised citations (the link is shown apart)."""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    kept, depth, start = [], 0, 0
    for i, ch in enumerate(text):  # drop "( ... https://... )" groups, nested parentheses included
        if ch == "(":
            if depth == 0:
                kept.append(text[start:i])
                start = i
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
            if depth == 0:
                group = text[start : i + 1]
                kept.append("" if "http" in group else group)
                start = i + 1
    kept.append(text[start:])
    text = re.sub(r"\s+([,.;:])", r"\1", " ".join("".join(kept).split()))
    first, depth = text, 0
    for i, ch in enumerate(text):  # the first sentence end outside parentheses ("et al.", "e.g." are not ends)
        depth += (ch == "(") - (ch == ")" and depth > 0)
        if ch == "." and depth == 0 and (i + 1 == len(text) or text[i + 1] == " "):
            word = text[: i + 1].rsplit(" ", 1)[-1]
            if word not in ("al.", "e.g.", "i.e.", "Sec.", "cf.", "vs."):
                first = text[:i]
                break
    first = first.rstrip(":;, ")
    return first if len(first) <= width else first[: width - 3].rstrip() + "..."
