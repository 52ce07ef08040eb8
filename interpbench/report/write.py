"""Writing a report: every table, the figures and ``report.html`` of one dataset's cell results."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from interpbench.core import CellResult
from interpbench.report.figures import write_figures
from interpbench.report.html import write_html
from interpbench.report.markdown import to_markdown
from interpbench.report.provenance import provenance
from interpbench.report.tables import directions, pivot, settings_conflict, summary_table, tidy_table
from interpbench.storage import atomic_write_text


# --- writing -------------------------------------------------------------------------------
def write_report(results: List[CellResult], folder: Path, notes: str = "", store: Optional[Path] = None,
                 config: Optional[Dict[str, Any]] = None, figures: bool = True,
                 rank_metrics: Optional[Sequence[str]] = None, redraw: bool = False, log=print) -> Dict[str, Path]:
    """Every file of one dataset's report in ``folder``; returns file name -> path. ``redraw``:
    draw every figure again even where ``figures.json`` says its inputs are unchanged."""
    conflict = settings_conflict(results)
    if conflict:
        raise ValueError(conflict)
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
    ordered = [r.to_json() for r in sorted(results, key=lambda r: (r.model, r.explainer, r.label, str(r.seed), r.key))]
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


def write_leaderboard(results: List[CellResult], results_dir: Path, notes: str = "",
                      store: Optional[Path] = None, config: Optional[Dict[str, Any]] = None,
                      figures: bool = True, rank_metrics: Optional[Sequence[str]] = None,
                      redraw: bool = False, log=print) -> Dict[str, Path]:
    """Write each dataset's report under ``<results_dir>/<data>/``: ``leaderboard.{csv,md}``,
    ``leaderboard_tidy.csv``, ``cells.{csv,json}``, ``provenance.json``, the figures (PNG and SVG)
    and ``report.html`` (``figures.json`` records what each figure was drawn from, so an unchanged
    figure is reused unless ``redraw``). ``store``: where the saliency grid's and morphing figure's
    stored inputs are found (``<store>/figure_inputs``, default: the work directory); they are copied
    into ``<results_dir>/<data>/figure_inputs/``, and a figure whose inputs are in neither is skipped
    with a note passed to ``log`` (default: printed). Returns ``"<data>/<file>" -> path``."""
    written: Dict[str, Path] = {}
    by_data: Dict[str, List[CellResult]] = {}
    for result in results:
        by_data.setdefault(str(result.data), []).append(result)
    for data_name, part in sorted(by_data.items()):
        files = write_report(part, Path(results_dir) / data_name, notes=notes, store=store, config=config,
                             figures=figures, rank_metrics=rank_metrics, redraw=redraw, log=log)
        written.update({f"{data_name}/{name}": path for name, path in files.items()})
    return written
