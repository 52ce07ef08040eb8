"""Leaderboards: cell results -> tidy tables -> a pivoted CSV, markdown, figures and an HTML report.

Three tables per dataset, numbers kept as numbers:

- ``cells.csv``: one row per cell (model x explainer x metric x data x seed), with the cell's own
  95 % interval over its scored images;
- ``leaderboard_tidy.csv``: one row per (model, explainer, metric): the mean over seeds, its
  95 % interval, how the interval was made, the rank and any flag;
- ``leaderboard.csv`` (pivoted): one row per (model, explainer): seeds, accuracy, then per metric
  its mean, ``<metric>_ci_low``, ``<metric>_ci_high`` and ``<metric>_rank``, and ``mean_rank``.

Intervals are 95 % percentile bootstrap intervals of the mean (1000 resamples, generator seed 0):
over the per-image scores of the cell when a (model, explainer, metric) has one seed, over the
seeds' scores when it has several (the ``interval`` column says which). Test accuracy (one
number per trained model) gets an interval over seeds only. Ranks: per metric column, 1 is the
best in the metric's direction; ties share the better rank; the mean rank is taken over the
chosen metrics (all by default). ``leaderboard.md`` shows ``mean ± half the interval's width``
with the rank in brackets, the best mean of each column in bold and a ⚠ mark with a footnote
where a cell carries a flag (e.g. a failed sanity check).

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
    BOOTSTRAP_SEED,
    LEVEL,
    RESAMPLES,
    bootstrap_interval,
    decimals,
    half_width,
    rank_column,
)

TIDY_COLUMNS = ["data", "size", "model", "explainer", "metric", "label", "seed", "score", "ci_low",
                "ci_high", "higher_is_better", "flag", "test_accuracy", "num_images", "key", "git_commit"]


SUMMARY_COLUMNS = ["data", "model", "explainer", "metric", "label", "higher_is_better", "seeds",
                   "num_images", "mean", "ci_low", "ci_high", "interval", "rank", "flag"]


OVER_IMAGES = "bootstrap over images"


OVER_SEEDS = "bootstrap over seeds"


FLAG = "⚠"


# --- tables --------------------------------------------------------------------------------
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
    """One row per cell result, with the cell's bootstrap interval over its images."""
    rows = []
    for result in results:
        row = {column: getattr(result, column) for column in TIDY_COLUMNS if column not in ("ci_low", "ci_high")}
        row["explainer"] = result.explainer_label
        per_image = result.per_image
        row["ci_low"], row["ci_high"] = (bootstrap_interval(per_image) if per_image
                                         else (float("nan"), float("nan")))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    frame["score"] = frame["score"].astype(float)
    return frame.sort_values(["data", "model", "explainer", "label", "seed"], ignore_index=True)


def directions(tidy: pd.DataFrame) -> Dict[str, bool]:
    """Metric label -> higher is better."""
    return {row.label: bool(row.higher_is_better) for row in tidy.drop_duplicates("label").itertuples()}


def summary_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per (data, model, explainer, metric label): mean over seeds, interval, rank, flag."""
    rows = []
    for (data, model, explainer, label), part in tidy.groupby(["data", "model", "explainer", "label"], sort=True):
        scores = part["score"].tolist()
        if len(part) == 1:
            low, high = part["ci_low"].iloc[0], part["ci_high"].iloc[0]
            interval = OVER_IMAGES
        else:
            low, high = bootstrap_interval(scores)
            interval = OVER_SEEDS
        flags = sorted({str(f) for f in part["flag"] if isinstance(f, str) and f})
        rows.append({
            "data": data, "model": model, "explainer": explainer, "metric": part["metric"].iloc[0],
            "label": label, "higher_is_better": bool(part["higher_is_better"].iloc[0]),
            "seeds": len(part), "num_images": int(part["num_images"].iloc[0]),
            "mean": float(np.nanmean(scores)) if any(s == s for s in scores) else float("nan"),
            "ci_low": low, "ci_high": high, "interval": interval, "rank": float("nan"),
            "flag": "; ".join(flags) if flags else None,
        })
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    for (_, _), index in summary.groupby(["data", "label"]).groups.items():
        part = summary.loc[index]
        summary.loc[index, "rank"] = rank_column(part["mean"], bool(part["higher_is_better"].iloc[0]))
    return summary


def pivot(tidy: pd.DataFrame, rank_metrics: Optional[Sequence[str]] = None,
          summary: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per (model, explainer): seeds, accuracy (and its interval over seeds), then per
    metric its mean, interval ends and rank, then the mean rank over ``rank_metrics`` (default:
    every metric) and how the intervals were made. ``summary``: ``summary_table(tidy)``, when the
    caller has it already."""
    summary = summary_table(tidy) if summary is None else summary
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
        for column, source in (("", "mean"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high"), ("_rank", "rank")):
            table[label + column] = [
                float(keyed.loc[(r.model, r.explainer, label), source]) if (r.model, r.explainer, label) in keyed.index
                else float("nan") for r in table.itertuples()]
    ranks = table[[label + "_rank" for label in chosen]]
    table["mean_rank"] = ranks.mean(axis=1, skipna=True) if chosen else float("nan")
    table["interval"] = [
        "/".join(sorted(set(summary[(summary.model == r.model) & (summary.explainer == r.explainer)]["interval"])))
        for r in table.itertuples()]
    table.columns.name = None
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
    the column's best, and its flag's footnote number and text, if any."""
    text: str
    value: Any
    best: bool = False
    footnote: Optional[int] = None
    flag: Optional[str] = None


def leaderboard_entries(table: pd.DataFrame, higher_is_better: Dict[str, bool],
                        summary: Optional[pd.DataFrame] = None) -> Tuple[List[str], List[str], List[List[Entry]], Dict[str, int]]:
    """The leaderboard as shown: ``(columns, headers, rows of entries, flag footnotes)``; a metric
    entry reads ``mean ± half-width (rank)``; shared by the markdown and the HTML report."""
    labels = [label for label in higher_is_better if label in table.columns]
    summary = summary if summary is not None else pd.DataFrame(columns=SUMMARY_COLUMNS)
    footnotes = flag_footnotes(summary)
    flags = {(r.model, r.explainer, r.label): r.flag for r in summary.itertuples()
             if isinstance(r.flag, str) and r.flag}
    direction = dict(higher_is_better, accuracy=True, mean_rank=False)
    columns = ["model", "explainer", "accuracy", *labels, "mean_rank"]
    best = {}
    for column in columns[2:]:
        if table[column].notna().any():
            best[column] = table[column].max() if direction[column] else table[column].min()
    places = {column: decimals(table[column]) for column in ["accuracy", *labels]}
    headers = ["model", "explainer"] + [
        "mean rank ↓" if c == "mean_rank" else f"{c} {'↑' if direction[c] else '↓'}" for c in columns[2:]]
    rows = []
    for values in table.itertuples(index=False):
        record = dict(zip(table.columns, values))
        entries = [Entry(str(record["model"]), record["model"]), Entry(str(record["explainer"]), record["explainer"])]
        for column in columns[2:]:
            value = record[column]
            if value is None or value != value:
                entries.append(Entry("–", None))
                continue
            text = f"{value:.1f}" if column == "mean_rank" else f"{value:.{places[column]}f}"
            low, high = record.get(f"{column}_ci_low"), record.get(f"{column}_ci_high")
            if low is not None and low == low and high == high:
                text += f" ± {half_width(low, high):.{places[column]}f}"
            rank = record.get(f"{column}_rank")
            if column in labels and rank == rank:
                text += f" ({int(rank)})"
            flag = flags.get((record["model"], record["explainer"], column))
            entries.append(Entry(text, float(value), bool(column in best and value == best[column]),
                                 footnotes.get(flag) if flag else None, flag))
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


def rank_sentence(labels: Sequence[str], rank_metrics: Optional[Sequence[str]] = None) -> str:
    chosen = list(labels) if rank_metrics is None else list(rank_metrics)
    return ("(n): rank in the column, 1 = best in the metric's direction, ties share the better rank; "
            f"mean rank over: {', '.join(chosen) or 'none'}.")


def interval_sentence(intervals: Sequence[str]) -> str:
    """How the ± intervals of a leaderboard were made, in one sentence."""
    where = {OVER_IMAGES: "over the scored images of the cell (one seed)",
             OVER_SEEDS: "over the seeds' scores (several seeds)"}
    parts = [where.get(i, i) for i in intervals] or ["none"]
    return (f"± is half the width of a {LEVEL:.0%} percentile bootstrap interval of the mean "
            f"({RESAMPLES} resamples, seed {BOOTSTRAP_SEED}) {' and '.join(parts)}; the CSVs give both "
            "ends (`*_ci_low`, `*_ci_high`). Accuracy has an interval only over several seeds.")
