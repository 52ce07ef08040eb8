"""Leaderboards: cell results -> a tidy table -> pivoted CSV and markdown.

The tidy table has one row per cell (model x explainer x metric x data x seed) with numbers kept
as numbers. The pivoted leaderboard has one row per model and explainer: the model's test
accuracy, then one column per metric (its mean over seeds), with the metric's direction in the
markdown header and the best value of each column in bold.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List

import pandas as pd

from bench.storage import atomic_write_text

TIDY_COLUMNS = ["data", "size", "model", "explainer", "metric", "label", "seed", "score",
                "higher_is_better", "test_accuracy", "num_images", "key", "git_commit"]


def tidy_table(results: Iterable[Dict[str, Any]]) -> pd.DataFrame:
    """One row per cell result."""
    rows = [{column: result.get(column) for column in TIDY_COLUMNS} for result in results]
    frame = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    return frame.sort_values(["data", "model", "explainer", "label", "seed"], ignore_index=True)


def pivot(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, explainer): accuracy and each metric's mean score over seeds."""
    scores = tidy.pivot_table(index=["model", "explainer"], columns="label", values="score", aggfunc="mean")
    accuracy = tidy.groupby(["model", "explainer"])["test_accuracy"].mean().rename("accuracy")
    table = pd.concat([accuracy, scores], axis=1).reset_index()
    table.columns.name = None
    return table


def directions(tidy: pd.DataFrame) -> Dict[str, bool]:
    """Metric label -> higher is better."""
    return {row.label: bool(row.higher_is_better) for row in tidy.drop_duplicates("label").itertuples()}


def to_markdown(table: pd.DataFrame, higher_is_better: Dict[str, bool], title: str = "") -> str:
    """A markdown table; each metric column names its direction and marks its best value in bold."""
    columns = list(table.columns)
    direction = dict(higher_is_better, accuracy=True)
    best = {}
    for column in columns:
        if column in direction and table[column].notna().any():
            best[column] = table[column].max() if direction[column] else table[column].min()

    def header(column: str) -> str:
        if column in higher_is_better:
            return f"{column} {'↑' if higher_is_better[column] else '↓'}"
        return f"{column} ↑" if column == "accuracy" else column

    lines = [f"# {title}", ""] if title else []
    lines.append("| " + " | ".join(header(c) for c in columns) + " |")
    numeric = {c: pd.api.types.is_numeric_dtype(table[c]) for c in columns}
    lines.append("|" + "|".join("---:" if numeric[c] else "---" for c in columns) + "|")
    for _, row in table.iterrows():
        cells = []
        for column in columns:
            value = row[column]
            if isinstance(value, float):
                text = "–" if pd.isna(value) else f"{value:.4f}"
                if column in best and not pd.isna(value) and value == best[column]:
                    text = f"**{text}**"
            else:
                text = str(value)
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(results: List[Dict[str, Any]], results_dir: Path, notes: str = "") -> Dict[str, Path]:
    """Write ``leaderboard.csv``, ``leaderboard.md``, ``cells.csv`` and curve figures per dataset."""
    from runners.figures import write_curve_figures

    tidy = tidy_table(results)
    written: Dict[str, Path] = {}
    for data_name, part in tidy.groupby("data"):
        folder = Path(results_dir) / str(data_name)
        table = pivot(part)
        markdown = to_markdown(table, directions(part), title=f"Leaderboard: {data_name}")
        if notes:
            markdown += "\n" + notes.strip() + "\n"
        written[f"{data_name}/leaderboard.csv"] = atomic_write_text(folder / "leaderboard.csv", table.to_csv(index=False))
        written[f"{data_name}/leaderboard.md"] = atomic_write_text(folder / "leaderboard.md", markdown)
        written[f"{data_name}/cells.csv"] = atomic_write_text(folder / "cells.csv", part.to_csv(index=False))
        figures = write_curve_figures([r for r in results if r.get("data") == data_name], folder)
        written.update({f"{data_name}/{path.name}": path for path in figures.values()})
    return written
