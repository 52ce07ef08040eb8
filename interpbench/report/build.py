"""Rebuild reports from stored cell results, without rerunning anything.

    python runners/report.py <sweep folder | results folder | store> [--results-dir DIR] [--store DIR]
                             [--export-maps DIR]

- a sweep folder (``<store>/sweeps/<id>/``, with ``sweep.json``): the sweep's cells, read from its
  store, written to ``<results_dir>/<data>/`` (the sweep's ``results_dir``, relative to the
  current directory, unless ``--results-dir`` is given), with the sweep's config;
- a results folder (with ``cells.json``, as every report writes) or a folder of them
  (``results/``): each rebuilt from its ``cells.json`` and ``provenance.json`` alone, in place, or
  under ``--results-dir`` when it is given (``<results-dir>/<folder's name>``);
- a store (with ``cells/``): every cell in it (for one (data, model, explainer, metric, seed),
  the newest file), written to ``<results-dir>/<data>/`` (default ``results``).

Each report: ``leaderboard.{csv,md}``, ``leaderboard_tidy.csv``, ``cells.{csv,json}``,
``provenance.json``, the figures (PNG and SVG) and ``report.html`` (see :mod:`interpbench.report.write`).
The saliency grid and FA-CNN's morphing figure are drawn from the figure inputs stored beside the
cells (``<store>/figure_inputs/``, copied into ``<results>/<data>/figure_inputs/``; the store is the
sweep's, the one given, ``--store``, or ``$INTERPBENCH_HOME`` / ``~/.cache/interpbench``); without
them they are skipped with a printed note. ``--export-maps DIR`` also writes the saliency maps of
every reported cell, with the ids of the test images they explain, as one ``.npz`` per cell
(:mod:`interpbench.report.export`; read from the same store, where a results folder has no copy of
them). No model, dataset or explainer is loaded, nothing is downloaded.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from interpbench.core import CellResult, read_cell_result
from interpbench.report.export import ExportError, map_contents
from interpbench.report.markdown import sweep_notes
from interpbench.report.write import write_leaderboard, write_report
from interpbench.storage import atomic_write_bytes, read_json, work_dir


class ReportError(ValueError):
    """A path or option the report cannot use; the message is one line."""


def newest_cells(paths: Sequence[Path]) -> List[CellResult]:
    """Cell results, one per (data, model, explainer, metric label, seed): the newest file."""
    chosen: Dict[tuple, tuple] = {}
    for path in paths:
        result = read_cell_result(path)
        identity = (result.data, result.model, result.explainer_label, result.label, result.seed)
        stamp = path.stat().st_mtime_ns
        if identity not in chosen or stamp > chosen[identity][0]:
            chosen[identity] = (stamp, result)
    return [result for _, result in chosen.values()]


def report_sweep(folder: Path, results_dir: Optional[str], store: Optional[str], figures: bool,
                 rank_metrics: Optional[List[str]], redraw: bool = False) -> Dict[str, Path]:
    sweep = read_json(folder / "sweep.json")
    cell_store = folder.resolve().parent.parent
    names = list((sweep.get("cells") or {}).values())
    present = [cell_store / "cells" / name for name in names if (cell_store / "cells" / name).exists()]
    if not present:
        raise ReportError(f"none of the {len(names)} cells of sweep {folder} is in {cell_store / 'cells'}")
    if len(present) < len(names):
        print(f"note: {len(names) - len(present)} of {len(names)} cells of this sweep are missing; "
              "reporting the others")
    config = sweep.get("config") or {}
    target = Path(results_dir or config.get("results_dir") or "results")
    if not target.is_absolute():
        target = Path(os.getcwd()) / target
    results = [read_cell_result(path) for path in present]
    return write_leaderboard(results, target, notes=sweep_notes(config, sweep.get("git_commit", "unknown")),
                             store=Path(store) if store else cell_store, config=config, figures=figures,
                             rank_metrics=rank_metrics, redraw=redraw)


def report_results_folder(folder: Path, store: Optional[str], figures: bool,
                          rank_metrics: Optional[List[str]], redraw: bool = False,
                          results_dir: Optional[Path] = None) -> Dict[str, Path]:
    """Rebuild a results folder's report in place, or, with ``results_dir``, in
    ``<results_dir>/<folder's name>`` (the figure inputs read from the folder)."""
    records = read_json(folder / "cells.json")
    if not isinstance(records, list):
        raise ReportError(f"{folder / 'cells.json'}: not a list of cell results")
    results = [CellResult.from_json(record, source=f"{folder / 'cells.json'} item {index}")
               for index, record in enumerate(records)]
    if not results:
        raise ReportError(f"{folder / 'cells.json'} holds no cell results")
    info = read_json(folder / "provenance.json") if (folder / "provenance.json").exists() else {}
    target = folder if results_dir is None else Path(results_dir) / folder.name
    if store is None and target.resolve() != folder.resolve():
        store = str(folder)  # its figure_inputs/ travel with the report
    files = write_report(results, target, notes=info.get("notes") or "", store=Path(store) if store else None,
                         config=info.get("sweep_config"), figures=figures, rank_metrics=rank_metrics,
                         redraw=redraw)
    return {f"{folder.name}/{name}": path for name, path in files.items()}


def report_store(folder: Path, results_dir: Optional[str], store: Optional[str], figures: bool,
                 rank_metrics: Optional[List[str]], redraw: bool = False) -> Dict[str, Path]:
    paths = sorted((folder / "cells").glob("*.json"))
    if not paths:
        raise ReportError(f"store {folder} has no cell results under {folder / 'cells'}")
    results = newest_cells(paths)
    if len(results) < len(paths):
        print(f"note: {len(paths) - len(results)} older cell files for the same model, explainer, metric and "
              "seed left out (the newest is reported)")
    return write_leaderboard(results, Path(results_dir or "results"), store=Path(store) if store else folder,
                             figures=figures, rank_metrics=rank_metrics, redraw=redraw)


def build(path: str, results_dir: Optional[str] = None, store: Optional[str] = None, figures: bool = True,
          rank_metrics: Optional[List[str]] = None, redraw: bool = False) -> Dict[str, Path]:
    """Rebuild the report(s) of ``path``; returns the files written (name -> path)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ReportError(f"{path} is not a folder; give a sweep folder (with sweep.json), a results "
                          "folder (with cells.json) or a store (with cells/)")
    if (folder / "sweep.json").exists():
        return report_sweep(folder, results_dir, store, figures, rank_metrics, redraw)
    if (folder / "cells.json").exists():
        return report_results_folder(folder, store, figures, rank_metrics, redraw,
                                     Path(results_dir) if results_dir else None)
    if (folder / "cells").is_dir():
        return report_store(folder, results_dir, store, figures, rank_metrics, redraw)
    nested = sorted(p.parent for p in folder.rglob("cells.json"))
    if nested:
        written: Dict[str, Path] = {}
        for inner in nested:
            prefix = inner.relative_to(folder).parent
            files = report_results_folder(inner, store, figures, rank_metrics, redraw,
                                          Path(results_dir) / prefix if results_dir else None)
            written.update({str(prefix / name): p for name, p in files.items()})
        return written
    raise ReportError(f"{path} holds no sweep.json, cells.json or cells/; give a sweep folder "
                      "(<store>/sweeps/<id>), a results folder (results/<data>) or a store")


def export_path(path: str, out_dir: str, store: Optional[str] = None) -> List[Path]:
    """Export the maps of the cells the report of ``path`` shows (``interpbench report`` reads the same
    paths): a sweep folder's cells from its store; a results folder's (``cells.json``, or a folder of
    them) from ``store``, else the work directory (``$INTERPBENCH_HOME`` or ``~/.cache/interpbench``);
    a store's newest cell per (data, model, explainer, metric, seed) from itself. ``store`` (``--store``)
    overrides where the maps are read."""
    folder = Path(path).expanduser()
    given = Path(store).expanduser() if store else None
    if (folder / "sweep.json").exists():
        cell_store = folder.resolve().parent.parent
        names = list((read_json(folder / "sweep.json").get("cells") or {}).values())
        results = [read_cell_result(cell_store / "cells" / name) for name in names
                   if (cell_store / "cells" / name).exists()]
        groups = [(results, given or cell_store)]
    elif (folder / "cells.json").exists() or (folder.is_dir() and not (folder / "cells").is_dir()):
        inner = [folder] if (folder / "cells.json").exists() else sorted(p.parent for p in folder.rglob("cells.json"))
        groups = []
        for results_folder in inner:
            records = read_json(results_folder / "cells.json")
            if not isinstance(records, list):
                raise ReportError(f"{results_folder / 'cells.json'}: not a list of cell results")
            groups.append(([CellResult.from_json(record, source=f"{results_folder / 'cells.json'} item {index}")
                            for index, record in enumerate(records)], given or work_dir()))
    elif (folder / "cells").is_dir():
        groups = [(newest_cells(sorted((folder / "cells").glob("*.json"))), given or folder)]
    else:
        raise ReportError(f"{path} is not a folder; give a sweep folder (with sweep.json), a results "
                          "folder (with cells.json) or a store (with cells/)")
    if not any(results for results, _ in groups):
        raise ExportError(f"{path}: no cell results to export maps of")
    contents: Dict[str, bytes] = {}
    for results, cell_store in groups:  # all read and checked before the first file is written
        contents.update(map_contents(results, cell_store))
    return [atomic_write_bytes(Path(out_dir).expanduser() / name, data) for name, data in contents.items()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="interpbench report",
        description="Rebuild leaderboards, figures and report.html from stored cell results.")
    parser.add_argument("path", help="a sweep folder (<store>/sweeps/<id>), a results folder (results/<data> "
                                     "or results/) or a store (with cells/)")
    parser.add_argument("--results-dir", help="for a sweep folder or a store: write to <results-dir>/<data>/ "
                                              "(default: the sweep's results_dir, else results)")
    parser.add_argument("--store", help="where the saliency grid and morphing figure find their stored inputs "
                                        "(<store>/figure_inputs) when the results folder has no copy, and "
                                        "where --export-maps reads the maps (<store>/saliency) (default: "
                                        "the sweep's store, the store given, else $INTERPBENCH_HOME or "
                                        "~/.cache/interpbench)")
    parser.add_argument("--rank-metrics", help="comma-separated metric columns the mean rank averages "
                                               "(default: all)")
    parser.add_argument("--no-figures", action="store_true", help="tables and report.html only")
    parser.add_argument("--redraw", action="store_true", help="draw every figure again, even those whose "
                                                              "inputs are unchanged (figures.json)")
    parser.add_argument("--export-maps", metavar="DIR", help="also write each reported cell's saliency maps, "
                                                             "image ids and settings to "
                                                             "DIR/<model>__<explainer>__<metric>-<key>.npz")
    args = parser.parse_args(argv)
    rank_metrics = [m.strip() for m in args.rank_metrics.split(",") if m.strip()] if args.rank_metrics else None
    try:
        written = build(args.path, args.results_dir, args.store or None, not args.no_figures, rank_metrics,
                        args.redraw)
        exported = export_path(args.path, args.export_maps, args.store or None) if args.export_maps else []
    except (ReportError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, path in written.items():
        if name.endswith("leaderboard.md"):
            print("\n" + path.read_text())
    folders = sorted({str(path.parent) for path in written.values()})
    print(f"written: {len(written)} files in {', '.join(folders)}")
    if args.export_maps:
        print(f"exported the maps of {len(exported)} cells to {args.export_maps}")
    for name, path in written.items():
        if name.endswith("report.html"):
            print(f"report: {path}")
    return 0
