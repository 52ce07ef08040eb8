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

Beside the tables: ``cells.json`` (every cell result, so ``runners/report.py`` rebuilds the
report without the store), ``provenance.json`` (the config read from the cells, the git commits,
the library versions), the figures (``runners/figures.py``) and ``report.html``.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from bench.storage import atomic_write_text, git_commit, plain

TIDY_COLUMNS = ["data", "size", "model", "explainer", "metric", "label", "seed", "score", "ci_low",
                "ci_high", "higher_is_better", "flag", "test_accuracy", "num_images", "key", "git_commit"]
SUMMARY_COLUMNS = ["data", "model", "explainer", "metric", "label", "higher_is_better", "seeds",
                   "num_images", "mean", "ci_low", "ci_high", "interval", "rank", "flag"]
RESAMPLES = 1000
LEVEL = 0.95
BOOTSTRAP_SEED = 0
OVER_IMAGES = "bootstrap over images"
OVER_SEEDS = "bootstrap over seeds"
LIBRARIES = ("torch", "torchvision", "timm", "captum", "quantus", "numpy", "pandas", "matplotlib",
             "hydra-core", "submitit")
FLAG = "⚠"


# --- intervals and ranks -------------------------------------------------------------------
def bootstrap_interval(values: Iterable[Optional[float]], resamples: int = RESAMPLES, level: float = LEVEL,
                       seed: int = BOOTSTRAP_SEED) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (``None``/NaN dropped).

    ``resamples`` samples of ``n`` indices drawn with replacement by ``numpy.random.default_rng(seed)``
    (one ``integers(0, n, (resamples, n))`` draw), the mean of each, then the ``(1 - level) / 2``
    and ``(1 + level) / 2`` percentiles (numpy's linear interpolation). One value gives a zero
    width interval; none gives ``(nan, nan)``.
    """
    if not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level!r}")
    data = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    data = data[~np.isnan(data)]
    if data.size == 0:
        return float("nan"), float("nan")
    if data.size == 1 or np.all(data == data[0]):
        return float(data[0]), float(data[0])
    indices = np.random.default_rng(seed).integers(0, data.size, size=(resamples, data.size))
    means = data[indices].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def rank_column(values: pd.Series, higher_is_better: bool) -> pd.Series:
    """1 = best in the metric's direction; ties share the better rank; NaN stays unranked."""
    return values.rank(method="min", ascending=not higher_is_better)


# --- tables --------------------------------------------------------------------------------
def explainer_label(result: Dict[str, Any]) -> str:
    """The explainer's name, plus any argument that differs from its registered default."""
    name = result.get("explainer", "?")
    args = plain(((result.get("cell") or {}).get("explainer_args")) or {})
    try:
        from explainers import EXPLAINERS

        defaults = plain(EXPLAINERS.defaults(name))
    except Exception:  # an explainer this checkout does not have: show no arguments
        return name
    changed = {k: v for k, v in args.items() if k in defaults and defaults[k] != v}
    if not changed:
        return name
    return f"{name}({', '.join(f'{k}={v}' for k, v in sorted(changed.items()))})"


def tidy_table(results: Iterable[Dict[str, Any]]) -> pd.DataFrame:
    """One row per cell result, with the cell's bootstrap interval over its images."""
    rows = []
    for result in results:
        row = {column: result.get(column) for column in TIDY_COLUMNS}
        row["explainer"] = explainer_label(result)
        per_image = result.get("per_image")
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


# --- markdown ------------------------------------------------------------------------------
def decimals(values: Iterable[float]) -> int:
    """Decimal places for a column: 4 below 10, then one fewer per digit before the point (>= 1)."""
    finite = [abs(v) for v in values if v is not None and v == v and math.isfinite(v)]
    if not finite or max(finite) < 10:
        return 4
    digits = int(math.floor(math.log10(max(finite)))) + 1
    return max(1, 5 - digits)


def half_width(low: float, high: float) -> float:
    return (high - low) / 2.0


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


def to_markdown(table: pd.DataFrame, higher_is_better: Dict[str, bool], title: str = "",
                summary: Optional[pd.DataFrame] = None, rank_metrics: Optional[Sequence[str]] = None) -> str:
    """A markdown leaderboard: ``mean ± half-width (rank)`` per metric, the best mean of each
    column in bold, each header with its direction, flagged values marked ⚠n with footnotes."""
    summary = summary if summary is not None else pd.DataFrame(columns=SUMMARY_COLUMNS)
    columns, headers, rows, _ = leaderboard_entries(table, higher_is_better, summary)
    lines = [f"# {title}", ""] if title else []
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---" if c in ("model", "explainer") else "---:" for c in columns) + "|")
    for entries in rows:
        cells = []
        for entry in entries:
            text = entry.text
            if entry.best:
                number, _, rest = text.partition(" ")
                text = f"**{number}**" + (f" {rest}" if rest else "")
            if entry.footnote:
                text += f" {FLAG}{entry.footnote}"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    intervals = sorted(set(summary["interval"])) if len(summary) else []
    lines += ["", interval_sentence(intervals), "",
              rank_sentence([c for c in columns[3:-1]], rank_metrics)]
    flagged = flag_lines(summary)
    if flagged:
        lines.append("")
        lines += [line + "  " for line in flagged]
    return "\n".join(lines) + "\n"


def interval_sentence(intervals: Sequence[str]) -> str:
    """How the ± intervals of a leaderboard were made, in one sentence."""
    where = {OVER_IMAGES: "over the scored images of the cell (one seed)",
             OVER_SEEDS: "over the seeds' scores (several seeds)"}
    parts = [where.get(i, i) for i in intervals] or ["none"]
    return (f"± is half the width of a {LEVEL:.0%} percentile bootstrap interval of the mean "
            f"({RESAMPLES} resamples, seed {BOOTSTRAP_SEED}) {' and '.join(parts)}; the CSVs give both "
            "ends (`*_ci_low`, `*_ci_high`). Accuracy has an interval only over several seeds.")


def sweep_notes(config: Dict[str, Any], commit: str) -> str:
    """The notes the sweep writes under its leaderboard, from its stored config."""
    profile = config.get("profile") or {}
    evaluation = profile.get("eval") or {}
    return (f"Profile `{profile.get('name')}`, seeds {list(config.get('seeds') or [])}, "
            f"{evaluation.get('num_images')} test images per cell (seeded sample), explaining the "
            f"{evaluation.get('target')} class; accuracy is top-1 on the whole test set. Commit `{commit}`.")


# --- provenance ----------------------------------------------------------------------------
def library_versions() -> Dict[str, str]:
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cell_config(results: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """What the cells were computed with, read from their identities (distinct values only)."""
    def distinct(values):
        out = []
        for value in values:
            if value not in out:
                out.append(value)
        return out[0] if len(out) == 1 else out

    cells = [r.get("cell") or {} for r in results]
    trains = [c.get("train") or {} for c in cells]
    by_model: Dict[str, List[Any]] = {}
    for train in trains:
        entry = {k: train.get(k) for k in ("recipe", "model_args", "size")}
        if train.get("parent"):
            entry["parent"] = {k: train["parent"].get(k) for k in ("model", "recipe", "model_args")}
        by_model.setdefault(train.get("model", "?"), []).append(entry)
    explainers: Dict[str, List[Any]] = {}
    metrics: Dict[str, List[Any]] = {}
    for cell, result in zip(cells, results):
        explainers.setdefault(cell.get("explainer", result.get("explainer")), []).append(cell.get("explainer_args"))
        metrics.setdefault(result.get("label"), []).append(
            {"metric": result.get("metric"), "args": cell.get("metric_args")})
    return {
        "data": distinct([t.get("data") for t in trains]),
        "size": distinct([t.get("size") for t in trains]),
        "seeds": sorted({r.get("seed") for r in results}, key=str),
        "num_images": distinct([c.get("num_images") for c in cells]),
        "target": distinct([c.get("target") for c in cells]),
        "eval_seed": distinct([c.get("eval_seed") for c in cells]),
        "explainers": {k: distinct(v) for k, v in sorted(explainers.items(), key=lambda kv: str(kv[0]))},
        "metrics": {k: distinct(v) for k, v in sorted(metrics.items(), key=lambda kv: str(kv[0]))},
        "models": {k: distinct(v) for k, v in sorted(by_model.items())},
    }


def provenance(results: Sequence[Dict[str, Any]], notes: str = "", config: Optional[Dict[str, Any]] = None
               ) -> Dict[str, Any]:
    return {
        "report_git_commit": git_commit(),
        "cell_git_commits": sorted({str(r.get("git_commit")) for r in results}),
        "cell_torch_versions": sorted({str(r.get("torch")) for r in results}),
        "versions": library_versions(),
        "cells_config": cell_config(results),
        "sweep_config": plain(config) if config else None,
        "notes": notes,
        "intervals": {"level": LEVEL, "resamples": RESAMPLES, "seed": BOOTSTRAP_SEED,
                      "method": "percentile bootstrap of the mean"},
    }


# --- writing -------------------------------------------------------------------------------
def write_report(results: List[Dict[str, Any]], folder: Path, notes: str = "", store: Optional[Path] = None,
                 config: Optional[Dict[str, Any]] = None, figures: bool = True,
                 rank_metrics: Optional[Sequence[str]] = None, redraw: bool = False, log=print) -> Dict[str, Path]:
    """Every file of one dataset's report in ``folder``; returns file name -> path. ``redraw``:
    draw every figure again even where ``figures.json`` says its inputs are unchanged."""
    from runners.figures import write_figures
    from runners.html_report import write_html

    folder = Path(folder)
    tidy = tidy_table(results)
    summary = summary_table(tidy)
    table = pivot(tidy, rank_metrics, summary)
    data_name = str(tidy["data"].iloc[0]) if len(tidy) else "?"
    markdown = to_markdown(table, directions(tidy), title=f"Leaderboard: {data_name}", summary=summary,
                           rank_metrics=rank_metrics)
    info = provenance(results, notes, config)
    commits = ", ".join(f"`{c}`" for c in info["cell_git_commits"])
    markdown += (f"\nCells computed at commit {commits}; report built at `{info['report_git_commit']}`. "
                 + "Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".\n")
    if notes:
        markdown += "\n" + notes.strip() + "\n"
    written: Dict[str, Path] = {}
    ordered = sorted(results, key=lambda r: (str(r.get("model")), str(r.get("explainer")), str(r.get("label")),
                                             str(r.get("seed")), str(r.get("key"))))
    written["leaderboard.csv"] = atomic_write_text(folder / "leaderboard.csv", table.to_csv(index=False))
    written["leaderboard_tidy.csv"] = atomic_write_text(folder / "leaderboard_tidy.csv", summary.to_csv(index=False))
    written["leaderboard.md"] = atomic_write_text(folder / "leaderboard.md", markdown)
    written["cells.csv"] = atomic_write_text(folder / "cells.csv", tidy.to_csv(index=False))
    written["cells.json"] = atomic_write_text(folder / "cells.json", json.dumps(ordered, sort_keys=True) + "\n")
    written["provenance.json"] = atomic_write_text(
        folder / "provenance.json", json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    drawn: List[Any] = []
    skipped: List[str] = []
    if figures:
        drawn, skipped = write_figures(results, folder, store=store, reuse=not redraw, tables=(tidy, table))
        for note in skipped:
            log(f"figure skipped: {note}")
        for figure in drawn:
            for path in figure.files.values():
                written[path.name] = path
        written["figures.json"] = folder / "figures.json"
    written["report.html"] = write_html(folder, data_name, table, summary, tidy, info, drawn, skipped,
                                        rank_metrics=rank_metrics)
    return written


def write_leaderboard(results: List[Dict[str, Any]], results_dir: Path, notes: str = "",
                      store: Optional[Path] = None, config: Optional[Dict[str, Any]] = None,
                      figures: bool = True, rank_metrics: Optional[Sequence[str]] = None,
                      redraw: bool = False) -> Dict[str, Path]:
    """Write each dataset's report under ``<results_dir>/<data>/``: ``leaderboard.{csv,md}``,
    ``leaderboard_tidy.csv``, ``cells.{csv,json}``, ``provenance.json``, the figures (PNG and SVG)
    and ``report.html`` (``figures.json`` records what each figure was drawn from, so an unchanged
    figure is reused unless ``redraw``). ``store``: where checkpoints and saliency maps are read for the figures
    that need them (default: the work directory); those figures are skipped with a printed note
    when it lacks them. Returns ``"<data>/<file>" -> path``."""
    written: Dict[str, Path] = {}
    by_data: Dict[str, List[Dict[str, Any]]] = {}
    for result in results:
        by_data.setdefault(str(result.get("data")), []).append(result)
    for data_name, part in sorted(by_data.items()):
        files = write_report(part, Path(results_dir) / data_name, notes=notes, store=store, config=config,
                             figures=figures, rank_metrics=rank_metrics, redraw=redraw)
        written.update({f"{data_name}/{name}": path for name, path in files.items()})
    return written
