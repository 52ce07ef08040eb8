"""``provenance.json``: what the cells were computed with (read from their records), the commits and the library versions."""
from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Sequence

from interpbench.report.stats import BOOTSTRAP_SEED, LEVEL, RESAMPLES
from interpbench.storage import git_commit, plain

LIBRARIES = ("torch", "torchvision", "timm", "captum", "quantus", "numpy", "pandas", "matplotlib",
             "hydra-core", "submitit")


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

    cells = [r.cell for r in results]
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
        explainers.setdefault(cell.get("explainer", result.explainer), []).append(cell.get("explainer_args"))
        metrics.setdefault(result.label, []).append({"metric": result.metric, "args": cell.get("metric_args")})
    return {
        "data": distinct([t.get("data") for t in trains]),
        "size": distinct([t.get("size") for t in trains]),
        "seeds": sorted({r.seed for r in results}, key=str),
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
        "cell_git_commits": sorted({str(r.git_commit) for r in results}),
        "cell_torch_versions": sorted({str(r.torch) for r in results}),
        "versions": library_versions(),
        "cells_config": cell_config(results),
        "sweep_config": plain(config) if config else None,
        "notes": notes,
        "intervals": {"level": LEVEL, "resamples": RESAMPLES, "seed": BOOTSTRAP_SEED,
                      "method": "percentile bootstrap of the mean"},
    }
