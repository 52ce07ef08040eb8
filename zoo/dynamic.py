"""Dynamic-linear models (B-cos, CoDA-Net): ``logits = W(x) x`` and its contribution maps.

These networks take the image encoded as ``[x, 1 - x]`` (6 channels, ``x`` in ``[0, 1]``, no
mean/std normalisation) and compute every layer as an input-dependent linear map without
biases. Each dynamic layer has an ``explanation_mode`` flag; while it is set the layer treats its
input-dependent scale as a constant (it is detached from the graph), so the gradient of a logit
with respect to the encoded input is the row ``W(x)_c`` of the effective linear map and

    contributions_c = x_enc * d y_c / d x_enc,   sum(contributions_c) = y_c - logit_bias_c.

The map of class ``c`` is the contributions summed over the 6 input channels. Everything is
batched: each image's logits depend on that image alone (in eval mode), so one backward pass of
the summed target logits gives every image's gradient.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

import torch
from torch import nn

from interpbench.zoo.base import Target, ZooModel, resolve_target


def encode_x_one_minus_x(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` in ``[0, 1]`` -> ``[B, 2C, H, W]``: the image and its complement."""
    return torch.cat([x, 1.0 - x], dim=1)


@contextmanager
def explanation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every module with an ``explanation_mode`` flag detaches its dynamic scale."""
    flagged = [m for m in model.modules() if hasattr(m, "explanation_mode")]
    previous = [m.explanation_mode for m in flagged]
    for module in flagged:
        module.explanation_mode = True
    try:
        yield model
    finally:
        for module, value in zip(flagged, previous):
            module.explanation_mode = value


class DynamicLinearModel(ZooModel):
    """Base class: ``[x, 1 - x]`` input encoding and contribution maps as native explanation.

    ``logit_bias`` (a float or a ``[K]`` tensor) is added to the logits after the dynamic-linear
    part; the contributions sum to ``logits - logit_bias``.
    """

    logit_bias: float = 0.0

    def encode_input(self, x: torch.Tensor) -> torch.Tensor:
        return encode_x_one_minus_x(x)

    def contributions(self, x: torch.Tensor, target: Target = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-input-dimension contributions ``[B, 2C, H, W]`` to the ``target`` logits, and the
        logits ``[B, K]`` of the same (explanation-mode) forward pass."""
        with torch.enable_grad(), explanation_mode(self):
            encoded = self.encode_input(x.detach()).requires_grad_(True)
            logits = self.forward_head(self.forward_features(encoded))
            classes = resolve_target(target, logits.detach())
            selected = logits.gather(1, classes.view(-1, 1)).sum()
            (gradient,) = torch.autograd.grad(selected, encoded)
        return (encoded * gradient).detach(), logits.detach()

    def explain(self, x: torch.Tensor, target: Target = None, layer: Optional[int] = None) -> torch.Tensor:
        """The contribution map of ``target`` (default: predicted class), summed over channels."""
        if layer is not None:
            raise ValueError(f"{type(self).__name__} explains at the input only; got layer={layer}")
        return self.contributions(x, target)[0].sum(dim=1)
