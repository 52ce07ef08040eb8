"""``gradcam``: Grad-CAM (Selvaraju et al. 2017) through captum's ``LayerGradCam``.

The layer is the model's declared ``cam_layer``. The map is ReLU(sum_k alpha_k A_k) with alpha_k
the spatial mean of d logit_c / d A_k, upsampled bilinearly to the input.
"""
from __future__ import annotations

import torch

from interpbench.explainers import EXPLAINERS
from interpbench.explainers.base import Explainer
from interpbench.zoo.base import ZooModel, upsample


@EXPLAINERS.register("gradcam")
class GradCAM(Explainer):
    name = "gradcam"

    def __init__(self, relu: bool = True) -> None:
        self.relu = relu

    def __call__(self, model: ZooModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from captum.attr import LayerGradCam

        with torch.enable_grad():
            maps = LayerGradCam(model, model.cam_layer).attribute(
                x, target=target, relu_attributions=self.relu
            )
        return upsample(maps.detach().squeeze(1), x.shape[-2:])
