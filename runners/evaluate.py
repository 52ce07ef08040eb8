"""One cell of a sweep: a trained model, an explainer and a metric on the evaluation images.

A cell's result is one JSON file under ``<store>/cells/``, named by the cell's hash and written
atomically, with the cell's config and the git commit beside the scores. A cell whose file
exists is never recomputed. Saliency maps are cached per (model, explainer, images) under
``<store>/saliency/``, so metrics that share them compute them once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from bench.storage import atomic_torch_save, atomic_write_json, git_commit, plain, read_json, stable_hash
from data import load_dataset
from data.base import Dataset, to_float
from explainers import EXPLAINERS
from metrics import METRICS
from runners.train import TrainSpec, load_trained, resolve_device
from zoo.base import ZooModel

TARGETS = ("predicted", "label")


@dataclass(frozen=True)
class Cell:
    train: TrainSpec
    explainer: str
    metric: str
    explainer_args: Dict[str, Any] = field(default_factory=dict)
    metric_args: Dict[str, Any] = field(default_factory=dict)
    num_images: int = 500
    batch_size: int = 250
    target: str = "predicted"  # which class the explainer explains
    eval_seed: int = 0  # picks the scored test images

    def identity(self) -> Dict[str, Any]:
        return {
            "train": self.train.identity(), "explainer": self.explainer,
            "explainer_args": plain(self.explainer_args), "metric": self.metric,
            "metric_args": plain(self.metric_args), "num_images": self.num_images,
            "target": self.target, "eval_seed": self.eval_seed,
        }

    def key(self) -> str:
        return stable_hash(self.identity())

    def path(self, store: Path) -> Path:
        return Path(store) / "cells" / f"{self.train.model}__{self.explainer}__{self.metric}-{self.key()}.json"

    def saliency_path(self, store: Path) -> Path:
        # Everything that fixes the maps: the cell's identity less its metric.
        saliency_key = stable_hash({k: v for k, v in self.identity().items()
                                    if k not in ("metric", "metric_args")})
        return Path(store) / "saliency" / f"{self.train.model}__{self.explainer}-{saliency_key}.pt"


def evaluation_indices(num_test: int, num_images: int, seed: int = 0) -> torch.Tensor:
    """Which test images a cell scores: ``num_images`` of a seeded permutation, in index order.

    Test sets stored class by class (an ImageFolder's sorted folders) would otherwise give a
    prefix of one class only.
    """
    order = torch.randperm(num_test, generator=torch.Generator().manual_seed(seed))
    return order[: min(num_images, num_test)].sort().values


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


def compute_saliency(cell: Cell, model: ZooModel, images: Dict[str, torch.Tensor], store: Path,
                     progress: bool = False) -> torch.Tensor:
    path = cell.saliency_path(store)
    if path.exists():
        return torch.load(path, map_location="cpu")
    if cell.target not in TARGETS:
        raise ValueError(f"unknown target '{cell.target}'; valid targets: {', '.join(TARGETS)}")
    explainer = EXPLAINERS.create(cell.explainer, **plain(cell.explainer_args))
    if not explainer.applies_to(model):
        raise ValueError(f"explainer '{cell.explainer}' does not apply to model '{cell.train.model}'")
    targets = images["y"] if cell.target == "label" else predict(model, images["x"], cell.batch_size)
    saliency = explainer.explain_all(model, images["x"], targets, cell.batch_size, progress=progress)
    atomic_torch_save(saliency, path)
    return saliency


def run_cell(cell: Cell, store: Path, device: str = "auto", progress: bool = False,
             model: Optional[ZooModel] = None, record: Optional[Dict[str, Any]] = None,
             dataset: Optional[Dataset] = None) -> Dict[str, Any]:
    """Compute ``cell`` unless its result file exists; return the result."""
    path = cell.path(store)
    if path.exists():
        return read_json(path)
    began = time.time()
    dataset = dataset or load_dataset(cell.train.data)
    if model is None or record is None:
        model, record = load_trained(cell.train, store, dataset, device=device)
    metric = METRICS.create(cell.metric, **plain(cell.metric_args))
    images = evaluation_images(dataset, cell.num_images, cell.eval_seed)
    saliency = compute_saliency(cell, model, images, store, progress=progress)

    torch_device = resolve_device(device)
    outputs: Dict[str, List[torch.Tensor]] = {}
    for start in range(0, images["x"].shape[0], cell.batch_size):
        part = slice(start, start + cell.batch_size)
        result = metric(model, images["x"][part].to(torch_device), images["y"][part].to(torch_device),
                        saliency[part].to(torch_device))
        for name, value in result.items():
            outputs.setdefault(name, []).append(value.detach().float().cpu())
    merged = {name: torch.cat(values) for name, values in outputs.items()}
    scores = merged["score"]
    result = {
        "cell": cell.identity(),
        "key": cell.key(),
        "model": cell.train.model,
        "explainer": cell.explainer,
        "metric": cell.metric,
        "label": metric.label,
        "higher_is_better": metric.higher_is_better,
        "data": plain(cell.train.data).get("name"),
        "seed": cell.train.seed,
        "size": cell.train.size,
        "score": float(scores.mean()),
        "per_image": [round(float(v), 6) for v in scores],
        "curve_x": metric.curve_x,
        "curve": None if "curve" not in merged else [float(v) for v in merged["curve"].mean(0)],
        "num_images": int(scores.shape[0]),
        "test_accuracy": record["test_accuracy"],
        "model_key": record["key"],
        "seconds": round(time.time() - began, 2),
        "git_commit": git_commit(),
        "torch": torch.__version__,
    }
    atomic_write_json(path, result)
    return result
