"""``native``: the model's own explanation (``model.explain``)."""
from __future__ import annotations

from typing import Optional

import torch

from interpbench.explainers import EXPLAINERS
from interpbench.explainers.base import Explainer
from interpbench.zoo.base import ZooModel


@EXPLAINERS.register("native")
class Native(Explainer):
    """Calls ``model.explain(x, target, layer)``; ``layer=None`` is the model's default layer."""

    name = "native"

    def __init__(self, layer: Optional[int] = None) -> None:
        self.layer = layer

    def applies_to(self, model: ZooModel) -> bool:
        return model.has_native_explanation

    @torch.no_grad()
    def __call__(self, model: ZooModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return model.explain(x, target=target, layer=self.layer)
