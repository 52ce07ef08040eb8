"""CA-Stream ResNets (Torres et al., "CA-Stream: Attention-based pooling for interpretable image
recognition", CVPR-W 2024): a cross-attention stream beside a frozen, trained ResNet.

A learnable query ``q_1`` (as wide as stage 1's output) reads each stage's feature map
``F_l`` (``[N_l, d_l]``: positions by channels) in turn:

    a_l = softmax(F_l q_l / sqrt(d_l))     attention over the N_l positions
    CA_l = F_l^T a_l                       attention-pooled feature (d_l)
    q_{l+1} = W_l CA_l                     the query for the next stage (W_l: d_l -> d_{l+1})

and the last stage's pooled ``CA_L`` replaces global average pooling in front of the frozen
classifier. With a zero query the attention is uniform and ``CA_L`` is exactly the average pool;
the projections ``W_l`` start at zero, so training starts from the ResNet's own predictions.
Only ``q_1`` and the ``W_l`` train; the backbone and the classifier are frozen (their parameters
do not require gradients and their batch-norm statistics stay in eval mode).

Native explanation: the last stage's attention ``a_L`` (class-agnostic), upsampled to the input.
Grad-CAM and the other CAM methods run on this CA-pooled model through ``cam_layer`` (the
backbone's last stage), which is the comparison the paper makes (CAM with GAP vs with CA).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from interpbench.zoo import MODELS
from interpbench.zoo.base import Target, upsample
from interpbench.zoo.resnet import FrozenResNetModel


class CAStreamResNet(FrozenResNetModel):
    """A frozen :class:`TimmResNet` with a trainable cross-attention stream as its pooling."""

    def __init__(self, arch: str, num_classes: int, input_size: Sequence[int] = (3, 32, 32),
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.25, 0.25, 0.25),
                 size: str = "cpu") -> None:
        super().__init__(arch, num_classes, input_size, mean, std, size)
        widths = self.backbone.stage_widths
        self.query = nn.Parameter(torch.randn(widths[0]) / math.sqrt(widths[0]))
        self.projections = nn.ModuleList(
            nn.Linear(d_in, d_out, bias=False) for d_in, d_out in zip(widths[:-1], widths[1:])
        )
        for projection in self.projections:
            nn.init.zeros_(projection.weight)
        self.config.update(widths=tuple(widths))

    def attend(self, features: torch.Tensor, query: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``features`` ``[B, d, h, w]``, ``query`` ``[B, d]`` -> (``CA`` ``[B, d]``, ``a`` ``[B, h, w]``)."""
        b, d, h, w = features.shape
        flat = features.flatten(2)  # [B, d, N]
        attention = (torch.einsum("bdn,bd->bn", flat, query) / math.sqrt(d)).softmax(dim=1)
        pooled = torch.einsum("bdn,bn->bd", flat, attention)
        return pooled, attention.view(b, h, w)

    def stream(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Normalised input -> (pooled ``CA_L`` ``[B, d_L]``, attention maps of every stage)."""
        stages = self.backbone.stage_outputs(x)
        query = self.query.unsqueeze(0).expand(x.shape[0], -1)
        attentions = []
        pooled = None
        for index, features in enumerate(stages):
            pooled, attention = self.attend(features, query)
            attentions.append(attention)
            if index < len(self.projections):
                query = self.projections[index](pooled)
        return pooled, attentions

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stream(x)[0]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.backbone.classifier(features)

    def attention_maps(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The attention of every stage ``[B, h_l, w_l]`` for images ``x`` in ``[0, 1]``."""
        return self.stream(self.encode_input(x))[1]

    @torch.no_grad()
    def explain(self, x: torch.Tensor, target: Target = None, layer: Optional[int] = None) -> torch.Tensor:
        """The attention map of stage ``layer`` (default: the last), upsampled; it does not depend
        on ``target``: the stream's attention is class-agnostic."""
        maps = self.attention_maps(x)
        index = len(maps) - 1 if layer is None else layer
        if not 0 <= index < len(maps):
            raise ValueError(f"layer {layer} out of range; valid layers: 0..{len(maps) - 1}")
        return upsample(maps[index], x.shape[-2:])


def _register(parent: str, in_all: bool) -> None:
    name = f"ca_stream_{parent}"

    normalisation = MODELS.defaults(parent)  # the parent's default mean and std

    @MODELS.register(name, family="ca_stream", recipe="ca_stream", parent=parent, in_all=in_all)
    def builder(num_classes: int = 10, input_size=(3, 32, 32), mean=normalisation["mean"], std=normalisation["std"],
                size: str = "cpu") -> CAStreamResNet:
        return CAStreamResNet(parent, num_classes, input_size, mean, std, size)

    builder.__name__ = name
    builder.__doc__ = f"CA-Stream beside a frozen, trained ``{parent}`` (its checkpoint is the starting point)."


for _parent, _in_all in (("resnet18", True), ("cifar_resnet20", False), ("cifar_resnet56", False)):
    _register(_parent, _in_all)
