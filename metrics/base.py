"""The metric interface."""
from __future__ import annotations

import inspect
from typing import Any, ClassVar, Dict, List, Optional

import torch

from zoo.base import ZooModel


class Metric:
    """``metric(model, x, y, saliency) -> {"score": [B], "curve": [B, F] (optional)}``.

    ``x``: images in ``[0, 1]`` ``[B, 3, H, W]``; ``y``: true labels ``[B]``; ``saliency``:
    ``[B, H, W]``. The per-image scores average to the reported score.
    """

    name: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        self.params = params

    @property
    def higher_is_better(self) -> bool:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """The leaderboard column: the name, plus any parameter that differs from its default."""
        signature = inspect.signature(type(self).__init__).parameters
        changed = {k: v for k, v in self.params.items()
                   if k not in signature or signature[k].default != v}
        if not changed:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in sorted(changed.items()))})"

    @property
    def curve_x(self) -> Optional[List[float]]:
        """The x-axis of the curve this metric returns, if any."""
        return None

    def __call__(self, model: ZooModel, x: torch.Tensor, y: torch.Tensor, saliency: torch.Tensor) -> Dict[str, torch.Tensor]:
        raise NotImplementedError
