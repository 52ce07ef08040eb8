"""B-cosification (Arya, Rao, Böhle & Schiele, NeurIPS 2024): a trained ResNet made a B-cos network.

``bcosified_resnet18`` is derived from the zoo's trained ``resnet18`` (``parent="resnet18"``):

1. The architecture is the parent's timm ResNet with every convolution a :class:`BcosConv2d`
   of the same shape and every batch norm an :class:`UncenteredBatchNorm2d`; the classifier
   becomes a 1x1 B-cos convolution applied before the average pool (at ``B = 1`` the order of
   two linear maps does not matter; at ``B = 2`` it is the B-cos v2 head, and the reference
   B-cosification's). ReLUs (and the ImageNet stem's max-pool) stay: they are positively
   homogeneous, so the contributions still sum to the logit exactly (the reference replaces the
   max-pool; see below).
2. Input: the image is encoded as ``[x, 1 - x]`` instead of being normalised. Since
   ``(x - m) / s = ((1 - m) / s) * x + (-m / s) * (1 - x)`` the first convolution gets the
   6-channel weights ``[W (1 - m) / s, W (-m) / s]`` per input channel and computes exactly what
   the original computed on the normalised image; zero padding stays consistent (a padded zero
   in both channels contributes 0, as a padded 0 of the normalised image did).
3. Weight norms: B-cos layers use unit-norm weights. The converted layers carry each original
   weight's norm ``|w|`` as a per-unit gain (the weight-norm parametrisation
   ``w = g * v / |v|``), so at ``B = 1`` every layer computes ``w . x`` exactly and the dynamic
   scale at ``B > 1`` is a true cosine ``|cos(x, v)|``. The reference implementation keeps the
   unnormalised weight inside the layer instead, so its "cosine" is ``|w| cos``; the two differ
   by a constant factor per channel, which the batch norm after every convolution absorbs in
   training. A gain is a constant per channel, so the network stays dynamic-linear.
4. Batch norm ``g (z - mu) / sigma + beta`` becomes ``g z / sigma`` plus the bias
   ``beta - g mu / sigma``, i.e. an uncentered norm with the same weight and running variance.
5. At ``B = 1`` with those biases the converted network equals the original (see
   tests/test_bcosify.py). Then every bias is removed and ``B`` raised to 2; the recipe
   ``bcosify`` fine-tunes the result.

Two differences from the reference code (shrebox/B-cosification), besides the gains of step 3:

- The first convolution. The reference puts a normalisation in front of the network that maps the
  6-channel ``[x, 1 - x]`` to ``((x - m) / s, (m - x) / s)`` (mean ``(m, 1 - m)``, std ``(s, s)``;
  ``bcosify.py``'s ``bcosifynormalize``) and gives the first convolution the weights
  ``[W, -W] / 2`` (``BcosifyNetwork.add_channels``), which on that input is ``W (x - m) / s``, the
  original's first layer. Here the normalisation is folded into the weights of step 2 and the
  network reads ``[x, 1 - x]`` itself. Both compute the original at conversion; ours has no
  additive term in front of the first B-cos layer, so the network is dynamic-linear in the input
  it is explained on (as every B-cos model of this zoo) and the contributions ``x * dy_c/dx`` sum
  to the logit, which the reference's mean subtraction (a shift of the input) breaks. After ``B``
  is raised the two also differ in the first layer's cosine: between the weight and the
  ``[x, 1 - x]`` patch here, the normalised patch there.
- The stem's max-pool. The reference swaps the ResNet stem's 3x3 stride-2 max-pool for an
  average pool of the same geometry before fine-tuning (``standard_changes`` in
  ``bcos/experiments/ImageNet/bcosification/experiment_parameters.py``); here it stays. A
  max-pool passes one input per window on unchanged (a 0/1 weight chosen by the input), so it
  is dynamic-linear and the contributions still sum to the logit; keeping it lets the converted
  network at ``B = 1`` with biases equal the original exactly (checked by tests/test_bcosify.py),
  where an average pool would change its function before the fine-tune starts. Only the ImageNet
  stem (inputs over 64 pixels) has the pool: on CIFAR-size inputs the two agree.

The builder creates the final architecture (``B = 2``, no biases, randomly initialised);
``init_from_parent`` converts the trained parent's weights into it, and the state dict holds
everything, so builder + ``load_state_dict`` reloads a fine-tuned model.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from interpbench.zoo import MODELS
from interpbench.zoo.base import ZooModel
from interpbench.zoo.bcos import (
    BcosConv2d,
    BcosTimmNet,
    BcosUnit,
    UncenteredBatchNorm2d,
    check_b,
    check_loss,
    first_conv_name,
    replace_modules,
)
from interpbench.zoo.cifar_resnet import CifarResNet
from interpbench.zoo.resnet import WIDTHS, TimmResNet, make_backbone


class BcosifiedResNet(BcosTimmNet):
    """A timm ResNet converted to B-cos layers (see the module docstring); ``biases=True`` only
    for the intermediate stage that reproduces the original at ``B = 1``."""

    def __init__(self, arch: str, num_classes: int, input_size: Sequence[int] = (3, 32, 32),
                 mean: Sequence[float] = (0.5,) * 3, std: Sequence[float] = (0.25,) * 3,
                 size: str = "cpu", b: float = 2.0, biases: bool = False, loss: str = "ce") -> None:
        super().__init__(num_classes, input_size, mean, std, b, 1, loss)
        plain = make_backbone(arch, num_classes, input_size, mean, std, size)
        self.net = body(plain)
        if isinstance(plain, CifarResNet):  # its stages and classifier are the module's own
            self.classifier_name, self.cam_layer_name = "linear", "layer3"
        stem = first_conv_name(self.net)
        b = self.b

        def rule(name: str, module: nn.Module) -> Optional[nn.Module]:
            if isinstance(module, nn.Conv2d):
                width = 2 * module.in_channels if name == stem else None
                return BcosConv2d.like(module, in_channels=width, b=b, gain=True, bias=biases)
            if isinstance(module, nn.BatchNorm2d):
                return UncenteredBatchNorm2d(module.num_features, module.eps, module.momentum or 0.1, bias=biases)
            if isinstance(module, nn.Linear):  # the classifier, applied at every position
                return BcosConv2d(module.in_features, module.out_features, 1, b=b, gain=True, bias=biases)
            return None

        replace_modules(self.net, rule)
        self.config.update(arch=arch, widths=plain.config["widths"], size=size, biases=bool(biases))

    @property
    def has_biases(self) -> bool:
        return any(getattr(m, "bias", None) is not None
                   for m in self.net.modules() if isinstance(m, (BcosUnit, UncenteredBatchNorm2d)))

    def remove_biases(self) -> None:
        """Drop every bias: the network becomes dynamic-linear (the contributions sum to the logit)."""
        for module in self.net.modules():
            if isinstance(module, (BcosUnit, UncenteredBatchNorm2d)):
                module.remove_bias()
        self.config["biases"] = False

    def init_from_parent(self, parent: ZooModel, train: object = None) -> None:
        """Convert the trained parent ResNet's weights into this model (its biases are dropped
        when this model has none)."""
        convert_resnet_weights(parent, self)


def body(resnet: ZooModel) -> nn.Module:
    """The network B-cosification converts: a timm ResNet's ``net``, or a CIFAR ResNet itself."""
    return resnet if isinstance(resnet, CifarResNet) else resnet.net


def _check_parent(parent: ZooModel, target: Optional[BcosifiedResNet] = None) -> None:
    if not isinstance(parent, (TimmResNet, CifarResNet)):
        raise ValueError(f"B-cosification converts a zoo ResNet (TimmResNet or CifarResNet), "
                         f"got {type(parent).__name__}")
    if target is None:
        return
    keys = ("arch", "widths", "num_classes", "input_size")
    wrong = [k for k in keys if tuple(_as_tuple(parent.config[k])) != tuple(_as_tuple(target.config[k]))]
    if wrong:
        detail = ", ".join(f"{k}: parent {parent.config[k]} vs {target.config[k]}" for k in wrong)
        raise ValueError(f"parent ResNet does not match the B-cosified architecture ({detail})")


def _as_tuple(value):
    return value if isinstance(value, (tuple, list)) else (value,)


def size_of(parent: ZooModel) -> str:
    """The zoo size (``cpu`` or ``paper``) of a zoo ResNet, from its widths (a CIFAR ResNet is the
    same at every size)."""
    if isinstance(parent, CifarResNet):
        return "cpu"
    for name, widths in WIDTHS.items():
        if tuple(widths) == tuple(parent.config["widths"]):
            return name
    raise ValueError(f"ResNet widths {parent.config['widths']} match no zoo size; valid sizes: {', '.join(WIDTHS)}")


@torch.no_grad()
def convert_resnet_weights(parent: TimmResNet, target: BcosifiedResNet) -> None:
    """Copy ``parent``'s weights into ``target`` as described in the module docstring. Biases
    (of convolutions, batch norms and the classifier) go where ``target`` has bias slots and are
    dropped otherwise; the classifier's bias absorbs ``target.logit_bias`` so that at ``B = 1``
    with biases the logits equal the parent's."""
    _check_parent(parent, target)
    destination = dict(target.net.named_modules())
    stem = first_conv_name(body(parent))
    mean = parent.mean.detach().reshape(1, -1, 1, 1).to(torch.float32)
    std = parent.std.detach().reshape(1, -1, 1, 1).to(torch.float32)
    for name, module in body(parent).named_modules():
        new = destination.get(name)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            weight = module.weight.detach().to(torch.float32)
            if name == stem:  # (x - m) / s = ((1 - m) / s) x + (-m / s) (1 - x)
                weight = torch.cat([weight * (1.0 - mean) / std, weight * (-mean / std)], dim=1)
            new.weight.copy_(weight.reshape(new.weight.shape))
            new.gain.copy_(weight.flatten(1).norm(dim=1))
            if new.bias is not None:
                bias = module.bias.detach() if module.bias is not None else torch.zeros_like(new.bias)
                if isinstance(module, nn.Linear):
                    bias = bias - target.logit_bias
                new.bias.copy_(bias)
        elif isinstance(module, nn.BatchNorm2d):
            if module.running_var is None:
                raise ValueError(f"batch norm '{name}' tracks no running statistics; cannot convert it")
            scale = module.weight.detach() if module.weight is not None else torch.ones_like(module.running_var)
            new.weight.copy_(scale)
            new.running_var.copy_(module.running_var)
            new.eps = module.eps
            if new.bias is not None:
                shift = module.bias.detach() if module.bias is not None else torch.zeros_like(scale)
                new.bias.copy_(shift - scale * module.running_mean / (module.running_var + module.eps).sqrt())


def bcosify(parent: TimmResNet, b: float = 1.0, keep_biases: bool = True,
            loss: Optional[str] = None) -> BcosifiedResNet:
    """A B-cosified copy of the zoo ResNet ``parent`` (in eval mode, on the parent's device).

    The defaults give the intermediate stage that computes what ``parent`` computes
    (``B = 1``, biases kept); ``b=2, keep_biases=False`` gives the network that is fine-tuned.
    """
    _check_parent(parent)
    size = size_of(parent)
    config = parent.config
    model = BcosifiedResNet(config["arch"], config["num_classes"], config["input_size"], config["mean"],
                            config["std"], size, check_b(b), keep_biases, check_loss(loss, size))
    model.to(next(parent.parameters()).device)
    convert_resnet_weights(parent, model)
    return model.eval()


def _register(parent: str, in_all: bool) -> None:
    name = f"bcosified_{parent}"

    normalisation = MODELS.defaults(parent)  # the parent's default mean and std

    @MODELS.register(name, family="bcos", recipe="bcosify", parent=parent, in_all=in_all)
    def builder(num_classes: int = 10, input_size=(3, 32, 32), mean=normalisation["mean"], std=normalisation["std"],
                size: str = "cpu", b: float = 2.0, loss: Optional[str] = None) -> BcosifiedResNet:
        return BcosifiedResNet(parent, num_classes, input_size, mean, std, size, b, False, check_loss(loss, size))

    builder.__name__ = name
    builder.__doc__ = (f"``{parent}`` B-cosified (B = 2, no biases); ``init_from_parent`` converts a "
                       f"trained ``{parent}``.")


for _parent, _in_all in (("resnet18", True), ("cifar_resnet20", False), ("cifar_resnet56", False)):
    _register(_parent, _in_all)
