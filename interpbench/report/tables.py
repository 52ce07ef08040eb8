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
chosen metrics (all by default). ``leaderboard.md`` and the HTML report lead with each metric's
:class:`Finding` (its best row, whether the runner-up is tied with it, the accuracy its model gives
up), then show the rows by mean rank, best first (:func:`board_order`), each metric as ``mean ±
half the interval's width`` with the digits the interval supports
(:func:`interpbench.report.stats.with_interval`) and the significance rank in brackets, the best
mean of each column and every row tied with it in bold (the HTML report tints the best mean's cell
too), and a ⚠ mark with a footnote where a cell carries a flag (e.g. a failed sanity check). A
board of one metric has no mean-rank column; the markdown of a board of more than
:data:`COMPACT_ABOVE` metrics gives a compact table of ranks, then one short table per metric.
``leaderboard.csv`` keeps its rows by model and explainer.

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
    BEST,
    BOOTSTRAP_SEED,
    DEFAULT_TEST,
    EXACT_LIMIT,
    LEVEL,
    MISSING,
    RESAMPLES,
    RowScores,
    bootstrap_interval,
    check_alpha,
    check_test,
    column_standings,
    half_width,
    is_number,
    mean_rank_text,
    p_text,
    plain,
    rank_column,
    rank_text,
    with_interval,
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
    added: Dict[str, List[Any]] = {}  # joined at once: a column at a time fragments a wide frame
    for label in labels:
        for column, source in PIVOT_SUFFIXES:
            kind = bool if source == "tied_best" else float
            missing = False if source == "tied_best" else float("nan")
            added[label + column] = [
                kind(keyed.loc[(r.model, r.explainer, label), source]) if (r.model, r.explainer, label) in keyed.index
                else missing for r in table.itertuples()]
    table = pd.concat([table, pd.DataFrame(added, index=table.index)], axis=1)
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
    is ``best``, not ``tied``), its flag's footnote number and text, if any, the mean and
    interval alone (``number``) and the rank shown in brackets (``rank``)."""
    text: str
    value: Any
    best: bool = False
    footnote: Optional[int] = None
    flag: Optional[str] = None
    tied: bool = False
    number: str = ""
    rank: Any = None


@dataclass
class Board:
    """The leaderboard as shown, shared by the markdown and the HTML report: the columns (table
    column names), their headers (with the direction arrow), the rows of entries in board order
    (best mean rank first), the flag footnotes, each column's direction (True: higher is better,
    False: lower is better, None: a text column), the metric labels, the mean-rank column (None
    with a single metric, whose rank it would repeat) and whether the ranks are significance ranks."""
    columns: List[str]
    headers: List[str]
    rows: List[List[Entry]]
    footnotes: Dict[str, int]
    higher: Dict[str, Optional[bool]]
    labels: List[str]
    mean_column: Optional[str]
    significance: bool


COMPACT_ABOVE = 4  # boards with more metrics than this get a compact table of ranks (markdown)


def uses_significance(table: pd.DataFrame, labels: Sequence[str]) -> bool:
    """Whether the pivoted ``table`` has significance ranks to show (it has unless its tidy table
    came without per-image scores)."""
    return any(f"{label}_sig_rank" in table.columns and table[f"{label}_sig_rank"].notna().any()
               for label in labels)


def best_first(value: Any, higher: bool) -> Tuple[int, float]:
    """A sort key putting the best value of a column first in its direction and missing values last."""
    if not is_number(value):
        return (1, 0.0)
    return (0, -float(value) if higher else float(value))


def mean_rank_column(table: pd.DataFrame, labels: Sequence[str]) -> str:
    """``mean_sig_rank`` when the table has significance ranks, else ``mean_rank``."""
    return ("mean_sig_rank" if uses_significance(table, labels) and "mean_sig_rank" in table.columns
            else "mean_rank")


def board_order(table: pd.DataFrame, higher_is_better: Dict[str, bool]) -> List[int]:
    """Positions of ``table``'s rows in board order: by mean rank (the mean significance rank when
    there is one), ties by the first metric's mean in its direction, then by model and explainer."""
    labels = [label for label in higher_is_better if label in table.columns]
    mean_column = mean_rank_column(table, labels)
    records = table.to_dict("records")

    def key(position: int) -> Tuple[Any, ...]:
        record = records[position]
        first = best_first(record[labels[0]], higher_is_better[labels[0]]) if labels else (1, 0.0)
        return (best_first(record.get(mean_column), False), first, str(record["model"]), str(record["explainer"]))

    return sorted(range(len(records)), key=key)


def leaderboard_board(table: pd.DataFrame, higher_is_better: Dict[str, bool],
                      summary: Optional[pd.DataFrame] = None) -> Board:
    """The leaderboard as shown (:class:`Board`): rows in :func:`board_order`; a metric entry
    reads ``mean ± half-width (significance rank)`` with the digits its interval supports
    (:func:`interpbench.report.stats.with_interval`), the accuracy likewise, the last column the
    mean significance rank with one decimal (without significance columns: the ranks by mean and
    their mean); a board of one metric has no mean-rank column."""
    labels = [label for label in higher_is_better if label in table.columns]
    summary = summary if summary is not None else pd.DataFrame(columns=SUMMARY_COLUMNS)
    footnotes = flag_footnotes(summary)
    flags = {(r.model, r.explainer, r.label): r.flag for r in summary.itertuples()
             if isinstance(r.flag, str) and r.flag}
    significance = uses_significance(table, labels)
    mean_column = mean_rank_column(table, labels) if len(labels) > 1 else None
    direction: Dict[str, Optional[bool]] = dict(higher_is_better, model=None, explainer=None, accuracy=True)
    if mean_column:
        direction[mean_column] = False
    columns = ["model", "explainer", "accuracy", *labels] + ([mean_column] if mean_column else [])
    best = {}
    for column in columns[2:]:
        if table[column].notna().any():
            best[column] = table[column].max() if direction[column] else table[column].min()
    headers = ["model", "explainer"] + [
        "mean rank ↓" if c == mean_column else f"{c} {'↑' if direction[c] else '↓'}" for c in columns[2:]]
    records = table.to_dict("records")
    rows = []
    for position in board_order(table, higher_is_better):
        record = records[position]
        entries = [Entry(str(record["model"]), record["model"]), Entry(str(record["explainer"]), record["explainer"])]
        for column in columns[2:]:
            value = record[column]
            if not is_number(value):
                entries.append(Entry(MISSING, None, number=MISSING))
                continue
            if column == mean_column:
                number = mean_rank_text(value)
            else:
                low, high = record.get(f"{column}_ci_low"), record.get(f"{column}_ci_high")
                number = with_interval(value, half_width(low, high) if is_number(low) and is_number(high) else None)
            text = number
            rank = record.get(f"{column}_sig_rank") if significance else None
            if not is_number(rank):
                rank = record.get(f"{column}_rank")
            if column in labels and is_number(rank):
                text += f" ({rank_text(rank)})"
            else:
                rank = None
            is_best = bool(column in best and value == best[column])
            marked = record.get(f"{column}_tied_best")
            tied = bool(significance and column in labels and not is_best
                        and isinstance(marked, (bool, np.bool_)) and marked)
            flag = flags.get((record["model"], record["explainer"], column))
            entries.append(Entry(text, float(value), is_best, footnotes.get(flag) if flag else None, flag, tied,
                                 number, rank))
        rows.append(entries)
    return Board(columns, headers, rows, footnotes, {c: direction[c] for c in columns}, labels, mean_column,
                 significance)


# --- the headline: the best row of each metric ----------------------------------------------
@dataclass
class Finding:
    """One metric's answer: its best row (model, explainer) and its ``mean ± half-width``, the
    runner-up (the next mean in the metric's direction; None when the best is the only row with a
    score), whether the runner-up is tied with the best (None: no significance test was possible),
    the Holm-adjusted p-value of the two, how many other rows are tied with the best, and the
    accuracy of the best row's model beside the board's most accurate model (its accuracy and
    model), and the best cell's flag, if any."""
    label: str
    higher: bool
    best: Tuple[str, str]
    best_text: str
    runner: Optional[Tuple[str, str]]
    runner_text: str
    runner_tied: Optional[bool]
    runner_p: float
    others_tied: int
    accuracy: float
    top_accuracy: float
    top_model: str
    flag: Optional[str] = None

    @property
    def arrow(self) -> str:
        return "↑" if self.higher else "↓"

    def comparison(self) -> str:
        """How the best row stands against the runner-up (markdown-ish text)."""
        if self.runner is None:
            return "the only row with a score"
        runner = f"{self.runner[0]} × {self.runner[1]} ({self.runner_text}"
        if self.runner_tied is None:  # no test: ahead by the mean alone, or level with it
            return f"{'level with' if self.runner_text == self.best_text else 'ahead of'} {runner})"
        p = "not tested" if not is_number(self.runner_p) else f"p = {p_text(self.runner_p)}"
        if not self.runner_tied:
            return f"significantly better than the runner-up {runner}; {p})"
        more = f" and {self.others_tied} more row{'s' if self.others_tied > 1 else ''}" if self.others_tied else ""
        return f"tied with {runner}; {p}){more}"

    def accuracy_cost(self, short: bool = False) -> str:
        """What choosing the best row costs in accuracy against the board's most accurate model,
        in percentage points: a sentence, or ``short`` (``0.984 (−0.2 points)``)."""
        if not is_number(self.accuracy):
            return MISSING if short else "Accuracy not known"
        points = 100.0 * (self.top_accuracy - self.accuracy)
        if points <= 0:
            return (f"{plain(self.accuracy)} (most accurate)" if short
                    else f"Accuracy cost: none ({self.best[0]} is the most accurate model, {plain(self.accuracy)})")
        shown = f"{points:.1f}" if points >= 0.1 else f"{points:.2g}"
        if short:
            return f"{plain(self.accuracy)} (−{shown} points)"
        return (f"Accuracy cost: {shown} points ({plain(self.accuracy)} against {plain(self.top_accuracy)} for "
                f"{self.top_model}, the most accurate model)")

    def sentence(self) -> str:
        """The finding in markdown-ish text: ``**pixel_removal ↑**: best **coda_net × native**,
        0.929 ± 0.012, significantly better than the runner-up ... Accuracy cost: ...``."""
        flagged = f" ({FLAG} flagged: {self.flag})" if self.flag else ""
        return (f"**{self.label} {self.arrow}**: best **{self.best[0]} × {self.best[1]}**, {self.best_text}{flagged}, "
                f"{self.comparison()}. {self.accuracy_cost()}.")


def findings(table: pd.DataFrame, higher_is_better: Dict[str, bool],
             summary: Optional[pd.DataFrame] = None) -> List[Finding]:
    """Each metric's :class:`Finding`, in the board's column order. The best row is the one the
    significance tests were run against (``vs_best == "best"`` in ``summary``), else the best mean
    (ties: by model and explainer); the runner-up the next mean in the metric's direction."""
    labels = [label for label in higher_is_better if label in table.columns]
    summary = summary if summary is not None else pd.DataFrame(columns=SUMMARY_COLUMNS)
    significance = uses_significance(table, labels)
    records = table.to_dict("records")
    accuracies = [(float(r["accuracy"]), str(r["model"])) for r in records if is_number(r.get("accuracy"))]
    top_accuracy = max((a for a, _ in accuracies), default=float("nan"))
    top_model = min((m for a, m in accuracies if a == top_accuracy), default="")
    marked = {(r.model, r.explainer, r.label) for r in summary.itertuples() if r.vs_best == BEST}
    flags = {(r.model, r.explainer, r.label): r.flag for r in summary.itertuples()
             if isinstance(r.flag, str) and r.flag}
    out = []
    for label in labels:
        higher = higher_is_better[label]
        scored = sorted((r for r in records if is_number(r[label])),
                        key=lambda r: (best_first(r[label], higher), str(r["model"]), str(r["explainer"])))
        if not scored:
            continue
        best = next((r for r in scored if (r["model"], r["explainer"], label) in marked), scored[0])
        others = [r for r in scored if r is not best]
        runner = others[0] if others else None

        def shown(record: Dict[str, Any]) -> str:
            low, high = record.get(f"{label}_ci_low"), record.get(f"{label}_ci_high")
            return with_interval(record[label], half_width(low, high) if is_number(low) and is_number(high) else None)

        def tied(record: Dict[str, Any]) -> bool:
            value = record.get(f"{label}_tied_best")
            return isinstance(value, (bool, np.bool_)) and bool(value)

        out.append(Finding(
            label, higher, (str(best["model"]), str(best["explainer"])), shown(best),
            (str(runner["model"]), str(runner["explainer"])) if runner else None, shown(runner) if runner else "",
            (tied(runner) if significance else None) if runner else None,
            float(runner.get(f"{label}_p_vs_best", float("nan"))) if runner else float("nan"),
            sum(tied(r) for r in others[1:]) if significance else 0,
            float(best["accuracy"]) if is_number(best.get("accuracy")) else float("nan"), top_accuracy, top_model,
            flags.get((best["model"], best["explainer"], label))))
    return out


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
    ``significance``, where the CSVs keep the rest); a board of one metric has no mean rank column."""
    chosen = list(labels) if rank_metrics is None else list(rank_metrics)
    mean = f"; mean rank over: {', '.join(chosen) or 'none'}" if len(labels) > 1 else ""
    if not significance:
        return f"(n): rank in the column, 1 = best in the metric's direction, ties share the better rank{mean}."
    mean = f"; mean rank (of these ranks) over: {', '.join(chosen) or 'none'}" if len(labels) > 1 else ""
    return ("(n): significance rank in the column: 1 for the best mean and every row tied with it (bold), "
            f"otherwise 1 + the number of rows significantly better than this one{mean}. The CSVs keep the rank "
            "by mean alone (`<metric>_rank`, `mean_rank`) beside `<metric>_sig_rank`, `<metric>_tied_best`, "
            "`<metric>_p_vs_best` (Holm-adjusted) and `mean_sig_rank`.")


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
