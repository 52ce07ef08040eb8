"""The interface every zoo model implements.

A zoo model is an ``nn.Module`` that takes images in ``[0, 1]`` (``[B, 3, H, W]``) and normalises
them itself, so explainers and metrics work in pixel space. It has:

- ``forward(x) -> logits [B, K]`` (``encode_input``, ``forward_features``, ``forward_head``);
- ``probabilities(logits) -> [B, K]`` and ``loss(logits, labels)``: softmax and cross-entropy
  unless the model's head says otherwise (FA-CNN's pooling head normalises by the L1 norm);
- ``config``: input size, mean, std, number of classes;
- ``cam_layer``: the module whose output CAM methods explain (declared, never guessed);
- when it explains itself, ``explain(x, target=None, layer=None) -> [B, H, W]``.

Any plain classifier (normalised images in, logits out) becomes one with ``interpbench.wrap``
(:mod:`interpbench.zoo.wrapped`); explainers and metrics given anything else stop with one line
that says so (:func:`require_zoo_model`).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

Target = Union[None, int, torch.Tensor]
WRAP_HINT = "make one with interpbench.wrap(module, mean=..., std=..., cam_layer=...)"


def resolve_target(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """Class indices ``[B]``: the predicted class for ``None``, an int broadcast, or a tensor as is."""
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, int):
        return torch.full((logits.shape[0],), target, dtype=torch.long, device=logits.device)
    return target.to(device=logits.device, dtype=torch.long).reshape(-1)


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinearly resize ``[B, h, w]`` or ``[B, C, h, w]`` maps to ``size = (H, W)``."""
    squeeze = maps.dim() == 3
    if squeeze:
        maps = maps.unsqueeze(1)
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return maps.squeeze(1) if squeeze else maps


class ZooModel(nn.Module):
    """Base class: normalisation, the default probability and loss, and the interface."""

    def __init__(
        self,
        num_classes: int,
        input_size: Sequence[int] = (3, 32, 32),
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.config: Dict[str, Any] = {
            "num_classes": int(num_classes),
            "input_size": tuple(int(v) for v in input_size),
            "mean": tuple(float(v) for v in mean),
            "std": tuple(float(v) for v in std),
        }
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    @property
    def input_size(self) -> Tuple[int, int, int]:
        return self.config["input_size"]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def encode_input(self, x: torch.Tensor) -> torch.Tensor:
        """What ``forward_features`` receives: the normalised image (dynamic-linear models
        override it with the ``[x, 1 - x]`` encoding)."""
        return self.normalize(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in ``[0, 1]``, ``[B, 3, H, W]`` -> logits ``[B, K]``."""
        return self.forward_head(self.forward_features(self.encode_input(x)))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    @property
    def cam_layer(self) -> nn.Module:
        """The layer CAM methods attribute to (the last spatial feature map)."""
        raise NotImplementedError(f"{type(self).__name__} declares no cam_layer")

    def trainable_parameters(self) -> list:
        """The parameters training updates (models with a frozen part leave it out)."""
        return [p for p in self.parameters() if p.requires_grad]

    def init_from_parent(self, parent: "ZooModel", train: Any) -> None:
        """Derived models (registered with ``parent=<name>``) start from the trained parent:
        copy or convert its weights, fit what needs fitting on the ``train`` split."""
        raise NotImplementedError(f"{type(self).__name__} is not derived from a parent model")

    @property
    def has_native_explanation(self) -> bool:
        return type(self).explain is not ZooModel.explain

    def explain(self, x: torch.Tensor, target: Target = None, layer: Optional[int] = None) -> torch.Tensor:
        """The model's own explanation ``[B, H, W]`` of ``target`` (default: predicted class)."""
        raise NotImplementedError(f"{type(self).__name__} has no intrinsic explanation")


class NotAZooModelError(TypeError):
    """A plain ``nn.Module`` (or anything else) given where a zoo model is needed; the message is one line."""


def require_zoo_model(model: Any, user: str) -> None:
    """Raise :class:`NotAZooModelError` unless ``model`` is a :class:`ZooModel`; ``user`` names what
    needs it (``explainer 'gradcam'``). Explainers and metrics call it where they receive the model."""
    if isinstance(model, ZooModel):
        return
    kind = "a plain torch.nn.Module" if isinstance(model, nn.Module) else "not a torch.nn.Module"
    raise NotAZooModelError(
        f"{user} needs a zoo model (images in [0, 1], its own mean and std, probabilities, cam_layer); got "
        f"{type(model).__name__}, {kind}: {WRAP_HINT}")
