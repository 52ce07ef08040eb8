"""The metric interface and the per-batch context that metrics share.

A metric receives a :class:`Batch`: the model, the images, their labels, the saliency maps, the
class each map explains, the ground-truth masks when the data has them, and the explainer (for
metrics that re-explain, such as model randomisation). The batch memoises what several metrics
need, so a suite of metrics on the same images pays for it once:

- ``rank(descending)``: each pixel's position in the saliency ordering;
- ``logits(key, make)``: the model's logits on a set of perturbed images, computed once per
  ``key`` (a tuple that names the perturbation exactly); metrics that evaluate the same images
  (deletion to zero and pixel flipping to black in the same order, say) use the same key;
- ``removal_logits(...)``: the logits with the first ``k`` ranked pixels replaced by a baseline,
  for many ``k`` at once, each ``k`` cached on its own so overlapping step sets share passes.

``forward_images`` counts the images the model has actually run on (the cost a benchmark reports).
The model must be a zoo model: a plain ``nn.Module`` stops ``Metric.__call__`` and ``Batch`` with one
line that points to ``interpbench.wrap``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Hashable, List, Optional, Sequence

import torch

from interpbench.zoo.base import ZooModel, require_zoo_model

# Images per forward pass. On a CPU, small batches keep the activations in cache: measured on the
# CPU-size zoo at 32 px (2 cores), 64 images per pass run 1.6x to 2.4x faster than 1024
# (`benchmarks/metrics_vs_quantus.py --chunks`); an accelerator wants large stacked batches.
CPU_CHUNK = 64
DEVICE_CHUNK = 1024


def divide_or(numerator: torch.Tensor, denominator: torch.Tensor, otherwise: float) -> torch.Tensor:
    """``numerator / denominator`` where the denominator is non-zero, ``otherwise`` where it is zero
    or NaN; the zero entries are never divided by."""
    valid = denominator.abs() > 0
    quotient = numerator / torch.where(valid, denominator, torch.ones_like(denominator))
    return torch.where(valid, quotient, torch.full_like(quotient, otherwise))


def saliency_rank(saliency: torch.Tensor, descending: bool) -> torch.Tensor:
    """Rank of each pixel ``[B, H*W]`` (0 = first); ties go to the lower pixel index."""
    flat = saliency.reshape(saliency.shape[0], -1)
    order = torch.argsort(-flat if descending else flat, dim=1, stable=True)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


@dataclass
class Batch:
    model: ZooModel
    x: torch.Tensor  # [B, 3, H, W] in [0, 1]
    y: torch.Tensor  # true labels [B]
    saliency: torch.Tensor  # [B, H, W]
    target: Optional[torch.Tensor] = None  # the class each map explains [B]; default: y
    masks: Optional[torch.Tensor] = None  # ground-truth object masks [B, H, W] (bool), if any
    explainer: Any = None  # the explainer that made ``saliency`` (metrics that re-explain)
    chunk: Optional[int] = None  # images per forward pass when perturbations are stacked
    forward_images: int = 0
    cache: Dict[Hashable, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require_zoo_model(self.model, "a metric's Batch")
        if self.chunk is None:
            self.chunk = CPU_CHUNK if self.x.device.type == "cpu" else DEVICE_CHUNK
        if self.target is None:
            self.target = self.y
        if self.saliency.shape != (self.x.shape[0], *self.x.shape[-2:]):
            raise ValueError(f"saliency has shape {tuple(self.saliency.shape)}; expected "
                             f"{(self.x.shape[0], *self.x.shape[-2:])} (one map per image at input size)")

    @property
    def size(self) -> int:
        return self.x.shape[0]

    @property
    def num_pixels(self) -> int:
        return self.x.shape[-2] * self.x.shape[-1]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of ``images [..., 3, H, W]`` (any leading shape), in chunks; not cached."""
        lead = images.shape[:-3]
        flat = images.reshape(-1, *images.shape[-3:])
        outputs = [self.model(flat[s : s + self.chunk]) for s in range(0, flat.shape[0], self.chunk)]
        self.forward_images += flat.shape[0]
        logits = torch.cat(outputs) if outputs else flat.new_zeros(0, self.model.num_classes)
        return logits.reshape(*lead, -1)

    def logits(self, key: Hashable, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Logits of the images ``make()`` builds, computed once per ``key``."""
        if key not in self.cache:
            self.cache[key] = self.forward(make())
        return self.cache[key]

    def clean_logits(self) -> torch.Tensor:
        return self.logits(("clean",), lambda: self.x)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's own probabilities (softmax, or FA-CNN's L1 normalisation) over the last axis."""
        lead = logits.shape[:-1]
        return self.model.probabilities(logits.reshape(-1, logits.shape[-1])).reshape(*lead, -1)

    def pick(self, values: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``values [..., B, K]`` at each image's class (default: ``target``) -> ``[..., B]``."""
        classes = self.target if classes is None else classes
        index = classes.to(values.device).view(*([1] * (values.dim() - 2)), -1, 1)
        return values.gather(-1, index.expand(*values.shape[:-1], 1)).squeeze(-1)

    def rank(self, descending: bool = True) -> torch.Tensor:
        """Rank of each pixel ``[B, H*W]`` in the saliency order (0 first; ties to the lower index)."""
        key = ("rank", descending)
        if key not in self.cache:
            self.cache[key] = saliency_rank(self.saliency, descending)
        return self.cache[key]

    def removal_logits(self, counts: Sequence[int], baseline: torch.Tensor, baseline_id: Hashable,
                       descending: bool = True, insert: bool = False) -> torch.Tensor:
        """Logits ``[len(counts), B, K]`` with the first ``k`` ranked pixels (all channels) set to
        ``baseline`` (``insert=True``: the image starts as ``baseline`` and those pixels get the
        image's values). ``baseline`` broadcasts to ``x``; ``baseline_id`` names it in the cache."""
        rank = self.rank(descending).view(self.size, 1, *self.x.shape[-2:])
        keys = [("removal", descending, insert, baseline_id, int(k)) for k in counts]
        todo = sorted({int(k) for k, key in zip(counts, keys) if key not in self.cache})
        if todo:
            chosen = torch.stack([rank < k for k in todo])  # [S, B, 1, H, W]
            start, fill = (baseline, self.x) if insert else (self.x, baseline)
            images = torch.where(chosen, fill.expand_as(self.x), start.expand_as(self.x))
            for k, logits in zip(todo, self.forward(images)):
                self.cache[("removal", descending, insert, baseline_id, k)] = logits
        return torch.stack([self.cache[key] for key in keys])


class Metric:
    """``metric(model, x, y, saliency, ...) -> {"score": [B], "curve": [B, F] (optional)}``.

    Subclasses implement ``compute(batch)``; calling the metric builds the :class:`Batch`.
    ``x``: images in ``[0, 1]`` ``[B, 3, H, W]``; ``y``: true labels ``[B]``; ``saliency``:
    ``[B, H, W]``. The per-image scores average to the reported score (NaN where a score is
    undefined for an image; the mean skips them).
    """

    name: ClassVar[str] = ""
    needs_masks: ClassVar[bool] = False  # localisation metrics: ground-truth masks required
    needs_explainer: ClassVar[bool] = False  # the metric calls the explainer again

    def __init__(self, **params: Any) -> None:
        self.params = params

    @property
    def higher_is_better(self) -> bool:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """The leaderboard column: the name, plus any parameter that differs from its default."""
        signature = inspect.signature(type(self).__init__).parameters
        changed = {k: v for k, v in self.params.items()
                   if k not in signature or signature[k].default != v}
        if not changed:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in sorted(changed.items()))})"

    @property
    def curve_x(self) -> Optional[List[float]]:
        """The x-axis of the curve this metric returns, if any."""
        return None

    def flag(self, score: float) -> Optional[str]:
        """A warning the leaderboard shows beside this score (e.g. a failed sanity check), if any."""
        return None

    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, model: ZooModel, x: torch.Tensor, y: torch.Tensor, saliency: torch.Tensor,
                 target: Optional[torch.Tensor] = None, masks: Optional[torch.Tensor] = None,
                 explainer: Any = None) -> Dict[str, torch.Tensor]:
        require_zoo_model(model, f"metric '{self.name or type(self).__name__}'")
        return self.compute(Batch(model, x, y, saliency, target=target, masks=masks, explainer=explainer))
