"""The report page from hand-made catalog rows (no model): which row each cell shows, escaping, colours,
several bases, routed adapters, an empty library, and recipes it cannot read."""

from __future__ import annotations

import re

import pytest
from helpers import metric, record

from adaptforge.evaluate import cvar
from adaptforge.report import ReportInput, render
from adaptforge.report.charts import colour, inline_svg


def page(adapters, metrics) -> str:
    return render(ReportInput("lib", 0.0, tuple(adapters), tuple(metrics)), tail=cvar)


def cells(text: str, **match: str) -> list[str]:
    """The opening tags of traced numbers whose data attributes match."""
    tags = re.findall(r"<(?:td|span)[^>]*class=\"num[^\"]*\"[^>]*>", text)
    return [t for t in tags if all(f'data-{k.replace("_", "-")}="{v}"' in t for k, v in match.items())]


def table_of(text: str, ident: str) -> str:
    start = text.index(f'id="{ident}"')
    return text[start : text.index("</table>", start)]


def value(tag: str, name: str = "data-value") -> float:
    return float(re.search(f'{name}="([^"]+)"', tag).group(1))  # type: ignore[union-attr]


def test_delta_uses_zero_shot_on_the_same_number_of_examples_and_the_newest_row_wins():
    a = record("a")
    rows = [
        metric(None, "t1", 0.5, n=10, created=1),
        metric(None, "t1", 0.6, n=20, created=3),  # newer, but on other examples
        metric(a, "t1", 0.65, n=10, created=1),
        metric(a, "t1", 0.7, n=10, created=2),  # re-evaluated: the newest row is shown
    ]
    text = page([a], rows)
    (delta,) = cells(table_of(text, "delta-test"), source="delta")
    assert value(delta) == pytest.approx(0.2) and 'data-zero-n="10"' in delta
    (shown,) = cells(table_of(text, "heatmap-test"), source="metric", adapter_id=a.id)
    assert value(shown) == 0.7


def test_routed_adapters_show_their_routed_accuracy_and_bases_get_their_own_zero_shot():
    routed = record("dawin", kind="merge", method="dawin")
    other = record("other", base="e" * 32)
    rows = [
        metric(routed, "t1", 0.4),
        metric(routed, "t1", 0.8, metric="routed_accuracy", created=2),  # merge --eval, through the router
        metric(None, "t1", 0.5),
        metric(None, "t1", 0.3, base="e" * 32),
        metric(other, "t1", 0.35, base="e" * 32),
    ]
    text = page([routed, other], rows)
    heat = text[text.index('id="heatmap-test"') :]
    assert cells(heat, adapter_id=routed.id, metric="routed_accuracy")
    assert not cells(heat, metric="accuracy", adapter_id=routed.id)
    assert "(zero-shot, base ffffffff)" in heat and "(zero-shot, base eeeeeeee)" in heat
    deltas = {t.split('data-adapter-id="')[1][:16]: value(t) for t in cells(text, source="delta")}
    assert deltas[routed.id] == pytest.approx(0.3) and deltas[other.id] == pytest.approx(0.05)


def test_names_and_tasks_are_escaped():
    evil = record("<script>alert(1)</script>", task='x"><img src=y>')
    text = page([evil], [metric(evil, 'x"><img src=y>', 0.5)])
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<img" not in text and text.count("<script>") == 1  # the page's own sorting script


def test_heatmap_colours_follow_the_values():
    low, high = record("low"), record("high")
    rows = [metric(None, "t1", 0.5), metric(low, "t1", 0.4), metric(high, "t1", 0.9)]
    text = table_of(page([low, high], rows), "heatmap-test")
    (a,) = cells(text, source="metric", adapter_id=low.id)
    (b,) = cells(text, source="metric", adapter_id=high.id)
    assert re.search("background:(#[0-9a-f]{6})", a).group(1) != re.search("background:(#[0-9a-f]{6})", b).group(1)  # type: ignore[union-attr]
    red, _ = colour(-0.1, -0.1, 0.1, diverging=True)
    blue, _ = colour(0.1, -0.1, 0.1, diverging=True)
    assert int(red[1:3], 16) > int(red[5:7], 16) and int(blue[5:7], 16) > int(blue[1:3], 16)


def test_empty_library_page_and_unreadable_recipes():
    text = page([], [])
    assert 'id="empty-library"' in text and 'id="no-metrics"' in text and "http" not in text.replace("http-equiv", "")
    broken = record("broken", recipe={"kind": "train", "history": [[0, "x"]], "tasks": [{"name": "t1"}]})
    text = page([broken], [])
    assert "its training recipe is not in the expected shape" in text and "<svg" not in text


def test_training_curves_of_a_multitask_recipe():
    recipe = {
        "kind": "train_multitask",
        "tasks": [{"name": "t1"}, {"name": "t2"}],
        "history": [[s, s % 2, 1.0 / (s + 1)] for s in range(40)],
        "curves": {"t1": [[20, 0.9, 0.6], [40, 0.7, 0.8]], "t2": [[20, 1.1, 0.4], [40, 1.0, 0.5]]},
        "draws": {"t1": 20, "t2": 20},
    }
    run = record("mt", task="t1+t2", recipe=recipe, method="train_multitask")
    text = page([run], [])
    for title in ("training loss", "dev accuracy", "batches drawn per task", "tail of dev accuracy over tasks"):
        assert f">{title}<" in text
    (tail,) = cells(text, source="derived")
    assert value(tail) == pytest.approx(cvar([0.8, 0.5]))


def test_inline_svg_has_no_url_and_is_stable():
    from adaptforge.report.views import TrainingRun

    run = TrainingRun(record("a"), ("t1",), ((0, 0, 1.0), (1, 0, 0.5)), {"t1": ((2, 0.4, 0.7),)}, {"t1": 2}, ())
    from adaptforge.report.charts import training_chart

    first, second = training_chart(run), training_chart(run)
    assert first == second and first.startswith('<svg role="img"') and "http" not in first
    assert inline_svg('<?xml version="1.0"?><!-- https://x --><svg xmlns="http://w3.org/svg" a="1"></svg>', "x") == (
        '<svg role="img" aria-label="x" a="1"></svg>'
    )


def test_the_fullest_evaluation_is_shown_and_a_column_of_removed_adapters_has_no_n():
    """A newer evaluation on fewer examples does not replace one on more; a task whose only rows belong to a
    removed adapter still renders (its column's n is '-')."""
    a, gone = record("a"), record("gone")
    rows = [
        metric(a, "t1", 0.7, n=20, created=1),
        metric(a, "t1", 0.9, n=5, created=5),  # a side-effect --limit run, newer
        metric(None, "t1", 0.6, n=20),
        metric(gone, "t2", 0.5, n=10),
    ]
    text = page([a], rows)
    (shown,) = cells(table_of(text, "heatmap-test"), source="metric", adapter_id=a.id)
    assert value(shown) == 0.7 and 'data-n="20"' in shown and "n-differs" not in shown
    assert "Examples per cell (n): t1 20, t2 -" in text
