"""CIFAR ResNets (He et al., "Deep residual learning for image recognition", CVPR 2016, section 4.2).

Depth ``6n + 2``: a 3x3 stem convolution (16 channels), three stages of ``n`` BasicBlocks with 16,
32 and 64 channels (the first block of stages 2 and 3 halves the resolution), global average
pooling and a linear classifier. Shortcuts are parameter-free (the paper's option A): where a
block changes shape, the input is subsampled by 2 in both directions and zero-padded in the
channels (``width / 4`` on each side). ``cifar_resnet20/32/44/56/110`` have 0.27, 0.46, 0.66,
0.85 and 1.7 M parameters.

Module names follow the common layout of released CIFAR ResNet checkpoints (``conv1``, ``bn1``,
``layer1..3.<i>.conv1/bn1/conv2/bn2``, ``linear``), so such a state dict loads as it is with
``+model_args.cifar_resnet20={weights: PATH}``; the released weights in ``../shared/weights/`` were
trained on images normalised with the ImageNet statistics, so give those as ``mean`` and ``std``
(the data's own statistics are the default).

The architecture has no size variants: ``size=cpu`` and ``size=paper`` build the same network
(it is already small enough for a CPU). These models are left out of ``zoo=all`` (the default
sweep, trained from scratch); name them, or select them with a pattern (``zoo='*cifar_resnet20*'``
selects the ResNet-20 and every model derived from it).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from interpbench.zoo import MODELS
from interpbench.zoo.base import ZooModel

DEPTHS = (20, 32, 44, 56, 110)
STAGE_WIDTHS = (16, 32, 64)
SIZES = ("cpu", "paper")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm; ReLU after the first and after the sum. The shortcut
    is the identity, or (option A) subsampling plus zero channels when the shape changes."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.stride = stride
        increase = channels - in_channels
        if increase < 0 or increase % 2:
            raise ValueError(f"an option-A shortcut needs an even channel increase, got {in_channels} -> {channels}")
        self.pad = increase // 2  # zero channels on each side of the shortcut

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad, self.pad))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(ZooModel):
    """A CIFAR ResNet of depth ``6n + 2`` (see the module docstring); ``cam_layer`` is ``layer3``."""

    def __init__(self, depth: int, num_classes: int = 10, input_size: Sequence[int] = (3, 32, 32),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__(num_classes, input_size, mean, std)
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet's depth is 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(input_size[0], STAGE_WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        channels = STAGE_WIDTHS[0]
        stages = []
        for index, width in enumerate(STAGE_WIDTHS):
            layers = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)
        self.config.update(arch=f"cifar_resnet{depth}", depth=int(depth), widths=STAGE_WIDTHS)

    def stage_outputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The outputs of the three stages for a normalised input; the last is ``forward_features``."""
        x = F.relu(self.bn1(self.conv1(x)))
        outputs = []
        for stage in (self.layer1, self.layer2, self.layer3):
            x = stage(x)
            outputs.append(x)
        return outputs

    @property
    def stage_widths(self) -> List[int]:
        return list(STAGE_WIDTHS)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage_outputs(x)[-1]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.mean(dim=(2, 3)))

    @property
    def classifier(self) -> nn.Linear:
        return self.linear

    @property
    def cam_layer(self) -> nn.Module:
        return self.layer3


def _register(depth: int) -> None:
    name = f"cifar_resnet{depth}"

    @MODELS.register(name, family="resnet", recipe="resnet_standard", in_all=False)
    def builder(num_classes: int = 10, input_size=(3, 32, 32), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                size: str = "cpu") -> CifarResNet:
        if size not in SIZES:
            raise ValueError(f"unknown size '{size}'; valid sizes: {', '.join(SIZES)}")
        return CifarResNet(depth, num_classes, input_size, mean, std)

    builder.__name__ = name
    builder.__doc__ = (f"CIFAR ResNet-{depth} ({(depth - 2) // 6} BasicBlocks per stage, option-A shortcuts); "
                       "the same network at every size.")


for _depth in DEPTHS:
    _register(_depth)
