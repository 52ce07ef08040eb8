"""``gradcam_pp``: Grad-CAM++ (Chattopadhay et al., WACV 2018) on each model's ``cam_layer``.

With ``A`` the declared layer's activation ``[B, C, h, w]`` and ``g = d logit_c / dA`` (the target
class's logit, batched over images), the paper's closed form (its eq. 19, derived for
``exp(logit_c)`` so that higher derivatives are powers of ``g``) weighs each position by

    alpha_kij = g_kij^2 / (2 g_kij^2 + sum_ab A_kab g_kij^3)      (0 where the denominator is 0)

and each channel by ``w_k = sum_ij alpha_kij ReLU(g_kij)``; the map is ``ReLU(sum_k w_k A_k)``
upsampled bilinearly to the input. The common factor ``exp(logit_c)`` of the paper's weights is
left out (one positive constant per image; maps are raw and only their order and relative
values matter downstream).

Defaults: ``eps = 0`` (zero denominators only are guarded, as in the authors' code);
pytorch-grad-cam adds ``1e-6`` to every denominator, which matters where ``g`` is of order
``1e-3``: ``eps=1e-6`` reproduces it (the tests compare to it with that setting).
``relu=True`` as in Grad-CAM.

Captum has no Grad-CAM++ (nor Score-CAM): both are written here on one hook that reads the
layer's activation and its gradient in one batched forward and backward pass.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from interpbench.explainers import EXPLAINERS
from interpbench.explainers.base import Explainer
from interpbench.zoo.base import ZooModel, upsample


def declares_cam_layer(model: ZooModel) -> bool:
    """Whether ``model`` declares the layer CAM methods explain."""
    try:
        model.cam_layer
    except NotImplementedError:
        return False
    return True


def layer_activation(
    model: ZooModel, x: torch.Tensor, target: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """``(A, dlogit_target/dA or None, logits)`` for ``model.cam_layer`` in one batched pass.

    With a ``target`` the graph is cut at the layer (its output becomes a leaf), so the backward
    pass stops there: cheaper, and it works for frozen backbones whose inputs need no gradient.
    """
    captured = []

    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise TypeError(f"{type(model).__name__}.cam_layer must output a [B, C, h, w] tensor")
        if target is not None:
            output = output.detach().requires_grad_(True)
        captured.append(output)
        return output

    handle = model.cam_layer.register_forward_hook(hook)
    try:
        with torch.set_grad_enabled(target is not None):
            logits = model(x)
            if len(captured) != 1:
                raise RuntimeError(f"{type(model).__name__}.cam_layer ran {len(captured)} times in one "
                                   "forward pass; CAM methods need exactly one")
            if target is None:
                return captured[0].detach(), None, logits.detach()
            index = target.to(device=logits.device, dtype=torch.long).view(-1, 1)
            (gradient,) = torch.autograd.grad(logits.gather(1, index).sum(), captured[0])
    finally:
        handle.remove()
    return captured[0].detach(), gradient, logits.detach()


@EXPLAINERS.register("gradcam_pp")
class GradCAMPlusPlus(Explainer):
    name = "gradcam_pp"

    def __init__(self, relu: bool = True, eps: float = 0.0) -> None:
        if not eps >= 0:
            raise ValueError(f"gradcam_pp eps must be >= 0, got {eps}")
        self.relu = relu
        self.eps = float(eps)

    def applies_to(self, model: ZooModel) -> bool:
        return declares_cam_layer(model)

    def __call__(self, model: ZooModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        activation, gradient, _ = layer_activation(model, x, target)
        g2 = gradient.pow(2)
        g3 = g2 * gradient
        total = activation.sum(dim=(2, 3), keepdim=True)
        denominator = 2 * g2 + total * g3 + self.eps
        defined = (denominator != 0) & (gradient != 0)
        alpha = torch.where(defined, g2 / torch.where(defined, denominator, torch.ones_like(denominator)),
                            torch.zeros_like(g2))
        weights = (alpha * gradient.clamp_min(0)).sum(dim=(2, 3), keepdim=True)
        maps = (weights * activation).sum(dim=1)
        if self.relu:
            maps = maps.clamp_min(0)
        return upsample(maps, x.shape[-2:])
