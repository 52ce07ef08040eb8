"""The explainer interface and batched explanation of a whole image set."""
from __future__ import annotations

from typing import ClassVar

import torch

from interpbench.zoo.base import ZooModel


class Explainer:
    """``explainer(model, x, target) -> [B, H, W]``: ``x`` in ``[0, 1]``, ``target`` class indices ``[B]``."""

    name: ClassVar[str] = ""

    def applies_to(self, model: ZooModel) -> bool:
        """Whether this method can explain ``model`` (``native`` needs an intrinsic explanation)."""
        return True

    def __call__(self, model: ZooModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def explain_all(
        self, model: ZooModel, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 250,
        progress: bool = False,
    ) -> torch.Tensor:
        """Explain ``images`` ``[N, 3, H, W]`` (float, ``[0, 1]``) in batches -> ``[N, H, W]`` on the CPU."""
        from tqdm import tqdm

        device = next(model.parameters()).device
        maps = []
        starts = range(0, images.shape[0], batch_size)
        for start in tqdm(starts, desc=f"explaining ({self.name})", disable=not progress, leave=False):
            x = images[start : start + batch_size].to(device)
            t = targets[start : start + batch_size].to(device)
            maps.append(self(model, x, t).detach().float().cpu())
        return torch.cat(maps)
