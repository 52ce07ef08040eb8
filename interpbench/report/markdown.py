"""``leaderboard.md``: the pivoted leaderboard as a markdown table, and the notes a sweep writes under it."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import pandas as pd

from interpbench.report.stats import MISSING, rank_text
from interpbench.report.tables import (
    COMPACT_ABOVE,
    FLAG,
    SUMMARY_COLUMNS,
    Board,
    Entry,
    best_first,
    findings,
    flag_lines,
    interval_sentence,
    leaderboard_board,
    rank_sentence,
    significance_sentences,
)


def marked(entry: Entry, text: str) -> str:
    """``text`` of ``entry`` with its first word (the mean, or the rank) in bold when the entry is
    the column's best or tied with it, and its flag's footnote mark."""
    if entry.best or entry.tied:
        number, _, rest = text.partition(" ")
        text = f"**{number}**" + (f" {rest}" if rest else "")
    return text + (f" {FLAG}{entry.footnote}" if entry.footnote else "")


def table_lines(headers: List[str], aligned: List[bool], rows: List[List[str]]) -> List[str]:
    """A markdown table; ``aligned``: right-align the column."""
    return (["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if a else "---" for a in aligned) + "|"]
            + ["| " + " | ".join(cells) + " |" for cells in rows])


def full_table(board: Board) -> List[str]:
    """Every column of the board: ``mean ± half-width (rank)`` per metric."""
    aligned = [c not in ("model", "explainer") for c in board.columns]
    return table_lines(board.headers, aligned, [[marked(e, e.text) for e in entries] for entries in board.rows])


def compact_table(board: Board) -> List[str]:
    """The board with each metric's rank alone (accuracy and mean rank as in the full table)."""
    rows = [[marked(e, rank_text(e.rank) if c in board.labels and e.rank is not None else e.text)
             for c, e in zip(board.columns, entries)] for entries in board.rows]
    return table_lines(board.headers, [c not in ("model", "explainer") for c in board.columns], rows)


def metric_table(board: Board, label: str) -> List[str]:
    """One metric's rows, best first (by rank, then mean in the metric's direction):
    rank, model, explainer, ``mean ± half-width``."""
    column = board.columns.index(label)
    higher = bool(board.higher[label])
    scored = [entries for entries in board.rows if entries[column].value is not None]
    scored.sort(key=lambda entries: (entries[column].rank if entries[column].rank is not None else float("inf"),
                                     best_first(entries[column].value, higher), entries[0].text, entries[1].text))
    rows = [[rank_text(e[column].rank) if e[column].rank is not None else MISSING, e[0].text, e[1].text,
             marked(e[column], e[column].number)] for e in scored]
    return [f"## {board.headers[column]}", ""] + table_lines(
        ["rank", "model", "explainer", "mean ± 95 % interval"], [True, False, False, True], rows)


def to_markdown(table: pd.DataFrame, higher_is_better: Dict[str, bool], title: str = "",
                summary: Optional[pd.DataFrame] = None, rank_metrics: Optional[Sequence[str]] = None) -> str:
    """A markdown leaderboard. First each metric's finding (its best row, against the runner-up,
    and the accuracy that row's model gives up), then the table, rows by mean rank (best first):
    ``mean ± half-width (significance rank)`` per metric with the digits the interval supports,
    the best mean of each column and every row tied with it (not significantly worse) in bold,
    each header with its direction, flagged values marked ⚠n with footnotes; one metric: no
    mean-rank column. More than :data:`COMPACT_ABOVE` metrics: a compact table of ranks, then one
    short table per metric. Under it the legend: how the ± were made, how the bold rows and the
    ranks were decided, and the flags."""
    summary = summary if summary is not None else pd.DataFrame(columns=SUMMARY_COLUMNS)
    board = leaderboard_board(table, higher_is_better, summary)
    lines = [f"# {title}", ""] if title else []
    found = findings(table, higher_is_better, summary)
    if found:
        lines += [f"- {finding.sentence()}" for finding in found] + [""]
    if len(board.labels) > COMPACT_ABOVE:
        lines += ["Each metric's rank (the mean ± interval of every metric follows, one table each):", ""]
        lines += compact_table(board)
        for label in board.labels:
            lines += [""] + metric_table(board, label)
    else:
        lines += full_table(board)
    intervals = sorted(set(summary["interval"])) if len(summary) else []
    lines += ["", interval_sentence(intervals)]
    lines += [line for sentence in significance_sentences(summary) for line in ("", sentence)]
    lines += ["", rank_sentence(board.labels, rank_metrics, board.significance)]
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
            f"set{size_note(profile)}. Commit `{commit}`.")


def size_note(profile: Dict[str, Any]) -> str:
    """``; images at H x W px`` (what the planner recorded), and why when the profile reduced them."""
    size = profile.get("image_size")
    if not size or len(size) < 3:
        return ""
    text = f"; images at {size[1]} x {size[2]} px"
    asked = profile.get("image_size_asked")
    if asked:
        text += (f" (data.image_size={asked} asked; the {profile.get('name')} profile works at "
                 f"profile.max_image_size={profile.get('max_image_size')}, profile=paper keeps the size asked)")
    return text
