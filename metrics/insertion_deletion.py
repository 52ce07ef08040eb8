"""``insertion`` and ``deletion``: the causal metrics of RISE (Petsiuk et al., BMVC 2018).

Pixels are visited in the order of decreasing saliency, ``step`` at a time, and after each step
the model's probability of the explained class is recorded. Tied pixels (``ties``, see
:mod:`interpbench.metrics.base`) go in a random order seeded by the image with ``"random"``
(default: no positional bias), in pixel order, top rows first, with ``"index"`` (earlier
versions); there is no Quantus counterpart, hence no ``"quantus"`` rule.

- ``deletion``: the visited pixels of the image (all channels) are set to the dataset mean (the
  model's ``mean``), i.e. zero after the model's normalisation: the RISE code deletes into
  ``torch.zeros_like`` of the normalised image. A faithful map destroys the evidence first, so
  the curve falls fast: lower is better. ``baseline="zero"`` sets them to black (pixel value 0)
  instead, as this module did before.
- ``insertion``: the visited pixels of a blurred copy of the image get the image's values back.
  A faithful map restores the evidence first, so the curve rises fast: higher is better.

The curve has ``n + 1`` points for ``n = ceil(H * W / step)`` steps (the first point is the
untouched start, the last the finished image); ``curve_x`` is the fraction of pixels visited. The
score is the RISE area ``(sum - first/2 - last/2) / n``, i.e. the trapezoidal area over equally
spaced steps. The probability is the model's own (softmax, FA-CNN's L1 normalisation) of the
class each map explains (``batch.target``: the predicted class by default, as in RISE; the true
label when the cell asks for it).

Defaults and small images: RISE moves 224 pixels per step on 224 x 224 images, one row's worth;
``step=None`` keeps that rule at any size (the image width: 32 steps and 33 points at 32 x 32).

Insertion's blurred copy (``blur``):

- ``"reference"`` (default), the RISE code's: the *normalised* image convolved, channel by
  channel and with zero padding, with the code's ``gkern(11, 5)``, which is scipy's
  ``gaussian_filter`` (sigma 5, ``mode="reflect"``, truncated at 4 sigma) of an 11 x 11 unit
  impulse: the 41-tap Gaussian folded back into 11 taps by the reflections, nearly flat (1-D
  weights 0.0880 to 0.0940, where a box has 1/11 = 0.0909), not the sampled 11-tap Gaussian its
  parameters suggest (0.0663 to 0.1094); :func:`reference_kernel` computes it without scipy.
  Zero padding in normalised space is padding with the dataset mean in pixel space, so the copy
  fades to the mean towards the borders (the pixels within 5 of a border: half of a 32 x 32
  image). Our
  models normalise their input themselves, so the copy is written in pixel space as
  ``mean + std * blurred``: the model's normalisation gives back the reference's blurred
  normalised image (to float rounding, about 1e-7 in normalised units).
- ``"reflect"``: a sampled Gaussian (11 taps, sigma 5, weights ``exp(-d^2 / 50)`` normalised)
  applied in pixel space with reflected borders (torchvision's ``gaussian_blur``), as this module
  did before: the borders keep their colours. It needs images of at least 6 x 6 pixels.

Both metrics read ``Batch.removal_logits``: deletion under the key ``"mean"``, which pixel
removal to the dataset mean in the same order shares (``0.0`` with ``baseline="zero"``, which
pixel flipping to a zero baseline in the same order shares), and insertion under
``("blur", "reference", 11, 5.0)`` or ``("blur", "reflect", 11, 5.0)``. The untouched image
(deletion's first point, insertion's last) is the clean image, whose logits any metric of the
suite shares.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from interpbench.metrics import METRICS
from interpbench.metrics.base import Batch, Metric, check_ties

BLUR_KERNEL = 11
BLUR_SIGMA = 5.0
TIE_RULES = ("random", "index")  # no Quantus counterpart: no "quantus" rule
BLURS = ("reference", "reflect")  # insertion's blurred copy: the RISE code's, or pixel space reflected
DELETION_BASELINES = ("mean", "zero")


def reference_kernel(kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA, truncate: float = 4.0) -> torch.Tensor:
    """``[kernel, kernel]`` (float64): the RISE code's ``gkern``, i.e. scipy's ``gaussian_filter``
    (``mode="reflect"``, truncated at ``truncate`` sigma) of a ``kernel x kernel`` unit impulse.

    The filter is separable, so the result is the outer product of the 1-D one: the normalised
    Gaussian weights at offsets ``-r .. r`` (``r = int(truncate * sigma + 0.5)``) summed over the
    offsets that scipy's half-sample reflection (``... b a | a b ... z | z y ...``) maps onto
    the impulse."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1)
    weights = torch.exp(-0.5 * offsets.double() ** 2 / sigma ** 2)
    weights = weights / weights.sum()
    positions = (torch.arange(kernel)[:, None] + offsets[None, :]) % (2 * kernel)
    positions = torch.where(positions >= kernel, 2 * kernel - 1 - positions, positions)
    line = (weights[None, :] * (positions == kernel // 2)).sum(1)
    return torch.outer(line, line)


def reference_blur(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, kernel: int = BLUR_KERNEL,
                   sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Insertion's reference substrate for ``x [B, C, H, W]`` in pixel space: the normalised image
    ``(x - mean) / std`` convolved channel by channel with :func:`reference_kernel` (zero
    padding), written back as ``mean + std * blurred``."""
    mean, std = mean.to(x), std.to(x)
    weight = reference_kernel(kernel, sigma).to(x).expand(x.shape[1], 1, kernel, kernel)
    blurred = F.conv2d((x - mean) / std, weight, padding=kernel // 2, groups=x.shape[1])
    return mean + std * blurred


def gaussian_blur(x: torch.Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """``x [B, 3, H, W]`` blurred in pixel space by a sampled Gaussian (reflected borders):
    insertion's ``blur="reflect"`` substrate."""
    from torchvision.transforms.functional import gaussian_blur as blur

    h, w = x.shape[-2:]
    if min(h, w) <= kernel // 2:
        raise ValueError(f"insertion's reflect blur has an {kernel}-pixel kernel: images need at least "
                         f"{kernel // 2 + 1} x {kernel // 2 + 1} pixels, got {h} x {w}")
    return blur(x, [kernel, kernel], [sigma, sigma])


def rise_auc(curve: torch.Tensor) -> torch.Tensor:
    """RISE's area under ``curve [B, n + 1]``: ``(sum - first/2 - last/2) / n``."""
    return (curve.sum(1) - curve[:, 0] / 2 - curve[:, -1] / 2) / (curve.shape[1] - 1)


def step_counts(num_pixels: int, step: int) -> List[int]:
    """Pixels visited after each of the ``ceil(num_pixels / step)`` steps, from 0 to all."""
    steps = -(-num_pixels // step)
    return [min(i * step, num_pixels) for i in range(steps + 1)]


class _Causal(Metric):
    insert: bool = False

    def __init__(self, step: Optional[int] = None, ties: str = "random") -> None:
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
            raise ValueError(f"step must be a positive number of pixels or None (the image width), got {step!r}")
        check_ties(ties, TIE_RULES)
        super().__init__(step=step, ties=ties)
        self.step, self.ties = step, ties
        self._curve_x: Optional[List[float]] = None

    @property
    def higher_is_better(self) -> bool:
        return self.insert

    @property
    def curve_x(self) -> Optional[List[float]]:
        """Fraction of pixels visited at each point (known once the image size is)."""
        return self._curve_x

    def counts(self, batch: Batch) -> List[int]:
        return step_counts(batch.num_pixels, self.step or batch.x.shape[-1])

    def baseline(self, batch: Batch):
        raise NotImplementedError

    @torch.no_grad()
    def compute(self, batch: Batch) -> Dict[str, torch.Tensor]:
        counts = self.counts(batch)
        fill, fill_id = self.baseline(batch)
        # the untouched image is the clean one: share its logits with the rest of the suite
        untouched = batch.num_pixels if self.insert else 0
        key = ("removal", self.ties, True, self.insert, fill_id, untouched)
        if key not in batch.cache:
            batch.cache[key] = batch.clean_logits()
        logits = batch.removal_logits(counts, fill, fill_id, descending=True, insert=self.insert, ties=self.ties)
        curve = batch.pick(batch.probabilities(logits)).T.contiguous()  # [B, n + 1]
        self._curve_x = [round(k / batch.num_pixels, 6) for k in counts]
        return {"score": rise_auc(curve), "curve": curve}


@METRICS.register("deletion")
class Deletion(_Causal):
    """RISE deletion: most salient pixels set to the dataset mean (or black) first; lower is better."""

    name = "deletion"
    insert = False

    def __init__(self, step: Optional[int] = None, baseline: str = "mean", ties: str = "random") -> None:
        if baseline not in DELETION_BASELINES:
            raise ValueError(f"unknown baseline '{baseline}'; valid baselines: {', '.join(DELETION_BASELINES)}")
        super().__init__(step=step, ties=ties)
        self.params["baseline"] = baseline
        self.fill = baseline

    def baseline(self, batch: Batch):
        x = batch.x
        if self.fill == "mean":
            return batch.model.mean.to(x), "mean"
        return torch.zeros(1, x.shape[1], 1, 1, dtype=x.dtype, device=x.device), 0.0


@METRICS.register("insertion")
class Insertion(_Causal):
    """RISE insertion: most salient pixels restored into a blurred copy first; higher is better."""

    name = "insertion"
    insert = True

    def __init__(self, step: Optional[int] = None, blur: str = "reference", ties: str = "random") -> None:
        if blur not in BLURS:
            raise ValueError(f"unknown blur '{blur}'; valid blurs: {', '.join(BLURS)}")
        super().__init__(step=step, ties=ties)
        self.params["blur"] = blur
        self.blur = blur

    def baseline(self, batch: Batch):
        fill_id = ("blur", self.blur, BLUR_KERNEL, BLUR_SIGMA)
        key = ("image",) + fill_id
        if key not in batch.cache:
            x = batch.x
            batch.cache[key] = (reference_blur(x, batch.model.mean, batch.model.std) if self.blur == "reference"
                                else gaussian_blur(x))
        return batch.cache[key], fill_id
