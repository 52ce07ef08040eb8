"""Leaderboards: cell results -> tidy tables -> a pivoted CSV, markdown, figures and an HTML report.

Three tables per dataset, numbers kept as numbers:

- ``cells.csv``: one row per cell (model x explainer x metric x data x seed), with the cell's own
  95 % interval over its scored images;
- ``leaderboard_tidy.csv``: one row per (model, explainer, metric): the mean over seeds, its
  95 % interval, how the interval was made, the rank by mean, the significance rank, whether the
  row is tied with the column's best, the Holm-adjusted p-value against the best and how the two
  were compared (``vs_best``), and any flag;
- ``leaderboard.csv`` (pivoted): one row per (model, explainer): seeds, accuracy, then per metric
  its mean, ``<metric>_ci_low``, ``<metric>_ci_high``, ``<metric>_rank`` (by mean),
  ``<metric>_sig_rank``, ``<metric>_tied_best`` and ``<metric>_p_vs_best``, then ``mean_rank``
  (of the ranks by mean), ``mean_sig_rank`` (of the significance ranks) and ``interval``.

Intervals are 95 % percentile bootstrap intervals of the mean (1000 resamples, generator seed 0):
over the per-image scores of the cell when a (model, explainer, metric) has one seed, over the
seeds' scores when it has several (the ``interval`` column says which). Test accuracy (one
number per trained model) gets an interval over seeds only.

Ranks, per metric column: the rank by mean (1 is the best in the metric's direction, equal means
share the better rank) and the significance rank of :func:`interpbench.report.stats.column_standings`:
every pair of rows compared on the images both scored (two-sided Wilcoxon signed-rank test by
default, Holm's correction over the column's pairs, alpha 0.05); a row the tests do not find
significantly worse than the column's best mean is *tied with the best* and ranks 1, any other row
ranks 1 + the number of rows significantly better than it. The mean ranks are taken over the
chosen metrics (all by default). ``leaderboard.md`` shows ``mean ± half the interval's width``
with the significance rank in brackets, the best mean of each column and every row tied with it
in bold (the HTML report tints the best mean's cell too), and a ⚠ mark with a footnote where a
cell carries a flag (e.g. a failed sanity check).

The per-image scores reach :func:`summary_table` on the tidy table's ``attrs`` (set by
:func:`tidy_table`, not written to ``cells.csv``); a tidy table without them (read back from a
CSV) gets empty significance columns, and the leaderboard then shows the ranks by mean.

Beside the tables: ``cells.json`` (every cell result, so ``interpbench report`` rebuilds the
report without the store), ``provenance.json`` (the config read from the cells, the git commits,
the library versions), the figures (:mod:`interpbench.report.figures`) and ``report.html``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from interpbench.core import CellResult
from interpbench.report.stats import (
    ALPHA,
    BOOTSTRAP_SEED,
    DEFAULT_TEST,
    EXACT_LIMIT,
    LEVEL,
    RESAMPLES,
    RowScores,
    bootstrap_interval,
    check_alpha,
    check_test,
    column_standings,
    decimals,
    half_width,
    rank_column,
)

TIDY_COLUMNS = ["data", "size", "model", "explainer", "metric", "label", "seed", "score", "ci_low",
                "ci_high", "higher_is_better", "flag", "test_accuracy", "num_images", "key", "git_commit"]


SUMMARY_COLUMNS = ["data", "model", "explainer", "metric", "label", "higher_is_better", "seeds",
                   "num_images", "mean", "ci_low", "ci_high", "interval", "rank", "sig_rank", "tied_best",
                   "p_vs_best", "vs_best", "flag"]


# per metric in the pivot, after its mean: (column suffix, summary column)
PIVOT_SUFFIXES = (("", "mean"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high"), ("_rank", "rank"),
                  ("_sig_rank", "sig_rank"), ("_tied_best", "tied_best"), ("_p_vs_best", "p_vs_best"))


PER_IMAGE = "interpbench_per_image"  # the tidy table's attrs key holding its PerImageScores


OVER_IMAGES = "bootstrap over images"


OVER_SEEDS = "bootstrap over seeds"


FLAG = "⚠"


# --- tables --------------------------------------------------------------------------------
class PerImageScores:
    """Cell key -> (key of the scored images, per-image scores as floats, NaN where undefined).

    Rides on the tidy table's ``attrs``; pandas deep-copies ``attrs`` whenever it derives a frame,
    so this holder is read-only and copies as itself."""

    def __init__(self, scores: Dict[str, Tuple[str, np.ndarray]]):
        self._scores = dict(scores)

    def __getitem__(self, key: str) -> Tuple[str, np.ndarray]:
        return self._scores[key]

    def __contains__(self, key: object) -> bool:
        return key in self._scores

    def __len__(self) -> int:
        return len(self._scores)

    def __copy__(self) -> "PerImageScores":
        return self

    def __deepcopy__(self, memo: Dict[int, Any]) -> "PerImageScores":
        return self


def images_key(result: CellResult) -> str:
    """What fixes the images a cell scored: the data (less where it is fetched from), ``num_images``
    and ``eval_seed``."""
    settings = result.settings()
    return json.dumps({"data": settings["data"], "num_images": settings["num_images"],
                       "eval_seed": settings["eval_seed"]}, sort_keys=True, default=str)


def settings_conflict(results: Sequence[CellResult]) -> Optional[str]:
    """One line naming how the results' evaluation settings differ (anything but the model, the seed
    and the explainer's and metric's arguments, which are rows and columns of their own), or None."""
    seen: Dict[str, Dict[Any, str]] = {}
    for result in results:
        for name, value in result.settings().items():
            seen.setdefault(name, {}).setdefault(json.dumps(value, sort_keys=True, default=str),
                                                 f"{result.model}/{result.explainer_label}/{result.label}")
    differing = {name: values for name, values in seen.items() if len(values) > 1}
    if not differing:
        return None
    parts = [f"{name} takes {len(values)} values ({'; '.join(f'{v} in {where}' for v, where in values.items())})"
             for name, values in differing.items()]
    return ("cells with different evaluation settings cannot share one leaderboard: " + ", ".join(parts)
            + "; report each sweep folder on its own")


def tidy_table(results: Iterable[CellResult]) -> pd.DataFrame:
    """One row per cell result, with the cell's bootstrap interval over its images; the per-image
    scores ride along in ``attrs[PER_IMAGE]`` for the paired tests of :func:`summary_table`."""
    rows = []
    scores: Dict[str, Tuple[str, np.ndarray]] = {}
    for result in results:
        scores[result.key] = (images_key(result), np.asarray(
            [np.nan if v is None else v for v in result.per_image], dtype=float))
        row = {column: getattr(result, column) for column in TIDY_COLUMNS if column not in ("ci_low", "ci_high")}
        row["explainer"] = result.explainer_label
        per_image = result.per_image
        row["ci_low"], row["ci_high"] = (bootstrap_interval(per_image) if per_image
                                         else (float("nan"), float("nan")))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    frame["score"] = frame["score"].astype(float)
    frame = frame.sort_values(["data", "model", "explainer", "label", "seed"], ignore_index=True)
    frame.attrs[PER_IMAGE] = PerImageScores(scores)
    return frame


def directions(tidy: pd.DataFrame) -> Dict[str, bool]:
    """Metric label -> higher is better."""
    return {row.label: bool(row.higher_is_better) for row in tidy.drop_duplicates("label").itertuples()}


def summary_table(tidy: pd.DataFrame, alpha: float = ALPHA, test: str = DEFAULT_TEST) -> pd.DataFrame:
    """One row per (data, model, explainer, metric label): mean over seeds, interval, rank by mean,
    the significance columns (``sig_rank``, ``tied_best``, ``p_vs_best``, ``vs_best``; see
    :func:`interpbench.report.stats.column_standings`, ``alpha`` and ``test`` as there) and flag."""
    check_alpha(alpha)
    check_test(test)
    per_image = tidy.attrs.get(PER_IMAGE)
    rows = []
    columns: Dict[Tuple[str, str], Dict[Tuple[str, str], RowScores]] = {}
    for (data, model, explainer, label), part in tidy.groupby(["data", "model", "explainer", "label"], sort=True):
        scores = part["score"].tolist()
        if len(part) == 1:
            low, high = part["ci_low"].iloc[0], part["ci_high"].iloc[0]
            interval = OVER_IMAGES
        else:
            low, high = bootstrap_interval(scores)
            interval = OVER_SEEDS
        flags = sorted({str(f) for f in part["flag"] if isinstance(f, str) and f})
        mean = float(np.nanmean(scores)) if any(s == s for s in scores) else float("nan")
        rows.append({
            "data": data, "model": model, "explainer": explainer, "metric": part["metric"].iloc[0],
            "label": label, "higher_is_better": bool(part["higher_is_better"].iloc[0]),
            "seeds": len(part), "num_images": int(part["num_images"].iloc[0]),
            "mean": mean, "ci_low": low, "ci_high": high, "interval": interval, "rank": float("nan"),
            "sig_rank": float("nan"), "tied_best": False, "p_vs_best": float("nan"), "vs_best": "",
            "flag": "; ".join(flags) if flags else None,
        })
        if per_image is not None:
            seeds = {int(seed): per_image[key] for seed, key in zip(part["seed"], part["key"]) if key in per_image}
            columns.setdefault((data, label), {})[(model, explainer)] = RowScores(mean, seeds)
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    summary["tied_best"] = summary["tied_best"].astype(bool)
    summary.attrs.update(alpha=alpha, test=test)
    for (_, _), index in summary.groupby(["data", "label"]).groups.items():
        part = summary.loc[index]
        summary.loc[index, "rank"] = rank_column(part["mean"], bool(part["higher_is_better"].iloc[0]))
    if not columns:
        return summary
    higher = {row["label"]: row["higher_is_better"] for row in rows}
    standings = {}
    for (data, label), column in columns.items():
        for (model, explainer), standing in column_standings(column, higher[label], alpha, test).items():
            standings[(data, label, model, explainer)] = standing
    found = [standings[key] for key in zip(summary["data"], summary["label"], summary["model"], summary["explainer"])]
    summary["sig_rank"] = [s.sig_rank for s in found]
    summary["tied_best"] = [bool(s.tied_best) for s in found]
    summary["p_vs_best"] = [s.p_vs_best for s in found]
    summary["vs_best"] = [s.vs_best for s in found]
    return summary


def pivot(tidy: pd.DataFrame, rank_metrics: Optional[Sequence[str]] = None,
          summary: Optional[pd.DataFrame] = None, alpha: float = ALPHA, test: str = DEFAULT_TEST) -> pd.DataFrame:
    """One row per (model, explainer): seeds, accuracy (and its interval over seeds), then per
    metric its mean, interval ends, rank by mean, significance rank, tied-with-the-best and
    Holm-adjusted p-value against the best, then the mean rank and mean significance rank over
    ``rank_metrics`` (default: every metric) and how the intervals were made. ``summary``:
    ``summary_table(tidy, alpha, test)``, when the caller has it already."""
    summary = summary_table(tidy, alpha, test) if summary is None else summary
    labels = sorted(summary["label"].unique())
    chosen = labels if rank_metrics is None else list(rank_metrics)
    unknown = [m for m in chosen if m not in labels]
    if unknown:
        raise ValueError(f"unknown rank metric(s) {', '.join(unknown)}; valid metrics: {', '.join(labels)}")
    table = (tidy[["model", "explainer"]].drop_duplicates()
             .sort_values(["model", "explainer"], ignore_index=True))
    seeds, accuracy, acc_low, acc_high = [], [], [], []
    for row in table.itertuples():
        part = tidy[(tidy.model == row.model) & (tidy.explainer == row.explainer)]
        per_seed = part.drop_duplicates("seed")["test_accuracy"].astype(float)
        seeds.append(int(part["seed"].nunique()))
        accuracy.append(float(per_seed.mean()))
        low, high = bootstrap_interval(per_seed.tolist()) if len(per_seed) > 1 else (float("nan"),) * 2
        acc_low.append(low)
        acc_high.append(high)
    table["seeds"] = seeds
    table["accuracy"] = accuracy
    table["accuracy_ci_low"] = acc_low
    table["accuracy_ci_high"] = acc_high
    keyed = summary.set_index(["model", "explainer", "label"])
    for label in labels:
        for column, source in PIVOT_SUFFIXES:
            kind = bool if source == "tied_best" else float
            missing = False if source == "tied_best" else float("nan")
            table[label + column] = [
                kind(keyed.loc[(r.model, r.explainer, label), source]) if (r.model, r.explainer, label) in keyed.index
                else missing for r in table.itertuples()]
    for name, suffix in (("mean_rank", "_rank"), ("mean_sig_rank", "_sig_rank")):
        ranks = table[[label + suffix for label in chosen]]
        table[name] = ranks.mean(axis=1, skipna=True) if chosen else float("nan")
    table["interval"] = [
        "/".join(sorted(set(summary[(summary.model == r.model) & (summary.explainer == r.explainer)]["interval"])))
        for r in table.itertuples()]
    table.columns.name = None
    table.attrs = {}
    return table


def flag_footnotes(summary: pd.DataFrame) -> Dict[str, int]:
    """Flag text -> footnote number, in order of first appearance."""
    notes: Dict[str, int] = {}
    for flag in summary["flag"]:
        if isinstance(flag, str) and flag and flag not in notes:
            notes[flag] = len(notes) + 1
    return notes


@dataclass
class Entry:
    """One leaderboard cell as shown: its text (no markup), the number it sorts by, whether it is
    the column's best, whether it is tied with the best (not significantly worse; the best itself
    is ``best``, not ``tied``), and its flag's footnote number and text, if any."""
    text: str
    value: Any
    best: bool = False
    footnote: Optional[int] = None
    flag: Optional[str] = None
    tied: bool = False


def uses_significance(table: pd.DataFrame, labels: Sequence[str]) -> bool:
    """Whether the pivoted ``table`` has significance ranks to show (it has unless its tidy table
    came without per-image scores)."""
    return any(f"{label}_sig_rank" in table.columns and table[f"{label}_sig_rank"].notna().any()
               for label in labels)


def leaderboard_entries(table: pd.DataFrame, higher_is_better: Dict[str, bool],
                        summary: Optional[pd.DataFrame] = None) -> Tuple[List[str], List[str], List[List[Entry]], Dict[str, int]]:
    """The leaderboard as shown: ``(columns, headers, rows of entries, flag footnotes)``; a metric
    entry reads ``mean ± half-width (significance rank)`` and the last column is the mean
    significance rank (without significance columns: the ranks by mean and their mean); shared by
    the markdown and the HTML report."""
    labels = [label for label in higher_is_better if label in table.columns]
    summary = summary if summary is not None else pd.DataFrame(columns=SUMMARY_COLUMNS)
    footnotes = flag_footnotes(summary)
    flags = {(r.model, r.explainer, r.label): r.flag for r in summary.itertuples()
             if isinstance(r.flag, str) and r.flag}
    significance = uses_significance(table, labels)
    mean_column = "mean_sig_rank" if significance and "mean_sig_rank" in table.columns else "mean_rank"
    direction = dict(higher_is_better, accuracy=True, mean_rank=False, mean_sig_rank=False)
    columns = ["model", "explainer", "accuracy", *labels, mean_column]
    best = {}
    for column in columns[2:]:
        if table[column].notna().any():
            best[column] = table[column].max() if direction[column] else table[column].min()
    places = {column: decimals(table[column]) for column in ["accuracy", *labels]}
    headers = ["model", "explainer"] + [
        "mean rank ↓" if c == mean_column else f"{c} {'↑' if direction[c] else '↓'}" for c in columns[2:]]
    rows = []
    for values in table.itertuples(index=False):
        record = dict(zip(table.columns, values))
        entries = [Entry(str(record["model"]), record["model"]), Entry(str(record["explainer"]), record["explainer"])]
        for column in columns[2:]:
            value = record[column]
            if value is None or value != value:
                entries.append(Entry("–", None))
                continue
            text = f"{value:.1f}" if column == mean_column else f"{value:.{places[column]}f}"
            low, high = record.get(f"{column}_ci_low"), record.get(f"{column}_ci_high")
            if low is not None and low == low and high == high:
                text += f" ± {half_width(low, high):.{places[column]}f}"
            rank = record.get(f"{column}_sig_rank") if significance else None
            if rank is None or rank != rank:
                rank = record.get(f"{column}_rank")
            if column in labels and rank == rank:
                text += f" ({int(rank)})"
            is_best = bool(column in best and value == best[column])
            marked = record.get(f"{column}_tied_best")
            tied = bool(significance and column in labels and not is_best
                        and isinstance(marked, (bool, np.bool_)) and marked)
            flag = flags.get((record["model"], record["explainer"], column))
            entries.append(Entry(text, float(value), is_best, footnotes.get(flag) if flag else None, flag, tied))
        rows.append(entries)
    return columns, headers, rows, footnotes


def flag_lines(summary: pd.DataFrame) -> List[str]:
    """One line per flag text: ``⚠n: text (model/explainer (metric), ...)``."""
    footnotes = flag_footnotes(summary)
    lines = []
    for flag, number in footnotes.items():
        where = ", ".join(f"{r.model}/{r.explainer} ({r.label})" for r in summary.itertuples() if r.flag == flag)
        lines.append(f"{FLAG}{number}: {flag} ({where})")
    return lines


def rank_sentence(labels: Sequence[str], rank_metrics: Optional[Sequence[str]] = None,
                  significance: bool = False) -> str:
    """What the bracketed ranks and the mean rank column are, in one sentence (and, with
    ``significance``, where the CSVs keep the rest)."""
    chosen = list(labels) if rank_metrics is None else list(rank_metrics)
    if not significance:
        return ("(n): rank in the column, 1 = best in the metric's direction, ties share the better rank; "
                f"mean rank over: {', '.join(chosen) or 'none'}.")
    return ("(n): significance rank in the column: 1 for the best mean and every row tied with it (bold), "
            "otherwise 1 + the number of rows significantly better than this one; mean rank (of these ranks) "
            f"over: {', '.join(chosen) or 'none'}. The CSVs keep the rank by mean alone (`<metric>_rank`, "
            "`mean_rank`) beside `<metric>_sig_rank`, `<metric>_tied_best`, `<metric>_p_vs_best` (Holm-adjusted) "
            "and `mean_sig_rank`.")


def test_description(test: str) -> str:
    """The paired test ``test`` in words, for the legend."""
    if test == "bootstrap":
        return (f"two-sided paired bootstrap test of the mean per-image difference (null-centred, {RESAMPLES} "
                f"resamples, seed {BOOTSTRAP_SEED})")
    return ("two-sided Wilcoxon signed-rank test of the per-image differences (zero differences dropped, "
            f"`zero_method=\"wilcox\"`; exact up to {EXACT_LIMIT} non-zero differences, else the normal "
            "approximation)")


def significance_sentences(summary: pd.DataFrame) -> List[str]:
    """How the bold rows were chosen (the test, the pairing, Holm, alpha), then the rows compared
    with the best unpaired or not at all, if any; empty without significance columns."""
    if not len(summary) or "sig_rank" not in summary.columns or summary["sig_rank"].isna().all():
        return []
    alpha = summary.attrs.get("alpha", ALPHA)
    test = summary.attrs.get("test", DEFAULT_TEST)
    unpaired_test = "Mann-Whitney U test" if test == "wilcoxon" else "unpaired bootstrap of the difference of means"
    lines = [(f"Bold: the best mean of the column and every row tied with it, i.e. not significantly worse by a "
              f"{test_description(test)}, paired by image (the cells of a sweep score the same seeded images; with "
              "several seeds the differences are averaged over the seeds both rows have, image by image); Holm's "
              f"correction over all pairs of rows of the column, α = {alpha:g}. An image undefined in either row "
              "is left out of that pair.")]
    for kind, words in (("unpaired", f"Compared with the best unpaired ({unpaired_test}: no seed with the same "
                                     "images in common)"),
                        ("untested", "Not tested against the best (no image scored by both; counted as tied)")):
        where = [f"{r.model}/{r.explainer} ({r.label})" for r in summary.itertuples()
                 if isinstance(r.vs_best, str) and r.vs_best.startswith(kind)]
        if where:
            lines.append(f"{words}: {', '.join(where)}.")
    return lines


def interval_sentence(intervals: Sequence[str]) -> str:
    """How the ± intervals of a leaderboard were made, in one sentence."""
    where = {OVER_IMAGES: "over the scored images of the cell (one seed)",
             OVER_SEEDS: "over the seeds' scores (several seeds)"}
    parts = [where.get(i, i) for i in intervals] or ["none"]
    return (f"± is half the width of a {LEVEL:.0%} percentile bootstrap interval of the mean "
            f"({RESAMPLES} resamples, seed {BOOTSTRAP_SEED}) {' and '.join(parts)}; the CSVs give both "
            "ends (`*_ci_low`, `*_ci_high`). Accuracy has an interval only over several seeds.")
