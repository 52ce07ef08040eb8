"""``report.html``: one self-contained page per results folder, readable offline.

The page leads with the answer. Under the title, the headline: for each metric, its best model ×
explainer with its mean and interval, whether it is significantly better than the runner-up or
tied with it, and the accuracy its model gives up against the board's most accurate model. Then
the key figure (the rank heatmap, else the first metric's curves, else accuracy against
faithfulness), the leaderboard (rows by mean rank, best first; a click on a header sorts that
column best first in its direction, text A to Z, a second click reverses; the best mean of a
column tinted, the rows tied with it in bold), the other figures (embedded as base64 PNGs, with
links to the PNG and SVG files beside the page), and the details, collapsed: the per-metric
summary, the cells, the claims, the config and library versions. Numbers carry the digits their
interval supports (:func:`interpbench.report.stats.with_interval`); notes written with
markdown's ``code`` and ``**bold**`` spans are shown as such. No external script, style sheet,
font or image.
"""
from __future__ import annotations

import base64
import html
import json
import math
import numbers
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from interpbench.report.claims import claims_html, find_claims, load_claims
from interpbench.report.stats import (
    MISSING,
    half_width,
    interval_places,
    is_number,
    p_text,
    plain,
    rank_text,
    rounded,
)
from interpbench.report.tables import (
    COMPACT_ABOVE,
    FLAG,
    Finding,
    directions,
    findings,
    flag_lines,
    interval_sentence,
    leaderboard_board,
    rank_sentence,
    significance_sentences,
)
from interpbench.storage import atomic_write_text

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 0 1.5em 3em; color: #1d1d1f; line-height: 1.4; }
header { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: .3em 0; z-index: 2; }
nav a { margin-right: 1.1em; }
h1 { margin: .2em 0; font-size: 1.45em; }
h2 { margin-top: 1.4em; border-bottom: 1px solid #eee; }
code { font-size: .92em; background: #f1f1f4; padding: 0 .2em; border-radius: 3px; }
#headline { background: #f3f7fb; border: 1px solid #d5e1ed; border-radius: 6px; padding: .5em 1em; margin: .8em 0; }
#headline h2 { margin: .1em 0 .3em; border: 0; font-size: 1.15em; }
#headline ul { margin: .2em 0; padding-left: 1.2em; } #headline li { margin: .25em 0; }
#headline p { margin: .3em 0; }
#headline-table { background: #fff; width: 100%; }
#headline-table td { white-space: normal; } #headline-table td.num { white-space: nowrap; }
table { border-collapse: collapse; font-size: .86em; margin: .6em 0; }
th, td { border: 1px solid #ddd; padding: .25em .55em; white-space: nowrap; }
th { background: #f4f4f6; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th:hover { background: #e8e8ee; }
th[aria-sort=ascending]::after { content: " ▲"; } th[aria-sort=descending]::after { content: " ▼"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: 700; background: #e3f3e3; }
td.tied { font-weight: 700; }
tbody tr { background: #fff; } tbody tr:nth-child(even) { background: #fafafa; }
#leaderboard-table td:first-child, #leaderboard-table th:first-child { position: sticky; left: 0; z-index: 1; }
#leaderboard-table td:first-child { background: inherit; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figure h3 { margin: .3em 0; }
figcaption { font-size: .9em; color: #444; max-width: 70em; }
pre { background: #f6f6f8; padding: .8em; overflow-x: auto; font-size: .8em; }
.note { color: #555; font-size: .9em; max-width: 75em; }
.flag { color: #b35c00; }
.scroll { overflow-x: auto; max-width: 100%; }
.scroll.capped { max-height: 85vh; overflow-y: auto; border-bottom: 1px solid #ccc; }
figure.wide img { max-width: none; }
details { margin: .5em 0; border: 1px solid #e4e4e8; border-radius: 5px; padding: .3em .8em; }
details > summary { cursor: pointer; font-weight: 600; padding: .2em 0; }
section, details, figure, li { scroll-margin-top: 5.5em; }
"""

SORT_SCRIPT = """
function sortValue(cell) {
  var v = cell.getAttribute('data-value');
  if (v === null || v === '') return null;
  var n = Number(v);
  return isNaN(n) ? v : n;
}
function sortBy(table, th, column) {
  var first = th.getAttribute('data-first') || 'ascending';
  var now = th.getAttribute('aria-sort');
  var order = now === first ? (first === 'ascending' ? 'descending' : 'ascending') : first;
  var ascending = order === 'ascending';
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute('aria-sort'); });
  th.setAttribute('aria-sort', order);
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = sortValue(a.cells[column]), y = sortValue(b.cells[column]);
    if (x === null && y === null) return 0;
    if (x === null) return 1;
    if (y === null) return -1;
    var diff = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
    return ascending ? diff : -diff;
  });
  rows.forEach(function (row) { body.appendChild(row); });
}
document.querySelectorAll('table.sortable').forEach(function (table) {
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
    th.tabIndex = 0;
    th.addEventListener('click', function () { sortBy(table, th, column); });
    th.addEventListener('keydown', function (event) {
      if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); sortBy(table, th, column); }
    });
  });
});
function openTarget() {
  var target = location.hash ? document.getElementById(location.hash.slice(1)) : null;
  for (var node = target; node; node = node.parentElement) {
    if (node.tagName === 'DETAILS') node.open = true;
  }
  if (target) target.scrollIntoView();
}
window.addEventListener('hashchange', openTarget);
document.querySelectorAll('a[href^="#"]').forEach(function (link) {
  link.addEventListener('click', function () { setTimeout(openTarget, 0); });
});
openTarget();
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


CODE_SPAN = re.compile(r"(`[^`]*`)")


BOLD_SPAN = re.compile(r"\*\*(.+?)\*\*")


def inline(text: Any) -> str:
    """Markdown-ish ``text`` as HTML: `code` spans as ``<code>``, ``**bold**`` as ``<strong>``,
    everything else escaped; a backtick that opens no span is shown as an apostrophe."""
    parts = []
    for part in CODE_SPAN.split(str(text)):
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            parts.append(f"<code>{esc(part[1:-1])}</code>")
        else:
            parts.append(BOLD_SPAN.sub(r"<strong>\1</strong>", esc(part.replace("`", "'"))))
    return "".join(parts)


def data_value(value: Any) -> str:
    """What a cell sorts by: the number (repr) or the text; empty for a missing value."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if not math.isfinite(value) else repr(float(value))
    return str(value)


INTEGRAL_COLUMNS = ("rank", "sig_rank", "seed", "seeds", "num_images")


def frame_table(frame: pd.DataFrame, table_id: str, value_column: Optional[str] = None) -> str:
    """A sortable HTML table of ``frame``: numbers right-aligned, sort keys raw. ``value_column``
    and, where the row has an interval, ``ci_low`` and ``ci_high`` are shown to the decimal place
    the interval's half-width supports; ranks, seeds and counts as integers, ``p_vs_best`` with
    two significant digits, other numbers with three."""
    head = "".join(f"<th scope=\"col\">{esc(c)}</th>" for c in frame.columns)
    rows = []
    for values in frame.itertuples(index=False):
        record = dict(zip(frame.columns, values))
        places = None
        if value_column and is_number(record.get("ci_low")) and is_number(record.get("ci_high")):
            places = interval_places(half_width(record["ci_low"], record["ci_high"]))
        cells = []
        for column, value in record.items():
            if value is None or (isinstance(value, numbers.Real) and value != value):
                cells.append(f"<td data-value=\"\">{MISSING}</td>")
            elif isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
                if column in INTEGRAL_COLUMNS or isinstance(value, numbers.Integral):
                    text = rank_text(value)
                elif column == "p_vs_best":
                    text = p_text(value)
                elif places is not None and column in (value_column, "ci_low", "ci_high"):
                    text = rounded(float(value), places)
                else:
                    text = plain(value)
                cells.append(f"<td class=\"num\" data-value=\"{esc(data_value(value))}\">{esc(text)}</td>")
            else:
                cells.append(f"<td data-value=\"{esc(value)}\">{esc(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<div class=\"scroll\"><table id=\"{table_id}\" class=\"sortable\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def first_order(higher: Optional[bool]) -> str:
    """The order a column's first click sorts in: best first (higher is better: descending;
    lower: ascending), text A to Z."""
    return "descending" if higher else "ascending"


def leaderboard_table(table: pd.DataFrame, higher: Dict[str, bool], summary: pd.DataFrame) -> str:
    """The leaderboard's sortable table, rows by mean rank: the best mean of a column in a tinted
    bold cell (class ``best``), the rows tied with it in bold (class ``tied``), flags linked to
    their notes; each header's ``data-first`` is the order its first click sorts in (best first)."""
    board = leaderboard_board(table, higher, summary)
    head = []
    for column, header in zip(board.columns, board.headers):
        sorted_now = " aria-sort=\"ascending\"" if column == board.mean_column else ""
        head.append(f"<th scope=\"col\" data-column=\"{esc(column)}\" "
                    f"data-first=\"{first_order(board.higher[column])}\"{sorted_now}>{esc(header)}</th>")
    body = []
    for entries in board.rows:
        cells = []
        for column, entry in zip(board.columns, entries):
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
    return (f"<div class=\"scroll\"><table id=\"leaderboard-table\" class=\"sortable\"><thead><tr>{''.join(head)}"
            f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def headline_row(finding: Finding) -> str:
    """One metric's finding as a row of the headline table."""
    flag = (f" <span class=\"flag\" title=\"{esc(finding.flag)}\">{FLAG} flagged</span>" if finding.flag else "")
    return (f"<tr><td>{esc(finding.label)} {finding.arrow}</td>"
            f"<td><strong>{esc(finding.best[0])} × {esc(finding.best[1])}</strong>{flag}</td>"
            f"<td class=\"num\">{esc(finding.best_text)}</td><td>{inline(finding.comparison())}</td>"
            f"<td class=\"num\">{esc(finding.accuracy_cost(short=True))}</td></tr>")


def headline_block(found: Sequence[Finding], context: str) -> str:
    """The answer first: one sentence per metric (a table with one row per metric on boards of
    more than :data:`COMPACT_ABOVE` metrics), then what the board holds."""
    if not found:
        body = "<p>No metric has a score.</p>"
    elif len(found) <= COMPACT_ABOVE:
        body = "<ul>" + "".join(f"<li>{inline(f.sentence())}</li>" for f in found) + "</ul>"
    else:
        body = ("<table id=\"headline-table\"><thead><tr><th>metric</th><th>best model × explainer</th>"
                "<th>mean ± 95 %</th><th>against the runner-up</th><th>accuracy (cost in points)</th></tr>"
                f"</thead><tbody>{''.join(headline_row(f) for f in found)}</tbody></table>")
    return (f"<section id=\"headline\"><h2>Best per metric</h2>{body}"
            f"<p class=\"note\">{inline(context)}</p></section>")


def board_context(table: pd.DataFrame, summary: pd.DataFrame, labels: Sequence[str], significance: bool) -> str:
    """What the board holds and how to read the headline, in two sentences."""
    models, explainers = table["model"].nunique(), table["explainer"].nunique()
    seeds = sorted({int(s) for s in table["seeds"]}) if "seeds" in table.columns and len(table) else []
    images = sorted({int(n) for n in summary["num_images"]}) if len(summary) else []
    parts = [f"{len(table)} rows ({models} model{'s' if models != 1 else ''} × "
             f"{explainers} explainer{'s' if explainers != 1 else ''})",
             f"{len(labels)} metric{'s' if len(labels) != 1 else ''}"]
    if seeds:
        parts.append(f"{'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''} per row")
    if images:
        parts.append(f"{'/'.join(map(str, images))} test images per cell")
    tests = ("\"tied\" means not significantly worse (paired test, Holm-corrected)" if significance
             else "no significance tests (these results have no per-image scores)")
    return (f"Board: {', '.join(parts)}. ± is the half-width of a 95 % bootstrap interval; {tests}. "
            "How each was made: under the leaderboard.")


WIDE_PX = 1800  # figures wider than this are shown at their own size, in a scrolling box


def png_size(data: bytes) -> Tuple[int, int]:
    """``(width, height)`` of a PNG from its IHDR chunk (``(0, 0)`` if ``data`` is not a PNG)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return 0, 0
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def png_width(data: bytes) -> int:
    """The width of a PNG from its IHDR chunk (0 if ``data`` is not a PNG)."""
    return png_size(data)[0]


TALL_PX = 1000  # the key figure taller than this scrolls in a box of at most 85 % of the window's height


def figure_block(folder: Path, drawn: Any, key: bool = False) -> str:
    """A figure: its title, the PNG embedded, its caption and links to its files. ``key``: the
    figure under the headline, in a box no taller than most of the window (its top, e.g. the best
    rows of the rank heatmap, in view), so that the leaderboard follows it closely."""
    png = drawn.files.get("png")
    data = Path(png).read_bytes() if png else b""
    encoded = base64.b64encode(data).decode()
    links = " ".join(f"<a href=\"{esc(path.name)}\">{kind.upper()}</a>" for kind, path in sorted(drawn.files.items()))
    width, height = png_size(data)
    wide = " class=\"wide\"" if width > WIDE_PX else ""
    box, note = "scroll", ""
    if key and height > TALL_PX:
        box, note = "scroll capped", " Scroll inside the figure for the rest of it, or open the PNG."
    return (f"<figure id=\"figure-{esc(drawn.name)}\"{wide}><h3>{esc(drawn.title)}</h3>"
            f"<div class=\"{box}\"><img src=\"data:image/png;base64,{encoded}\" alt=\"{esc(drawn.title)}\" "
            f"data-figure=\"{esc(drawn.name)}\"></div>"
            f"<figcaption>{inline(drawn.caption)}{note} Files: {links}. <a href=\"#top\">Top</a></figcaption></figure>")


def key_figure(drawn: Sequence[Any]) -> Optional[Any]:
    """The figure shown right after the headline: ``rank_heatmap`` if drawn, else the first
    ``<metric>_curves``, else ``accuracy_vs_faithfulness``, else none."""
    for wanted in (lambda name: name == "rank_heatmap", lambda name: name.endswith("_curves"),
                   lambda name: name == "accuracy_vs_faithfulness"):
        chosen = next((d for d in drawn if wanted(d.name)), None)
        if chosen is not None:
            return chosen
    return None


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def details(element_id: str, summary: str, content: List[str]) -> List[str]:
    """A collapsed ``<details>`` section."""
    return [f"<details id=\"{element_id}\"><summary>{summary}</summary>", *content, "</details>"]


def render_html(folder: Path, data_name: str, table: pd.DataFrame, summary: pd.DataFrame, tidy: pd.DataFrame,
                info: Dict[str, Any], drawn: Sequence[Any], skipped: Sequence[str],
                rank_metrics: Optional[Sequence[str]] = None) -> str:
    higher = directions(tidy)
    intervals = sorted(set(summary["interval"])) if len(summary) else []
    labels = [label for label in higher if label in table.columns]
    board = leaderboard_board(table, higher, summary)
    flags = flag_lines(summary)
    key = key_figure(drawn)
    others = [d for d in drawn if d is not key]
    claims_path = find_claims(folder)
    claims = load_claims(claims_path) if claims_path else None
    nav = ["<a href=\"#headline\">Best</a>", "<a href=\"#leaderboard\">Leaderboard</a>",
           "<a href=\"#figures\">Figures</a>", "<a href=\"#metrics\">Per metric</a>", "<a href=\"#cells\">Cells</a>"]
    if claims:
        nav.append("<a href=\"#claims\">Claims</a>")
    nav.append("<a href=\"#provenance\">Config and versions</a>")
    summary_view = summary.drop(columns=["data"])
    cell_view = tidy.drop(columns=["data"])
    parts = [
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>interpbench report: {esc(data_name)}</title><style>{STYLE}</style></head><body>",
        f"<header id=\"top\"><h1>interpbench report: {esc(data_name)}</h1><nav>{''.join(nav)}</nav></header>",
        headline_block(findings(table, higher, summary), board_context(table, summary, labels, board.significance)),
    ]
    if key is not None:
        parts.append(f"<section id=\"key-figure\">{figure_block(folder, key, key=True)}</section>")
    parts += [
        "<section id=\"leaderboard\"><h2>Leaderboard</h2>",
        "<p class=\"note\">Rows by mean rank, best first. Click a column header to sort by it, best first; click "
        "again to reverse. Best mean of each column highlighted"
        + ("; rows tied with it in bold.</p>" if board.significance else ".</p>"),
        leaderboard_table(table, higher, summary),
        f"<p class=\"note\">{inline(interval_sentence(intervals))}</p>",
        *[f"<p class=\"note\">{inline(sentence)}</p>" for sentence in significance_sentences(summary)],
        f"<p class=\"note\">{inline(rank_sentence(labels, rank_metrics, board.significance))}</p>",
    ]
    if flags:
        parts.append("<ul class=\"note\">" + "".join(f"<li id=\"flag-{i}\" class=\"flag\">{inline(line)}</li>"
                                                     for i, line in enumerate(flags, start=1)) + "</ul>")
    if info.get("notes"):
        parts.append(f"<p class=\"note\">{inline(info['notes'])}</p>")
    figure_links = " · ".join(f"<a href=\"#figure-{esc(d.name)}\">{esc(d.title)}</a>" for d in drawn)
    parts += ["</section>", f"<section id=\"figures\"><h2>Figures</h2><p class=\"note\">{figure_links}</p>",
              *[figure_block(folder, d) for d in others]]
    if skipped:
        parts.append("<p class=\"note\">Not drawn:</p><ul class=\"note\">"
                     + "".join(f"<li>{inline(s)}</li>" for s in skipped) + "</ul>")
    parts += ["</section>", "<section id=\"details\"><h2>Details</h2>"]
    parts += details("metrics", "Per metric: means, intervals, ranks and tests", [
        "<p class=\"note\">One row per model, explainer and metric: mean over seeds, the 95 % interval and how it "
        "was made, the rank by mean in the metric's direction, the significance rank, whether the row is tied with "
        "the column's best, the Holm-adjusted p-value against the best and how the two were compared, any "
        "flag.</p>",
        frame_table(summary_view, "summary-table", "mean")])
    parts += details("cells", "Cells: one row per model, explainer, metric and seed", [
        "<p class=\"note\">One row per cell (model × explainer × metric × seed); its interval is over its "
        "scored images. <a href=\"cells.csv\">cells.csv</a>, <a href=\"cells.json\">cells.json</a> (with the "
        "per-image scores and curves).</p>",
        frame_table(cell_view, "cells-table", "score")])
    if claims:
        parts += details("claims", "Claims: the papers' figures against ours", [
            "<p class=\"note\">Each checkable claim of the papers behind the zoo: the paper's figure, ours, the "
            "command that measured ours and a verdict (from <code>" + esc(claims_path.name) + "</code> beside the "
            "published results).</p>",
            claims_html(claims)])
    config = [
        f"<p class=\"note\">Report built at commit <code>{esc(info.get('report_git_commit'))}</code>; cells computed "
        f"at {', '.join('<code>' + esc(c) + '</code>' for c in info.get('cell_git_commits', []))}.</p>",
        "<table id=\"versions-table\"><thead><tr><th>library</th><th>version</th></tr></thead><tbody>"
        + "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in info.get("versions", {}).items())
        + "</tbody></table>",
        "<h3>Config read from the cells</h3>",
        f"<pre id=\"cells-config\">{esc(pretty_json(info.get('cells_config')))}</pre>",
    ]
    if info.get("sweep_config"):
        config += ["<h3>Sweep config</h3>",
                   f"<pre id=\"sweep-config\">{esc(pretty_json(info['sweep_config']))}</pre>"]
    parts += details("provenance", "Config and versions", config)
    parts += ["<p><a href=\"#top\">Top</a></p></section>", f"<script>{SORT_SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def write_html(folder: Path, data_name: str, table: pd.DataFrame, summary: pd.DataFrame, tidy: pd.DataFrame,
               info: Dict[str, Any], drawn: Sequence[Any], skipped: Sequence[str],
               rank_metrics: Optional[Sequence[str]] = None) -> Path:
    """Write ``folder/report.html``; returns its path."""
    page = render_html(Path(folder), data_name, table, summary, tidy, info, drawn, skipped, rank_metrics)
    return atomic_write_text(Path(folder) / "report.html", page)
