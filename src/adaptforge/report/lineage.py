"""The lineage graph as an inline SVG: which adapters made which, and by what method.

A layered drawing (Sugiyama-style, kept small): an adapter's layer is one more than its deepest parent's,
layers are columns from left to right, and within a column adapters are ordered by the mean position of
their parents (two sweeps), which keeps the edges of a merge or a composition short. Hand-written rather
than drawn with matplotlib because each node carries its adapter id as data and a tooltip. Parents removed
from the library since are drawn dashed under their id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adaptforge.report.markup import attrs, esc

if TYPE_CHECKING:
    from adaptforge.library import AdapterRecord

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 190, 38, 70, 14, 10
KIND_COLOURS = {
    "train": "#4c78a8",
    "import": "#72b7b2",
    "merge": "#f58518",
    "compose": "#54a24b",
    "generate": "#b279a2",
    "prune": "#9d755d",
    "tta": "#e45756",
    "other": "#bab0ac",
    "missing": "#ffffff",
}


@dataclass(frozen=True)
class Node:
    id: str
    layer: int
    row: int
    record: AdapterRecord | None  # None: a parent no longer in the library


@dataclass(frozen=True)
class Layout:
    nodes: Mapping[str, Node]
    edges: tuple[tuple[str, str], ...]  # (parent id, child id)
    isolated: tuple[AdapterRecord, ...]  # adapters with neither parents nor children, not drawn


def layout(records: Sequence[AdapterRecord]) -> Layout:
    """Layers and order of every adapter that has a parent or a child (records in creation order)."""
    by_id = {r.id: r for r in records}
    edges = tuple((p, r.id) for r in records for p in dict.fromkeys(r.parents))
    linked = {i for edge in edges for i in edge}
    parents: dict[str, list[str]] = {i: [] for i in linked}
    for parent, child in edges:
        parents[child].append(parent)
    # Parents are stored before their children, so one pass in creation order settles every layer (removed
    # parents come first, at layer 0); a parent met later (only in a damaged catalog) is ignored, never a loop.
    order = sorted(linked - set(by_id)) + [i for i in by_id if i in linked]
    layer: dict[str, int] = {}
    for ident in order:
        above = [layer[p] for p in parents[ident] if p in layer]
        layer[ident] = 1 + max(above) if above else 0
    columns: dict[int, list[str]] = {}
    for ident in order:
        columns.setdefault(layer[ident], []).append(ident)
    first = columns.get(0, [])
    first.sort(key=lambda i: (by_id[i].task or "", by_id[i].created) if i in by_id else ("~", 0.0))
    position = {i: float(n) for column in columns.values() for n, i in enumerate(column)}
    for _ in range(2):  # barycentre sweeps: each column ordered by where its parents sit
        for k in sorted(columns)[1:]:
            columns[k].sort(key=lambda i: sum(position[p] for p in parents[i]) / max(1, len(parents[i])))
            position.update({i: float(n) for n, i in enumerate(columns[k])})
    nodes = {i: Node(i, k, n, by_id.get(i)) for k, column in columns.items() for n, i in enumerate(column)}
    isolated = tuple(r for r in records if r.id not in linked)
    return Layout(nodes, edges, isolated)


def _xy(node: Node) -> tuple[int, int]:
    return PAD + node.layer * (NODE_W + GAP_X), PAD + node.row * (NODE_H + GAP_Y)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def lineage_svg(records: Sequence[AdapterRecord]) -> tuple[str, Layout]:
    """The graph's SVG markup (empty when no adapter has parents) and its layout."""
    graph = layout(records)
    if not graph.edges:
        return "", graph
    width = PAD * 2 + (max(n.layer for n in graph.nodes.values()) + 1) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + (max(n.row for n in graph.nodes.values()) + 1) * (NODE_H + GAP_Y) - GAP_Y
    parts = [
        f'<svg id="lineage-graph" role="img" aria-label="lineage graph" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
    ]
    for parent, child in graph.edges:
        (x1, y1), (x2, y2) = _xy(graph.nodes[parent]), _xy(graph.nodes[child])
        x1, y1, y2 = x1 + NODE_W, y1 + NODE_H // 2, y2 + NODE_H // 2
        mid = (x1 + x2) / 2
        record = graph.nodes[child].record
        kind = record.kind if record is not None else "other"
        method = record.method if record is not None else "?"
        edge = {"class": "edge", "data-parent-id": parent, "data-child-id": child, "data-method": method}
        parts.append(
            f'<path{attrs(edge)} d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}" fill="none" '
            f'stroke="{KIND_COLOURS.get(kind, "#888888")}" stroke-width="1.3" opacity="0.75">'
            f"<title>{esc(parent)} -> {esc(child)} by {esc(method)}</title></path>"
        )
    for node in graph.nodes.values():
        x, y = _xy(node)
        rec = node.record
        if rec is None:
            title, line1, line2, kind = f"{node.id}: no longer in the library", node.id, "removed", "missing"
        else:
            title = f"{rec.name} ({rec.id})\nkind {rec.kind}, method {rec.method}\ntask {rec.task or '-'}"
            line1, line2, kind = rec.name, f"{rec.kind}: {rec.method}", rec.kind
        group = {"class": "node", "data-adapter-id": node.id, "data-kind": kind}
        dash = ' stroke-dasharray="4 3"' if rec is None else ""
        stroke = "#888888" if rec is None else KIND_COLOURS.get(kind, "#888888")
        parts.append(
            f"<g{attrs(group)}><title>{esc(title)}</title>"
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="5" fill="{KIND_COLOURS.get(kind, "#ccc")}" '
            f'fill-opacity="{0.0 if rec is None else 0.18}" stroke="{stroke}"{dash}/>'
            f'<text x="{x + 8}" y="{y + 16}" class="node-name">{esc(_clip(line1, 26))}</text>'
            f'<text x="{x + 8}" y="{y + 30}" class="node-method">{esc(_clip(line2, 30))}</text></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts), graph
