"""Escaped HTML building blocks: every string that reaches the page passes through :func:`esc` or :func:`attrs`,
so an adapter named ``<script>`` prints as text. No templates engine: the page is a few nested tables."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

AttrValue = str | int | float | bool | None


def esc(text: object) -> str:
    """Text content or attribute value, escaped (quotes too)."""
    return html.escape(str(text), quote=True)


def attrs(values: Mapping[str, AttrValue]) -> str:
    """`` key="value"`` pairs; ``None`` and ``False`` drop the attribute, ``True`` writes it bare."""
    parts = []
    for key, value in values.items():
        if value is None or value is False:
            continue
        parts.append(f" {key}" if value is True else f' {key}="{esc(value)}"')
    return "".join(parts)


def el(tag: str, content: str = "", values: Mapping[str, AttrValue] | None = None) -> str:
    """One element; ``content`` is already markup (escape text with :func:`esc` first)."""
    return f"<{tag}{attrs(values or {})}>{content}</{tag}>"


def fmt(value: float | None, digits: int = 3, signed: bool = False) -> str:
    """A number as the page prints it; ``-`` for missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def json_pointer(*parts: object) -> str:
    """RFC 6901 pointer to a value inside a JSON document (``/curves/sst2/3/2``)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def size_text(n: int | None) -> str:
    """Bytes in the unit a person reads (B, KiB, MiB, GiB)."""
    if n is None:
        return "missing"
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"


@dataclass(frozen=True)
class Cell:
    """One table cell: markup, the value sorting uses (number or text), and its attributes (traces, colours)."""

    markup: str
    sort: str | float | None = None
    values: Mapping[str, AttrValue] = field(default_factory=dict)
    header: bool = False  # a row header (<th scope="row">)

    @classmethod
    def text(cls, text: object, values: Mapping[str, AttrValue] | None = None) -> Cell:
        return cls(esc(text), str(text), values or {})


def sort_key(value: str | float | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return ""
    return repr(float(value)) if isinstance(value, (int, float)) else value


def table(
    columns: Sequence[str | tuple[str, str]],
    rows: Iterable[Sequence[Cell]],
    values: Mapping[str, AttrValue] | None = None,
    pinned: Iterable[Sequence[Cell]] = (),
    sortable: bool = True,
) -> str:
    """A table; ``columns`` are header texts or ``(text, tooltip)``; ``pinned`` rows stay on top when sorting
    (their own ``tbody``, which the page's script never reorders)."""
    head = []
    for col in columns:
        text, tip = (col, None) if isinstance(col, str) else col
        head.append(el("th", esc(text), {"scope": "col", "title": tip}))

    def body(block: Iterable[Sequence[Cell]]) -> str:
        lines = []
        for row in block:
            cells = []
            for cell in row:
                extra = {"data-sort": sort_key(cell.sort), **cell.values}
                if isinstance(cell.sort, (int, float)):  # numbers align right, text left
                    extra["class"] = " ".join(c for c in (str(extra.get("class") or ""), "n") if c)
                if cell.header:
                    cells.append(el("th", cell.markup, {"scope": "row", **extra}))
                else:
                    cells.append(el("td", cell.markup, extra))
            lines.append(el("tr", "".join(cells)))
        return "\n".join(lines)

    classes = " ".join(c for c in ("sortable" if sortable else "", str((values or {}).get("class", ""))) if c)
    table_attrs = {**(values or {}), "class": classes or None}
    pinned_body = body(pinned)
    parts = [el("thead", el("tr", "".join(head)))]
    if pinned_body:
        parts.append(el("tbody", pinned_body, {"class": "pinned"}))
    parts.append(el("tbody", body(rows)))
    return el("table", "\n".join(parts), table_attrs)
