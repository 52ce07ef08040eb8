"""B-cos networks (Böhle, Fritz & Schiele, CVPR 2022; B-cos v2, TPAMI 2024).

A B-cos unit with weight ``w`` answers an input (patch) ``x`` with

    B-cos(x; w) = |cos(x, w)|^(B - 1) * (w_hat . x),     w_hat = w / ||w||,

so it only responds strongly to inputs aligned with its weight; ``B = 1`` is an ordinary linear
unit with unit-norm weights. For a convolution the cosine is taken over each input patch: the
patch norm ``||x||`` is the square root of a convolution of the channel-summed ``x**2`` with a
kernel of ones (same stride, padding and dilation, so zero padding counts as zeros).
Optional MaxOut (``max_out = M``) keeps, for each output, the largest of ``M`` linear responses
before the B-cos scale is applied. The layers have no bias.

Once the dynamic scale ``|cos|^(B - 1)`` is treated as a constant (``explanation_mode``, see
``zoo.dynamic``) every layer is linear in its input, and so is the whole network: the logits are
``W(x) x`` for the ``[x, 1 - x]`` encoded input, and the contributions ``x * dy_c/dx`` sum to the
logit (less the constant logit bias). For that to hold exactly every other layer must be linear
without an additive term (or positively homogeneous, like ReLU and max-pooling). Batch norm is
therefore *uncentered*: it divides by the (running, in eval mode) standard deviation and scales,
but subtracts no mean and adds no bias.

Models registered here:

- ``bcos_cnn``: the plain B-cos CNN of the CIFAR-10 experiments of the first paper (eight 3x3
  B-cos convolutions, strides 1, 1, 2, 1, 1, 2, 1, 1, then a 1x1 B-cos convolution to the
  classes and global average pooling; MaxOut 2). The paper profile has its widths
  (64, 64, 128, 128, 128, 256, 256, 256); the CPU profile a quarter of them. Each hidden
  convolution is followed by an uncentered, bias-free batch norm (the second paper's fix for
  training without the first paper's hand-set per-layer scales).
- ``bcos_resnet18``: the zoo's timm ResNet-18 (``zoo.resnet``, same stem and widths per size)
  built with :class:`UncenteredBatchNorm2d` as its ``norm_layer`` and an identity as its
  ``act_layer`` (injected into timm's ResNet); timm builds its convolutions as plain
  ``nn.Conv2d``, so each becomes a :class:`BcosConv2d` of the same shape on the built network
  (the first one reads the 6-channel ``[x, 1 - x]`` input), and a max-pool (ImageNet stem only)
  an average pool of the same geometry. timm's ResNet code runs unchanged around them. The classifier is a 1x1 B-cos convolution
  at every position followed by the average pool, as in B-cos v2 (MaxOut off by default, as in
  the v2 ImageNet ResNets).

Loss (``loss=``): ``"bce"`` is binary cross-entropy on one-hot targets, as in both B-cos papers
(each class logit is pushed up or down on its own), with the papers' fixed logit bias of
``-log(K - 1)`` so that a zero dynamic-linear output means a sigmoid probability of ``1 / K``;
``"ce"`` is softmax cross-entropy, which a constant shift does not change, so there the logit
bias is 0. The default follows the size: ``"bce"`` for the paper profile (the published
recipe) and ``"ce"`` for the CPU profile, whose two-epoch budget CE uses better (synthetic data,
two epochs at lr 2e-3: B-cos CNN 0.99 with CE against 0.98 with BCE, B-cos ResNet-18 0.95
against 0.90; BCE needs about three epochs to catch up). The probabilities reported to the
harness are the softmax of the logits in both cases, as for every other model.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from interpbench.zoo import MODELS
from interpbench.zoo.dynamic import DynamicLinearModel
from interpbench.zoo.resnet import TimmResNet

DEFAULT_B = 2.0
PATCH_NORM_EPS = 1e-6  # added to ||x||^2 before the square root: a zero patch has cos = 0
COS_EPS = 1e-6  # |cos| is clamped to this before a non-integer power (finite gradient at 0)
LOSSES = ("bce", "ce")
DEFAULT_LOSS = {"cpu": "ce", "paper": "bce"}  # see the module docstring

IntPair = Union[int, Tuple[int, int]]


def _pair(value: IntPair) -> Tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def check_b(b: float) -> float:
    """``B`` as a float; it must be a finite number >= 1 (``|cos|^(B - 1)`` blows up below 1)."""
    if isinstance(b, bool) or not isinstance(b, numbers.Real) or not math.isfinite(b) or b < 1:
        raise ValueError(f"B must be a finite number >= 1 (1: linear, 2: the default), got {b!r}")
    return float(b)


def check_max_out(max_out: int) -> int:
    if isinstance(max_out, bool) or not isinstance(max_out, int) or max_out < 1:
        raise ValueError(f"max_out must be an integer >= 1 (1: no MaxOut), got {max_out!r}")
    return max_out


def check_loss(loss: Optional[str], size: str = "cpu") -> str:
    """The loss name; ``None`` takes the size's default (``DEFAULT_LOSS``)."""
    if loss is None:
        loss = DEFAULT_LOSS.get(size, "bce")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss '{loss}'; valid losses: {', '.join(LOSSES)}")
    return loss


def dynamic_scale(response: torch.Tensor, inv_norm: torch.Tensor, b: float, detach: bool) -> torch.Tensor:
    """``|cos|^(B - 1)`` with ``cos = response / ||x||`` (``response`` taken with unit weights,
    ``inv_norm = 1 / ||x||``: one reciprocal per position instead of a division per channel)."""
    if detach:
        response, inv_norm = response.detach(), inv_norm.detach()
    abs_cos = response.abs() * inv_norm
    if b == 2.0:
        return abs_cos
    return abs_cos.clamp_min(COS_EPS).pow(b - 1.0)


def init_weight(weight: torch.Tensor) -> None:
    """Gaussian weights with standard deviation ``1 / sqrt(fan_in)`` (norm about 1 per unit).

    The forward pass uses only each weight's direction, which an isotropic Gaussian draws
    uniformly; the scale matters for training instead: an optimiser step of a given size turns a
    weight of norm ``r`` by about ``step / r``, so a norm near 1 keeps Adam's steps meaningful
    (a standard normal init, norm ``sqrt(fan_in)``, learns several times slower).
    """
    fan_in = weight[0].numel()
    with torch.no_grad():
        weight.normal_(0.0, 1.0 / math.sqrt(fan_in))


def unit_rows(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` with every output unit (first index) scaled to unit norm: ``w_hat``."""
    norms = weight.flatten(1).norm(dim=1).clamp_min(1e-12)
    return weight / norms.view(-1, *([1] * (weight.dim() - 1)))


class UnitNormConv2d(nn.Conv2d):
    """The linear part of a B-cos convolution: a bias-free convolution with unit-norm filters.
    (An ``nn.Conv2d``, so generic tools such as the harness's multiply-accumulate count see it.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, unit_rows(self.weight), None)


class UnitNormLinear(nn.Linear):
    """The linear part of a B-cos linear layer: ``w_hat . x`` without bias."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, unit_rows(self.weight))


class BcosUnit(nn.Module):
    """Shared by the B-cos layers: B, MaxOut, an optional per-unit gain and an optional bias.

    ``gain`` (a learnable positive factor per linear unit, i.e. the weight-norm
    parametrisation ``w = g * v / ||v||``) and ``bias`` are off in B-cos networks trained from
    scratch; B-cosification (``zoo.bcosify``) uses the gain to carry the norm of a converted
    weight and the bias only in its intermediate ``B = 1`` stage. The bias, when present, is
    added after the B-cos response (at ``B = 1`` the layer is then exactly an affine layer).
    """

    linear: nn.Module  # UnitNormConv2d or UnitNormLinear: the unit-weight responses

    def _setup(self, out_units: int, b: float, max_out: int, gain: bool, bias: bool) -> None:
        self.b = check_b(b)
        self.max_out = check_max_out(max_out)
        if gain and self.max_out > 1:
            raise ValueError("a per-unit gain and MaxOut cannot be combined; use gain=False or max_out=1")
        self.explanation_mode = False
        self.gain = nn.Parameter(torch.ones(out_units * self.max_out)) if gain else None
        self.bias = nn.Parameter(torch.zeros(out_units)) if bias else None

    @property
    def weight(self) -> nn.Parameter:
        """The (unnormalised) weights, ``[units * max_out, ...]``; only their directions act."""
        return self.linear.weight

    def unit_weight(self) -> torch.Tensor:
        """The weights scaled to unit norm per output unit (``w_hat``)."""
        return unit_rows(self.weight)

    def _combine(self, response: torch.Tensor, inv_norm: Optional[torch.Tensor], channel_dim: int) -> torch.Tensor:
        """MaxOut, the dynamic scale, the gain and the bias on the unit-weight responses."""
        def per_channel(v: torch.Tensor) -> torch.Tensor:
            shape = [1] * response.dim()
            shape[channel_dim] = -1
            return v.view(shape)

        if self.max_out > 1:
            response = response.unflatten(channel_dim, (-1, self.max_out)).amax(dim=channel_dim + 1)
        out = response
        if self.b != 1.0:
            out = dynamic_scale(response, inv_norm, self.b, self.explanation_mode) * response
        if self.gain is not None:
            out = out * per_channel(self.gain)
        if self.bias is not None:
            out = out + per_channel(self.bias)
        return out

    def remove_bias(self) -> None:
        self.bias = None

    def _shape_repr(self) -> str:
        return ""

    def extra_repr(self) -> str:
        parts = [self._shape_repr(), f"B={self.b:g}"]
        if self.max_out > 1:
            parts.append(f"max_out={self.max_out}")
        if self.gain is not None:
            parts.append("gain=True")
        if self.bias is not None:
            parts.append("bias=True")
        return ", ".join(p for p in parts if p)


class BcosConv2d(BcosUnit):
    """A B-cos convolution: ``|cos(patch, w)|^(B - 1) * (w_hat . patch)`` at every position."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair = 1,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        b: float = DEFAULT_B,
        max_out: int = 1,
        gain: bool = False,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channel counts must be positive, got in={in_channels}, out={out_channels}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self._setup(self.out_channels, b, max_out, gain, bias)
        self.linear = UnitNormConv2d(self.in_channels, self.out_channels * self.max_out, self.kernel_size,
                                     self.stride, self.padding, self.dilation, bias=False)
        init_weight(self.linear.weight)
        self.register_buffer("ones", torch.ones(1, 1, *self.kernel_size), persistent=False)

    @classmethod
    def like(cls, conv: nn.Conv2d, in_channels: Optional[int] = None, **kwargs) -> "BcosConv2d":
        """A B-cos convolution with the geometry of ``conv`` (optionally another input width)."""
        if conv.groups != 1:
            raise ValueError(f"grouped convolutions are not supported (groups={conv.groups}); valid: groups=1")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"only explicit zero padding is supported, got padding={conv.padding!r}, "
                f"padding_mode={conv.padding_mode!r}; valid: integer padding with padding_mode='zeros'"
            )
        return cls(in_channels or conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                   conv.padding, conv.dilation, **kwargs)

    def inverse_patch_norm(self, x: torch.Tensor) -> torch.Tensor:
        """``1 / ||patch||`` for every output position, ``[B, 1, h, w]``."""
        squares = (x * x).sum(dim=1, keepdim=True)
        summed = F.conv2d(squares, self.ones.to(x.dtype), None, self.stride, self.padding, self.dilation)
        return (summed + PATCH_NORM_EPS).rsqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        response = self.linear(x)
        inv_norm = self.inverse_patch_norm(x) if self.b != 1.0 else None
        return self._combine(response, inv_norm, channel_dim=1)

    def _shape_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class BcosLinear(BcosUnit):
    """A B-cos linear layer on ``[..., in_features]``: ``|cos(x, w)|^(B - 1) * (w_hat . x)``."""

    def __init__(self, in_features: int, out_features: int, b: float = DEFAULT_B, max_out: int = 1,
                 gain: bool = False, bias: bool = False) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"feature counts must be positive, got in={in_features}, out={out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._setup(self.out_features, b, max_out, gain, bias)
        self.linear = UnitNormLinear(self.in_features, self.out_features * self.max_out, bias=False)
        init_weight(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        response = self.linear(x)
        inv_norm = None
        if self.b != 1.0:
            inv_norm = ((x * x).sum(dim=-1, keepdim=True) + PATCH_NORM_EPS).rsqrt()
        return self._combine(response, inv_norm, channel_dim=response.dim() - 1)

    def _shape_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class UncenteredBatchNorm2d(nn.Module):
    """Batch norm without centering: ``y = weight * x / sqrt(var + eps)`` per channel.

    In training mode ``var`` is the batch variance (and the running variance is updated as in
    ``nn.BatchNorm2d``); in eval mode it is the running variance, so the layer is a fixed
    per-channel scale: linear, with no additive term. In explanation mode the batch standard
    deviation is detached, so even a training-mode forward pass is linear in each image.
    ``bias`` exists only for B-cosification's intermediate stage (``zoo.bcosify``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, bias: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), float(momentum)
        self.explanation_mode = False
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features)) if bias else None
        self.register_buffer("running_var", torch.ones(num_features))
        if device is not None or dtype is not None:  # timm builds its norms with these
            self.to(device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"UncenteredBatchNorm2d expects [B, C, H, W] input, got shape {tuple(x.shape)}")
        if self.training:
            mean = x.mean(dim=(0, 2, 3))  # E[x^2] - E[x]^2: about 1.4x faster than x.var here
            var = ((x * x).mean(dim=(0, 2, 3)) - mean * mean).clamp_min(0.0)
            count = x.numel() // x.shape[1]
            with torch.no_grad():
                unbiased = var.detach() * (count / max(1, count - 1))
                self.running_var.mul_(1.0 - self.momentum).add_(self.momentum * unbiased)
            if self.explanation_mode:
                var = var.detach()
        else:
            var = self.running_var
        scale = self.weight / (var + self.eps).sqrt()
        out = x * scale.view(1, -1, 1, 1)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out

    def remove_bias(self) -> None:
        self.bias = None

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum:g}, bias={self.bias is not None}"


# --- helpers over whole networks ---------------------------------------------------------------

def bcos_layers(model: nn.Module) -> Iterator[BcosUnit]:
    """Every B-cos convolution and linear layer in ``model``."""
    return (m for m in model.modules() if isinstance(m, BcosUnit))


def set_b(model: nn.Module, b: float) -> None:
    """Set ``B`` of every B-cos layer in ``model``."""
    b = check_b(b)
    for layer in bcos_layers(model):
        layer.b = b


def replace_modules(root: nn.Module, rule: Callable[[str, nn.Module], Optional[nn.Module]],
                    prefix: str = "") -> None:
    """Walk ``root``'s submodules; where ``rule(qualified_name, module)`` returns a module it
    replaces that submodule (and the walk does not descend into it)."""
    for name, child in list(root.named_children()):
        qualified = prefix + name
        new = rule(qualified, child)
        if new is not None:
            setattr(root, name, new)
        else:
            replace_modules(child, rule, qualified + ".")


def first_conv_name(net: nn.Module) -> str:
    """The qualified name of the first ``nn.Conv2d`` (the one reading the image)."""
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    raise ValueError(f"{type(net).__name__} has no nn.Conv2d to read the image")


class BcosModel(DynamicLinearModel):
    """Base of the B-cos models: ``[x, 1 - x]`` input, a fixed logit bias, BCE or CE loss."""

    def __init__(self, num_classes: int, input_size: Sequence[int], mean: Sequence[float],
                 std: Sequence[float], b: float, max_out: int, loss: str) -> None:
        super().__init__(num_classes, input_size, mean, std)
        self.b, self.max_out, self.loss_name = check_b(b), check_max_out(max_out), check_loss(loss)
        if len(self.input_size) != 3:
            raise ValueError(f"input_size must be (channels, height, width), got {tuple(input_size)}")
        # With BCE, -log(K - 1) makes a zero dynamic-linear output a sigmoid probability of 1 / K;
        # softmax CE ignores a constant shift, so it goes without one.
        self.logit_bias = -math.log(num_classes - 1) if self.loss_name == "bce" else 0.0
        self.config.update(b=self.b, max_out=self.max_out, loss=self.loss_name, logit_bias=self.logit_bias)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "ce":
            return F.cross_entropy(logits, labels)
        targets = F.one_hot(labels, num_classes=logits.shape[1]).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, targets)


# --- the plain B-cos CNN -----------------------------------------------------------------------

CNN_STRIDES = (1, 1, 2, 1, 1, 2, 1, 1)
CNN_WIDTHS = {"cpu": (16, 16, 32, 32, 32, 64, 64, 64), "paper": (64, 64, 128, 128, 128, 256, 256, 256)}


class BcosCNN(BcosModel):
    """3x3 B-cos convolutions, each followed by an uncentered batch norm, then a 1x1 B-cos
    convolution to the classes and global average pooling. ``cam_layer``: the last hidden block."""

    def __init__(self, num_classes: int, input_size: Sequence[int] = (3, 32, 32),
                 mean: Sequence[float] = (0.5,) * 3, std: Sequence[float] = (0.25,) * 3,
                 widths: Sequence[int] = CNN_WIDTHS["cpu"], strides: Sequence[int] = CNN_STRIDES,
                 b: float = DEFAULT_B, max_out: int = 2, loss: str = "ce") -> None:
        super().__init__(num_classes, input_size, mean, std, b, max_out, loss)
        if len(widths) != len(strides) or not widths:
            raise ValueError(f"widths and strides must be non-empty and of equal length, got "
                             f"{len(widths)} widths and {len(strides)} strides")
        blocks, channels = [], 2 * input_size[0]
        for width, stride in zip(widths, strides):
            blocks.append(nn.Sequential(
                BcosConv2d(channels, width, 3, stride, 1, b=self.b, max_out=self.max_out),
                UncenteredBatchNorm2d(width),
            ))
            channels = width
        self.features = nn.Sequential(*blocks)
        self.classifier = BcosConv2d(channels, num_classes, 1, b=self.b, max_out=self.max_out)
        self.config.update(widths=tuple(widths), strides=tuple(strides))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features).mean(dim=(2, 3)) + self.logit_bias

    @property
    def cam_layer(self) -> nn.Module:
        return self.features[-1]


# --- the B-cos ResNet ---------------------------------------------------------------------------

class BcosTimmNet(BcosModel):
    """Shared by the B-cos and the B-cosified ResNet: a ResNet in ``self.net`` (timm's, or the zoo's
    CIFAR ResNet) whose classifier (``classifier_name``: ``fc``, or ``linear`` on a CIFAR ResNet) is
    a 1x1 B-cos convolution applied at every position before the average pool; ``cam_layer`` is its
    last stage (``cam_layer_name``)."""

    net: nn.Module
    classifier_name = "fc"
    cam_layer_name = "layer4"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return getattr(self.net, self.classifier_name)(features).mean(dim=(2, 3)) + self.logit_bias

    @property
    def cam_layer(self) -> nn.Module:
        return getattr(self.net, self.cam_layer_name)


class BcosResNet(BcosTimmNet):
    """The zoo's timm ResNet with uncentered batch norms and no activations (injected), B-cos
    convolutions (substituted; timm's forward code is unchanged), and a 1x1 B-cos convolution as
    classifier before the average pool."""

    def __init__(self, arch: str, num_classes: int, input_size: Sequence[int] = (3, 32, 32),
                 mean: Sequence[float] = (0.5,) * 3, std: Sequence[float] = (0.25,) * 3,
                 size: str = "cpu", b: float = DEFAULT_B, max_out: int = 1, loss: str = "ce") -> None:
        super().__init__(num_classes, input_size, mean, std, b, max_out, loss)
        # Normalisation and activation are injected into timm's ResNet; timm builds its
        # convolutions as plain nn.Conv2d, so those (and an ImageNet stem's max-pool) are
        # substituted on the built network. The residual branches keep unit norm scales.
        plain = TimmResNet(arch, num_classes, input_size, mean, std, size,
                           norm_layer=UncenteredBatchNorm2d, act_layer=nn.Identity, zero_init_last=False)
        self.net = plain.net
        stem = first_conv_name(self.net)

        def rule(name: str, module: nn.Module) -> Optional[nn.Module]:
            if isinstance(module, nn.Conv2d):
                width = 2 * module.in_channels if name == stem else None
                return BcosConv2d.like(module, in_channels=width, b=self.b, max_out=self.max_out)
            if isinstance(module, nn.MaxPool2d):  # ImageNet stem: keep the geometry, stay linear
                return nn.AvgPool2d(module.kernel_size, module.stride, module.padding)
            return None

        replace_modules(self.net, rule)
        # The classifier: a 1x1 B-cos convolution applied at every position before the average
        # pool (as in B-cos v2), not a B-cos linear layer after it: each position's class
        # evidence is weighted by its own alignment.
        self.net.fc = BcosConv2d(self.net.num_features, num_classes, 1, b=self.b, max_out=self.max_out)
        self.config.update(arch=arch, widths=plain.config["widths"], size=size)



@MODELS.register("bcos_cnn", family="bcos", recipe="bcos")
def bcos_cnn(num_classes: int = 10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3,
             size: str = "cpu", b: float = DEFAULT_B, max_out: int = 2,
             loss: Optional[str] = None) -> BcosCNN:
    """The plain B-cos CNN (eight 3x3 B-cos convolutions, MaxOut 2, B = 2)."""
    if size not in CNN_WIDTHS:
        raise ValueError(f"unknown size '{size}'; valid sizes: {', '.join(CNN_WIDTHS)}")
    return BcosCNN(num_classes, input_size, mean, std, CNN_WIDTHS[size], CNN_STRIDES, b, max_out,
                   check_loss(loss, size))


@MODELS.register("bcos_resnet18", family="bcos", recipe="bcos")
def bcos_resnet18(num_classes: int = 10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3,
                  size: str = "cpu", b: float = DEFAULT_B, max_out: int = 1,
                  loss: Optional[str] = None) -> BcosResNet:
    """B-cos ResNet-18 (the zoo's ResNet-18 with B-cos layers, no activations, B = 2)."""
    return BcosResNet("resnet18", num_classes, input_size, mean, std, size, b, max_out,
                      check_loss(loss, size))
