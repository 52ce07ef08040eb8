"""``leaderboard.md``: the pivoted leaderboard as a markdown table, and the notes a sweep writes under it."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import pandas as pd

from interpbench.report.tables import (
    FLAG,
    SUMMARY_COLUMNS,
    flag_lines,
    interval_sentence,
    leaderboard_entries,
    rank_sentence,
    significance_sentences,
    uses_significance,
)


def to_markdown(table: pd.DataFrame, higher_is_better: Dict[str, bool], title: str = "",
                summary: Optional[pd.DataFrame] = None, rank_metrics: Optional[Sequence[str]] = None) -> str:
    """A markdown leaderboard: ``mean ± half-width (significance rank)`` per metric, the best mean
    of each column and every row tied with it (not significantly worse) in bold, each header with
    its direction, flagged values marked ⚠n with footnotes; under it the legend: how the ± were
    made, how the bold rows and the ranks were decided, and the flags."""
    summary = summary if summary is not None else pd.DataFrame(columns=SUMMARY_COLUMNS)
    columns, headers, rows, _ = leaderboard_entries(table, higher_is_better, summary)
    lines = [f"# {title}", ""] if title else []
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---" if c in ("model", "explainer") else "---:" for c in columns) + "|")
    for entries in rows:
        cells = []
        for entry in entries:
            text = entry.text
            if entry.best or entry.tied:
                number, _, rest = text.partition(" ")
                text = f"**{number}**" + (f" {rest}" if rest else "")
            if entry.footnote:
                text += f" {FLAG}{entry.footnote}"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    intervals = sorted(set(summary["interval"])) if len(summary) else []
    labels = columns[3:-1]
    lines += ["", interval_sentence(intervals)]
    lines += [line for sentence in significance_sentences(summary) for line in ("", sentence)]
    lines += ["", rank_sentence(labels, rank_metrics, uses_significance(table, labels))]
    flagged = flag_lines(summary)
    if flagged:
        lines.append("")
        lines += [line + "  " for line in flagged]
    return "\n".join(lines) + "\n"


def sweep_notes(config: Dict[str, Any], commit: str) -> str:
    """The notes the sweep writes under its leaderboard, from its stored config."""
    profile = config.get("profile") or {}
    evaluation = profile.get("eval") or {}
    return (f"Profile `{profile.get('name')}`, seeds {list(config.get('seeds') or [])}, "
            f"{evaluation.get('num_images')} test images per cell (seeded sample), explaining the "
            f"{evaluation.get('target')} class (average drop, gain and increase explain the class their "
            f"`target` argument names, the true label by default); accuracy is top-1 on the whole test "
            f"set. Commit `{commit}`.")
