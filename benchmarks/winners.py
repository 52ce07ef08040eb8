"""Which explainer wins each metric on each model, from a results folder's ``cells.json``.

    python benchmarks/winners.py results/cifar10_pretrained/main/cifar10/cells.json

Prints a markdown table: per model (row) and metric label (column), the explainer with the best
mean in the metric's direction. ``~`` marks a win that is not significant against the runner-up on
the same model: a two-sided Wilcoxon signed-rank test of the per-image differences (the cells of a
sweep score the same seeded images), Holm's correction over all the table's cells, alpha = 0.05.
"""
from __future__ import annotations

import argparse
import json
from typing import Dict, List, Tuple

import numpy as np

from interpbench.core import CellResult
from interpbench.report.stats import holm, wilcoxon_p

ALPHA = 0.05


def winners(cells: List[CellResult]) -> Tuple[List[str], Dict[str, Dict[str, str]]]:
    """``(metric labels, {model: {label: explainer, with "~" when not significant}})``."""
    scores = {}
    for cell in cells:
        values = np.array([np.nan if v is None else v for v in cell.per_image], dtype=float)
        scores[(cell.model, cell.label, cell.explainer_label)] = (values, cell.higher_is_better)
    tests = []
    for model, label in sorted({(m, lab) for m, lab, _ in scores}):
        rows = [(e, v, better) for (m, lab, e), (v, better) in scores.items() if m == model and lab == label]
        higher = rows[0][2]
        rows.sort(key=lambda row: np.nanmean(row[1]), reverse=higher)
        p = wilcoxon_p(rows[0][1] - rows[1][1]) if len(rows) > 1 else 0.0
        tests.append((model, label, rows[0][0], p))
    table: Dict[str, Dict[str, str]] = {}
    for (model, label, explainer, _), adjusted in zip(tests, holm([t[3] for t in tests])):
        table.setdefault(model, {})[label] = explainer + ("" if adjusted < ALPHA else "~")
    return sorted({lab for _, lab, _ in scores}), table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", help="a results folder's cells.json")
    args = parser.parse_args()
    cells = [CellResult.from_json(obj) for obj in json.load(open(args.cells))]
    labels, table = winners(cells)
    print("| model | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for model in sorted(table):
        print(f"| {model} | " + " | ".join(table[model].get(lab, "") for lab in labels) + " |")


if __name__ == "__main__":
    main()
