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
L1 normalisation); the class is ``batch.target``. The three metrics evaluate the same images ``E``
under one cache key, so a suite pays one forward pass for all three.
"""
from __future__ import annotations

from typing import Dict

import torch

from interpbench.metrics import METRICS
from interpbench.metrics.base import Batch, Metric, divide_or

MAP_KEY = ("explanation_map", "minmax")


def minmax(saliency: torch.Tensor) -> torch.Tensor:
    """Each map ``[B, H, W]`` scaled to ``[0, 1]``; a constant map becomes 0."""
    flat = saliency.reshape(saliency.shape[0], -1)
    low = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - low
    return divide_or(flat - low, span, 0.0).view_as(saliency)


def explanation_map_images(batch: Batch) -> torch.Tensor:
    """``E = x * S``: the images weighted by their min-max scaled saliency."""
    return batch.x * minmax(batch.saliency).unsqueeze(1).to(batch.x)


def probabilities_on_map(batch: Batch):
    """``(Y, O)``: the explained class's probability on the image and on ``E`` (``[B]`` each)."""
    clean = batch.pick(batch.probabilities(batch.clean_logits()))
    masked = batch.pick(batch.probabilities(batch.logits(MAP_KEY, lambda: explanation_map_images(batch))))
    return clean, masked


class _MapMetric(Metric):
    def __init__(self) -> None:
        super().__init__()


@METRICS.register("average_drop")
class AverageDrop(_MapMetric):
    name = "average_drop"

    @property
    def higher_is_better(self) -> bool:
        return False

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        y, o = probabilities_on_map(batch)
        return {"score": 100.0 * divide_or((y - o).clamp(min=0), y, 0.0)}


@METRICS.register("average_gain")
class AverageGain(_MapMetric):
    name = "average_gain"

    @property
    def higher_is_better(self) -> bool:
        return True

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        y, o = probabilities_on_map(batch)
        return {"score": 100.0 * divide_or((o - y).clamp(min=0), 1 - y, 0.0)}


@METRICS.register("average_increase")
class AverageIncrease(_MapMetric):
    name = "average_increase"

    @property
    def higher_is_better(self) -> bool:
        return True

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        y, o = probabilities_on_map(batch)
        return {"score": 100.0 * (o > y).to(y.dtype)}
