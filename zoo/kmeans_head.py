"""k-means-head CNNs (Boubekki & Clemmensen, "Post-hoc self-explanation of CNNs", arXiv 2603.28466).

The final linear layer of a trained ResNet is replaced by a k-means classifier: ``k`` prototypes
per class, fitted by k-means on the training images' pooled features of that class; the logit of
class ``c`` is the negative squared distance to its nearest prototype, so the prediction is the
nearest prototype's class. The backbone is the trained ResNet, frozen.

Two feature choices:

- ``b4``: the last block's output ``[C4, h, w]`` (average-pooled for the prediction);
- ``b234``: the last three blocks' outputs, each average-pooled to the last block's resolution
  and concatenated along the channels. Each block is divided by its mean pooled feature norm on
  the training set (fitted with the prototypes), so no block dominates the distances by scale.

On a CIFAR ResNet (three stages) the same two choices are ``b3`` (the last stage) and ``b123``
(all three stages: its last three, as ``b234`` is on the four-stage ResNets). The paper works with
ImageNet-size ResNets; ``b3``/``b123`` are this harness's names for the same choices on CIFAR ResNets.

The paper's backbone is a ResNet-34: ``kmeans_resnet34_b4`` and ``kmeans_resnet34_b234`` (over the
zoo's ``resnet34``, BasicBlock [3, 4, 6, 3], stage widths 64-512 at ``size=paper``) are that
setting; like ``resnet34`` they are left out of ``zoo=all`` (select them with ``'zoo=*resnet34*'``).
The default sweep's heads sit on the ResNet-18.

The prediction uses the spatial mean ``f_bar`` of the local features ``f(p)``. With ``mu`` the
nearest prototype of class ``c``,

    -||f_bar - mu||^2 = mean_p (2 <f(p), mu> - ||mu||^2) - ||f_bar||^2,

so the native explanation ``s(p) = 2 <f(p), mu> - ||mu||^2`` is the local feature's similarity to
that prototype, and its mean over positions is the logit up to a term shared by all classes. It
needs no gradient: one forward pass, then a dot product per position, upsampled to the input.

The prototypes are parameters (fitting sets them; a recipe with epochs > 0 would fine-tune them
by gradient); the default recipe only fits.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from interpbench.images import to_float
from interpbench.zoo import MODELS
from interpbench.zoo.base import Target, ZooModel, resolve_target, upsample
from interpbench.zoo.resnet import FrozenResNetModel

# feature choice -> indices into the stage outputs, by the backbone's number of stages
FEATURES = {4: {"b4": (3,), "b234": (1, 2, 3)},  # timm ResNets: layer1..layer4
            3: {"b3": (2,), "b123": (0, 1, 2)}}  # CIFAR ResNets: layer1..layer3


def kmeans(points: torch.Tensor, k: int, iterations: int = 50, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; ``points`` ``[N, D]`` -> centres ``[k, D]``.

    Seeded, so the same points give the same centres. A cluster that empties is re-seeded with
    the point farthest from its centre.
    """
    n = points.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    points = points.double()
    centres = points[torch.randint(n, (1,), generator=generator)]
    for _ in range(1, k):  # k-means++: sample the next centre proportionally to D^2
        distance = torch.cdist(points, centres).pow(2).min(dim=1).values
        weights = distance.cpu() if float(distance.sum()) > 0 else torch.ones(n, dtype=torch.float64)
        chosen = torch.multinomial(weights, 1, generator=generator).to(points.device)
        centres = torch.cat([centres, points[chosen]])
    for _ in range(iterations):
        distance = torch.cdist(points, centres).pow(2)
        assignment = distance.argmin(dim=1)
        updated = torch.zeros_like(centres).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=k).to(points.dtype)
        empty = counts == 0
        updated = updated / counts.clamp_min(1).unsqueeze(1)
        if empty.any():
            farthest = distance.gather(1, assignment.view(-1, 1)).squeeze(1).topk(int(empty.sum())).indices
            updated[empty] = points[farthest]
        if torch.allclose(updated, centres):
            centres = updated
            break
        centres = updated
    return centres.float()


class KMeansHeadResNet(FrozenResNetModel):
    """A frozen :class:`TimmResNet` whose classifier is the nearest of ``k`` prototypes per class."""

    def __init__(self, arch: str, num_classes: int, input_size: Sequence[int] = (3, 32, 32),
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.25, 0.25, 0.25),
                 size: str = "cpu", features: str = "b4", k: int = 5, iterations: int = 50) -> None:
        if k < 1:
            raise ValueError(f"k (prototypes per class) must be at least 1, got {k}")
        super().__init__(arch, num_classes, input_size, mean, std, size)
        choices = FEATURES[len(self.backbone.stage_widths)]
        if features not in choices:
            raise ValueError(f"unknown features '{features}' for {arch}; valid features: {', '.join(choices)}")
        self.stages = choices[features]
        widths = [self.backbone.stage_widths[i] for i in self.stages]
        self.k, self.iterations = int(k), int(iterations)
        self.prototypes = nn.Parameter(torch.randn(num_classes, self.k, sum(widths)))
        self.register_buffer("block_scale", torch.ones(len(self.stages)))
        self.block_widths = widths
        self.config.update(features=features, k=self.k)

    def local_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input -> local features ``[B, D, h, w]`` at the last block's resolution."""
        outputs = self.backbone.stage_outputs(x)
        size = outputs[-1].shape[-2:]
        blocks = []
        for scale, index in zip(self.block_scale, self.stages):
            block = outputs[index]
            if block.shape[-2:] != size:
                block = F.adaptive_avg_pool2d(block, size)
            blocks.append(block / scale)
        return torch.cat(blocks, dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_features(x).mean(dim=(2, 3))

    def squared_distances(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` -> ``[B, K, k]`` squared distances to every prototype."""
        flat = self.prototypes.flatten(0, 1)
        distances = (pooled.pow(2).sum(1, keepdim=True) - 2 * pooled @ flat.T
                     + flat.pow(2).sum(1).unsqueeze(0))
        return distances.view(pooled.shape[0], self.num_classes, self.k)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return -self.squared_distances(features).min(dim=2).values

    def nearest_prototypes(self, pooled: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The nearest prototype ``[B, D]`` of each image's class ``classes`` ``[B]``."""
        distances = self.squared_distances(pooled)[torch.arange(len(classes)), classes]  # [B, k]
        return self.prototypes[classes, distances.argmin(dim=1)]

    @torch.no_grad()
    def init_from_parent(self, parent: ZooModel, train) -> None:
        """Copy the trained ResNet into the frozen backbone, then fit the prototypes by k-means
        on the pooled features of ``train`` (the training split), class by class."""
        super().init_from_parent(parent)
        self.eval()
        device = self.prototypes.device
        self.block_scale.fill_(1.0)
        pooled = []
        for start in range(0, len(train), 250):
            x = to_float(train.images[start : start + 250].to(device))
            pooled.append(self.forward_features(self.encode_input(x)))
        features = torch.cat(pooled)
        # Each block divided by its mean pooled norm (fitted here, then part of the features).
        edges = torch.tensor([0] + self.block_widths).cumsum(0).tolist()
        scales = torch.stack([features[:, a:b].norm(dim=1).mean() for a, b in zip(edges[:-1], edges[1:])])
        self.block_scale.copy_(scales.clamp_min(1e-12))
        features = torch.cat([features[:, a:b] / s for a, b, s in zip(edges[:-1], edges[1:], scales)], dim=1)
        labels = train.labels.to(device)
        for label in range(self.num_classes):
            members = features[labels == label]
            if len(members) < self.k:
                raise ValueError(f"class {label} has {len(members)} training images, fewer than k={self.k}")
            self.prototypes[label] = kmeans(members, self.k, self.iterations, seed=label)

    def similarity_maps(self, x: torch.Tensor, target: Target = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``s(p) = 2 <f(p), mu> - ||mu||^2`` ``[B, h, w]`` for the nearest prototype ``mu`` of
        ``target`` (default: predicted class), and the logits."""
        local = self.local_features(self.encode_input(x))
        pooled = local.mean(dim=(2, 3))
        logits = self.forward_head(pooled)
        classes = resolve_target(target, logits)
        prototype = self.nearest_prototypes(pooled, classes)  # [B, D]
        maps = 2 * torch.einsum("bdhw,bd->bhw", local, prototype) - prototype.pow(2).sum(1).view(-1, 1, 1)
        return maps, logits

    @torch.no_grad()
    def explain(self, x: torch.Tensor, target: Target = None, layer: Optional[int] = None) -> torch.Tensor:
        if layer is not None:
            raise ValueError(f"the k-means head explains at its feature resolution only; got layer={layer}")
        return upsample(self.similarity_maps(x, target)[0], x.shape[-2:])


def _register(parent: str, features: str, in_all: bool) -> None:
    name = f"kmeans_{parent}_{features}"

    normalisation = MODELS.defaults(parent)  # the parent's default mean and std

    @MODELS.register(name, family="kmeans_head", recipe="kmeans_fit", parent=parent, in_all=in_all)
    def builder(num_classes: int = 10, input_size=(3, 32, 32), mean=normalisation["mean"], std=normalisation["std"],
                size: str = "cpu", k: int = 5, iterations: int = 50) -> KMeansHeadResNet:
        return KMeansHeadResNet(parent, num_classes, input_size, mean, std, size,
                                features=features, k=k, iterations=iterations)

    builder.__name__ = name
    builder.__doc__ = f"k-means head on ``{features}`` features of a frozen, trained ``{parent}``."


for _parent, _stages, _in_all in (("resnet18", 4, True), ("resnet34", 4, False), ("cifar_resnet20", 3, False),
                                  ("cifar_resnet56", 3, False)):
    for _features in FEATURES[_stages]:
        _register(_parent, _features, _in_all)
