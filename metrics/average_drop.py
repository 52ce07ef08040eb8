"""``average_drop``, ``average_gain``, ``average_increase``: the explanation map as the input.

Grad-CAM++ (Chattopadhyay et al., WACV 2018) and Opti-CAM (Zhang et al., 2024), as CA-Stream
(Torres et al. 2024) reports them. Each image ``x`` (pixel space, ``[0, 1]``, before the model's
normalisation) is multiplied by its saliency map ``S`` scaled to ``[0, 1]`` per image by min-max
(``(s - min) / (max - min)``; a constant map has no range and gives ``S = 0``, as the min-max
scaling with a small epsilon of the CAM reference code does), in every channel: ``E = x * S``.
With ``Y`` the model's probability of the explained class on ``x`` and ``O`` on ``E``:

- ``average_drop``     = mean over images of ``max(0, Y - O) / Y``, in percent; lower is better;
- ``average_gain``     = mean of ``max(0, O - Y) / (1 - Y)``, in percent; higher is better;
- ``average_increase`` = share of images with ``O > Y``, in percent; higher is better.

The per-image scores are those terms (times 100; 100 or 0 for the increase), so their mean is the
reported value. A term with a zero denominator has a zero numerator (``Y = 0`` cannot drop,
``Y = 1`` cannot gain) and counts as 0. The probability is the model's own (softmax, FA-CNN's
L1 normalisation). The three metrics evaluate the same images ``E`` under one cache key, so a
suite pays one forward pass for all three.

The class (``target``): ``"label"`` (default) explains and scores each image's true label, as the
CA-Stream code does unless asked for the prediction (its ``--pred`` flag, off by default, switches
both the explained class of the saved maps and the class whose probabilities ``Y`` and ``O`` are
read); ``"predicted"`` explains and scores the model's predicted class. ``target`` names the class
the maps must explain, so it is a property of the cell, not of the scoring alone:

- in a sweep, ``plan_sweep`` reads :attr:`explains` and gives the metric's cells that target
  (``Cell.target``), whatever the sweep's ``profile.eval.target``, and writes it into the cell's
  ``metric_args``. Cells that share a target share their maps and one suite as before; with the
  default ``label`` in a sweep that explains the predicted class, the three metrics form their own
  explained group (one more explanation of the images per explainer, shared by the three).
- ``CellResult.settings`` leaves the target out of the evaluation settings of a cell whose
  ``metric_args`` name one: it is the metric's own argument, shown in its column's label when it
  differs from the default (``average_drop(target=predicted)``), so one leaderboard may hold these
  columns beside others that explain the sweep's target.
- the metric reads ``batch.target`` (the class the maps explain) and checks it: the true label for
  ``"label"``, a top class of the model's clean logits for ``"predicted"`` (to float rounding,
  which may differ between batch sizes); maps that explain another class stop with a one-line
  error, so a direct call (or ``interpbench.score``) that explains one class cannot be scored on
  another.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from interpbench.metrics import METRICS
from interpbench.metrics.base import Batch, Metric, divide_or

MAP_KEY = ("explanation_map", "minmax")
TARGETS = ("label", "predicted")
# A class whose clean logit is within this relative distance of the largest counts as predicted:
# the engine predicts in other batch sizes than the suite's forward passes, which may round apart.
TIE_TOLERANCE = 1e-5


def minmax(saliency: torch.Tensor) -> torch.Tensor:
    """Each map ``[B, H, W]`` scaled to ``[0, 1]``; a constant map becomes 0."""
    flat = saliency.reshape(saliency.shape[0], -1)
    low = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - low
    return divide_or(flat - low, span, 0.0).view_as(saliency)


def explanation_map_images(batch: Batch) -> torch.Tensor:
    """``E = x * S``: the images weighted by their min-max scaled saliency."""
    return batch.x * minmax(batch.saliency).unsqueeze(1).to(batch.x)


def probabilities_on_map(batch: Batch, classes: Optional[torch.Tensor] = None):
    """``(Y, O)``: the probability of ``classes`` (default: ``batch.target``) on the image and on
    ``E`` (``[B]`` each)."""
    clean = batch.pick(batch.probabilities(batch.clean_logits()), classes)
    masked = batch.pick(batch.probabilities(batch.logits(MAP_KEY, lambda: explanation_map_images(batch))), classes)
    return clean, masked


class _MapMetric(Metric):
    def __init__(self, target: str = "label") -> None:
        if target not in TARGETS:
            raise ValueError(f"unknown target '{target}'; valid targets: {', '.join(TARGETS)}")
        super().__init__(target=target)
        self.target = target

    @property
    def explains(self) -> str:
        """The class the maps this metric scores must explain (``"label"`` or ``"predicted"``);
        ``plan_sweep`` gives the metric's cells this target."""
        return self.target

    def classes(self, batch: Batch) -> torch.Tensor:
        """``batch.target`` ``[B]``, checked to be the true labels (``"label"``) or the model's
        predictions (``"predicted"``)."""
        target = batch.target.to(batch.y.device).long()
        if self.target == "label":
            wrong = target != batch.y
        else:
            logits = batch.clean_logits()
            top = logits.max(1).values
            at = logits.gather(1, target.view(-1, 1).to(logits.device)).squeeze(1)
            wrong = at < top - TIE_TOLERANCE * (1 + top.abs())
        if bool(wrong.any()):
            what, other = ("true label", "predicted") if self.target == "label" else ("predicted class", "label")
            raise ValueError(f"{self.label} scores each image's {what}, but {int(wrong.sum())} of {batch.size} "
                             f"maps explain another class; explain the {what} (target='{self.target}') or give "
                             f"the metric target='{other}'")
        return target

    def confidences(self, batch: Batch):
        """``(Y, O)`` of the checked class (:meth:`classes`)."""
        return probabilities_on_map(batch, self.classes(batch))


@METRICS.register("average_drop")
class AverageDrop(_MapMetric):
    name = "average_drop"

    @property
    def higher_is_better(self) -> bool:
        return False

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        y, o = self.confidences(batch)
        return {"score": 100.0 * divide_or((y - o).clamp(min=0), y, 0.0)}


@METRICS.register("average_gain")
class AverageGain(_MapMetric):
    name = "average_gain"

    @property
    def higher_is_better(self) -> bool:
        return True

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        y, o = self.confidences(batch)
        return {"score": 100.0 * divide_or((o - y).clamp(min=0), 1 - y, 0.0)}


@METRICS.register("average_increase")
class AverageIncrease(_MapMetric):
    name = "average_increase"

    @property
    def higher_is_better(self) -> bool:
        return True

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        y, o = self.confidences(batch)
        return {"score": 100.0 * (o > y).to(y.dtype)}
