"""CA-Stream ResNets (Torres et al., "CA-Stream: Attention-based pooling for interpretable image
recognition", CVPR-W 2024): a cross-attention stream beside a frozen, trained ResNet.

The stream reads the backbone's feature maps ``F_0 .. F_L``: ``F_0`` is the stem's output (``S0``:
after the stem's convolution, batch norm, ReLU and max-pool, before stage 1) and ``F_l`` the output
of stage ``l`` (``L = 4`` for the timm ResNets, ``3`` for the CIFAR ResNets). ``F_l`` is ``[N_l, c_l]``
(positions by channels). A learnable query ``q_0`` (``c_0`` wide) goes through one cross-attention
block per map:

    a_l = softmax(F_l q_l / sqrt(c_l))     attention over the N_l positions
    CA_l = F_l^T a_l                       attention-pooled feature (c_l)
    q_{l+1} = W_l CA_l + b_l               W_l: c_l -> c_{l+1} for l < L;  W_L: c_L -> c_L

and the last block's output ``q_{L+1} = W_L CA_L + b_L`` replaces global average pooling in front
of the frozen classifier. The stream holds ``c_0 + sum_{l<L} (c_l c_{l+1} + c_{l+1}) + c_L^2 + c_L``
parameters: for a ResNet-50 at the usual widths (``c = 64, 256, 512, 1024, 2048``), 6,969,152.
Only ``q_0`` and the ``W_l``, ``b_l`` train; the backbone and the classifier are frozen (their
parameters do not require gradients and their batch-norm statistics stay in eval mode).

Initialisation, as the reference code (``models/ResNet/resnet_stream.py`` and
``models/transformer.py`` of github.com/ftorres11/CA_Stream): every entry of ``q_0`` drawn from
``N(1, 1)``, the ``W_l`` Xavier-uniform, the ``b_l`` PyTorch's default for a linear layer
(uniform in ``+-1/sqrt(c_l)``). Training therefore starts from a random stream, not from the
parent's predictions.

Average pooling as a special case: a zero query gives uniform attention (``a_l = 1/N_l``), so
``CA_l`` is the average pool of ``F_l``. For the last map this happens, for every input and
whatever ``q_0`` and the earlier blocks, when ``W_{L-1} = 0`` and ``b_{L-1} = 0``; then ``CA_L``
is exactly the parent's global-average-pooled feature. The parent's logits follow only if also
``W_L = I`` and ``b_L = 0``, since ``W_L`` sits between ``CA_L`` and the classifier. The
initialisation above satisfies neither.

Native explanation: the last block's attention ``a_L`` (class-agnostic), upsampled bilinearly to
the input. ``explain(layer=l)`` gives ``a_l`` instead: ``0`` is the stem's map (``S0``), ``1 .. L``
the stages' maps, ``L`` the default. Grad-CAM and the other CAM methods run on this CA-pooled model
through ``cam_layer`` (the backbone's last stage): the paper's comparison of CAM with GAP and with CA.

Where this differs from the reference code, and why:

- The backbone is the zoo's ResNet: on inputs of at most 64 pixels the timm ResNets and the CIFAR
  ResNets have a 3x3 stride-1 stem without max-pool, so ``F_0`` has the input's resolution (the
  reference works at 224 pixels with the 7x7 stride-2 stem and max-pool, ``F_0`` at 56x56). At
  ``size=cpu`` the timm widths are a quarter of the usual ones (``c_0 = 16``, not 64). The CIFAR
  ResNets, which the reference does not cover, get the same stream over their stem (16 channels)
  and three stages.
- The maps are the softmax probabilities ``a_l`` (they sum to one per image). The reference's
  blocks hand out the scores before the softmax (``F_l q_l / sqrt(c_l)``) as their attention;
  the softmax keeps each image's order of positions, but not the values.
- The whole stream trains (``q_0`` and every ``W_l``, ``b_l``) with the backbone and the classifier
  frozen. The reference's freezing switch keeps trainable only the parameters whose name contains
  ``cls``, which in its ``resnet_stream.py`` would be the query alone; we train the stream the
  paper describes.
- The frozen backbone's batch norms stay in eval mode, so the parent's function is fixed. The
  reference's training loop puts the whole network in training mode, and its helper meant to
  stop the norms looks for ``norm`` in parameter names that torchvision's ResNet calls ``bn``:
  there the backbone normalises with batch statistics and its running statistics drift while
  the stream trains.
- The training recipe is the profiles' ``ca_stream`` recipe, not the reference's (SGD, learning
  rate 0.1, momentum 0.9, weight decay 1e-4, divided by 10 at epochs 30, 60 and 90; 20 epochs by
  default, on ImageNet with mixed precision): see the README.

``config["stream_version"]`` and the registry's ``version`` are 2 for this stream; version 1 (no
``S0`` block, no ``W_L``, the projections started at zero) is gone. The registry's version enters
the checkpoint's key (``TrainSpec.identity``), so a store that holds version-1 ``ca_stream_*``
models, maps and cells trains and computes the new stream under new keys instead of reusing them.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from interpbench.zoo import MODELS
from interpbench.zoo.base import Target, upsample
from interpbench.zoo.resnet import FrozenResNetModel

STREAM_VERSION = 2


def cross_attention(features: torch.Tensor, query: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``features`` ``[B, c, h, w]``, ``query`` ``[B, c]`` -> (``CA = F^T a`` ``[B, c]``, ``a`` ``[B, h, w]``)
    with ``a = softmax(F q / sqrt(c))`` over the ``h * w`` positions."""
    b, c, h, w = features.shape
    flat = features.flatten(2)  # [B, c, N]
    attention = (torch.einsum("bcn,bc->bn", flat, query) / math.sqrt(c)).softmax(dim=1)
    pooled = torch.einsum("bcn,bn->bc", flat, attention)
    return pooled, attention.view(b, h, w)


class CAStreamResNet(FrozenResNetModel):
    """A frozen zoo ResNet with a trainable cross-attention stream as its pooling (module docstring).

    ``query`` is ``q_0``; ``projections[l]`` holds ``W_l`` and ``b_l`` (``projections[-1]`` is ``W_L``)."""

    def __init__(self, arch: str, num_classes: int, input_size: Sequence[int] = (3, 32, 32),
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.25, 0.25, 0.25),
                 size: str = "cpu") -> None:
        super().__init__(arch, num_classes, input_size, mean, std, size)
        widths = self.stream_widths
        self.query = nn.Parameter(torch.randn(widths[0]) + 1.0)  # N(1, 1) per entry
        self.projections = nn.ModuleList(
            nn.Linear(c_in, c_out) for c_in, c_out in zip(widths, widths[1:] + widths[-1:])
        )
        for projection in self.projections:
            nn.init.xavier_uniform_(projection.weight)  # the bias keeps nn.Linear's default
        self.config.update(stream_widths=tuple(widths), stream_version=STREAM_VERSION)

    @property
    def stream_widths(self) -> List[int]:
        """``c_0 .. c_L``: the stem's width, then the stages'."""
        return [self.stem_width] + list(self.backbone.stage_widths)

    def stream(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Normalised input -> (``CA_0 .. CA_L`` ``[B, c_l]``, ``a_0 .. a_L`` ``[B, h_l, w_l]``)."""
        maps = self.stem_and_stage_outputs(x)
        query = self.query.unsqueeze(0).expand(x.shape[0], -1)
        pooled, attentions = [], []
        for index, features in enumerate(maps):
            ca, attention = cross_attention(features, query)
            pooled.append(ca)
            attentions.append(attention)
            if index < len(maps) - 1:
                query = self.projections[index](ca)
        return pooled, attentions

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``q_{L+1} = W_L CA_L + b_L``: what the classifier receives."""
        return self.projections[-1](self.stream(x)[0][-1])

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.backbone.classifier(features)

    def attention_maps(self, x: torch.Tensor) -> List[torch.Tensor]:
        """``a_0 .. a_L`` ``[B, h_l, w_l]`` for images ``x`` in ``[0, 1]``: index 0 is the stem's map."""
        return self.stream(self.encode_input(x))[1]

    @torch.no_grad()
    def explain(self, x: torch.Tensor, target: Target = None, layer: Optional[int] = None) -> torch.Tensor:
        """The attention map ``a_layer`` (default ``L``, the last stage; ``0`` the stem), upsampled; it
        does not depend on ``target``: the stream's attention is class-agnostic."""
        last = len(self.projections) - 1
        index = last if layer is None else layer
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= last:
            raise ValueError(f"layer {layer!r} out of range; valid layers: 0..{last} "
                             f"(0: the stem, 1..{last}: the stages; default {last})")
        return upsample(self.attention_maps(x)[index], x.shape[-2:])


def _register(parent: str, in_all: bool) -> None:
    name = f"ca_stream_{parent}"

    normalisation = MODELS.defaults(parent)  # the parent's default mean and std

    @MODELS.register(name, family="ca_stream", recipe="ca_stream", parent=parent, in_all=in_all,
                     version=STREAM_VERSION)
    def builder(num_classes: int = 10, input_size=(3, 32, 32), mean=normalisation["mean"], std=normalisation["std"],
                size: str = "cpu") -> CAStreamResNet:
        return CAStreamResNet(parent, num_classes, input_size, mean, std, size)

    builder.__name__ = name
    builder.__doc__ = (f"CA-Stream beside a frozen, trained ``{parent}`` (its checkpoint gives the backbone and "
                       "the classifier).")


for _parent, _in_all in (("resnet18", True), ("resnet50", False), ("cifar_resnet20", False), ("cifar_resnet56", False)):
    _register(_parent, _in_all)
