"""``scorecam``: Score-CAM (Wang et al., CVPR-W 2020) on each model's ``cam_layer``.

Each channel ``A_k`` of the declared layer is upsampled bilinearly to the input and min-max
scaled to ``[0, 1]`` (``H_k = (U_k - min) / (max - min + 1e-8)``; a constant channel gives an
all-zero mask), the image is masked by it in pixel space (``x * H_k``: the model's own input, so
the masked-out part is black), and the channel's weight is the softmax over channels of the
target class's logit on the masked image (the paper's Algorithm 1; subtracting the baseline's
score, the paper's "increase of confidence", leaves a softmax unchanged). The map is
``ReLU(sum_k alpha_k A_k)`` upsampled to the input.

Cost: one forward pass per channel per image, batched over images and channels together in
chunks of ``batch_size`` images. Those passes give every class's logits at once, so
``class_maps`` explains all classes for the price of one.

Differences from other implementations: pytorch-grad-cam does the same but upsamples the masks
with ``align_corners=True``; we use ``align_corners=False``, as the authors' code and the rest of
this package do (the tests compare to pytorch-grad-cam with its upsampling switched to ours).
The authors' code instead weighs the upsampled masks by the class's softmax probability, without
the softmax over channels.

Captum has no Score-CAM: it is written here (the forward passes are stacked over images and
channels, which pytorch-grad-cam does per image).
"""
from __future__ import annotations

import torch

from interpbench.explainers import EXPLAINERS
from interpbench.explainers.base import Explainer
from interpbench.explainers.gradcam_pp import declares_cam_layer, layer_activation
from interpbench.zoo.base import ZooModel, upsample


@EXPLAINERS.register("scorecam")
class ScoreCAM(Explainer):
    name = "scorecam"

    def __init__(self, batch_size: int = 256, relu: bool = True) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"scorecam batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.relu = relu

    def applies_to(self, model: ZooModel) -> bool:
        return declares_cam_layer(model)

    @torch.no_grad()
    def channel_weights(self, model: ZooModel, x: torch.Tensor):
        """``(A [B, C, h, w], alpha [B, C, K])``: the layer's activation and, for every class, the
        softmax over channels of the logits on the masked images."""
        activation, _, _ = layer_activation(model, x)
        b, c = activation.shape[:2]
        logits = []
        pairs = torch.arange(b * c, device=x.device)
        for start in range(0, b * c, self.batch_size):  # masks built per chunk: [n, 1, H, W] at a time
            chosen = pairs[start : start + self.batch_size]
            image, channel = chosen // c, chosen % c
            masks = upsample(activation[image, channel].unsqueeze(1), x.shape[-2:])
            low = masks.amin(dim=(2, 3), keepdim=True)
            high = masks.amax(dim=(2, 3), keepdim=True)
            logits.append(model(x[image] * ((masks - low) / (high - low + 1e-8))))
        return activation, torch.cat(logits).view(b, c, -1).softmax(dim=1).to(activation.dtype)

    def _maps(self, activation: torch.Tensor, weights: torch.Tensor, size) -> torch.Tensor:
        maps = torch.einsum("bck,bchw->bkhw", weights, activation)
        if self.relu:
            maps = maps.clamp_min(0)
        return upsample(maps, size)

    def class_maps(self, model: ZooModel, x: torch.Tensor) -> torch.Tensor:
        """Every class's Score-CAM ``[B, K, H, W]`` from one set of masked forward passes."""
        activation, weights = self.channel_weights(model, x)
        return self._maps(activation, weights, x.shape[-2:])

    def __call__(self, model: ZooModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        activation, weights = self.channel_weights(model, x)
        index = target.to(device=weights.device, dtype=torch.long).view(-1, 1, 1).expand(-1, weights.shape[1], 1)
        return self._maps(activation, weights.gather(2, index), x.shape[-2:])[:, 0]
