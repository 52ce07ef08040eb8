"""FA-CNN, the Feature-Align CNN (Farvardin & Chapman, arXiv 2603.25798), and its controls.

Backbone: a stem projects the input to C channels (X_0); then N_D layers

    X_L = ReLU((1 - b_L) * X_{L-1} + b_L * tanh(F_L(X_{L-1}))),   b_L = 1 / L,

the *dampened skip connection*, with F_L a 3x3 convolution and batch norm from C to C channels,
so channel k stays channel k. The layers form three stages of N_D / 3 layers with a 2x2 max-pool
between stages, so the last layer feeds the head directly (at 32x32 input: 32, 16, 8 pixels).

Heads and variants, on the same backbone:

- ``fa_cnn``: the pooling head ("3D global average pooling"). With R = C / K channels per class,
  the pre-logit Y_c is the mean of channels [c R, (c + 1) R) over all positions. Y >= 0, so the
  probabilities are Y / ||Y||_1 and the loss is the negative log of that probability.
- ``fa_cnn_linear``: global average pooling and a linear head.
- ``vanilla_cnn``: the ordinary skip ReLU(X + F(X)) and a linear head.

Intrinsic explanation of class c at layer L (``fa_cnn``): the mean A_c of class c's R channels of
X_L, upsampled to the input. At the last layer (X_{N_D}, h x w pixels, which feeds the head
directly) Grad-CAM of Y_c equals this map divided by h * w, i.e. the map is h * w times Grad-CAM
(the paper's Theorem 1): Y_c is the mean over the R channels and the h * w positions, so dY_c/dX_k
is 1 / (R h w) at every position of each of class c's channels and 0 on the others; Grad-CAM's
channel weights are therefore 1 / (R h w) and its map sum_k alpha_k X_k is A_c / (h w). A_c >= 0
(X_{N_D} is a ReLU output), so Grad-CAM's final ReLU changes nothing. tests/test_fa_cnn.py checks
the identity numerically for every class, at layer resolution and through the explainers.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from interpbench.zoo import MODELS
from interpbench.zoo.base import Target, ZooModel, resolve_target, upsample

# depth N_D and channels per class (the CPU profile) or total channels C (the paper's).
SIZES = {
    "cpu": {"depth": 9, "channels_per_class": 3},
    "paper": {"depth": 24, "channels": {10: 200}, "default_channels": 600},
}
PROBABILITY_EPS = 1e-6


def model_size(size: str, num_classes: int, depth: Optional[int], channels: Optional[int]):
    """Resolve (depth, channels) from a named size and optional explicit values."""
    if size not in SIZES:
        raise ValueError(f"unknown size '{size}'; valid sizes: {', '.join(SIZES)}")
    spec = SIZES[size]
    if depth is None:
        depth = spec["depth"]
    if channels is None:
        if "channels_per_class" in spec:
            channels = spec["channels_per_class"] * num_classes
        else:
            channels = spec["channels"].get(num_classes, spec["default_channels"])
    return depth, channels


class DampenedLayer(nn.Module):
    """X_L = ReLU((1 - 1/L) X + (1/L) tanh(BN(conv(X)))), or the ordinary ReLU(X + BN(conv(X)))."""

    def __init__(self, channels: int, index: int, dampened: bool = True) -> None:
        super().__init__()
        if index < 1:
            raise ValueError(f"layer index starts at 1, got {index}")
        self.index = index
        self.dampened = dampened
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn(self.conv(x))
        if not self.dampened:
            return F.relu(x + residual)
        b = 1.0 / self.index
        return F.relu((1.0 - b) * x + b * torch.tanh(residual))


class FeatureAlignCNN(ZooModel):
    """The FA-CNN backbone with a pooling (``head="pool"``) or linear (``head="linear"``) head."""

    def __init__(
        self,
        num_classes: int,
        input_size: Sequence[int] = (3, 32, 32),
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
        depth: int = 6,
        channels: int = 40,
        head: str = "pool",
        dampened: bool = True,
    ) -> None:
        super().__init__(num_classes, input_size, mean, std)
        if head not in ("pool", "linear"):
            raise ValueError(f"unknown head '{head}'; valid heads: pool, linear")
        if depth < 3 or depth % 3:
            raise ValueError(f"depth N_D must be a positive multiple of 3 (three stages), got {depth}")
        if head == "pool" and channels % num_classes:
            raise ValueError(
                f"FA-CNN pooling head needs channels C ({channels}) to be a multiple of "
                f"num_classes ({num_classes}); choose channels={channels - channels % num_classes + num_classes}"
            )
        self.depth, self.channels, self.head = depth, channels, head
        self.config.update(depth=depth, channels=channels, head=head, dampened=dampened)
        self.stem = nn.Sequential(
            nn.Conv2d(input_size[0], channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )
        self.layers = nn.ModuleList(
            DampenedLayer(channels, index, dampened) for index in range(1, depth + 1)
        )
        stage = depth // 3
        self.pool_after = {stage, 2 * stage}  # max-pool between the three stages
        self.fc = nn.Linear(channels, num_classes) if head == "linear" else None

    # --- features -------------------------------------------------------------------------
    def layer_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """All layer outputs [X_0, X_1, ..., X_{N_D}] (before the pools) for normalised ``x``."""
        features = [self.stem(x)]
        current = features[0]
        for index, layer in enumerate(self.layers, start=1):
            current = layer(current)
            features.append(current)
            if index in self.pool_after:
                current = F.max_pool2d(current, 2)
        return features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        current = self.stem(x)
        for index, layer in enumerate(self.layers, start=1):
            current = layer(current)
            if index in self.pool_after:
                current = F.max_pool2d(current, 2)
        return current

    # --- head -----------------------------------------------------------------------------
    def class_pooled(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` -> ``[B, K, h, w]``: the mean of each class's R channels."""
        b, c, h, w = features.shape
        return features.view(b, self.num_classes, c // self.num_classes, h, w).mean(dim=2)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        if self.head == "pool":
            return self.class_pooled(features).mean(dim=(2, 3))  # Y >= 0
        return self.fc(features.mean(dim=(2, 3)))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        if self.head != "pool":
            return super().probabilities(logits)
        shifted = logits.clamp_min(0) + PROBABILITY_EPS
        return shifted / shifted.sum(dim=1, keepdim=True)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.head != "pool":
            return super().loss(logits, labels)
        probs = self.probabilities(logits)
        return -probs.gather(1, labels.view(-1, 1)).log().mean()

    @property
    def cam_layer(self) -> nn.Module:
        return self.layers[-1]

    # --- explanation ----------------------------------------------------------------------
    def _maps_and_logits(self, x: torch.Tensor, layer: Optional[int]):
        layer = self.depth if layer is None else layer
        if not 0 <= layer <= self.depth:
            raise ValueError(f"layer must be in [0, {self.depth}], got {layer}")
        features = self.layer_features(self.normalize(x))
        # The last layer feeds the head directly (no pool after it).
        return self.class_pooled(features[layer]), self.forward_head(features[self.depth])

    def class_maps(self, x: torch.Tensor, layer: Optional[int] = None) -> torch.Tensor:
        """Every class's averaged map at ``layer`` (default N_D), at layer resolution ``[B, K, h, w]``."""
        return self._maps_and_logits(x, layer)[0]

    def explain(self, x: torch.Tensor, target: Target = None, layer: Optional[int] = None) -> torch.Tensor:
        if self.head != "pool":  # only the pooling head aligns channels with classes
            return super().explain(x, target, layer)
        maps, logits = self._maps_and_logits(x, layer)
        index = resolve_target(target, logits)
        chosen = maps[torch.arange(maps.shape[0], device=maps.device), index]
        return upsample(chosen, x.shape[-2:])

    @property
    def has_native_explanation(self) -> bool:
        return self.head == "pool"


def _build(num_classes, input_size, mean, std, size, depth, channels, head, dampened):
    depth, channels = model_size(size, num_classes, depth, channels)
    return FeatureAlignCNN(num_classes, input_size, mean, std, depth, channels, head, dampened)


@MODELS.register("fa_cnn", family="fa_cnn", recipe="fa_minimal")
def fa_cnn(num_classes: int = 10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3,
           size: str = "cpu", depth: Optional[int] = None, channels: Optional[int] = None) -> FeatureAlignCNN:
    """FA-CNN: dampened skips and the class-channel pooling head."""
    return _build(num_classes, input_size, mean, std, size, depth, channels, "pool", True)


@MODELS.register("fa_cnn_linear", family="fa_cnn", recipe="fa_minimal")
def fa_cnn_linear(num_classes: int = 10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3,
                  size: str = "cpu", depth: Optional[int] = None,
                  channels: Optional[int] = None) -> FeatureAlignCNN:
    """The FA-CNN backbone with global average pooling and a linear head."""
    return _build(num_classes, input_size, mean, std, size, depth, channels, "linear", True)


@MODELS.register("vanilla_cnn", family="fa_cnn", recipe="fa_minimal")
def vanilla_cnn(num_classes: int = 10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3,
                size: str = "cpu", depth: Optional[int] = None,
                channels: Optional[int] = None) -> FeatureAlignCNN:
    """Ordinary skips ReLU(X + F(X)) and a linear head: the control without alignment."""
    return _build(num_classes, input_size, mean, std, size, depth, channels, "linear", False)
