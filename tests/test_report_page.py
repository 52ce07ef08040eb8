"""How a report reads: the digits a number is shown with (known answers), the markdown board (rows
by mean rank, no mean-rank column for one metric, a compact table of ranks for many metrics), the
headline's findings, notes written with markdown's code spans, and the page in headless Chromium
at 1400 x 900 (the headline above the fold, a header's first click sorting best first, every
figure decoded, no raw backtick in the visible text)."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from interpbench.core import CellResult
from interpbench.report.figures import Drawn
from interpbench.report.html import inline, key_figure, render_html
from interpbench.report.markdown import to_markdown
from interpbench.report.stats import (
    interval_places,
    mean_rank_text,
    p_text,
    plain,
    rank_text,
    rounded,
    with_interval,
)
from interpbench.report.tables import directions, findings, pivot, summary_table, tidy_table
from interpbench.report.write import write_leaderboard

CURVE_X = [0.0, 0.25, 0.5, 0.75, 1.0]


def fake_cell(model, explainer, label, per_image, higher=True, accuracy=0.9, curve=None, flag=None):
    values = np.asarray(per_image, dtype=float)
    cell = {"train": {"model": model, "data": {"name": "synthetic"}, "seed": 0}, "explainer": explainer,
            "explainer_args": {}, "metric": label, "metric_args": {}, "num_images": len(values),
            "target": "predicted", "eval_seed": 0}
    return CellResult(
        cell=cell, key=f"{model}-{explainer}-{label}", model=model, explainer=explainer, explainer_label=explainer,
        metric=label, label=label, higher_is_better=higher, flag=flag, data="synthetic", seed=0, size="cpu",
        score=float(values.mean()), per_image=[float(v) for v in values], curve_x=CURVE_X if curve else None,
        curve=curve, num_images=len(values), test_accuracy=accuracy, model_key=f"{model}-0", seconds=1.0,
        git_commit="abc123", torch="2")


# Constant per-image scores (zero-width intervals) on 10 images: every pair of rows differs on every
# image in one direction, so the exact two-sided signed-rank p-value is 2 / 2^10 and Holm's
# correction over the 3 pairs of a column gives 3 * 2 / 2^10 = 0.0059 < 0.05 to each: the
# significance ranks are the ranks by mean.
#                 higher, a/native, a/random, b/native
METRICS = {"m1": (True, 0.8, 0.2, 0.9), "m2": (False, 0.1, 0.7, 0.3), "m3": (True, 0.6, 0.1, 0.7),
           "m4": (True, 0.5, 0.4, 0.9), "m5": (False, 0.2, 0.9, 0.25)}
ROWS = (("a", "native", 0.95), ("a", "random", 0.95), ("b", "native", 0.90))


def constant_board(labels):
    results = [fake_cell(model, explainer, label, [METRICS[label][1 + i]] * 10, higher=METRICS[label][0],
                         accuracy=accuracy)
               for label in labels for i, (model, explainer, accuracy) in enumerate(ROWS)]
    tidy = tidy_table(results)
    summary = summary_table(tidy)
    return tidy, summary, pivot(tidy, summary=summary)


def board_markdown(labels):
    tidy, summary, table = constant_board(labels)
    return to_markdown(table, directions(tidy), "t", summary)


def table_rows(markdown, after=""):
    """The rows of the first markdown table after the line ``after``."""
    lines = markdown.splitlines()
    start = lines.index(after) if after else 0
    rows = []
    for line in lines[start:]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    return rows


# --- digits ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mean, half, expected", [
    (0.8704, 0.0125, "0.870 ± 0.013"),  # two significant digits of the half-width (leading 125)
    (0.52, 0.04, "0.52 ± 0.04"),  # leading 400: one digit
    (12.34, 1.5, "12.3 ± 1.5"),
    (0.5, 0.0, "0.500 ± 0"),  # every score equal: a zero-width interval
    (0.5, float("nan"), "0.500"),  # no interval: three significant digits
    (0.3, 0.0097, "0.300 ± 0.010"),  # 970 rounds up to 1000: two digits of the next power
    (6130.6, 1833.5, "6100 ± 1800"),  # a half-width above 10 rounds the mean to tens, hundreds
    (83.525, 8.143, "84 ± 8"),
    (-0.0001, 0.004, "0.000 ± 0.004"),  # no minus sign on a zero
    (-0.7436, 0.0261, "-0.744 ± 0.026"),
    (float("nan"), 0.01, "–"),
])
def test_a_mean_has_the_digits_its_interval_supports(mean, half, expected):
    assert with_interval(mean, half) == expected


def test_digit_helpers_known_answers():
    assert [interval_places(h) for h in (0.0125, 0.04, 1.5, 0.0354, 0.0355, 0.0949, 0.095, 25.0)] == \
        [3, 2, 1, 3, 2, 2, 2, 0]
    assert interval_places(0.0) is None and interval_places(float("nan")) is None and interval_places(-1) is None
    assert [rounded(1834.0, -2), rounded(0.8704, 3), rounded(-0.0004, 3)] == ["1800", "0.870", "0.000"]
    assert [plain(0.98604), plain(83.525), plain(6130.6), plain(0.0447), plain(0), plain(None)] == \
        ["0.986", "83.5", "6131", "0.0447", "0", "–"]
    assert [rank_text(5.0), rank_text(4.5), rank_text(float("nan"))] == ["5", "4.5", "–"]
    assert [mean_rank_text(5.0), mean_rank_text(1.75), mean_rank_text(None)] == ["5.0", "1.8", "–"]
    assert [p_text(0.2134), p_text(0.0028123), p_text(5.46e-11), p_text(1.0), p_text(float("nan"))] == \
        ["0.21", "0.0028", "5.5e-11", "1", "–"]


# --- the markdown board ------------------------------------------------------------------------
def test_board_rows_follow_the_mean_rank_ties_by_the_first_metric():
    # m1 ranks b, a/native, a/random; m2 ranks a/native, b, a/random: b and a/native share the
    # mean rank 1.5 and b's better m1 puts it first (by name, a/native would be).
    markdown = board_markdown(["m1", "m2"])
    assert table_rows(markdown) == [
        "| model | explainer | accuracy ↑ | m1 ↑ | m2 ↓ | mean rank ↓ |",
        "|---|---|---:|---:|---:|---:|",
        "| b | native | 0.900 | **0.900** ± 0 (1) | 0.300 ± 0 (2) | **1.5** |",
        "| a | native | **0.950** | 0.800 ± 0 (2) | **0.100** ± 0 (1) | **1.5** |",
        "| a | random | **0.950** | 0.200 ± 0 (3) | 0.700 ± 0 (3) | 3.0 |"]
    assert markdown.startswith(
        "# t\n\n"
        "- **m1 ↑**: best **b × native**, 0.900 ± 0, significantly better than the runner-up a × native "
        "(0.800 ± 0; p = 0.0059). Accuracy cost: 5.0 points (0.900 against 0.950 for a, the most accurate model).\n"
        "- **m2 ↓**: best **a × native**, 0.100 ± 0, significantly better than the runner-up b × native "
        "(0.300 ± 0; p = 0.0059). Accuracy cost: none (a is the most accurate model, 0.950).\n")


def test_a_board_of_one_metric_has_no_mean_rank_column():
    markdown = board_markdown(["m1"])
    assert table_rows(markdown) == [
        "| model | explainer | accuracy ↑ | m1 ↑ |",
        "|---|---|---:|---:|",
        "| b | native | 0.900 | **0.900** ± 0 (1) |",
        "| a | native | **0.950** | 0.800 ± 0 (2) |",
        "| a | random | **0.950** | 0.200 ± 0 (3) |"]
    assert "mean rank (of these ranks) over" not in markdown


def test_a_board_of_many_metrics_gets_a_compact_table_then_one_per_metric():
    markdown = board_markdown(["m1", "m2", "m3", "m4", "m5"])
    # mean ranks: b (1 + 2 + 1 + 1 + 2) / 5 = 1.4, a/native 1.6, a/random 3
    assert table_rows(markdown) == [
        "| model | explainer | accuracy ↑ | m1 ↑ | m2 ↓ | m3 ↑ | m4 ↑ | m5 ↓ | mean rank ↓ |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        "| b | native | 0.900 | **1** | 2 | **1** | **1** | 2 | **1.4** |",
        "| a | native | **0.950** | 2 | **1** | 2 | 2 | **1** | 1.6 |",
        "| a | random | **0.950** | 3 | 3 | 3 | 3 | 3 | 3.0 |"]
    assert table_rows(markdown, "## m2 ↓") == [
        "| rank | model | explainer | mean ± 95 % interval |",
        "|---:|---|---|---:|",
        "| 1 | a | native | **0.100** ± 0 |",
        "| 2 | b | native | 0.300 ± 0 |",
        "| 3 | a | random | 0.700 ± 0 |"]
    assert [line for line in markdown.splitlines() if line.startswith("## ")] == [
        "## m1 ↑", "## m2 ↓", "## m3 ↑", "## m4 ↑", "## m5 ↓"]
    assert sum(line.startswith("- **m") for line in markdown.splitlines()) == 5  # a finding per metric


def test_findings_say_tied_and_how_many_more_rows_and_name_a_flag():
    # c best; d's rows differ from it by noise of alternating sign and growing size (0.01 k on
    # image k), so no test separates them: d/gradcam (mean +0.005) is the runner-up and tied, and
    # d/native (-0.005) tied too; e is 0.3 worse on every image.
    k = np.arange(1, 21)
    noise = 0.01 * k * np.where(k % 2 == 1, 1.0, -1.0)
    base = np.linspace(0.6, 0.8, 20)
    results = [fake_cell("c", "native", "m", base + 0.01, accuracy=0.80, flag="sanity check failed"),
               fake_cell("d", "native", "m", base + noise, accuracy=0.85),
               fake_cell("d", "gradcam", "m", base - noise, accuracy=0.85),
               fake_cell("e", "native", "m", base - 0.3, accuracy=0.90)]
    tidy = tidy_table(results)
    summary = summary_table(tidy)
    found = findings(pivot(tidy, summary=summary), directions(tidy), summary)
    assert len(found) == 1
    finding = found[0]
    assert (finding.best, finding.runner, finding.runner_tied, finding.others_tied) == (
        ("c", "native"), ("d", "gradcam"), True, 1)
    assert finding.sentence() == (
        f"**m ↑**: best **c × native**, {finding.best_text} (⚠ flagged: sanity check failed), tied with d × gradcam "
        f"({finding.runner_text}; p = {p_text(finding.runner_p)}) and 1 more row. Accuracy cost: 10.0 points "
        "(0.800 against 0.900 for e, the most accurate model).")


# --- the page ------------------------------------------------------------------------------------
def test_notes_render_code_spans_and_bold_and_escape_the_rest():
    assert inline("Profile `cpu`, **best** <b>") == "Profile <code>cpu</code>, <strong>best</strong> &lt;b&gt;"
    assert inline("`a<b>` and `x`") == "<code>a&lt;b&gt;</code> and <code>x</code>"
    assert inline("an odd ` tick") == "an odd &#x27; tick"


def test_the_key_figure_is_the_rank_heatmap_else_curves_else_accuracy():
    def drawn(*names):
        return [Drawn(name, name, "") for name in names]

    assert key_figure(drawn("deletion_curves", "accuracy_vs_faithfulness", "rank_heatmap")).name == "rank_heatmap"
    assert key_figure(drawn("insertion_deletion", "road_curves", "pixel_removal_curves")).name == "road_curves"
    assert key_figure(drawn("saliency_grid", "accuracy_vs_faithfulness")).name == "accuracy_vs_faithfulness"
    assert key_figure(drawn("saliency_grid", "fa_cnn_morphing")) is None


def test_the_page_leads_with_the_answer_and_shows_ranks_as_integers():
    tidy, summary, table = constant_board(["m1", "m2", "m3", "m4", "m5"])
    page = render_html(Path("."), "synthetic", table, summary, tidy, {"notes": "Profile `cpu`."}, [], [])
    order = [page.index(f"id=\"{name}\"") for name in ("headline", "leaderboard", "figures", "metrics", "cells",
                                                        "provenance")]
    assert order == sorted(order)
    assert page.index("<h1>") < page.index("id=\"headline-table\"") < page.index("id=\"leaderboard-table\"")
    assert "<details id=\"metrics\">" in page and "<details id=\"cells\">" in page
    headline = page[page.index("id=\"headline-table\""):page.index("</table>", page.index("id=\"headline-table\""))]
    assert ("<td>m1 ↑</td><td><strong>b × native</strong></td><td class=\"num\">0.900 ± 0</td>"
            "<td>significantly better than the runner-up a × native (0.800 ± 0; p = 0.0059)</td>"
            "<td class=\"num\">0.900 (−5.0 points)</td>") in headline
    # first clicks: higher is better sorts descending, lower ascending, text A to Z; the table
    # starts sorted by mean rank
    heads = re.findall(r'<th scope="col" data-column="([^"]+)" data-first="(\w+)"( aria-sort="ascending")?>',
                       page[page.index("id=\"leaderboard-table\""):])
    assert [(c, f, bool(s)) for c, f, s in heads] == [
        ("model", "ascending", False), ("explainer", "ascending", False), ("accuracy", "descending", False),
        ("m1", "descending", False), ("m2", "ascending", False), ("m3", "descending", False),
        ("m4", "descending", False), ("m5", "ascending", False), ("mean_sig_rank", "ascending", True)]
    summary_part = page[page.index("id=\"summary-table\""):]
    assert '<td class="num" data-value="1.0">1</td>' in summary_part and ".0000<" not in page
    assert "Profile <code>cpu</code>." in page and "`" not in re.sub(r"<script>.*?</script>", "", page, flags=re.S)


CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var out = document.createElement('div');
  out.id = 'render-check';
  var box = document.getElementById('headline').getBoundingClientRect();
  out.setAttribute('data-headline-bottom', Math.round(box.bottom + window.scrollY));
  var table = document.getElementById('leaderboard-table');
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  function column(name) {
    var index = headers.findIndex(function (h) { return h.getAttribute('data-column') === name; });
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) {
      return r.cells[index].getAttribute('data-value'); }).join(',');
  }
  out.setAttribute('data-initial', column('model') + ';' + column('explainer'));
  ['pixel_removal', 'deletion', 'explainer'].forEach(function (name) {
    var header = headers.find(function (h) { return h.getAttribute('data-column') === name; });
    header.click();
    out.setAttribute('data-first-' + name, column(name));
    header.click();
    out.setAttribute('data-second-' + name, column(name));
  });
  var figures = Array.prototype.filter.call(document.images, function (i) { return i.hasAttribute('data-figure'); });
  out.setAttribute('data-figures', figures.map(function (i) { return i.getAttribute('data-figure'); }).join(','));
  out.setAttribute('data-decoded', figures.filter(function (i) {
    return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; }).length);
  var tick = String.fromCharCode(96);
  out.setAttribute('data-ticks-visible', document.body.innerText.split(tick).length - 1);
  document.querySelectorAll('details').forEach(function (d) { d.open = true; });
  out.setAttribute('data-ticks-opened', document.body.innerText.split(tick).length - 1);
  out.setAttribute('data-details', document.querySelectorAll('details').length);
  document.body.appendChild(out);
});
</script>"""


def chromium_binary():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def page_results():
    """Three models, two explainers; pixel removal (higher is better) and deletion (lower is
    better), both with curves; alpha/native the best."""
    rng = np.random.default_rng(5)
    results = []
    for m, (model, accuracy) in enumerate([("alpha", 0.95), ("beta", 0.85), ("gamma", 0.75)]):
        for e, explainer in enumerate(["native", "random"]):
            quality = 0.9 - 0.2 * m - 0.4 * e
            results.append(fake_cell(model, explainer, "pixel_removal", np.clip(rng.normal(quality, 0.05, 30), 0, 1),
                                     accuracy=accuracy, curve=[1.0, quality + 0.1, quality, quality - 0.1, 0.1]))
            deletion = fake_cell(model, explainer, "deletion", np.clip(rng.normal(1 - quality, 0.05, 30), 0, 1),
                                 higher=False, accuracy=accuracy, curve=[1.0, 0.6 - quality / 2, 0.3, 0.2, 0.1])
            results.append(deletion)
    return results


@pytest.mark.skipif(not chromium_binary(), reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_the_page_in_chromium_leads_with_the_answer_and_sorts_best_first(tmp_path):
    notes = "Profile `cpu`, seeds [0]; **accuracy** is top-1. Commit `abc123`."
    write_leaderboard(page_results(), tmp_path / "results", notes=notes, store=tmp_path / "no-store",
                      log=lambda line: None)
    folder = tmp_path / "results" / "synthetic"
    checked = folder / "checked.html"
    checked.write_text((folder / "report.html").read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    result = subprocess.run([chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             "--allow-file-access-from-files", "--virtual-time-budget=10000", "--window-size=1400,900",
                             "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<div id="render-check"([^>]*)>', result.stdout)
    assert found, f"the check script did not run: {result.stderr[-500:]}"
    check = dict(re.findall(r'([\w-]+)="([^"]*)"', found.group(1)))
    assert int(check["data-headline-bottom"]) < 900  # above the fold
    # rows start by mean rank: alpha/native first, gamma/random last
    models, explainers = [part.split(",") for part in check["data-initial"].split(";")]
    assert (models[0], explainers[0], models[-1], explainers[-1]) == ("alpha", "native", "gamma", "random")

    def numbers(key):
        return [float(v) for v in check[key].split(",")]

    removal, deletion = numbers("data-first-pixel_removal"), numbers("data-first-deletion")
    assert removal == sorted(removal, reverse=True) and removal[0] > removal[-1]  # higher is better: best first
    assert deletion == sorted(deletion) and deletion[0] < deletion[-1]  # lower is better: lowest first
    assert numbers("data-second-pixel_removal") == removal[::-1] and numbers("data-second-deletion") == deletion[::-1]
    assert check["data-first-explainer"].split(",") == ["native"] * 3 + ["random"] * 3  # A to Z
    assert check["data-second-explainer"].split(",") == ["random"] * 3 + ["native"] * 3
    drawn = json.loads((folder / "figures.json").read_text())
    assert sorted(check["data-figures"].split(",")) == sorted(drawn) and len(drawn) >= 3
    assert int(check["data-decoded"]) == len(drawn)  # every figure image decoded
    assert check["data-ticks-visible"] == "0" and check["data-ticks-opened"] == "0"  # code spans, not backticks
    assert int(check["data-details"]) >= 3
