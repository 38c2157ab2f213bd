"""Shared types that cross module boundaries: the LoRA delta and a generic name registry.

Everything that merges, composes or generates adapters works on :class:`LoraDelta`, and
:meth:`LoraModule.dense` is the one place where ``dW = scale * B @ A`` is computed.
"""

from __future__ import annotations

import difflib
import importlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from adaptforge.errors import AdaptforgeError

T = TypeVar("T")

__all__ = ["AdaptforgeError", "LoraDelta", "LoraModule", "Registry", "did_you_mean"]


@dataclass(frozen=True)
class LoraModule:
    """LoRA factors of one linear module: ``A`` is ``r x in``, ``B`` is ``out x r``."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float

    def __post_init__(self) -> None:
        if self.A.ndim != 2 or self.B.ndim != 2 or self.A.shape[0] != self.B.shape[1]:
            raise AdaptforgeError(
                f"LoRA factors do not fit: A is {tuple(self.A.shape)}, B is {tuple(self.B.shape)}; "
                "expected A (r x in) and B (out x r) with the same r"
            )

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the dense delta, ``(out, in)``."""
        return int(self.B.shape[0]), int(self.A.shape[1])

    def dense(self) -> torch.Tensor:
        """``scale * B @ A`` in float32 (upcast so half-precision factors merge exactly). A full-rank module
        whose other factor is the identity (how a dense merge is held as LoRA) skips the matmul: same values."""
        B, A = self.B.float(), self.A.float()
        if _is_identity(A):
            return B * float(self.scale)
        if _is_identity(B):
            return A * float(self.scale)
        return (B @ A) * float(self.scale)


def _is_identity(x: torch.Tensor) -> bool:
    return x.shape[0] == x.shape[1] and x.shape[0] > 1 and torch.equal(x, torch.eye(x.shape[0], dtype=x.dtype))


@dataclass
class LoraDelta:
    """A LoRA adapter as tensors: module path (relative to the base model) -> factors."""

    modules: dict[str, LoraModule] = field(default_factory=dict)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.modules))

    def __len__(self) -> int:
        return len(self.modules)

    def __getitem__(self, name: str) -> LoraModule:
        return self.modules[name]

    @property
    def targets(self) -> list[str]:
        return sorted(self.modules)

    @property
    def ranks(self) -> dict[str, int]:
        return {name: m.rank for name, m in self.modules.items()}

    def dense(self, name: str) -> torch.Tensor:
        return self.modules[name].dense()

    def num_parameters(self) -> int:
        return sum(m.A.numel() + m.B.numel() for m in self.modules.values())

    def non_finite(self) -> str | None:
        """What is not a finite number (NaN or Inf in a factor or a scale), or ``None`` when all is finite.

        Checked before an adapter is stored or read: a NaN adapter would otherwise evaluate to plausible
        metrics (argmax of NaN logits is class 0) and spread NaN through every merge it enters.
        """
        for name in self:
            m = self.modules[name]
            if not math.isfinite(float(m.scale)):
                return f"module {name!r} has scale {m.scale} (not a finite number)"
            for factor, tensor in (("lora_A", m.A), ("lora_B", m.B)):
                if not tensor.is_floating_point():
                    return f"module {name!r} {factor} has dtype {tensor.dtype}; LoRA factors are floating point"
                if not bool(torch.isfinite(tensor).all()):
                    bad = int((~torch.isfinite(tensor)).sum())
                    return f"module {name!r} {factor} holds {bad} NaN or infinite value(s)"
            if not _dense_is_finite(m):
                return (
                    f"module {name!r}: scale {m.scale:g} and its factors are finite but scale * B @ A is not "
                    "(it overflows float32); the scale (lora_alpha / r) or the factors are far too large"
                )
        return None


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _dense_is_finite(m: LoraModule) -> bool:
    """Whether ``m.dense()`` is finite. ``|s| * r * max|B| * max|A|`` bounds every entry, so the dense
    product is only formed when that bound does not already prove it (huge scales or factors)."""
    bound = abs(float(m.scale)) * m.rank * float(m.B.abs().max()) * float(m.A.abs().max()) if m.rank else 0.0
    if bound < _FLOAT32_MAX / 2:
        return True
    return bool(torch.isfinite(m.dense()).all())


def did_you_mean(word: object, known: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest of ``known`` to ``word``, or ``""``: the one hint every
    "unknown name" error in adaptforge gives (registries, params, recipe keys, library names)."""
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class Registry(Generic[T]):
    """Name -> implementation table with duplicate checks and "did you mean" errors.

    ``entries`` declares every item as ``name -> "module:attr"``, where it is defined, and is loaded on first
    lookup (as lm-eval's registry does): what a registry knows never depends on which modules the caller
    happened to import. Items still register by the ``name`` they declare (``@REGISTRY.register`` on a class,
    run when their module is imported); a registry with a table refuses an item the table does not declare at
    that address, so the table cannot drift from the code. ``base`` (optional) is the class every item must
    subclass; an item with a ``check_contract`` classmethod has it called at registration, so a method that
    forgets its paper link or params type fails at import, not when a user first picks it.
    """

    def __init__(self, kind: str, base: type | None = None, entries: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, str] = dict(entries or {})
        self._items: dict[str, T] = {}

    def register(self, item: T) -> T:
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name or name != name.lower():
            raise ValueError(f"{self.kind} {item!r} must declare a lowercase, non-empty class attribute 'name'")
        if self.base is not None and not (isinstance(item, type) and issubclass(item, self.base)):
            raise ValueError(f"{self.kind} {name!r} must subclass {self.base.__name__}")
        if self._entries:
            where = f"{getattr(item, '__module__', '?')}:{getattr(item, '__qualname__', '?')}"
            if self._entries.get(name) != where:
                raise ValueError(
                    f"{self.kind} {name!r} ({where}) is not declared in the registry's entries "
                    f"(declared: {self._entries.get(name)!r}); add it where the registry is defined"
                )
        check = getattr(item, "check_contract", None)
        if callable(check):
            check()
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def _load(self, name: str) -> None:
        """Import the module that defines a declared item; importing it registers the item."""
        module, _, attr = self._entries[name].partition(":")
        item = getattr(importlib.import_module(module), attr)
        if name not in self._items:  # a module that defines the item without decorating it
            self.register(item)

    def get(self, name: str) -> T:
        if isinstance(name, str) and name not in self._items and name in self._entries:
            self._load(name)
        try:
            return self._items[name]
        except (KeyError, TypeError):
            known = self.names()
            raise AdaptforgeError(
                f"unknown {self.kind} {name!r}; known: {', '.join(known)}.{did_you_mean(name, known)}"
            ) from None

    def names(self) -> list[str]:
        """Every name, declared or registered, without importing anything."""
        return sorted(set(self._items) | set(self._entries))

    def items(self) -> Mapping[str, T]:
        for name in self._entries:
            if name not in self._items:
                self._load(name)
        return {name: self._items[name] for name in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._entries
