"""The metric interface and the per-batch context that metrics share.

A metric receives a :class:`Batch`: the model, the images, their labels, the saliency maps, the
class each map explains, the ground-truth masks when the data has them, and the explainer (for
metrics that re-explain, such as model randomisation). The batch memoises what several metrics
need, so a suite of metrics on the same images pays for it once:

- ``rank(descending, ties)``: each pixel's position in the saliency ordering, ties broken by the
  rule ``ties`` (below); ``feature_rank(...)`` the same for every channel of every pixel;
- ``logits(key, make)``: the model's logits on a set of perturbed images, computed once per
  ``key`` (a tuple that names the perturbation exactly); metrics that evaluate the same images
  (deletion to zero and pixel flipping to black in the same order, say) use the same key;
- ``removal_logits(...)``: the logits with the first ``k`` ranked pixels replaced by a baseline,
  for many ``k`` at once, each ``k`` cached on its own so overlapping step sets share passes.

``forward_images`` counts the images the model has actually run on (the cost a benchmark reports).

The model must be a zoo model: a plain ``nn.Module`` stops ``Metric.__call__`` and ``Batch`` with one
line that points to ``interpbench.wrap``.

Ties. Maps often hold many equal values (Grad-CAM upsampled from 4 x 4 and ReLU'd: on 32 x 32
images 358 of the 1024 pixels share a value on average, and up to 45 % of a map is zero), so the
order of tied pixels (patches, segments) decides much of a removal curve. Every metric that
orders by saliency takes ``ties``, one of :data:`TIES`, and ranks through :func:`saliency_rank`:

- ``"random"`` (the default): tied values in a random order, drawn from a generator seeded by a
  hash of the image itself (its pixels as float32, with a fixed salt). The order among ties is
  uniform, so no position (top rows, left columns) is favoured; it is reproducible; an image gets
  the same order in any batch and at any position in it; and every explainer and metric sees the
  same random priorities on the same image, per kind of entry (pixels, patches, segments), so
  two maps with the same tied region have it removed in the same order (common random numbers).
  Non-tied values keep their order.
- ``"index"``: tied values in pixel-index order, lower index first (row-major: top rows first),
  the stable sort used before ``"random"`` existed. It favours the top of the image.
- ``"quantus"``: numpy's default (unstable) ``argsort`` of the very array Quantus 0.6 sorts, in
  the maps' own dtype, after Quantus's pre-processing (``normalise_by_max`` over the batch given,
  ``abs`` where the metric takes it, the map broadcast over channels where Quantus broadcasts
  it). The order of ties is whatever numpy's sorting kernel gives (it depends on the CPU's
  vector extensions), so it reproduces Quantus on the same machine exactly, batch for batch; it
  depends on the batch only where the normalisation rounds two close values to one. Only the
  metrics that mirror a Quantus metric accept it.
"""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Hashable, List, Optional, Sequence

import numpy as np
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


def quantus_attributions(saliency: torch.Tensor, channels: int = 1, abs: bool = False,
                         normalise: bool = True) -> np.ndarray:
    """The array Quantus 0.6 ranks for maps ``saliency [B, H, W]`` -> numpy ``[B, channels * H * W]``.

    The maps are taken as Quantus receives them from the harness (``[B, 1, H, W]``, same dtype);
    ``normalise`` divides them by their largest magnitude over the whole batch (numpy, as
    ``normalise_by_max``; an all-zero batch is left as it is), ``abs`` takes the absolute value
    after that, and the result is broadcast over ``channels`` and flattened per image, as Quantus's
    rank metrics do before their ``argsort``.
    """
    a = saliency.detach().cpu().numpy()[:, None]
    if normalise and not np.all(a == 0):
        a = np.divide(a, np.max(np.abs(a), axis=tuple(range(a.ndim)), keepdims=True))
    if abs:
        a = np.abs(a)
    b, _, h, w = a.shape
    return np.ascontiguousarray(np.broadcast_to(a, (b, channels, h, w))).reshape(b, -1)


TIES = ("random", "index", "quantus")
# Mixed into the image hash that seeds the random tie-break; changing it redraws every order.
TIE_SALT = 0


def check_ties(ties: Any, valid: Sequence[str] = TIES) -> str:
    """``ties`` if it is one of ``valid``; anything else is a one-line error."""
    if not isinstance(ties, str) or ties not in valid:
        extra = "" if "quantus" in valid else " ('quantus' only on metrics that mirror Quantus)"
        raise ValueError(f"unknown ties {ties!r}; valid tie rules: {', '.join(valid)}{extra}")
    return ties


def image_seeds(images: torch.Tensor, salt: int = TIE_SALT) -> List[int]:
    """One 63-bit seed per image ``[B, ...]``: a BLAKE2b hash of its values as float32 and ``salt``."""
    flat = images.detach().reshape(images.shape[0], -1).to("cpu", torch.float32).contiguous().numpy()
    key = int(salt).to_bytes(8, "little", signed=True)
    return [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8, key=key).digest(), "little") >> 1
            for row in flat]


def tie_priorities(images: torch.Tensor, n: int, span: Optional[int] = None, salt: int = TIE_SALT) -> torch.Tensor:
    """Random priorities ``[B, n]`` (distinct integers, on the images' device): the first ``n``
    entries of a random permutation of ``0..span-1`` (``span >= n``, default ``n``) from a
    generator seeded by the image's own content (:func:`image_seeds`). A row's first entries get
    the same priorities whatever ``n`` is, as long as ``span`` is the same."""
    span = n if span is None else span
    if span < n:
        raise ValueError(f"span must be at least the number of entries ({n}), got {span}")
    perms = [torch.randperm(span, generator=torch.Generator().manual_seed(seed))[:n]
             for seed in image_seeds(images, salt)]
    out = torch.stack(perms) if perms else torch.zeros(0, n, dtype=torch.long)
    return out.to(images.device)


def saliency_rank(saliency: torch.Tensor, descending: bool, ties: str = "random",
                  images: Optional[torch.Tensor] = None, span: Optional[int] = None,
                  salt: int = TIE_SALT) -> torch.Tensor:
    """Rank of each entry of ``saliency [B, ...]`` within its row (flattened; 0 = first) -> ``[B, N]``.

    ``ties`` (see the module docstring): ``"index"`` puts tied entries in index order (a stable
    sort); ``"random"`` in the order of random priorities seeded by each row's image (``images
    [B, ...]``; the row's own values when None), the same whatever batch the row is in
    (:func:`tie_priorities`; ``span``: for rows whose length depends on the batch, such as
    segment labels up to the batch's largest, a bound on it that does not); ``"quantus"`` takes
    the order of ``numpy.argsort`` (default kind) of ``-saliency`` (descending) or ``saliency``
    (ascending), computed on the CPU in the tensor's dtype: pass the exact array Quantus sorts.
    """
    check_ties(ties)
    flat = saliency.reshape(saliency.shape[0], -1)
    if ties == "quantus":
        values = flat.detach().cpu().numpy()
        order = torch.from_numpy(np.argsort(-values if descending else values, axis=1)).to(flat.device)
    elif ties == "index":
        order = torch.argsort(-flat if descending else flat, dim=1, stable=True)
    else:
        # entries in priority order, then a stable sort by value: ties keep the priority order
        priorities = tie_priorities(flat if images is None else images, flat.shape[1], span, salt)
        shuffle = torch.argsort(priorities.to(flat.device), dim=1)
        shuffled = flat.gather(1, shuffle)
        order = shuffle.gather(1, torch.argsort(-shuffled if descending else shuffled, dim=1, stable=True))
    order = order.long()
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

    def rank(self, descending: bool = True, ties: str = "random") -> torch.Tensor:
        """Rank of each pixel ``[B, H*W]`` in the saliency order (0 first), ties broken by ``ties``;
        cached per order and rule. Under ``"quantus"`` the array ranked is the map as Quantus ranks
        one entry per pixel (its ROAD on one-channel images): divided by the batch's largest
        magnitude, in the map's dtype."""
        check_ties(ties)
        key = ("rank", descending, ties)
        if key not in self.cache:
            if ties == "quantus":
                values = torch.from_numpy(quantus_attributions(self.saliency))
            else:
                values = self.saliency
            self.cache[key] = saliency_rank(values, descending, ties, images=self.x).to(self.x.device)
        return self.cache[key]

    def feature_rank(self, descending: bool = True, ties: str = "random", abs: bool = False) -> torch.Tensor:
        """Rank of each input feature (channel ``c`` of pixel ``p``, index ``c * H * W + p``) ``[B, C*H*W]``.

        Under ``"random"`` and ``"index"`` the channels of a pixel are consecutive: ``C * rank + c``
        with ``rank`` the pixel's (of ``|saliency|`` when ``abs``), so the first ``C * k`` features
        are the first ``k`` pixels whole. Under ``"quantus"`` it is Quantus's ranking of the map
        broadcast over the channels (after its normalisation, and ``abs``): tied pixels' channels
        may be far apart, so a step can take some channels of a pixel and leave the others.
        """
        check_ties(ties)
        key = ("feature_rank", descending, ties, abs)
        if key not in self.cache:
            channels = self.x.shape[1]
            if ties == "quantus":
                values = torch.from_numpy(quantus_attributions(self.saliency, channels=channels, abs=abs))
                rank = saliency_rank(values, descending, ties).to(self.x.device)
            else:
                if abs and not bool((self.saliency >= 0).all()):
                    pixels = saliency_rank(self.saliency.abs(), descending, ties, images=self.x)
                else:  # |saliency| = saliency: the cached rank
                    pixels = self.rank(descending, ties)
                offsets = torch.arange(channels, device=pixels.device).view(1, -1, 1)
                rank = (channels * pixels.unsqueeze(1) + offsets).flatten(1)
            self.cache[key] = rank
        return self.cache[key]

    def removal_logits(self, counts: Sequence[int], baseline: torch.Tensor, baseline_id: Hashable,
                       descending: bool = True, insert: bool = False, ties: str = "random") -> torch.Tensor:
        """Logits ``[len(counts), B, K]`` with the first ``k`` ranked pixels (all channels) set to
        ``baseline`` (``insert=True``: the image starts as ``baseline`` and those pixels get the
        image's values). ``baseline`` broadcasts to ``x``; ``baseline_id`` names it in the cache.
        Under ``ties="quantus"`` the first ``C * k`` features of :meth:`feature_rank` are set
        instead (Quantus's PixelFlipping steps); under the other rules that is the same thing as
        ``k`` whole pixels. Cached per ``(ties, descending, insert, baseline_id, k)``."""
        check_ties(ties)
        h, w = self.x.shape[-2:]
        if ties == "quantus":
            rank, scale = self.feature_rank(descending, ties).view(self.size, -1, h, w), self.x.shape[1]
        else:
            rank, scale = self.rank(descending, ties).view(self.size, 1, h, w), 1
        keys = [("removal", ties, descending, insert, baseline_id, int(k)) for k in counts]
        todo = sorted({int(k) for k, key in zip(counts, keys) if key not in self.cache})
        if todo:
            chosen = torch.stack([rank < k * scale for k in todo])  # [S, B, 1 or C, H, W]
            start, fill = (baseline, self.x) if insert else (self.x, baseline)
            images = torch.where(chosen, fill.expand_as(self.x), start.expand_as(self.x))
            for k, logits in zip(todo, self.forward(images)):
                self.cache[("removal", ties, descending, insert, baseline_id, k)] = logits
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
