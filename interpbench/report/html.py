"""``report.html``: one self-contained page per results folder, readable offline.

Sections, linked from a menu at the top: the leaderboard (sortable: click a header; the best
mean of a column tinted, the rows tied with it in bold), the per-metric summary with intervals,
ranks and the tests against the best, every figure (embedded as a base64 PNG, with links
to the PNG and SVG files beside the page), the cells, and the provenance (notes, config, git
commits, library versions). No external script, style sheet, font or image.
"""
from __future__ import annotations

import base64
import html
import json
import math
import numbers
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import pandas as pd

from interpbench.report.claims import claims_html, find_claims, load_claims
from interpbench.report.tables import (
    FLAG,
    directions,
    flag_lines,
    interval_sentence,
    leaderboard_entries,
    rank_sentence,
    significance_sentences,
    uses_significance,
)
from interpbench.storage import atomic_write_text

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 0 1.5em 3em; color: #1d1d1f; line-height: 1.4; }
header { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: .4em 0; z-index: 1; }
nav a { margin-right: 1.1em; }
h1 { margin: .3em 0; font-size: 1.5em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; font-size: .86em; margin: .6em 0; }
th, td { border: 1px solid #ddd; padding: .25em .55em; white-space: nowrap; }
th { background: #f4f4f6; cursor: pointer; user-select: none; position: relative; }
th[aria-sort=ascending]::after { content: " ▲"; } th[aria-sort=descending]::after { content: " ▼"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: 700; background: #eef7ee; }
td.tied { font-weight: 700; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #444; max-width: 70em; }
pre { background: #f6f6f8; padding: .8em; overflow-x: auto; font-size: .8em; }
.note { color: #555; font-size: .9em; max-width: 75em; }
.flag { color: #b35c00; }
.scroll { overflow-x: auto; max-width: 100%; }
figure.wide img { max-width: none; }
"""

SORT_SCRIPT = """
function sortValue(cell) {
  var v = cell.getAttribute('data-value');
  if (v === null || v === '') return null;
  var n = Number(v);
  return isNaN(n) ? v : n;
}
document.querySelectorAll('table.sortable').forEach(function (table) {
  var headers = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(headers, function (th, column) {
    th.addEventListener('click', function () {
      var ascending = th.getAttribute('aria-sort') !== 'ascending';
      Array.prototype.forEach.call(headers, function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = sortValue(a.cells[column]), y = sortValue(b.cells[column]);
        if (x === null && y === null) return 0;
        if (x === null) return 1;
        if (y === null) return -1;
        var order = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def data_value(value: Any) -> str:
    """What a cell sorts by: the number (repr) or the text; empty for a missing value."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return str(value)


def frame_table(frame: pd.DataFrame, table_id: str, formats: Optional[Dict[str, str]] = None) -> str:
    """A sortable HTML table of ``frame``: numbers right-aligned and formatted, sort keys raw."""
    formats = formats or {}
    head = "".join(f"<th scope=\"col\">{esc(c)}</th>" for c in frame.columns)
    rows = []
    for values in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, values):
            if value is None or (isinstance(value, numbers.Real) and value != value):
                cells.append("<td data-value=\"\">–</td>")
            elif isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
                integral = isinstance(value, numbers.Integral)
                text = format(value, formats.get(column, "d" if integral else ".4f"))
                value = int(value) if integral else float(value)
                cells.append(f"<td class=\"num\" data-value=\"{esc(data_value(value))}\">{esc(text)}</td>")
            else:
                cells.append(f"<td data-value=\"{esc(value)}\">{esc(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<div class=\"scroll\"><table id=\"{table_id}\" class=\"sortable\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def leaderboard_table(table: pd.DataFrame, higher: Dict[str, bool], summary: pd.DataFrame) -> str:
    """The leaderboard's sortable table: the best mean of a column in a tinted bold cell (class
    ``best``), the rows tied with it in bold (class ``tied``), flags linked to their notes."""
    columns, headers, rows, _ = leaderboard_entries(table, higher, summary)
    head = "".join(f"<th scope=\"col\" data-column=\"{esc(c)}\">{esc(h)}</th>" for c, h in zip(columns, headers))
    body = []
    for entries in rows:
        cells = []
        for column, entry in zip(columns, entries):
            classes = [] if column in ("model", "explainer") else ["num"]
            if entry.best:
                classes.append("best")
            elif entry.tied:
                classes.append("tied")
            flag = ""
            if entry.footnote:
                flag = (f" <a class=\"flag\" href=\"#flag-{entry.footnote}\" title=\"{esc(entry.flag)}\">"
                        f"{FLAG}{entry.footnote}</a>")
            attributes = f" class=\"{' '.join(classes)}\"" if classes else ""
            cells.append(f"<td{attributes} data-column=\"{esc(column)}\" data-value=\"{esc(data_value(entry.value))}\">"
                         f"{esc(entry.text)}{flag}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<div class=\"scroll\"><table id=\"leaderboard-table\" class=\"sortable\"><thead><tr>{head}</tr>"
            f"</thead><tbody>{''.join(body)}</tbody></table></div>")


WIDE_PX = 1800  # figures wider than this are shown at their own size, in a scrolling box


def png_width(data: bytes) -> int:
    """The width of a PNG from its IHDR chunk (0 if ``data`` is not a PNG)."""
    return int.from_bytes(data[16:20], "big") if data[:8] == b"\x89PNG\r\n\x1a\n" else 0


def figure_block(folder: Path, drawn: Any) -> str:
    png = drawn.files.get("png")
    data = Path(png).read_bytes() if png else b""
    encoded = base64.b64encode(data).decode()
    links = " ".join(f"<a href=\"{esc(path.name)}\">{kind.upper()}</a>" for kind, path in sorted(drawn.files.items()))
    wide = " class=\"wide\"" if png_width(data) > WIDE_PX else ""
    return (f"<figure id=\"figure-{esc(drawn.name)}\"{wide}><h3>{esc(drawn.title)}</h3>"
            f"<div class=\"scroll\"><img src=\"data:image/png;base64,{encoded}\" alt=\"{esc(drawn.title)}\" "
            f"data-figure=\"{esc(drawn.name)}\"></div>"
            f"<figcaption>{esc(drawn.caption)} Files: {links}. <a href=\"#top\">Top</a></figcaption></figure>")


def render_html(folder: Path, data_name: str, table: pd.DataFrame, summary: pd.DataFrame, tidy: pd.DataFrame,
                info: Dict[str, Any], drawn: Sequence[Any], skipped: Sequence[str],
                rank_metrics: Optional[Sequence[str]] = None) -> str:
    higher = directions(tidy)
    intervals = sorted(set(summary["interval"])) if len(summary) else []
    labels = [label for label in higher if label in table.columns]
    flags = flag_lines(summary)
    nav = ["<a href=\"#leaderboard\">Leaderboard</a>", "<a href=\"#metrics\">Per metric</a>",
           "<a href=\"#figures\">Figures</a>", "<a href=\"#cells\">Cells</a>",
           "<a href=\"#provenance\">Config and versions</a>"]
    claims_path = find_claims(folder)
    claims = load_claims(claims_path) if claims_path else None
    if claims:
        nav.insert(-1, "<a href=\"#claims\">Claims</a>")
    figure_links = " · ".join(f"<a href=\"#figure-{esc(d.name)}\">{esc(d.title)}</a>" for d in drawn)
    summary_view = summary.drop(columns=["data"])
    cell_view = tidy.drop(columns=["data"])
    parts = [
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>interpbench report: {esc(data_name)}</title><style>{STYLE}</style></head><body>",
        f"<header id=\"top\"><h1>interpbench report: {esc(data_name)}</h1><nav>{''.join(nav)}</nav></header>",
        "<section id=\"leaderboard\"><h2>Leaderboard</h2>",
        "<p class=\"note\">Click a column header to sort. Best mean of each column highlighted"
        + ("; rows tied with it in bold.</p>" if uses_significance(table, labels) else ".</p>"),
        leaderboard_table(table, higher, summary),
        f"<p class=\"note\">{esc(interval_sentence(intervals))}</p>",
        *[f"<p class=\"note\">{esc(sentence)}</p>" for sentence in significance_sentences(summary)],
        f"<p class=\"note\">{esc(rank_sentence(labels, rank_metrics, uses_significance(table, labels)))}</p>",
    ]
    if flags:
        parts.append("<ul class=\"note\">" + "".join(
            f"<li id=\"flag-{i}\" class=\"flag\">{esc(line)}</li>" for i, line in enumerate(flags, start=1)) + "</ul>")
    if info.get("notes"):
        parts.append(f"<p class=\"note\">{esc(info['notes'])}</p>")
    parts += [
        "</section>",
        "<section id=\"metrics\"><h2>Per metric</h2>",
        "<p class=\"note\">One row per model, explainer and metric: mean over seeds, the 95 % interval and how it "
        "was made, the rank by mean in the metric's direction, the significance rank, whether the row is tied with "
        "the column's best, the Holm-adjusted p-value against the best and how the two were compared, any "
        "flag.</p>",
        frame_table(summary_view, "summary-table", {"p_vs_best": ".3g"}),
        "</section>",
        f"<section id=\"figures\"><h2>Figures</h2><p class=\"note\">{figure_links}</p>",
        *[figure_block(folder, d) for d in drawn],
    ]
    if skipped:
        parts.append("<p class=\"note\">Not drawn:</p><ul class=\"note\">"
                     + "".join(f"<li>{esc(s)}</li>" for s in skipped) + "</ul>")
    parts += [
        "</section>",
        "<section id=\"cells\"><h2>Cells</h2>",
        "<p class=\"note\">One row per cell (model × explainer × metric × seed); its interval is over its "
        "scored images. <a href=\"cells.csv\">cells.csv</a>, <a href=\"cells.json\">cells.json</a> (with the "
        "per-image scores and curves).</p>",
        frame_table(cell_view, "cells-table"),
        "</section>",
    ]
    if claims:
        parts += [
            "<section id=\"claims\"><h2>Claims</h2>",
            "<p class=\"note\">Each checkable claim of the papers behind the zoo: the paper's figure, ours, the "
            f"command that measured ours and a verdict (from <code>{esc(claims_path.name)}</code> beside the "
            "published results).</p>",
            claims_html(claims),
            "</section>",
        ]
    parts += [
        "<section id=\"provenance\"><h2>Config and versions</h2>",
        f"<p class=\"note\">Report built at commit <code>{esc(info.get('report_git_commit'))}</code>; cells computed "
        f"at {', '.join('<code>' + esc(c) + '</code>' for c in info.get('cell_git_commits', []))}.</p>",
        "<table id=\"versions-table\"><thead><tr><th>library</th><th>version</th></tr></thead><tbody>"
        + "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in info.get("versions", {}).items())
        + "</tbody></table>",
        "<h3>Config read from the cells</h3>",
        f"<pre id=\"cells-config\">{esc(json.dumps(info.get('cells_config'), indent=2, sort_keys=True, default=str))}</pre>",
    ]
    if info.get("sweep_config"):
        parts += ["<h3>Sweep config</h3>",
                  f"<pre id=\"sweep-config\">{esc(json.dumps(info['sweep_config'], indent=2, sort_keys=True, default=str))}</pre>"]
    parts += ["<p><a href=\"#top\">Top</a></p></section>", f"<script>{SORT_SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def write_html(folder: Path, data_name: str, table: pd.DataFrame, summary: pd.DataFrame, tidy: pd.DataFrame,
               info: Dict[str, Any], drawn: Sequence[Any], skipped: Sequence[str],
               rank_metrics: Optional[Sequence[str]] = None) -> Path:
    """Write ``folder/report.html``; returns its path."""
    page = render_html(Path(folder), data_name, table, summary, tidy, info, drawn, skipped, rank_metrics)
    return atomic_write_text(Path(folder) / "report.html", page)
