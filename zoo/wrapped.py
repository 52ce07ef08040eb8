"""``wrap``: any plain ``torch.nn.Module`` classifier as a zoo model.

The module takes normalised images ``[B, C, H, W]`` and returns logits ``[B, K]`` (a torchvision or
timm classifier, say). The wrapped model takes images in ``[0, 1]`` and normalises them itself with
``mean`` and ``std``, like every zoo model, so that explainers and metrics work in pixel space:

    model = wrap(torchvision.models.resnet18(num_classes=10), mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225), cam_layer="layer4", input_size=(3, 32, 32))

- ``cam_layer``: the layer CAM methods (``gradcam``, ``gradcam_pp``, ``scorecam``) explain, the
  module itself or its dotted name inside ``module`` (``"layer4"``, ``"features.28"``); usually the
  last layer with a spatial output ``[B, C, h, w]``. Without one, ``gradcam_pp`` and ``scorecam`` do
  not apply and ``gradcam`` stops with a line asking for it.
- ``head``: how logits become probabilities and what training minimises (:data:`HEADS`):
  ``softmax`` (softmax, cross-entropy; the usual single-label classifier) or ``sigmoid`` (each
  class's sigmoid, binary cross-entropy against one-hot labels; a classifier trained one-vs-rest).
- ``num_classes``: found by one probe pass (two black images, in eval mode, without gradients,
  the module's train/eval modes restored after it) when not given.
- ``input_size``: ``(C, H, W)`` of the images the module takes; default ``(len(mean), 224, 224)``,
  ImageNet's size, which the probe pass uses. A module that takes only another size (a flatten
  before a linear layer) needs it given; the sweep's builders pass the data's.

The module is the wrapper's child ``net``: its parameters and state dict keys carry the prefix
``net.``. The wrapped model is not registered under a name; a plugin file registers a builder
that returns one (README, "Plugins").
"""
from __future__ import annotations

import itertools
from typing import Any, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from interpbench.zoo.base import ZooModel

HEADS = ("softmax", "sigmoid")
DEFAULT_SIDE = 224  # the probe's image side when input_size is not given (ImageNet's)
PROBE_IMAGES = 2  # two, so that a module that squeezes its output keeps the batch axis


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _floats(name: str, values: Any) -> Tuple[float, ...]:
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise TypeError(f"wrap: {name} must be a sequence of numbers, one per channel, got {values!r}") from None
    if not floats:
        raise ValueError(f"wrap: {name} must hold one number per channel, got {values!r}")
    return floats


def _input_size(input_size: Optional[Sequence[int]], channels: int) -> Tuple[int, int, int]:
    if input_size is None:
        return (channels, DEFAULT_SIDE, DEFAULT_SIDE)
    try:
        size = tuple(int(v) for v in input_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 3 or min(size) < 1 or size != tuple(input_size):
        raise ValueError(f"wrap: input_size must be (C, H, W), three positive integers, got {input_size!r}")
    if size[0] != channels:
        raise ValueError(f"wrap: input_size has {size[0]} channels but mean and std have {channels} values")
    return size  # type: ignore[return-value]


def _describe(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {list(output.shape)}"
    return f"a {type(output).__name__}"


def _reference(module: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """The device and floating dtype of ``module``'s first parameter or buffer (CPU float32 if none)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def probe_num_classes(module: nn.Module, mean: Sequence[float], std: Sequence[float],
                      input_size: Sequence[int]) -> int:
    """The number of classes ``module`` predicts: one pass of two black images (normalised), in
    eval mode and without gradients; every submodule's train/eval mode is restored afterwards."""
    device, dtype = _reference(module)
    shape = (PROBE_IMAGES, *input_size)
    x = (torch.zeros(shape, device=device, dtype=dtype)
         - torch.tensor(mean, device=device, dtype=dtype).view(1, -1, 1, 1)) \
        / torch.tensor(std, device=device, dtype=dtype).view(1, -1, 1, 1)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            output = module(x)
    except Exception as error:  # the module's own error, whatever it is, in one line
        raise ValueError(
            f"wrap: the probe pass of a {list(shape)} batch through {type(module).__name__} failed "
            f"({_first_line(error)}); give input_size=(C, H, W) that the module takes, or num_classes") from None
    finally:
        for m, training in modes:
            m.training = training
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != PROBE_IMAGES:
        raise ValueError(f"wrap: {type(module).__name__} must return logits [B, K], got {_describe(output)} "
                         f"for a {list(shape)} batch")
    return int(output.shape[1])


def cam_layer_name(module: nn.Module, cam_layer: Union[str, nn.Module]) -> str:
    """The dotted name of ``cam_layer`` (a module inside ``module``, or its name) in ``module``."""
    if isinstance(cam_layer, str):
        try:
            found = module.get_submodule(cam_layer) if cam_layer else None
        except AttributeError:
            found = None
        if found is None:
            children = ", ".join(name for name, _ in module.named_children()) or "none"
            raise ValueError(f"wrap: cam_layer '{cam_layer}' is not a module inside {type(module).__name__}; "
                             f"its top-level modules: {children}")
        return cam_layer
    if isinstance(cam_layer, nn.Module):
        for name, candidate in module.named_modules():
            if candidate is cam_layer and name:
                return name
        raise ValueError(f"wrap: cam_layer (a {type(cam_layer).__name__}) is not a module inside "
                         f"{type(module).__name__}; give one of its modules or its dotted name (e.g. 'layer4')")
    raise TypeError(f"wrap: cam_layer must be a module inside the wrapped module or its dotted name, "
                    f"got {cam_layer!r}")


class WrappedModel(ZooModel):
    """A plain classifier ``net`` (normalised images -> logits) behind the zoo's interface (see the
    module docstring); made by :func:`wrap`."""

    def __init__(
        self,
        module: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        cam_layer: Union[None, str, nn.Module] = None,
        head: str = "softmax",
        num_classes: Optional[int] = None,
        input_size: Optional[Sequence[int]] = None,
    ) -> None:
        if isinstance(module, ZooModel):
            raise TypeError(f"wrap: {type(module).__name__} is a zoo model already (it takes images in [0, 1]); "
                            "use it as it is")
        if not isinstance(module, nn.Module):
            raise TypeError(f"wrap: module must be a torch.nn.Module, got {type(module).__name__}")
        if head not in HEADS:
            raise ValueError(f"wrap: unknown head {head!r}; valid heads: {', '.join(HEADS)}")
        mean, std = _floats("mean", mean), _floats("std", std)
        if len(mean) != len(std):
            raise ValueError(f"wrap: mean and std need one value per channel each, got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"wrap: std must be positive, got {std}")
        size = _input_size(input_size, len(mean))
        name = None if cam_layer is None else cam_layer_name(module, cam_layer)
        if num_classes is None:
            num_classes = probe_num_classes(module, mean, std, size)
        elif isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise TypeError(f"wrap: num_classes must be an integer, got {num_classes!r}")
        super().__init__(num_classes, size, mean, std)
        self.net = module
        self.head = head
        self.cam_layer_name = name
        device, _ = _reference(module)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        self.training = module.training  # the module's submodules keep their own modes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The module's output on the normalised images: its logits."""
        return self.net(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        if not isinstance(features, torch.Tensor) or features.dim() != 2:
            raise TypeError(f"wrapped {type(self.net).__name__} must return logits [B, K], got {_describe(features)}")
        return features

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid() if self.head == "sigmoid" else logits.softmax(dim=1)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.head == "sigmoid":
            targets = F.one_hot(labels.long(), num_classes=logits.shape[1]).to(logits.dtype)
            return F.binary_cross_entropy_with_logits(logits, targets)
        return F.cross_entropy(logits, labels)

    @property
    def cam_layer(self) -> nn.Module:
        if self.cam_layer_name is None:
            raise NotImplementedError(
                f"the wrapped {type(self.net).__name__} declares no cam_layer; CAM methods need one: "
                "wrap(module, ..., cam_layer=<the module or its dotted name, e.g. 'layer4'>)")
        return self.net.get_submodule(self.cam_layer_name)

    def extra_repr(self) -> str:
        return f"head={self.head}, cam_layer={self.cam_layer_name}"


def wrap(
    module: nn.Module,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    cam_layer: Union[None, str, nn.Module] = None,
    head: str = "softmax",
    num_classes: Optional[int] = None,
    input_size: Optional[Sequence[int]] = None,
) -> WrappedModel:
    """``module`` (normalised images -> logits) as a zoo model that takes images in ``[0, 1]``.

    ``mean``, ``std``: the per-channel normalisation the module expects; ``cam_layer``: the layer CAM
    methods explain (the module or its dotted name inside ``module``); ``head``: ``softmax`` or
    ``sigmoid`` (:data:`HEADS`); ``num_classes`` (default: one probe pass) and ``input_size``
    (default ``(len(mean), 224, 224)``). Every bad argument is a one-line ``ValueError`` or ``TypeError``.
    """
    return WrappedModel(module, mean, std, cam_layer=cam_layer, head=head, num_classes=num_classes,
                        input_size=input_size)
