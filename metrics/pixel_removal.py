"""``pixel_removal``: accuracy as pixels are removed in saliency order (FA-CNN paper, sec. 5.2, Fig. 4).

For removal fractions 0, 10, ..., 100 % of the pixels, ranked by saliency (ties: below), the
removed pixels are set to a baseline (default: the dataset mean, i.e. zero after normalisation)
in all channels, and top-1 accuracy on the true labels is recorded. The score is the area under
the accuracy curve over the removed fraction, in [0, 1] (trapezoidal rule).

``order="least_salient_first"`` (default) removes the least salient pixels first: a faithful
map keeps the evidence longest, so higher is better. ``order="most_salient_first"`` removes the
evidence first, so lower is better. The paper is not consistent about its order: §5.2's text
says the most salient pixels are removed, while its reading of Figure 4 (accuracy that holds or
rises as irrelevant pixels go) fits least salient first; the default follows the figure, and
both orders are offered.

Ties (``ties``, see :mod:`interpbench.metrics.base`): ``"random"`` (default) removes tied pixels
in a random order seeded by the image, with no positional bias; ``"index"`` removes them in pixel
order (top rows first), the rule of earlier versions. The metric has no Quantus counterpart, so
``"quantus"`` is not offered.
"""
from __future__ import annotations

from typing import Dict, List

import torch

from interpbench.metrics import METRICS
from interpbench.metrics.base import Batch, Metric, check_ties, saliency_rank  # noqa: F401 (saliency_rank re-exported)

ORDERS = ("least_salient_first", "most_salient_first")
BASELINES = ("mean", "zero")
TIE_RULES = ("random", "index")


def curve_area(curve: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Trapezoidal area under ``curve [B, F]`` over ``x [F]``, divided by the x range."""
    return torch.trapezoid(curve, x.to(curve), dim=1) / float(x[-1] - x[0])


@METRICS.register("pixel_removal")
class PixelRemoval(Metric):
    name = "pixel_removal"

    def __init__(self, order: str = "least_salient_first", steps: int = 10, baseline: str = "mean",
                 ties: str = "random") -> None:
        if order not in ORDERS:
            raise ValueError(f"unknown order '{order}'; valid orders: {', '.join(ORDERS)}")
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline '{baseline}'; valid baselines: {', '.join(BASELINES)}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        check_ties(ties, TIE_RULES)
        super().__init__(order=order, steps=steps, baseline=baseline, ties=ties)
        self.order, self.steps, self.baseline, self.ties = order, steps, baseline, ties
        self.fractions = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)

    @property
    def higher_is_better(self) -> bool:
        return self.order == "least_salient_first"

    @property
    def curve_x(self) -> List[float]:
        return [round(float(f), 6) for f in self.fractions]

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x = batch.x
        counts = [int(round(float(f) * batch.num_pixels)) for f in self.fractions]
        if self.baseline == "mean":
            fill, fill_id = batch.model.mean.to(x), "mean"
        else:
            fill, fill_id = torch.zeros(1, x.shape[1], 1, 1, device=x.device), 0.0
        # one forward pass per fraction over the whole batch, shared with any metric that
        # replaces the same pixels by the same baseline
        logits = batch.removal_logits(counts, fill, fill_id, descending=self.order == "most_salient_first",
                                      ties=self.ties)
        curve = (logits.argmax(-1) == batch.y.to(x.device)).float().T.contiguous()
        return {"score": curve_area(curve, self.fractions), "curve": curve}
