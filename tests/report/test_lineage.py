"""The lineage graph's layout: layers follow parents, removed parents stay visible, loners are listed."""

from __future__ import annotations

from helpers import record

from adaptforge.report.lineage import layout, lineage_svg


def test_layers_follow_parents_and_removed_parents_stay_visible():
    a, b, c = (record(n, task=n, created=i) for i, n in enumerate("abc"))
    merged = record("m", kind="merge", parents=(a.id, b.id), method="ties", created=4)
    again = record("mm", kind="merge", parents=(merged.id, c.id), method="task_arithmetic", created=5)
    composed = record("k", kind="compose", parents=("0" * 16,), method="lorahub", created=6)  # parent removed
    alone = record("alone", created=7)
    graph = layout([a, b, c, merged, again, composed, alone])
    layers = {i: n.layer for i, n in graph.nodes.items()}
    assert layers == {a.id: 0, b.id: 0, c.id: 0, merged.id: 1, again.id: 2, composed.id: 1, "0" * 16: 0}
    assert graph.nodes["0" * 16].record is None and graph.isolated == (alone,)
    edges = {(a.id, merged.id), (b.id, merged.id), (merged.id, again.id), (c.id, again.id), ("0" * 16, composed.id)}
    assert set(graph.edges) == edges
    svg, _ = lineage_svg([a, b, c, merged, again, composed, alone])
    assert svg.count('class="edge"') == 5 and 'data-method="ties"' in svg and 'stroke-dasharray="4 3"' in svg
    assert f'data-adapter-id="{alone.id}"' not in svg


def test_children_sit_near_their_parents_and_no_graph_without_parents():
    roots = [record(f"r{i}", task=f"t{i}", created=i) for i in range(4)]
    child = record("child", kind="merge", parents=(roots[3].id,), created=9)
    graph = layout([*roots, child])
    assert graph.nodes[child.id].row == 0  # the only node of its column
    assert lineage_svg(roots) == ("", layout(roots))
    evil = record("<b>x</b>", kind="merge", parents=(roots[0].id,), created=10)
    svg, _ = lineage_svg([roots[0], evil])
    assert "<b>" not in svg and "&lt;b&gt;x&lt;/b&gt;" in svg
