"""The explainer interface and batched explanation of a whole image set.

Every explainer receives the model in ``__call__``, ``class_maps`` or ``applies_to``; each of these,
in every subclass, first checks that it is a zoo model (:func:`interpbench.zoo.base.require_zoo_model`),
so a plain ``nn.Module`` stops with one line that points to ``interpbench.wrap``.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar

import torch

from interpbench.zoo.base import ZooModel, require_zoo_model

# The methods that receive the model; subclasses' definitions are wrapped with the check.
MODEL_METHODS = ("__call__", "class_maps", "applies_to")


def checks_model(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method(self, model, ...)`` that first checks ``model`` is a zoo model."""
    if getattr(method, "checks_model", False):
        return method

    @functools.wraps(method)
    def checked(self: "Explainer", *args: Any, **kwargs: Any) -> Any:
        require_zoo_model(args[0] if args else kwargs.get("model"), f"explainer '{self.name or type(self).__name__}'")
        return method(self, *args, **kwargs)

    checked.checks_model = True  # type: ignore[attr-defined]
    return checked


class Explainer:
    """``explainer(model, x, target) -> [B, H, W]``: ``x`` in ``[0, 1]``, ``target`` class indices ``[B]``."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method in MODEL_METHODS:
            if method in cls.__dict__ and callable(cls.__dict__[method]):
                setattr(cls, method, checks_model(cls.__dict__[method]))

    @checks_model
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

        require_zoo_model(model, f"explainer '{self.name or type(self).__name__}'")
        device = next(model.parameters()).device
        maps = []
        starts = range(0, images.shape[0], batch_size)
        for start in tqdm(starts, desc=f"explaining ({self.name})", disable=not progress, leave=False):
            x = images[start : start + batch_size].to(device)
            t = targets[start : start + batch_size].to(device)
            maps.append(self(model, x, t).detach().float().cpu())
        return torch.cat(maps)
