"""One cell of a sweep: a trained model, an explainer and a metric on the evaluation images.

A cell's result is one JSON file under ``<store>/cells/``, named by the cell's hash and written
atomically, with the cell's config and the git commit beside the scores. A cell whose file
exists is never recomputed (one that does not fit its schema is quarantined and computed again:
:mod:`interpbench.integrity`). Saliency maps are cached per (model, explainer, images) under
``<store>/saliency/``, so metrics that share them compute them once.
"""
from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from interpbench.core import TARGETS, Cell, CellResult, evaluation_indices, explainer_label_of
from interpbench.data import load_dataset
from interpbench.data.base import Dataset, to_float
from interpbench.engine.figure_inputs import store_figure_inputs
from interpbench.engine.train import load_trained, resolve_device
from interpbench.explainers import EXPLAINERS
from interpbench.integrity import cell_result, load_verified, torch_file, write_sidecar
from interpbench.launch.base import last_lines
from interpbench.metrics import METRICS
from interpbench.metrics.base import Batch
from interpbench.storage import (
    atomic_torch_save,
    atomic_write_json,
    git_commit,
    plain,
)
from interpbench.zoo.base import ZooModel


def evaluation_images(dataset: Dataset, num_images: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    """The scored test images (float, ``[0, 1]``), their labels and masks, if any."""
    split = dataset.test.subset(evaluation_indices(len(dataset.test), num_images, seed))
    out = {"x": to_float(split.images), "y": split.labels}
    if split.masks is not None:
        out["masks"] = split.masks
    return out


@torch.no_grad()
def predict(model: ZooModel, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([model(x[s : s + batch_size].to(device)).argmax(1).cpu()
                      for s in range(0, x.shape[0], batch_size)])


def explain_targets(cell: Cell, model: ZooModel, images: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The class each map explains: the predicted class (default) or the true label."""
    if cell.target not in TARGETS:
        raise ValueError(f"unknown target '{cell.target}'; valid targets: {', '.join(TARGETS)}")
    return images["y"] if cell.target == "label" else predict(model, images["x"], cell.batch_size)


def make_explainer(cell: Cell, model: ZooModel):
    explainer = EXPLAINERS.create(cell.explainer, **plain(cell.explainer_args))
    if not explainer.applies_to(model):
        raise ValueError(f"explainer '{cell.explainer}' does not apply to model '{cell.train.model}'")
    return explainer


def compute_saliency(cell: Cell, model: ZooModel, images: Dict[str, torch.Tensor], store: Path,
                     progress: bool = False, targets: Optional[torch.Tensor] = None,
                     explainer: Any = None) -> torch.Tensor:
    """The maps of ``cell``'s explained group: from the cache, else computed (with ``explainer`` when
    the caller has made it already) and cached."""
    path = cell.saliency_path(store)
    cached = load_verified(path, Path(store), torch_file)  # a corrupt cache is quarantined: computed again
    if cached is not None:
        return cached
    explainer = make_explainer(cell, model) if explainer is None else explainer
    targets = explain_targets(cell, model, images) if targets is None else targets
    saliency = explainer.explain_all(model, images["x"], targets, cell.batch_size, progress=progress)
    atomic_torch_save(saliency, path)
    write_sidecar(path)  # after it: its size and sha256
    return saliency


def run_cell(cell: Cell, store: Path, device: str = "auto", progress: bool = False,
             model: Optional[ZooModel] = None, record: Optional[Dict[str, Any]] = None,
             dataset: Optional[Dataset] = None) -> CellResult:
    """Compute ``cell`` unless its result file exists; return the result (errors raise)."""
    done = cell_result(cell, Path(store))  # None: missing, or corrupt and quarantined
    if done is not None:
        return done
    results, errors = run_cells([cell], store, device=device, progress=progress, model=model,
                                record=record, dataset=dataset)
    if errors:
        raise RuntimeError(errors[cell.key()])
    return results[cell.key()]


def run_cells(cells: List[Cell], store: Path, device: str = "auto", progress: bool = False,
              model: Optional[ZooModel] = None, record: Optional[Dict[str, Any]] = None,
              dataset: Optional[Dataset] = None) -> Tuple[Dict[str, CellResult], Dict[str, str]]:
    """Compute the cells of one trained model that have no result file yet.

    Cells that share the explained images (same explainer, images and target) are computed as a
    suite: the maps once, and per batch of images one :class:`metrics.base.Batch` that all their
    metrics read, so perturbed images that several metrics evaluate run through the model once.
    Each cell still gets its own result file. Returns ``(results by key, errors by key)``; a cell
    that raises is reported with its traceback's last lines and the others go on.
    """
    results: Dict[str, CellResult] = {}
    errors: Dict[str, str] = {}
    pending = []
    for cell in cells:
        done = cell_result(cell, Path(store))  # None: missing, or corrupt and quarantined
        if done is not None:
            results[cell.key()] = done
        else:
            pending.append(cell)
    if not pending:
        return results, errors
    specs = {cell.train.key() for cell in pending}
    if len(specs) != 1:
        raise ValueError(f"run_cells takes the cells of one trained model; got {len(specs)} models")
    dataset = dataset or load_dataset(pending[0].train.data)
    if model is None or record is None:
        model, record = load_trained(pending[0].train, store, dataset, device=device)
    torch_device = resolve_device(device)
    groups: Dict[str, List[Cell]] = {}
    for cell in pending:
        groups.setdefault(str(cell.saliency_path(store)), []).append(cell)
    for group in groups.values():
        first = group[0]
        try:
            began = time.time()
            images = evaluation_images(dataset, first.num_images, first.eval_seed)
            explainer = make_explainer(first, model)
            targets = explain_targets(first, model, images)
            saliency = compute_saliency(first, model, images, store, progress=progress, targets=targets,
                                        explainer=explainer)
            explain_seconds = time.time() - began
        except Exception:
            for cell in group:
                errors[cell.key()] = last_lines(traceback.format_exc())
            continue
        # What the report's saliency grid and FA-CNN morphing figure draw, stored beside the cells
        # (interpbench.engine.figure_inputs: its own explainer, skipped when stored, never fails a cell).
        store_figure_inputs(first, model, images, dataset, store)
        metrics: Dict[str, Any] = {}
        for cell in group:
            try:
                metric = METRICS.create(cell.metric, **plain(cell.metric_args))
                if metric.needs_masks and "masks" not in images:
                    raise ValueError(f"metric '{cell.metric}' needs ground-truth masks; dataset "
                                     f"'{plain(cell.train.data).get('name')}' has none (synthetic has)")
                metrics[cell.key()] = metric
            except Exception:
                errors[cell.key()] = last_lines(traceback.format_exc())
        outputs: Dict[str, Dict[str, List[torch.Tensor]]] = {key: {} for key in metrics}
        seconds = {key: 0.0 for key in metrics}
        for start in range(0, images["x"].shape[0], first.batch_size):
            part = slice(start, start + first.batch_size)
            batch = Batch(
                model, images["x"][part].to(torch_device), images["y"][part].to(torch_device),
                saliency[part].to(torch_device), target=targets[part].to(torch_device),
                masks=images["masks"][part].to(torch_device) if "masks" in images else None,
                explainer=explainer)
            for key, metric in list(metrics.items()):
                tick = time.time()
                try:
                    result = metric.compute(batch)
                except Exception:
                    errors[key] = last_lines(traceback.format_exc())
                    del metrics[key]
                    continue
                seconds[key] += time.time() - tick
                for name, value in result.items():
                    outputs[key].setdefault(name, []).append(value.detach().float().cpu())
        for cell in group:
            if cell.key() not in metrics:
                continue
            metric = metrics[cell.key()]
            merged = {name: torch.cat(values) for name, values in outputs[cell.key()].items()}
            result = build_cell_result(cell, metric, merged, record, seconds[cell.key()] + explain_seconds)
            atomic_write_json(cell.path(store), result.to_json())
            results[cell.key()] = result
    return results, errors


def build_cell_result(cell: Cell, metric: Any, merged: Dict[str, torch.Tensor], record: Dict[str, Any],
                seconds: float) -> CellResult:
    scores = merged["score"]
    score = float(scores.nanmean()) if scores.numel() else float("nan")
    return CellResult(
        cell=cell.identity(),
        key=cell.key(),
        model=cell.train.model,
        explainer=cell.explainer,
        explainer_label=explainer_label_of(cell.explainer, cell.explainer_args),
        metric=cell.metric,
        label=metric.label,
        higher_is_better=bool(metric.higher_is_better),
        flag=metric.flag(score),
        data=str(plain(cell.train.data).get("name")),
        seed=int(cell.train.seed),
        size=str(cell.train.size),
        score=score,
        per_image=[None if v != v else round(float(v), 6) for v in scores],
        curve_x=metric.curve_x,
        curve=None if "curve" not in merged else [float(v) for v in merged["curve"].nanmean(0)],
        num_images=int(scores.shape[0]),
        test_accuracy=float(record["test_accuracy"]),
        model_key=str(record["key"]),
        seconds=round(seconds, 2),
        git_commit=git_commit(),
        torch=torch.__version__,
    )
