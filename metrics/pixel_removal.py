"""``pixel_removal``: accuracy as pixels are removed in saliency order (FA-CNN paper, sec. 5.2, Fig. 4).

For removal fractions 0, 10, ..., 100 % of the pixels, ranked by saliency (ties broken by pixel
index, so the ranking is deterministic), the removed pixels are set to a baseline (default: the
dataset mean, i.e. zero after normalisation) in all channels, and top-1 accuracy on the true
labels is recorded. The score is the area under the accuracy curve over the removed fraction,
in [0, 1] (trapezoidal rule).

``order="least_salient_first"`` (default) removes the least salient pixels first: a faithful
map keeps the evidence longest, so higher is better. ``order="most_salient_first"`` removes the
evidence first, so lower is better.
"""
from __future__ import annotations

from typing import Dict, List

import torch

from metrics import METRICS
from metrics.base import Metric
from zoo.base import ZooModel

ORDERS = ("least_salient_first", "most_salient_first")
BASELINES = ("mean", "zero")


def saliency_rank(saliency: torch.Tensor, descending: bool) -> torch.Tensor:
    """Rank of each pixel ``[B, H*W]`` (0 = removed first); ties go to the lower pixel index."""
    flat = saliency.reshape(saliency.shape[0], -1)
    order = torch.argsort(-flat if descending else flat, dim=1, stable=True)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def curve_area(curve: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Trapezoidal area under ``curve [B, F]`` over ``x [F]``, divided by the x range."""
    return torch.trapezoid(curve, x.to(curve), dim=1) / float(x[-1] - x[0])


@METRICS.register("pixel_removal")
class PixelRemoval(Metric):
    name = "pixel_removal"

    def __init__(self, order: str = "least_salient_first", steps: int = 10, baseline: str = "mean") -> None:
        if order not in ORDERS:
            raise ValueError(f"unknown order '{order}'; valid orders: {', '.join(ORDERS)}")
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline '{baseline}'; valid baselines: {', '.join(BASELINES)}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        super().__init__(order=order, steps=steps, baseline=baseline)
        self.order, self.steps, self.baseline = order, steps, baseline
        self.fractions = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)

    @property
    def higher_is_better(self) -> bool:
        return self.order == "least_salient_first"

    @property
    def curve_x(self) -> List[float]:
        return [round(float(f), 6) for f in self.fractions]

    @torch.no_grad()
    def __call__(self, model: ZooModel, x: torch.Tensor, y: torch.Tensor, saliency: torch.Tensor) -> Dict[str, torch.Tensor]:
        b, c, h, w = x.shape
        rank = saliency_rank(saliency.to(x.device), descending=self.order == "most_salient_first")
        rank = rank.view(b, 1, h, w)
        fill = model.mean.to(x) if self.baseline == "mean" else torch.zeros(1, c, 1, 1, device=x.device)
        correct = []
        for fraction in self.fractions:  # one forward pass per fraction, over the whole batch
            removed = rank < int(round(float(fraction) * h * w))
            perturbed = torch.where(removed, fill, x)
            correct.append(model(perturbed).argmax(dim=1) == y.to(x.device))
        curve = torch.stack(correct, dim=1).float()
        return {"score": curve_area(curve, self.fractions), "curve": curve}
