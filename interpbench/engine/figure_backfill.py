"""Figure inputs for cells computed before they were stored: the saliency grid's and FA-CNN
morphing figure's inputs (:mod:`interpbench.engine.figure_inputs`) of every explained group of a
store or a sweep that has none, from the checkpoints and the data in the store. Never trains,
computes no cell::

    python -m interpbench.engine.figure_backfill <store | sweep folder> [--device cpu] [--plugin FILE ...]

then rebuild the report (``python runners/report.py <sweep folder | store>``) to draw them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from interpbench.core import Cell, CellResult, read_cell_result
from interpbench.data import load_dataset
from interpbench.engine.evaluate import evaluation_images
from interpbench.engine.figure_inputs import store_figure_inputs
from interpbench.engine.train import load_trained
from interpbench.plugins import PluginError, load_plugins
from interpbench.report.inputs import inputs_path
from interpbench.storage import plain, read_json, using_store


def backfill(results: Sequence[CellResult], store: Path, device: str = "cpu") -> Tuple[List[Path], List[str]]:
    """Write the missing figure inputs of ``results``' explained groups from the checkpoints in
    ``store`` (never trains, computes no cell). Returns ``(written, problems)``."""
    store = Path(store)
    groups: Dict[Path, Cell] = {}
    for result in results:
        if result.cell and not inputs_path(store, result.cell).exists():
            groups.setdefault(inputs_path(store, result.cell), Cell.from_json(result.cell))
    written: List[Path] = []
    problems: List[str] = []
    datasets: Dict[str, Any] = {}
    models: Dict[str, Any] = {}
    for cell in sorted(groups.values(), key=lambda c: (c.train.model, c.explainer, c.key())):
        name = f"{cell.train.model}/{cell.explainer}"
        try:
            data_key = str(plain(cell.train.data))
            if data_key not in datasets:
                with using_store(store):  # the store's decoded data (decoded there if missing)
                    datasets[data_key] = load_dataset(cell.train.data)
            dataset = datasets[data_key]
            if cell.train.key() not in models:
                if not (cell.train.folder(store) / "record.json").exists():
                    raise FileNotFoundError(f"no checkpoint of {cell.train.model} at {cell.train.folder(store)}")
                models[cell.train.key()] = load_trained(cell.train, store, dataset, device=device)[0]
            images = evaluation_images(dataset, cell.num_images, cell.eval_seed)
            path = store_figure_inputs(cell, models[cell.train.key()], images, dataset, store)
            if path is None:
                problems.append(f"{name}: see the warning above")
            else:
                written.append(path)
        except Exception as error:
            problems.append(f"{name}: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
    return written, problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m interpbench.engine.figure_backfill",
        description="Store the figure inputs (saliency grid, FA-CNN morphing) of cells computed before they "
                    "were stored, from the checkpoints and data in the store; computes no cell.")
    parser.add_argument("path", help="a store (with cells/) or a sweep folder (<store>/sweeps/<id>)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE",
                        help="a plugin .py file that registers models of the cells (the sweep's plugins=[...]); "
                             "repeat for several; the entry points of the group interpbench.plugins load anyway")
    args = parser.parse_args(argv)
    try:
        load_plugins(args.plugin)
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    folder = Path(args.path).expanduser()
    if (folder / "sweep.json").exists():
        store = folder.resolve().parent.parent
        names = list((read_json(folder / "sweep.json").get("cells") or {}).values())
        paths = [store / "cells" / name for name in names if (store / "cells" / name).exists()]
    elif (folder / "cells").is_dir():
        store, paths = folder, sorted((folder / "cells").glob("*.json"))
    else:
        print(f"error: {args.path} is neither a store (with cells/) nor a sweep folder (with sweep.json)",
              file=sys.stderr)
        return 2
    written, problems = backfill([read_cell_result(path) for path in paths], store, args.device)
    for problem in problems:
        print(f"not written: {problem}", file=sys.stderr)
    print(f"{len(written)} figure-inputs files written under {store / 'figure_inputs'}; "
          "rebuild the report (python runners/report.py ...) to draw them")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
