"""The page's inline CSS and JavaScript: written once here, embedded in every report (no file, no network).

The script only sorts tables: a click (or Enter) on a column header orders the last ``tbody`` by that
column's ``data-sort`` values, numbers before text, blanks last in either direction; pinned rows (zero-shot)
live in their own ``tbody`` and stay on top. With JavaScript off the page is complete, just unsorted.
"""

from __future__ import annotations

# The policy makes the browser itself refuse any fetch: nothing but the page's own inline style and script.
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"

CSS = """
:root { --fg: #1d1d1f; --muted: #666; --line: #ddd; --bg-alt: #f6f6f8; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg);
  margin: 0 auto; padding: 0 24px 48px; max-width: 1400px; background: #fff; }
header { border-bottom: 2px solid var(--fg); padding: 18px 0 8px; margin-bottom: 8px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 20px 0 6px; }
p.meta, p.note, figcaption, .legend { color: var(--muted); font-size: 12.5px; }
nav a { margin-right: 14px; color: #2b5797; text-decoration: none; font-size: 13px; }
nav a:hover { text-decoration: underline; }
.empty { font-size: 16px; padding: 14px; background: var(--bg-alt); border-left: 4px solid #f58518; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 12.5px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 3px 7px; text-align: left; white-space: nowrap; }
td.n { text-align: right; }
thead th { text-align: center; }
thead th { background: var(--bg-alt); position: sticky; top: 0; }
table.sortable thead th { cursor: pointer; user-select: none; }
table.sortable thead th[aria-sort=ascending]::after { content: " \\25B2"; font-size: 9px; }
table.sortable thead th[aria-sort=descending]::after { content: " \\25BC"; font-size: 9px; }
tbody.pinned th, tbody.pinned td { font-style: italic; border-bottom: 2px solid #999; }
table.heatmap td.cell { min-width: 62px; }
table.heatmap td.n-differs::after { content: "\\2020"; margin-left: 2px; }
td.missing { color: #bbb; }
.num small { opacity: 0.85; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 11.5px; }
.legend-bar { display: inline-block; width: 160px; height: 10px; vertical-align: middle; margin: 0 6px;
  border: 1px solid var(--line); }
figure.chart { margin: 10px 0 18px; }
figure.chart svg { max-width: 100%; height: auto; }
details { margin: 8px 0; }
summary { cursor: pointer; font-weight: 600; }
#lineage-graph text.node-name { font: 600 12px system-ui, "DejaVu Sans", sans-serif; fill: #1d1d1f; }
#lineage-graph text.node-method { font: 11px system-ui, "DejaVu Sans", sans-serif; fill: #555; }
ul.notes li { color: var(--muted); }
.kind { display: inline-block; padding: 0 5px; border-radius: 3px; font-size: 11px; color: #fff; }
@media print {
  body { max-width: none; padding: 0; }
  nav, .no-print { display: none; }
  thead th { position: static; }
  details { display: block; }
  h2 { break-after: avoid; }
  figure, table { break-inside: avoid; }
}
"""

JS = """
(function () {
  "use strict";
  function key(cell) {
    var raw = cell.getAttribute("data-sort");
    if (raw === null) { raw = cell.textContent.trim(); }
    if (raw === "" || raw === "-") { return null; }
    var number = Number(raw);
    return isNaN(number) ? raw.toLowerCase() : number;
  }
  function compare(a, b, up) {
    if (a === null || b === null) { return a === b ? 0 : (a === null ? 1 : -1); }
    if (typeof a !== typeof b) { return typeof a === "number" ? -1 : 1; }
    return (a < b ? -1 : a > b ? 1 : 0) * (up ? 1 : -1);
  }
  function sortBy(table, column, header) {
    var body = table.tBodies[table.tBodies.length - 1];
    var up = header.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r, s) { return compare(key(r.cells[column]), key(s.cells[column]), up); });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(header.parentNode.cells, function (th) { th.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", up ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var head = table.tHead;
    if (!head || !head.rows.length) { return; }
    Array.prototype.forEach.call(head.rows[0].cells, function (header, column) {
      header.tabIndex = 0;
      header.title = header.title || "sort by this column";
      header.addEventListener("click", function () { sortBy(table, column, header); });
      header.addEventListener("keydown", function (e) { if (e.key === "Enter") { sortBy(table, column, header); } });
    });
    table.classList.add("sort-ready");
  });
  document.documentElement.setAttribute("data-report-ready", "1");
})();
"""
