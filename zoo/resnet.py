"""ResNet-18 and ResNet-50 baselines, built with timm and explained post hoc, and ResNet-34 (the
backbone of the k-means-head paper; registered with ``in_all=False``, so ``zoo=all`` leaves it out).

``pretrained=true`` (with ``size=paper``, the only size with published weights) starts from timm's
ImageNet weights through timm's own mechanism (the Hugging Face hub, cached by timm); on a
small input the CIFAR stem replaces timm's and is trained from scratch, and the classifier is new
whenever the number of classes differs from 1000. ``pretrained_file=PATH`` gives timm a local
file instead of the hub (timm's ``pretrained_cfg_overlay``). Offline without the file, building
the model fails with one line naming what is missing and the ``weights=`` way.

For inputs of at most 64 pixels the stem is the CIFAR one (a 3x3 convolution with stride 1 and
no max-pool); larger inputs keep timm's ImageNet stem. The CPU profile keeps the architecture
(BasicBlock [2, 2, 2, 2] for ResNet-18 and [3, 4, 6, 3] for ResNet-34, Bottleneck [3, 4, 6, 3]
for ResNet-50) with a quarter of the widths (16, 32, 64, 128); the paper profile has the usual
(64, 128, 256, 512).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence

import torch
from torch import nn

from interpbench.zoo import MODELS
from interpbench.zoo.base import ZooModel
from interpbench.zoo.cifar_resnet import SIZES as CIFAR_SIZES
from interpbench.zoo.cifar_resnet import CifarResNet

WIDTHS = {"cpu": (16, 32, 64, 128), "paper": (64, 128, 256, 512)}
CIFAR_STEM_MAX_SIZE = 64
INJECTABLE = {"norm_layer", "act_layer", "zero_init_last"}


class TimmResNet(ZooModel):
    """A timm ResNet behind the zoo interface; ``cam_layer`` is the last stage (``layer4``)."""

    channels_last = True  # about 1.2x faster training on a CPU (ResNet-50, 1 thread)

    def __init__(
        self,
        arch: str,
        num_classes: int,
        input_size: Sequence[int] = (3, 32, 32),
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
        size: str = "cpu",
        pretrained: bool = False,
        pretrained_file: Optional[str] = None,
        **layers: Any,
    ) -> None:
        """``layers``: timm ResNet arguments injected as they are (``norm_layer``, ``act_layer``,
        ``zero_init_last``); the B-cos ResNet passes its own normalisation and activation here."""
        super().__init__(num_classes, input_size, mean, std)
        unknown = sorted(set(layers) - INJECTABLE)
        if unknown:
            raise TypeError(f"TimmResNet takes no argument {', '.join(unknown)}; injectable: {', '.join(sorted(INJECTABLE))}")
        if size not in WIDTHS:
            raise ValueError(f"unknown size '{size}'; valid sizes: {', '.join(WIDTHS)}")
        import timm

        widths = WIDTHS[size]
        small_input = max(input_size[1:]) <= CIFAR_STEM_MAX_SIZE
        pretrained = bool(pretrained or pretrained_file)
        if pretrained and size != "paper":
            raise ValueError(f"pretrained {arch} weights exist for size=paper only (the usual widths), got size={size}")
        stem = {}
        if not pretrained and (small_input or widths[0] != 64):
            # timm's plain stem is always 64 wide; its deep stem ends at 2 * stem_width, which
            # lets the stem match the first stage's width. A small input then swaps that stem
            # for the CIFAR one.
            stem = {"stem_type": "deep", "stem_width": widths[0] // 2}
        overlay = {"file": str(Path(pretrained_file).expanduser())} if pretrained_file else None
        try:
            self.net = timm.create_model(
                arch, pretrained=pretrained, pretrained_cfg_overlay=overlay, num_classes=num_classes,
                in_chans=input_size[0], channels=widths, **stem, **layers,
            )
        except Exception as error:
            if not pretrained:
                raise
            where = f"the file {pretrained_file}" if pretrained_file else "timm's download (offline?)"
            text = " ".join(str(error).split())[:160]
            raise ValueError(
                f"pretrained {arch} weights could not be loaded from {where}: {type(error).__name__}: {text}; "
                f"download them where there is a network (timm caches them), or pass a local file with "
                f"pretrained_file=PATH (timm's layout) or weights=PATH (a state dict of this zoo model)"
            ) from None
        if small_input:
            self.net.conv1 = nn.Conv2d(input_size[0], widths[0], 3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(self.net.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.net.maxpool = nn.Identity()
        self.config.update(arch=arch, widths=widths, pretrained=pretrained)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def stage_outputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The outputs of the four stages (``layer1`` .. ``layer4``) for a normalised input; the
        last one is what ``forward_features`` returns."""
        net = self.net
        x = net.maxpool(net.act1(net.bn1(net.conv1(x))))
        outputs = []
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            x = stage(x)
            outputs.append(x)
        return outputs

    @property
    def stage_widths(self) -> List[int]:
        """Channels of the four stage outputs."""
        widths = {info["module"]: info["num_chs"] for info in self.net.feature_info}
        return [widths[f"layer{i}"] for i in range(1, 5)]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(features)

    @property
    def classifier(self) -> nn.Linear:
        return self.net.fc

    @property
    def cam_layer(self) -> nn.Module:
        return self.net.layer4


@MODELS.register("resnet18", family="resnet", recipe="resnet_standard")
def resnet18(num_classes: int = 10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3,
             size: str = "cpu", pretrained: bool = False, pretrained_file: Optional[str] = None) -> TimmResNet:
    """ResNet-18 (BasicBlock [2, 2, 2, 2]); ``pretrained``: timm's ImageNet weights (size=paper)."""
    return TimmResNet("resnet18", num_classes, input_size, mean, std, size, pretrained, pretrained_file)


# The k-means-head paper's backbone; left out of zoo=all (name it, or select it with 'zoo=*resnet34*').
@MODELS.register("resnet34", family="resnet", recipe="resnet_standard", in_all=False)
def resnet34(num_classes: int = 10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3,
             size: str = "cpu", pretrained: bool = False, pretrained_file: Optional[str] = None) -> TimmResNet:
    """ResNet-34 (BasicBlock [3, 4, 6, 3]); ``pretrained``: timm's ImageNet weights (size=paper)."""
    return TimmResNet("resnet34", num_classes, input_size, mean, std, size, pretrained, pretrained_file)


@MODELS.register("resnet50", family="resnet", recipe="resnet_standard")
def resnet50(num_classes: int = 10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3,
             size: str = "cpu", pretrained: bool = False, pretrained_file: Optional[str] = None) -> TimmResNet:
    """ResNet-50 (Bottleneck [3, 4, 6, 3]); ``pretrained``: timm's ImageNet weights (size=paper)."""
    return TimmResNet("resnet50", num_classes, input_size, mean, std, size, pretrained, pretrained_file)


def make_backbone(arch: str, num_classes: int, input_size: Sequence[int], mean: Sequence[float],
                  std: Sequence[float], size: str) -> "TimmResNet | CifarResNet":
    """The ResNet a derived model is built on: ``cifar_resnet<depth>`` (CIFAR ResNet, three stages) or a
    timm ResNet (``resnet18``, ``resnet50``; four stages)."""
    if arch.startswith("cifar_resnet"):
        if size not in CIFAR_SIZES:
            raise ValueError(f"unknown size '{size}'; valid sizes: {', '.join(CIFAR_SIZES)}")
        return CifarResNet(int(arch[len("cifar_resnet"):]), num_classes, input_size, mean, std)
    return TimmResNet(arch, num_classes, input_size, mean, std, size)


class FrozenResNetModel(ZooModel):
    """Base of the models built on a trained zoo ResNet kept frozen (CA-Stream, k-means head):
    ``self.backbone`` is a :class:`TimmResNet` or a :class:`CifarResNet` whose parameters never
    require gradients and whose batch norms stay in eval mode; ``init_from_parent`` copies the
    trained ResNet into it. Both backbones give ``stage_outputs``, ``stage_widths``,
    ``classifier`` and ``cam_layer``; ``stem_and_stage_outputs`` and ``stem_width`` add the stem's
    output in front of the stages."""

    channels_last = True

    def __init__(self, arch: str, num_classes: int, input_size: Sequence[int], mean: Sequence[float],
                 std: Sequence[float], size: str) -> None:
        super().__init__(num_classes, input_size, mean, std)
        self.backbone = make_backbone(arch, num_classes, input_size, mean, std, size)
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)
        self.config.update(arch=arch)

    def train(self, mode: bool = True) -> "FrozenResNetModel":
        super().train(mode)
        self.backbone.eval()  # frozen: batch-norm statistics never update
        return self

    def init_from_parent(self, parent: ZooModel, train: Any = None) -> None:
        """Copy the trained ResNet's weights (backbone and classifier) into the frozen backbone."""
        if type(parent) is not type(self.backbone) or parent.config["arch"] != self.config["arch"]:
            raise TypeError(f"{type(self).__name__} over {self.config['arch']} needs a trained "
                            f"{self.config['arch']} as its parent, got {type(parent).__name__} "
                            f"({parent.config.get('arch', 'no arch')})")
        self.backbone.load_state_dict(parent.state_dict())

    def stem_and_stage_outputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        """``[stem output, stage 1 output, ...]`` for a normalised input. The stem's output is what
        the first stage receives (after the stem's convolution, batch norm, ReLU and, on a large
        input, max-pool); it is taken on its way into the first stage, so the backbone's own
        ``stage_outputs`` runs unchanged."""
        captured: List[torch.Tensor] = []
        handle = self._first_stage.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0]))
        try:
            stages = self.backbone.stage_outputs(x)
        finally:
            handle.remove()
        return captured + stages

    @property
    def stem_width(self) -> int:
        """Channels of the stem's output (the first stage's input)."""
        return self._first_stage[0].conv1.in_channels

    @property
    def _first_stage(self) -> nn.Sequential:
        return self.backbone.net.layer1 if isinstance(self.backbone, TimmResNet) else self.backbone.layer1

    @property
    def cam_layer(self) -> nn.Module:
        return self.backbone.cam_layer
