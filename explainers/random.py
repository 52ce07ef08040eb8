"""``random``: uniform noise, the baseline the FA-CNN paper calls RAND (seeded)."""
from __future__ import annotations

import torch

from interpbench.explainers import EXPLAINERS
from interpbench.explainers.base import Explainer
from interpbench.zoo.base import ZooModel


@EXPLAINERS.register("random")
class Random(Explainer):
    """Independent U(0, 1) per pixel from a generator seeded once, so a run is reproducible."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, model: ZooModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return torch.rand(b, h, w, generator=self.generator).to(x.device)
