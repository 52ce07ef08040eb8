"""CoDA-Nets: Convolutional Dynamic Alignment Networks (Böhle, Fritz & Schiele, CVPR 2021).

Dynamic Alignment Unit (DAU). For an input patch ``x`` (``D = C_in * k * k`` values) each output
channel ``j`` computes an input-dependent weight vector from a rank-``r`` factorisation,

    w_j(x) = g(A_j B x + b_j),        out_j = w_j(x) . x,

with ``B`` (``r x D``) shared by the channels of a layer, ``A_j`` (``D x r``) and ``b_j`` (``D``)
per channel, and the squashing non-linearity

    g(u) = |u|^2 / (1 + |u|^2) * u / |u|,      so |g(u)| < 1.

The output is largest when ``w_j(x)`` is aligned with ``x`` and its norm is close to 1. A
convolutional DAU layer does this for every patch: ``B`` is a ``k x k`` convolution to ``r``
channels (with the layer's stride and padding) and ``[A | b]`` a ``1 x 1`` convolution to
``C_out * D`` channels.

Computing it without materialising w(x). Writing ``z~ = [B x, 1]`` and ``M_j = [A_j | b_j]``
(``D x (r + 1)``), the pre-squash weight is ``u_j = M_j z~`` and

    u_j . x  = z~ . (M_j^T x),             |u_j|^2 = z~^T (M_j^T M_j) z~,
    out_j    = s(|u_j|^2) * (u_j . x),     s(q) = sqrt(q) / (1 + q),

so the per-position intermediates have ``C_out * (r + 1)`` values instead of ``C_out * D`` (9x
smaller for the paper's deeper layers). ``tests/test_coda.py`` checks it against the explicit
per-patch ``g(w(x)) . x``. In explanation mode ``B x`` (hence ``u`` and ``s``) is detached, so
the layer is the fixed linear map ``x -> g(w(x)) . x`` for the gradient.

The network (the paper's 9-layer S-CoDA-SQ for 32-pixel inputs): eight 3x3 DAU layers (stride
2 at layers 3 and 6, padding 1) and a 1x1 DAU layer to one channel per class; the class maps
are sum-pooled over positions, divided by the temperature ``T`` and shifted by a fixed logit
bias ``log(p / (1 - p))`` with ``p = 1 / K`` (``log(0.1 / 0.9)`` for 10 classes, the paper's
value), so the whole network is ``logits = W(x) x / T + bias`` without any other bias term and
the contributions ``x * d logit / dx`` (explanation mode) sum to ``logit - bias``.

Loss. The paper trains CoDA-Nets with binary cross-entropy on one-hot targets (a sigmoid per
class); with the logit bias every class sits at the prior probability ``1 / K`` without evidence
and needs positive evidence, i.e. aligned weights, to rise above it. ``loss="bce"`` (default)
does that; ``loss="ce"`` is softmax cross-entropy. ``probabilities`` stays the softmax either
way (the harness compares class distributions; the argmax is the same).

Sizes: ``paper`` is the published widths 16-16-32-32-32-64-64-64 and ranks 32-32-64x7 with
``T = 1000``; ``cpu`` keeps the nine layers, kernels, strides, padding and ``T`` with a quarter of
the widths and ranks (4-4-8-8-8-16-16-16, ranks 8-8-16x7), so it trains within the CPU profile's
budget (a training step costs about ``C_out * (r + 1) * D`` multiply-adds per position and layer,
cubic in the width).
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from interpbench.zoo import MODELS
from interpbench.zoo.dynamic import DynamicLinearModel

KERNEL_SIZES = (3, 3, 3, 3, 3, 3, 3, 3, 1)
STRIDES = (1, 1, 2, 1, 1, 2, 1, 1, 1)
PADDINGS = (1, 1, 1, 1, 1, 1, 1, 1, 0)
NUM_HIDDEN = len(KERNEL_SIZES) - 1  # the last layer has one channel per class

# hidden widths (8 layers), ranks (9 layers) and the logit temperature T of each named size.
SIZES = {
    "cpu": {"channels": (4, 4, 8, 8, 8, 16, 16, 16), "ranks": (8, 8, 16, 16, 16, 16, 16, 16, 16),
            "temperature": 1000.0},
    "paper": {"channels": (16, 16, 32, 32, 32, 64, 64, 64), "ranks": (32, 32, 64, 64, 64, 64, 64, 64, 64),
              "temperature": 1000.0},
}
LOSSES = ("bce", "ce")
SQUASH_EPS = 1e-12  # floor of |u|^2 under the square root (its gradient is infinite at 0)


def squash_scale(squared_norm: torch.Tensor) -> torch.Tensor:
    """``s(q) = sqrt(q) / (1 + q)``: ``g(u) = s(|u|^2) u``, so ``|g(u)| = q / (1 + q)``."""
    return squared_norm.clamp_min(SQUASH_EPS).sqrt() / (1.0 + squared_norm)


def squash(u: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The squashing ``g(u) = |u|^2 / (1 + |u|^2) * u / |u|`` of the vectors along ``dim``."""
    return squash_scale(u.pow(2).sum(dim=dim, keepdim=True)) * u


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


class DAUConv2d(nn.Module):
    """A convolutional layer of Dynamic Alignment Units (see the module docstring).

    ``reduce`` is ``B`` (a ``k x k`` convolution to ``rank`` channels, no bias) and ``expand`` is
    ``[A | b]`` (a ``1 x 1`` convolution from ``rank`` to ``out_channels * D`` channels with bias;
    output channel ``j * D + d`` is component ``d`` of unit ``j``'s weight vector, and ``d``
    follows ``F.unfold``'s patch order: input channel, then kernel row, then kernel column).
    """

    def __init__(self, in_channels: int, out_channels: int, rank: int, kernel_size: int = 3,
                 stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.rank = _positive_int(rank, "rank")
        self.kernel_size = _positive_int(kernel_size, "kernel_size")
        self.stride = _positive_int(stride, "stride")
        if isinstance(padding, bool) or not isinstance(padding, numbers.Integral) or not 0 <= padding < kernel_size:
            raise ValueError(f"padding must be an integer in [0, kernel_size - 1 = {kernel_size - 1}], got {padding!r}")
        self.padding = int(padding)
        self.patch_dim = self.in_channels * self.kernel_size * self.kernel_size
        self.reduce = nn.Conv2d(self.in_channels, self.rank, self.kernel_size, stride=self.stride,
                                padding=self.padding, bias=False)
        self.expand = nn.Conv2d(self.rank, self.out_channels * self.patch_dim, 1, bias=True)
        self.explanation_mode = False

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, rank={self.rank}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"DAUConv2d expects input [B, {self.in_channels}, H, W], got {list(x.shape)}")

    def _factors(self) -> torch.Tensor:
        """``M = [A | b]`` as ``[out_channels, D, rank + 1]``."""
        a = self.expand.weight.view(self.out_channels, self.patch_dim, self.rank)
        b = self.expand.bias.view(self.out_channels, self.patch_dim, 1)
        return torch.cat([a, b], dim=2)

    def dynamic_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The squashed weights ``g(w(x))`` explicitly, ``[B, out_channels, D, H', W']`` (for inspection;
        memory ``out_channels * D`` per position)."""
        self._check_input(x)
        u = self.expand(self.reduce(x))
        u = u.view(x.shape[0], self.out_channels, self.patch_dim, *u.shape[-2:])
        return squash(u, dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        batch = x.shape[0]
        j, r1 = self.out_channels, self.rank + 1
        factors = self._factors()  # [J, D, r + 1]
        z = self.reduce(x)  # B x: [B, r, h, w]
        if self.explanation_mode:  # w(x) depends on x only through B x: detaching it fixes w
            z = z.detach()
        z = torch.cat([z, z.new_ones(batch, 1, *z.shape[-2:])], dim=1).unsqueeze(1)  # z~ = [B x, 1]
        # u_j . x = z~ . (M_j^T x): M_j^T x for every unit is one convolution with J * (r + 1) channels
        transposed = factors.transpose(1, 2).reshape(j * r1, self.in_channels, self.kernel_size, self.kernel_size)
        projected = F.conv2d(x, transposed, stride=self.stride, padding=self.padding)
        h, w = projected.shape[-2:]
        aligned = (projected.view(batch, j, r1, h, w) * z).sum(2)  # [B, J, h, w]
        # |u_j|^2 = z~^T G_j z~ with G_j = M_j^T M_j: a 1 x 1 convolution of z~, then a dot with z~
        gram = torch.einsum("jdr,jds->jrs", factors, factors).reshape(j * r1, r1, 1, 1)
        squared = (F.conv2d(z.squeeze(1), gram).view(batch, j, r1, h, w) * z).sum(2)
        return squash_scale(squared) * aligned


def check_architecture(channels: Sequence[int], rank: Union[int, Sequence[int]], temperature: float):
    """Validated (hidden widths, per-layer ranks, temperature); ``rank`` is one integer or nine."""
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Iterable):
        raise ValueError(f"channels must list {NUM_HIDDEN} hidden widths (the 9th layer has one per class), "
                         f"got {channels!r}")
    channels = tuple(channels)
    if len(channels) != NUM_HIDDEN:
        raise ValueError(f"channels must list {NUM_HIDDEN} hidden widths (the 9th layer has one per class), "
                         f"got {len(channels)}: {list(channels)}")
    channels = tuple(_positive_int(width, "every width in channels") for width in channels)
    if isinstance(rank, numbers.Integral) and not isinstance(rank, bool):
        ranks = (rank,) * len(KERNEL_SIZES)
    else:
        if isinstance(rank, (str, bytes)) or not isinstance(rank, Iterable):
            raise ValueError(f"rank must be one integer or {len(KERNEL_SIZES)} (one per layer), got {rank!r}")
        ranks = tuple(rank)
        if len(ranks) != len(KERNEL_SIZES):
            raise ValueError(f"rank must be one integer or {len(KERNEL_SIZES)} (one per layer), "
                             f"got {len(ranks)}: {list(ranks)}")
    ranks = tuple(_positive_int(value, "rank") for value in ranks)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not (
            math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return channels, ranks, float(temperature)


def resolve_size(size: str, channels: Optional[Sequence[int]], rank: Union[None, int, Sequence[int]],
                 temperature: Optional[float]):
    """(hidden widths, per-layer ranks, temperature) of a named size, with optional overrides."""
    if size not in SIZES:
        raise ValueError(f"unknown size '{size}'; valid sizes: {', '.join(SIZES)}")
    spec = SIZES[size]
    return check_architecture(spec["channels"] if channels is None else channels,
                              spec["ranks"] if rank is None else rank,
                              spec["temperature"] if temperature is None else temperature)


class CoDANet(DynamicLinearModel):
    """The 9-layer CoDA-Net: DAU layers, sum pooling of the class maps, ``/ T``, fixed logit bias."""

    def __init__(
        self,
        num_classes: int,
        input_size: Sequence[int] = (3, 32, 32),
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
        channels: Sequence[int] = SIZES["cpu"]["channels"],
        ranks: Union[int, Sequence[int]] = SIZES["cpu"]["ranks"],
        temperature: float = SIZES["cpu"]["temperature"],
        logit_bias: Optional[float] = None,
        loss: str = "bce",
    ) -> None:
        super().__init__(num_classes, input_size, mean, std)
        if len(self.input_size) != 3 or min(self.input_size) < 1:
            raise ValueError(f"input_size must be (channels, height, width) of positive integers, got {input_size}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss '{loss}'; valid losses: {', '.join(LOSSES)}")
        channels, ranks, temperature = check_architecture(channels, ranks, temperature)
        if logit_bias is None:
            logit_bias = math.log(1.0 / (num_classes - 1))  # prior 1 / K: log(0.1 / 0.9) for K = 10
        if isinstance(logit_bias, bool) or not isinstance(logit_bias, numbers.Real) or not math.isfinite(logit_bias):
            raise ValueError(f"logit_bias must be a finite number, got {logit_bias!r}")
        self.temperature = temperature
        self.logit_bias = float(logit_bias)
        self.loss_name = loss
        widths = (2 * self.input_size[0],) + channels + (num_classes,)  # [x, 1 - x] encoding
        self.layers = nn.ModuleList(
            DAUConv2d(widths[i], widths[i + 1], ranks[i], KERNEL_SIZES[i], STRIDES[i], PADDINGS[i])
            for i in range(len(KERNEL_SIZES))
        )
        self.config.update(channels=channels, ranks=ranks, temperature=temperature,
                           logit_bias=self.logit_bias, loss=loss)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoded input ``[B, 2C, H, W]`` -> class evidence maps ``[B, K, h, w]``."""
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return features.sum(dim=(2, 3)) / self.temperature + self.logit_bias

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "ce":
            return F.cross_entropy(logits, labels)
        targets = F.one_hot(labels.long(), self.num_classes).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, targets)

    @property
    def cam_layer(self) -> nn.Module:
        return self.layers[-1]  # the class maps before sum pooling (8 x 8 at 32 px)


@MODELS.register("coda_net", family="coda", recipe="coda")
def coda_net(num_classes: int = 10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3,
             size: str = "cpu", temperature: Optional[float] = None,
             rank: Union[None, int, Sequence[int]] = None, channels: Optional[Sequence[int]] = None,
             logit_bias: Optional[float] = None, loss: str = "bce") -> CoDANet:
    """The 9-layer S-CoDA-SQ. ``rank``: one for all layers or nine; ``channels``: eight hidden widths."""
    channels, ranks, temperature = resolve_size(size, channels, rank, temperature)
    return CoDANet(num_classes, input_size, mean, std, channels, ranks, temperature, logit_bias, loss)
