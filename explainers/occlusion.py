"""``occlusion``: K-occlusion (Zeiler & Fergus, ECCV 2014) through captum's ``Occlusion``.

A ``window x window`` patch (all channels) slides over the image with step ``stride``; at each
position the patch is set to ``baseline`` and the drop of the target's output,
``f_c(x) - f_c(x_occluded)``, is credited to the patch's pixels; each pixel's value is the mean
over the positions that covered it (captum clips the last position to the border, so every
pixel is covered). The map is that value (equal in the three channels). The occluded passes give
every class's output, so ``class_maps`` explains all classes for the price of one.

Defaults: ``window = max(2, round(side / 8))`` and ``stride = max(1, window // 2)`` for each side,
so the patch covers the same share of the image at every size and the number of positions is
about 15 x 15 (4-pixel patches, stride 2 at 32 pixels; 28-pixel patches, stride 14 at 224);
``baseline = 0`` (black, in pixel space); ``output = "logit"`` (``"probability"`` scores the drop in
the model's own probability instead, as Zeiler & Fergus plot it). Cost: one forward pass per
position per image, ``perturbations_per_eval`` set so each forward batch has about
``batch_size`` images.
"""
from __future__ import annotations

from typing import Optional

import torch

from interpbench.explainers import EXPLAINERS
from interpbench.explainers.base import Explainer
from interpbench.zoo.base import ZooModel

OUTPUTS = ("logit", "probability")


def _positive_or_none(name: str, value) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"occlusion {name} must be a positive integer or None (size-dependent), got {value!r}")


@EXPLAINERS.register("occlusion")
class Occlusion(Explainer):
    name = "occlusion"

    def __init__(self, window: Optional[int] = None, stride: Optional[int] = None, baseline: float = 0.0,
                 output: str = "logit", batch_size: int = 512) -> None:
        _positive_or_none("window", window)
        _positive_or_none("stride", stride)
        if output not in OUTPUTS:
            raise ValueError(f"occlusion output must be one of {', '.join(OUTPUTS)}; got {output!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"occlusion batch_size must be a positive integer, got {batch_size!r}")
        self.window, self.stride, self.baseline = window, stride, float(baseline)
        self.output, self.batch_size = output, batch_size

    def geometry(self, height: int, width: int):
        """``((window_h, window_w), (stride_h, stride_w))`` for an ``height x width`` input."""
        windows = tuple(self.window or max(2, round(side / 8)) for side in (height, width))
        if any(win > side for win, side in zip(windows, (height, width))):
            raise ValueError(f"occlusion window {windows} exceeds the {height}x{width} input")
        strides = tuple(self.stride or max(1, win // 2) for win in windows)
        if any(st > win for st, win in zip(strides, windows)):
            raise ValueError(f"occlusion stride {strides} must not exceed the window {windows} "
                             "(pixels between positions would never be occluded)")
        return windows, strides

    def _attribute(self, model: ZooModel, x: torch.Tensor, target) -> torch.Tensor:
        from captum.attr import Occlusion as CaptumOcclusion

        (wh, ww), (sh, sw) = self.geometry(*x.shape[-2:])
        forward = model if self.output == "logit" else (lambda images: model.probabilities(model(images)))
        with torch.no_grad():
            maps = CaptumOcclusion(forward).attribute(
                x, sliding_window_shapes=(x.shape[1], wh, ww), strides=(x.shape[1], sh, sw),
                baselines=self.baseline, target=target,
                perturbations_per_eval=max(1, self.batch_size // x.shape[0]),
            )
        return maps.mean(dim=1).to(x.dtype)

    def class_maps(self, model: ZooModel, x: torch.Tensor) -> torch.Tensor:
        """Every class's map ``[B, K, H, W]`` from the same occluded passes (captum attributes each
        element of the ``[B, K]`` output when no target is given)."""
        return self._attribute(model, x, None).view(x.shape[0], -1, *x.shape[-2:])

    def __call__(self, model: ZooModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._attribute(model, x, target)
